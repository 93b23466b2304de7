"""Torch -> ONNX export of the serving embedding, with a parity check on real crops.

The exported graph is ``images float32 [N, 3, H, W] -> embeddings float32 [N, D]`` (dynamic ``N``),
computing :meth:`ReIDModel.embed`. Everything a consumer needs to feed it is in the file's
``metadata_props``, so the embedder never has to guess (see :data:`METADATA_KEYS`):

* ``input_size``: ``"HxW"``, e.g. ``"256x128"``;
* ``channel_order``: ``"RGB"`` or ``"BGR"``;
* ``mean`` / ``std``: JSON lists on **0-255** pixel values: ``x = (pixel - mean) / std``;
* ``embedding_dim``: ``D``; ``model_version``: the registry version that produced the vectors.

:func:`check_parity` runs the torch model and ONNX Runtime on the same real crops and returns the
worst cosine between the two; callers reject an export below ``export.parity_min_cosine``.
Optional FP16 (``onnxconverter-common``, float32 inputs/outputs kept) and INT8 (ONNX Runtime
dynamic quantisation) variants carry the same metadata and get their own parity numbers.

Files are written to a temporary name, fsynced and renamed, so a crash never leaves a half-written
model under the final name.

Example:
    >>> path = export_onnx(model, "model.onnx", (256, 128), "3")  # doctest: +SKIP
    >>> check_parity(model, path, crops) >= 0.9999  # doctest: +SKIP
    True
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from selfreid.reid_model.transforms import InputSpec, input_spec, preprocess_bgr

if TYPE_CHECKING:
    import onnx
    import onnxruntime as ort

    from selfreid.reid_model.model import ReIDModel

__all__ = [
    "INPUT_NAME",
    "OUTPUT_NAME",
    "METADATA_KEYS",
    "set_metadata",
    "ExportError",
    "ParityError",
    "ExportBundle",
    "export_bundle",
    "export_onnx",
    "read_metadata",
    "spec_from_metadata",
    "onnx_session",
    "embed_onnx",
    "check_parity",
    "convert_fp16",
    "quantize_int8",
    "atomic_write_bytes",
    "fsync_dir",
]

INPUT_NAME = "images"
OUTPUT_NAME = "embeddings"
METADATA_KEYS = ("input_size", "channel_order", "mean", "std", "embedding_dim", "model_version")


class ExportError(RuntimeError):
    """Export failed, the file lacks its metadata, or a variant's tooling is missing."""


class ParityError(ExportError):
    """The exported graph does not reproduce the torch model closely enough."""


class _ServingGraph(nn.Module):
    """What gets traced: ``embed`` instead of ``forward`` (which returns the training pair)."""

    def __init__(self, model: ReIDModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.embed(x)


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temp file in the same folder: fsync, rename, fsync folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return path


def fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable (no-op where directories cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _metadata(spec: InputSpec, embedding_dim: int, model_version: str) -> dict[str, str]:
    h, w = spec.input_size
    return {
        "input_size": f"{h}x{w}",
        "channel_order": spec.color_order,
        "mean": json.dumps([round(v, 6) for v in spec.mean_255]),
        "std": json.dumps([round(v, 6) for v in spec.std_255]),
        "embedding_dim": str(int(embedding_dim)),
        "model_version": str(model_version),
    }


def set_metadata(proto: onnx.ModelProto, metadata: Mapping[str, str]) -> None:
    """Set ``metadata_props`` entries of a model; entries with other keys are kept."""
    kept = [p for p in proto.metadata_props if p.key not in metadata]
    del proto.metadata_props[:]
    proto.metadata_props.extend(kept)
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value


def _trace(model: ReIDModel, dummy: torch.Tensor, path: Path, opset: int, exporter: str) -> None:
    graph = _ServingGraph(model).eval()
    common: dict[str, Any] = dict(input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], opset_version=opset)
    with torch.no_grad():
        if exporter == "dynamo":
            batch = torch.export.Dim("batch", min=1, max=65536)
            torch.onnx.export(graph, (dummy,), str(path), dynamo=True, dynamic_shapes=({0: batch},), **common)
        else:
            axes = {INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}}
            torch.onnx.export(graph, (dummy,), str(path), dynamo=False, dynamic_axes=axes, **common)


