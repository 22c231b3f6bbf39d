"""A distillation run's state on disk and on screen: the checkpoint and the progress bar.

The checkpoint (torch.save) holds the parameters, the optimizer, the step and the best so
far, the history and both RNG states, so `resume` continues a run exactly; it is written to
a temporary name and moved, so an interruption never leaves a half-written file.
"""

from __future__ import annotations

import os
from pathlib import Path

from onnxmerge.errors import OnnxMergeError

CHECKPOINT_VERSION = 2  # 2: the held-out views are mild whatever the setting


def save(torch, path: Path, key, module, opt, views, state, history) -> None:
    """Write the checkpoint of the run (`key`: the student's sha256) to `path`, atomically."""
    tmp = path.with_name(path.name + ".tmp")
    torch.save(
        {
            "version": CHECKPOINT_VERSION,
            "student": key,
            "params": module.state_dict(),
            "opt": opt.state_dict(),
            "state": state,
            "history": history,
            "rng": views.rng.bit_generator.state,
            "torch_rng": torch.get_rng_state(),
        },
        tmp,
    )
    os.replace(tmp, path)


def restore(torch, path: Path, key, module, opt, views, state) -> None:
    """Load the checkpoint at `path` into the module, optimizer, views' RNG and `state`
    (plus state["history"]); OnnxMergeError if unreadable or of another student."""
    try:
        ck = torch.load(path, weights_only=False)
    except Exception as exc:  # noqa: BLE001 (a damaged file: one line, not a traceback)
        raise OnnxMergeError(f"checkpoint {path}: unreadable ({exc})") from None
    if ck.get("version") != CHECKPOINT_VERSION or ck.get("student") != key:
        raise OnnxMergeError(f"checkpoint {path} is of another student (or version): remove it")
    module.load_state_dict(ck["params"])
    opt.load_state_dict(ck["opt"])
    state.update(ck["state"], history=ck["history"])
    views.rng.bit_generator.state = ck["rng"]
    torch.set_rng_state(ck["torch_rng"])


def progress_bar(progress: bool, steps: int | None, budget_s: float | None):
    """A tqdm bar over steps, or over seconds of the budget; None without `progress`."""
    if not progress:
        return None
    from tqdm import tqdm

    if steps:
        return tqdm(total=steps, desc="distill", unit="step")
    return tqdm(total=round(budget_s), desc="distill", unit="s")


def advance(bar, state, steps, loss, history) -> None:
    """Move the bar to the run's step (or second), with the loss and last held-out score."""
    if bar is None:
        return
    bar.n = state["step"] if steps else min(round(state["seconds"]), bar.total)
    post = {"loss": f"{loss:.4f}"}
    if history:
        post["held-out"] = f"{history[-1]['distortion']:.4f}"
    bar.set_postfix(post, refresh=False)
    bar.refresh()
