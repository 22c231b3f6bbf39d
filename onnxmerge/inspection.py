"""`onnxmerge inspect`: the conv chains found in a model, as a JSON-ready dict."""

from __future__ import annotations

from dataclasses import asdict

from onnxmerge.analysis import Analysis
from onnxmerge.match import MatchedChain


def chain_dict(mc: MatchedChain) -> dict:
    """One chain: positions (conv geometry and activation), residuals, breaks."""
    c = mc.chain
    positions = []
    for p in range(1, c.length + 1):
        conv = c.conv(p)
        positions.append(
            {
                "position": p,
                "conv": conv.name,
                "kernel": list(conv.kernel),
                "stride": list(conv.stride),
                "dilation": list(conv.dilation),
                "pads": list(conv.pads),
                "groups": conv.groups,
                "in_channels": conv.in_channels,
                "out_channels": conv.out_channels,
                "in_hw": list(conv.in_hw),
                "activation": c.activations[p],
                "activation_affine": p in c.affine_at,
            }
        )
    return {
        "name": c.name,
        "length": c.length,
        "input_from": c.input_from,
        "output_to": c.output_to,
        "mergeable": mc.mergeable,
        "note": mc.note,
        "positions": positions,
        "residuals": [
            {"start": r.start, "end": r.end, "shortcut": r.shortcut.name if r.shortcut else None}
            for r in c.residuals
        ],
        "breaks": [asdict(b) for b in c.breaks],
        "valid_segments": len(c.valid_segments()) if mc.mergeable else 0,
    }


def inspect_report(analysis: Analysis) -> dict:
    """Chains, convs in no chain (with why) and totals."""
    m = analysis.match
    chains = [chain_dict(mc) for mc in m.chains]
    return {
        "chains": chains,
        "unmatched": [{"conv": n, "reason": r} for n, r in m.unmatched],
        "total": {
            "chains": len(chains),
            "convs": sum(c["length"] for c in chains),
            "residuals": sum(len(c["residuals"]) for c in chains),
            "valid_segments": sum(c["valid_segments"] for c in chains),
        },
    }