def export_onnx(model: ReIDModel, path: str | Path, input_size: tuple[int, int] | None = None,
                model_version: str = "0", opset: int = 17, *, exporter: str = "torchscript",
                slim: bool = True) -> Path:
    """Export ``model.embed`` to ``path`` with a dynamic batch axis and the serving metadata.

    Args:
        model: a :class:`~selfreid.reid_model.model.ReIDModel` (any device; it is put in eval mode).
        path: the ``.onnx`` file to write (atomically).
        input_size: ``(height, width)``; ``None`` = the model's configured input size.
        model_version: stored as ``model_version`` metadata.
        opset: ONNX opset.
        exporter: ``"torchscript"`` (fast, exact opset) or ``"dynamo"`` (torch.export based).
        slim: run onnxslim (constant folding and fusions) before saving.
    """
    import onnx

    path = Path(path)
    spec = input_spec(model.cfg)
    if input_size is not None:
        h, w = input_size
        spec = InputSpec(spec.color_order, spec.mean, spec.std, (h, w))
    model.eval()
    device = next(model.parameters()).device
    dummy = torch.zeros(2, 3, *spec.input_size, device=device)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        raw = Path(tmp) / "raw.onnx"
        try:
            _trace(model, dummy, raw, opset, exporter)
        except Exception as exc:  # noqa: BLE001 - the exporters raise many types
            raise ExportError(f"torch.onnx.export failed: {exc}") from exc
        proto = onnx.load(str(raw))
    if slim:
        import onnxslim

        proto = onnxslim.slim(proto)
    set_metadata(proto, _metadata(spec, model.embedding_dim, model_version))
    onnx.checker.check_model(proto)
    return atomic_write_bytes(path, proto.SerializeToString())


def read_metadata(path: str | Path) -> dict[str, str]:
    """The ``metadata_props`` of an ONNX file; a file without the serving keys is an ExportError."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    meta = {p.key: p.value for p in proto.metadata_props}
    missing = [k for k in METADATA_KEYS if k not in meta]
    if missing:
        raise ExportError(f"{path}: ONNX metadata lacks {', '.join(missing)} (not exported by selfreid?)")
    return meta


def spec_from_metadata(meta: dict[str, str]) -> InputSpec:
    """The preprocessing described by an exported file's metadata."""
    h, w = (int(v) for v in meta["input_size"].split("x"))
    mean = tuple(v / 255.0 for v in json.loads(meta["mean"]))
    std = tuple(v / 255.0 for v in json.loads(meta["std"]))
    return InputSpec(meta["channel_order"], mean, std, (h, w))


def onnx_session(path: str | Path, providers: Sequence[str] | None = None) -> ort.InferenceSession:
    """An ONNX Runtime session; default providers: CUDA when available, then CPU."""
    import onnxruntime as ort

    if providers is None:
        available = ort.get_available_providers()
        providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
    options = ort.SessionOptions()
    options.intra_op_num_threads = min(4, os.cpu_count() or 1)
    return ort.InferenceSession(str(path), sess_options=options, providers=list(providers))


def embed_onnx(path: str | Path, images: Sequence[np.ndarray], batch_size: int = 64,
               session: ort.InferenceSession | None = None) -> npt.NDArray[np.float32]:
    """Embed BGR uint8 crops with an exported file, preprocessing as its metadata says: ``float32 [N, D]``."""
    meta = read_metadata(path)
    spec = spec_from_metadata(meta)
    session = session or onnx_session(path)
    out = [np.zeros((0, int(meta["embedding_dim"])), np.float32)]
    for start in range(0, len(images), batch_size):
        batch = _to_input(images[start:start + batch_size], spec)
        out.append(session.run([OUTPUT_NAME], {INPUT_NAME: batch})[0].astype(np.float32))
    return np.concatenate(out)


def _to_input(images: Sequence[np.ndarray], spec: InputSpec) -> np.ndarray:
    if spec.color_order == "RGB":
        return preprocess_bgr(images, spec.input_size, spec).numpy()
    # preprocess_bgr emits RGB: normalise with the statistics in RGB order, then swap to BGR.
    rgb = InputSpec("RGB", spec.mean[::-1], spec.std[::-1], spec.input_size)
    return preprocess_bgr(images, spec.input_size, rgb)[:, [2, 1, 0]].numpy()


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
    return cast(np.ndarray, (a * b).sum(axis=1))


