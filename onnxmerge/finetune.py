"""Fine-tune an ONNX model in PyTorch and write the trained weights back (needs onnxmerge[torch]).

    import onnx, torch
    from onnxmerge.finetune import TorchModule, to_onnx

    ft = onnx.load("ft.onnx")                # from `onnxmerge ... --finetune-graph ft.onnx`
    module = TorchModule(ft)                 # a torch.nn.Module running the ONNX graph
    opt = torch.optim.Adam(module.parameters(), 1e-4)
    ...                                      # your training loop: module(x) -> logits
    onnx.save(to_onnx(module, ft), "ft_trained.onnx")
    # then: onnxmerge fuse ft_trained.onnx deploy.onnx

The graph runs through onnxmerge's ONNX->torch interpreter (onnxmerge.torch_graph), so the
module supports the ops that interpreter supports. Its parameters are the float initializers
that hold weights: Conv weight and bias, Gemm B and C, MatMul constant operands, PRelu slopes,
BatchNormalization scale and bias (or the names passed as `trainable`). Every other float
constant is a non-persistent buffer (it follows `.to(device)` but stays fixed).
BatchNormalization always runs in inference mode on its stored statistics, and Dropout is the
identity, whatever `module.train()` says: the graph is trained as it will be deployed.

Parameter names in `named_parameters()` are the initializer names with "." replaced by "_"
(torch forbids dots), prefixed by "params."; `module.names` maps each key back to its ONNX
name and `module.parameter(onnx_name)` looks one up.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from onnxmerge.errors import OnnxMergeError

__all__ = ["TorchModule", "default_trainable", "to_onnx"]  # noqa: F822 (see __getattr__)

# Inputs of each op that are weights (trained when they are float initializers).
WEIGHT_INPUTS: dict[str, tuple[int, ...]] = {
    "Conv": (1, 2),
    "Gemm": (0, 1, 2),
    "MatMul": (0, 1),
    "PRelu": (1,),
    "BatchNormalization": (1, 2),
}


def _torch() -> Any:
    try:
        import torch
    except ImportError:
        raise OnnxMergeError(
            "onnxmerge.finetune needs PyTorch: pip install 'onnxmerge[torch]'"
        ) from None
    return torch


def _as_model(model: onnx.ModelProto | str | os.PathLike) -> onnx.ModelProto:
    if isinstance(model, onnx.ModelProto):
        return model
    if not os.path.isfile(model):
        raise OnnxMergeError(f"{model}: no such file")
    return onnx.load(str(model))


def default_trainable(model: onnx.ModelProto) -> list[str]:
    """Names of the float initializers that hold weights (see WEIGHT_INPUTS), in graph order."""
    floats = {
        t.name
        for t in model.graph.initializer
        if np.issubdtype(onnx.helper.tensor_dtype_to_np_dtype(t.data_type), np.floating)
    }
    names: list[str] = []
    for node in model.graph.node:
        if node.domain not in ("", "ai.onnx"):
            continue
        for i in WEIGHT_INPUTS.get(node.op_type, ()):
            if i < len(node.input) and node.input[i] in floats and node.input[i] not in names:
                names.append(node.input[i])
    return names


def _key(name: str, taken: set[str]) -> str:
    key = name.replace(".", "_") or "_"
    base, n = key, 1
    while key in taken:
        n += 1
        key = f"{base}_{n}"
    taken.add(key)
    return key


def _module_class() -> type:
    torch = _torch()
    from onnxmerge.torch_graph import TorchGraph

    class TorchModule(torch.nn.Module):
        """An ONNX model as a trainable torch module; see the onnxmerge.finetune docstring.

        `forward(*inputs)` takes the graph inputs (initializers excluded) in order and returns
        the output tensor, or a tuple when the graph has several outputs. The batch size is
        free as long as the graph does not fix it (a Reshape to a constant shape would).
        """

        def __init__(
            self,
            model: onnx.ModelProto | str | os.PathLike,
            trainable: Iterable[str] | None = None,
        ) -> None:
            super().__init__()
            model = _as_model(model)
            self.model = model
            self.graph = TorchGraph(model, "cpu")
            inits = {t.name for t in model.graph.initializer}
            names = default_trainable(model) if trainable is None else list(trainable)
            used = {v for _, _, args, _ in self.graph.steps for k, v in args if k == 0}
            for name in names:
                if name not in inits:
                    raise OnnxMergeError(f"trainable {name!r} is not an initializer of the model")
                if name not in used or not self.graph.consts[name].is_floating_point():
                    raise OnnxMergeError(
                        f"trainable {name!r} is not a float tensor input of any op "
                        "(shapes, axes and bounds cannot be trained)"
                    )
            self.params = torch.nn.ParameterDict()
            self.frozen = torch.nn.Module()
            self.names: dict[str, str] = {}  # parameter key -> initializer name
            self._buffer_names: dict[str, str] = {}
            taken: set[str] = set()
            for name in names:
                key = _key(name, taken)
                self.params[key] = torch.nn.Parameter(self.graph.consts.pop(name))
                self.names[key] = name
            trained, taken = set(names), set()
            for name, tensor in list(self.graph.consts.items()):
                if name in used and name not in trained and tensor.is_floating_point():
                    key = _key(name, taken)
                    self.frozen.register_buffer(key, self.graph.consts.pop(name), persistent=False)
                    self._buffer_names[key] = name
            self._onnx_keys = {v: k for k, v in self.names.items()}

        def parameter(self, name: str) -> Any:
            """The parameter that holds the initializer `name`."""
            if name not in self._onnx_keys:
                raise KeyError(f"{name!r} is not a trainable initializer of this module")
            return self.params[self._onnx_keys[name]]

        def initializers(self) -> dict[str, Any]:
            """{initializer name: its current trainable tensor}."""
            return {onnx_name: self.params[key] for key, onnx_name in self.names.items()}

        def forward(self, *inputs: Any) -> Any:
            outs = self.run(*inputs)
            return outs[0] if len(outs) == 1 else tuple(outs)

        def run(self, *inputs: Any, tensors: Sequence[str] = ()) -> list[Any]:
            """The graph's outputs, then the intermediate `tensors` named (a list)."""
            consts = self.initializers()
            consts.update({n: getattr(self.frozen, k) for k, n in self._buffer_names.items()})
            return self.graph.run(*inputs, consts=consts, tensors=tensors)

    TorchModule.__module__ = __name__
    TorchModule.__qualname__ = "TorchModule"
    return TorchModule


