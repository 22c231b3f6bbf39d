"""Calibration: data (photos, folders, .npz, source groups), the ridge least-squares fit of one
conv, and the refit of a compressed network's new convs toward the original's tensors.

- `calibration.data`: CalibrationSet, calibration_set / calibration_inputs, describe;
- `calibration.capture`: the original network's tensors on the feeds (capture), suffix models
  that run the rest of a network from one tensor (Suffix), a conv applied to a batch;
- `calibration.fit`: the ridge fit (pure numpy);
- `calibration.network`: refit_merged, network order, with GroupFit reports.
"""