def check_parity(model: ReIDModel, onnx_path: str | Path, images: Sequence[np.ndarray],
                 providers: Sequence[str] | None = None) -> float:
    """Worst cosine between ``model.embed`` (torch) and the ONNX file (ONNX Runtime) on ``images``
    (real BGR crops, preprocessed once for both). NaN outputs count as cosine 0 (``-1`` would
    suggest an inverted model; 0 says "unrelated")."""
    if not len(images):
        raise ValueError("check_parity needs at least one crop")
    spec = spec_from_metadata(read_metadata(onnx_path))
    x = _to_input(images, spec)
    model.eval()
    device = next(model.parameters()).device
    with torch.no_grad():
        reference = model.embed(torch.from_numpy(x).to(device)).float().cpu().numpy()
    session = onnx_session(onnx_path, providers)
    exported = session.run([OUTPUT_NAME], {INPUT_NAME: x})[0].astype(np.float32)
    cos = np.nan_to_num(_cosines(reference, exported), nan=0.0)
    return float(cos.min())


def convert_fp16(onnx_path: str | Path, out_path: str | Path) -> Path:
    """A float16 copy of an exported model (float32 inputs/outputs kept, so callers do not change)."""
    import onnx

    try:
        from onnxconverter_common import float16
    except ImportError:
        raise ExportError("FP16 export needs onnxconverter-common: pip install onnxconverter-common") from None
    proto = onnx.load(str(onnx_path))
    with warnings.catch_warnings():  # one warning per weight clipped to the fp16 range: noise
        warnings.simplefilter("ignore", UserWarning)
        converted = float16.convert_float_to_float16(proto, keep_io_types=True)
    set_metadata(converted, {p.key: p.value for p in proto.metadata_props})
    return atomic_write_bytes(out_path, converted.SerializeToString())


def quantize_int8(onnx_path: str | Path, out_path: str | Path) -> Path:
    """An INT8 copy made by ONNX Runtime's dynamic quantisation (per-channel int8 weights, activations
    quantised at run time; no calibration data needed). Aimed at CPU serving.

    Only ``MatMul``/``Gemm`` (the embedding heads) are quantised: dynamic ``ConvInteger`` with
    per-tensor activation ranges destroys the embedding (measured worst parity cosine 0.30 on
    mobilenet_v2, against 0.99996 for heads only). Quantising the convolutions needs static,
    calibrated QDQ quantisation, which this function does not do."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    out_path = Path(out_path)
    meta = {p.key: p.value for p in onnx.load(str(onnx_path), load_external_data=False).metadata_props}
    with tempfile.TemporaryDirectory(dir=out_path.parent) as tmp:
        raw = Path(tmp) / "int8.onnx"
        quantize_dynamic(str(onnx_path), str(raw), weight_type=QuantType.QInt8, per_channel=True,
                         op_types_to_quantize=["MatMul", "Gemm"])
        proto = onnx.load(str(raw))
    set_metadata(proto, meta)
    return atomic_write_bytes(out_path, proto.SerializeToString())


VARIANTS = {"fp16": convert_fp16, "int8": quantize_int8}


@dataclass
class ExportBundle:
    """The files of one export (``name -> path``) and the parity cosine of each ONNX file."""

    files: dict[str, Path]
    parity: dict[str, float]
    embedding_dim: int
    rejected_variants: dict[str, float] = field(default_factory=dict)


def export_bundle(model: ReIDModel, out_dir: str | Path, model_version: str, crops: Sequence[np.ndarray], *,
                  opset: int = 17, min_cosine: float = 0.9999, exporter: str = "torchscript", slim: bool = True,
                  fp16: bool = False, int8: bool = False, variant_min_cosine: float = 0.99) -> ExportBundle:
    """Export ``model.onnx`` (plus requested variants) into ``out_dir`` and parity-check each on ``crops``.

    The FP32 file below ``min_cosine`` raises :class:`ParityError`; a variant below
    ``variant_min_cosine`` is deleted and listed in ``rejected_variants`` (serving falls back to FP32).
    """
    out_dir = Path(out_dir)
    main = export_onnx(model, out_dir / "model.onnx", None, model_version, opset, exporter=exporter, slim=slim)
    worst = check_parity(model, main, crops)
    if not worst >= min_cosine:
        raise ParityError(f"ONNX parity {worst:.6f} < {min_cosine} (torch vs ONNX Runtime, worst of {len(crops)} crops)")
    bundle = ExportBundle({"model.onnx": main}, {"model.onnx": worst}, model.embedding_dim)
    for name, wanted in (("fp16", fp16), ("int8", int8)):
        if not wanted:
            continue
        path = VARIANTS[name](main, out_dir / f"model_{name}.onnx")
        cosine = check_parity(model, path, crops)
        if cosine >= variant_min_cosine:
            bundle.files[path.name], bundle.parity[path.name] = path, cosine
        else:
            path.unlink()
            bundle.rejected_variants[path.name] = cosine
    return bundle