def to_onnx(module: Any, model: onnx.ModelProto | str | os.PathLike | None = None):
    """A copy of `model` (default: the model `module` was built from) whose trainable
    initializers hold the module's current values, each in the initializer's own dtype."""
    model = module.model if model is None else _as_model(model)
    out = onnx.ModelProto()
    out.CopyFrom(model)
    values = {k: v.detach().cpu().numpy() for k, v in module.initializers().items()}
    found = set()
    for i, tensor in enumerate(out.graph.initializer):
        if tensor.name not in values:
            continue
        value = values[tensor.name]
        if tuple(tensor.dims) != value.shape:
            raise OnnxMergeError(
                f"initializer {tensor.name!r} is {list(tensor.dims)} in the model but "
                f"{list(value.shape)} in the module: not the model it was built from"
            )
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type)
        out.graph.initializer[i].CopyFrom(numpy_helper.from_array(value.astype(dtype), tensor.name))
        found.add(tensor.name)
    missing = sorted(set(values) - found)
    if missing:
        raise OnnxMergeError(
            f"the model has no initializer {missing[0]!r}"
            + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
            + ": not the model the module was built from"
        )
    return out


def __getattr__(name: str) -> Any:
    # TorchModule subclasses torch.nn.Module: build it on first use so torch stays optional.
    if name == "TorchModule":
        cls = _module_class()
        globals()["TorchModule"] = cls
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
