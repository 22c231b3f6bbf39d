"""A model loaded, normalized and matched once per call, and rewritten on copies.

`analyze` is the first stage of every command: load (graph.load) -> fixed input shapes for
analysis and timing -> normalize (graph.normalize) -> match. Every later build (a plan tried
by the budget search, the fine-tune form, a fused model) rewrites a copy of the normalized
graph (`Analysis.rewrite`), so the file is read and shape inference run only once.
"""

from __future__ import annotations

import functools
import hashlib
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import onnx
import onnx_graphsurgeon as gs

from onnxmerge.errors import OnnxMergeError
from onnxmerge.graph import batch_of_one, load_model, normalize, with_input_shapes
from onnxmerge.graph.export import export
from onnxmerge.graph.names import Names
from onnxmerge.match import Match, match
from onnxmerge.match.keep import protect

ModelLike = str | os.PathLike | onnx.ModelProto


def load(
    model: ModelLike,
    input_shapes: dict | None = None,
    external_data_dir: str | os.PathLike | None = None,
) -> onnx.ModelProto:
    """A proto, or a path loaded and checked (graph.load.load_model), its external data read
    from `external_data_dir` (default: the model's folder), with `input_shapes` applied (a
    copy; dynamic inputs not named stay dynamic)."""
    if isinstance(model, onnx.ModelProto):
        return with_input_shapes(model, input_shapes)
    return load_model(model, input_shapes, external_data_dir, check_shapes=False)


def source_digest(model: ModelLike) -> str:
    """sha256 of a model file's bytes (or of a proto, serialized deterministically): what a
    plan records as its source."""
    if isinstance(model, onnx.ModelProto):
        return hashlib.sha256(model.SerializeToString(deterministic=True)).hexdigest()
    return hashlib.sha256(Path(model).read_bytes()).hexdigest()


@dataclass
class Analysis:
    """One model, analyzed.

    `source`: the model as the user gave it (its interface is what outputs declare);
    `model`: the same with `--input-shape` applied (every input static: timing runs this);
    `graph`: the normalized graph (BN, affine and Pad folded, shapes inferred); `match`: its
    conv chains. Treat all four as read-only: `rewrite` works on a copy.
    """

    source: onnx.ModelProto
    model: onnx.ModelProto
    graph: gs.Graph
    match: Match
    keep: tuple[str, ...] = ()
    sha256: str = ""  # of the source file (or of the serialized proto given)
    _reference: onnx.ModelProto | None = field(default=None, repr=False)

    @property
    def input_shapes(self) -> dict[str, tuple[int, ...]]:
        """The static shape of every graph input as analyzed and timed."""
        inits = {t.name for t in self.model.graph.initializer}
        return {
            v.name: tuple(d.dim_value for d in v.type.tensor_type.shape.dim)
            for v in self.model.graph.input
            if v.name not in inits
        }

    def timing(self, batch: int = 1) -> tuple[onnx.ModelProto, dict[str, tuple[int, ...]]]:
        """(model, input shapes) to time end to end at `batch` (a backend's batch option).

        Batch 1: the analyzed model. Another batch needs the source's batch dimension to be
        dynamic (OnnxMergeError otherwise): then the source is timed at that batch.
        """
        if batch == 1:
            return self.model, self.input_shapes
        fixed = [
            v.name
            for v in self.source.graph.input
            if v.name in self.input_shapes
            and v.type.tensor_type.shape.dim
            and v.type.tensor_type.shape.dim[0].dim_value > 0
        ]
        if fixed:
            raise OnnxMergeError(
                f"--batch {batch}: the model's input {fixed[0]!r} has a fixed batch "
                "dimension; export it with a dynamic batch to time other batch sizes"
            )
        shapes = {k: (batch, *v[1:]) for k, v in self.input_shapes.items()}
        return self.source, shapes

    @property
    def reference(self) -> onnx.ModelProto:
        """The normalized original network as a model: what importance and calibration
        compare against (exported once)."""
        if self._reference is None:
            base = gs.export_onnx(self.graph, do_type_check=False)
            base.ir_version = self.model.ir_version
            self._reference = base
        return self._reference

    @functools.cached_property
    def reference_sha256(self) -> str:
        """sha256 of `reference`, serialized deterministically: the caches' key for it."""
        return source_digest(self.reference)

    def rewrite(
        self, edit: Callable[[gs.Graph, Match, Names], object], check: bool = True
    ) -> tuple[onnx.ModelProto, object]:
        """(model, edit's result) for `edit` applied to a copy of the normalized graph.

        `edit(graph, match, names)` rewires the copy (its own match; `names` hands out fresh
        names). The result is cleaned up, exported with the source's interface and, with
        `check`, checked by ONNX and loaded in ONNX Runtime (runtime.check_runs).
        """
        graph = self.graph.copy()
        result = edit(graph, protect(graph, match(graph), self.keep), Names.of_graph(graph))
        graph.cleanup(remove_unused_graph_inputs=False).toposort()
        out = export(graph, self.model, interface=self.source)
        if check:
            from onnxmerge.runtime import check_runs

            check_runs(out)
        return out, result


def analyze(
    model: ModelLike,
    input_shapes: dict | None = None,
    external_data_dir: str | os.PathLike | None = None,
    keep: Sequence[str] = (),
    lift: bool = False,
) -> Analysis:
    """Load, validate, fix input shapes, normalize and match `model` (a path or a proto);
    `lift`: with 1-D conv runs lifted to 2-D (graph.normalize; for depth compression).

    An input whose only dynamic dimension is the first (a batch) is analyzed and timed at
    batch 1, as Polygraphy feeds dynamic dimensions; the outputs keep it dynamic.
    Raises OnnxMergeError for anything wrong with the file (graph.load lists the checks),
    an input with other dynamic dimensions and no `input_shapes` entry, or a model that ONNX
    Runtime cannot load or run at those shapes. `keep` names nodes and tensors to leave as
    they are (match.keep; an unknown name is an error too).
    """
    from onnxmerge.runtime import check_user_model

    source = load(model, None, external_data_dir)
    digest = source_digest(model)
    input_shapes = {**batch_of_one(source), **(input_shapes or {})}
    fixed = with_input_shapes(source, input_shapes, require_static=True)
    analysis = Analysis(source, fixed, None, None)  # type: ignore[arg-type]
    analysis.graph = normalize(source, analysis.input_shapes, lift)  # checks every Conv first
    check_user_model(fixed)
    analysis.match = protect(analysis.graph, match(analysis.graph), keep)
    analysis.keep, analysis.sha256 = tuple(keep), digest
    return analysis
