"""The public Python API: inspect(), fuse() (and compress(), profile() in their modules).

Each takes a path (or a ModelProto) and plain options, and returns a plain report object;
files are written atomically and only after every check passed.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import onnx

from onnxmerge.compose import border_width
from onnxmerge.errors import OnnxMergeError
from onnxmerge.graph import load_model, normalize, save_model, with_input_shapes
from onnxmerge.match import Match, match
from onnxmerge.passes.merge_group import segment_io, segment_parts
from onnxmerge.plan import Plan
from onnxmerge.rewrite import apply_choices, export, fuse_choices, plan_choices
from onnxmerge.verify import Difference, difference, random_inputs, run

ModelLike = str | os.PathLike | onnx.ModelProto


def load(
    model: ModelLike,
    input_shapes: dict | None = None,
    external_data_dir: str | os.PathLike | None = None,
) -> onnx.ModelProto:
    """A proto as it is (input shapes applied); a path loaded and checked, its external data
    read from `external_data_dir` (default: the model's folder)."""
    if isinstance(model, onnx.ModelProto):
        return with_input_shapes(model, input_shapes)
    return load_model(model, input_shapes, external_data_dir)


def analyze(
    model: ModelLike,
    input_shapes: dict | None = None,
    external_data_dir: str | os.PathLike | None = None,
):
    """(original model, normalized graph, match) for a model path or proto."""
    proto = load(model, input_shapes, external_data_dir)
    graph = normalize(proto)
    return proto, graph, match(graph)


def _chain_dict(mc) -> dict:
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


def inspect(
    model: ModelLike,
    input_shapes: dict | None = None,
    external_data_dir: str | os.PathLike | None = None,
) -> dict:
    """The chains onnxmerge finds in a model, as a JSON-ready dict."""
    _, _, m = analyze(model, input_shapes, external_data_dir)
    chains = [_chain_dict(mc) for mc in m.chains]
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


@dataclass
class GroupError:
    tensor: str
    interior: Difference
    border: Difference | None  # None when the merge is exact everywhere by construction


@dataclass
class FuseReport:
    merged_groups: int
    convs_before: int
    convs_after: int
    outputs: dict[str, Difference]
    groups: list[GroupError] = field(default_factory=list)
    # direct-cover segments (activation-free runs) with a conv left unmerged as not exact
    skipped_inexact: int = 0

    @property
    def max_rel(self) -> float:
        return max((d.max_rel for d in self.outputs.values()), default=0.0)


def _skipped_inexact(direct: dict, exact: dict) -> int:
    """Segments of the direct cover with a conv that no merge of the exact cover touches.

    Both covers merge only activation-free runs; a direct segment counts once if any of its
    convs stays as it was in the exact cover (it would need `--direct` to merge).
    """
    skipped = 0
    for ci, segs in direct.items():
        merged = {p for s, e, _ in exact.get(ci, []) for p in range(s + 1, e + 1)}
        skipped += sum(any(p not in merged for p in range(s + 1, e + 1)) for s, e, _ in segs)
    return skipped


def _count_convs(model: onnx.ModelProto) -> int:
    return sum(n.op_type == "Conv" for n in model.graph.node)


def _band_mask(shape, band) -> np.ndarray:
    t, l, b, r = band
    mask = np.zeros(shape[-2:], bool)
    mask[: min(t, shape[-2]), :] = True
    mask[:, : min(l, shape[-1])] = True
    if b:
        mask[-b:, :] = True
    if r:
        mask[:, -r:] = True
    return mask


def fuse(
    model: ModelLike,
    output: str | os.PathLike | None = None,
    direct: bool = False,
    input_shapes: dict | None = None,
    plan: Plan | str | os.PathLike | None = None,
) -> tuple[onnx.ModelProto, FuseReport]:
    """Merge every activation-free conv run; verify against the input with ONNX Runtime.

    With `plan` (a Plan or its JSON file), `model` is the plan's fine-tune graph (trained or
    not) and exactly the plan's groups are merged, nothing else: the network the plan was
    measured as. A plan that does not fit the model raises OnnxMergeError.
    """
    if plan is not None and not isinstance(plan, Plan):
        plan = Plan.load(plan)
    proto, graph, m = analyze(model, input_shapes)
    if plan is not None:
        choices, skipped = plan_choices(m, plan.groups, direct=direct), 0
    else:
        choices = fuse_choices(m, direct=direct)
        skipped = 0 if direct else _skipped_inexact(fuse_choices(m, direct=True), choices)
    bands = {}
    for ci, segs in choices.items():
        mc = m.chains[ci]
        for s, e, kept in segs:
            bands[segment_io(mc, s, e)[1].name] = border_width(*segment_parts(mc, s, e, kept))
    count = apply_choices(graph, m, choices, form="merged")
    fused = export(graph, proto)
    check_runs(fused)
    feeds = random_inputs(proto)
    names = list(bands)
    ref = run(proto, feeds, names)
    got = run(fused, feeds, names)
    outputs = {o.name: difference(ref[o.name], got[o.name]) for o in proto.graph.output}
    groups = []
    for name, band in bands.items():
        a, b = ref[name], got[name]
        mask = np.broadcast_to(_band_mask(a.shape, band), a.shape)
        groups.append(
            GroupError(
                name,
                difference(a[~mask], b[~mask]),
                difference(a[mask], b[mask]) if mask.any() else None,
            )
        )
    report = FuseReport(count, _count_convs(proto), _count_convs(fused), outputs, groups, skipped)
    if output is not None:
        save_model(fused, output)
    return fused, report


def check_runs(model: onnx.ModelProto) -> None:
    """The rewritten model must pass the checker and load in ONNX Runtime (a bug otherwise)."""
    onnx.checker.check_model(model)
    from onnxmerge.verify import session

    session(model)


def _external_files(
    src: str | os.PathLike, external_data_dir: str | os.PathLike | None = None
) -> set[Path]:
    """The external-data files a model reads (resolved), so an output never replaces one."""
    from onnx import external_data_helper as edh

    try:
        model = onnx.load(str(src), load_external_data=False)
    except Exception:
        return set()  # load_model reports the bad file itself
    folder = (
        Path(external_data_dir).resolve()
        if external_data_dir is not None
        else Path(src).resolve().parent
    )
    return {
        (folder / edh.ExternalDataInfo(t).location).resolve()
        for t in edh._get_all_tensors(model)
        if edh.uses_external_data(t)
    }


def check_paths(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    external_data_dir: str | os.PathLike | None = None,
) -> None:
    """`check_outputs` for one output."""
    check_outputs(src, [dst], external_data_dir)


def check_outputs(
    src: str | os.PathLike,
    outputs: list[str | os.PathLike],
    external_data_dir: str | os.PathLike | None = None,
    inputs: list[str | os.PathLike] = (),
) -> None:
    """Before any work: no output replaces the model, its data or another input file (a
    plan read with --plan / --from-plan), is a folder, or shares a path with another."""
    data = _external_files(src, external_data_dir)  # the model is parsed once, not per output
    source, others = Path(src).resolve(), {Path(i).resolve() for i in inputs}
    for dst in outputs:
        target = Path(dst).resolve()
        if target == source:
            raise OnnxMergeError(f"output path {dst} is the input path; refusing to overwrite it")
        if target in data:
            raise OnnxMergeError(
                f"output path {dst} is the input's external-data file; refusing to overwrite it"
            )
        if Path(dst).is_dir():
            raise OnnxMergeError(f"output path {dst} is a folder; give a file name")
        if target in others:
            raise OnnxMergeError(f"output path {dst} is an input file; refusing to replace it")
    if len({Path(o).resolve() for o in outputs}) < len(outputs):
        raise OnnxMergeError(f"output paths must differ: {', '.join(map(str, outputs))}")


def match_of(model: ModelLike, input_shapes: dict | None = None) -> Match:
    return analyze(model, input_shapes)[2]
