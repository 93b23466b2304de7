"""ONNX Runtime embedder: BGR crops in, L2-normalised ``float32 [N, D]`` features out.

Preprocessing is read **only** from the model file's ``metadata_props`` (written by
``reid_model/export.py``), so any consumer can reproduce it without this code:

============== ============================================================
``input_size`` ``"256x128"`` (height x width); crops are resized to it (PIL bilinear)
``channel_order`` ``"RGB"`` or ``"BGR"``
``mean``/``std`` JSON lists of 3 floats on 0-255 values, in ``channel_order``
``embedding_dim`` width of the output (falls back to the output's static shape)
``model_version`` tag stored with every embedding (falls back to the file's sha256 prefix)
============== ============================================================

The session uses ``CUDAExecutionProvider`` when the device is ``auto``/``cuda`` and onnxruntime
offers it, else the CPU; :attr:`OnnxEmbedder.provider` says which one runs (doctor, metrics). On the
CPU its idle threads do not spin-wait (:mod:`selfreid.plugins.onnx_session`).
:meth:`OnnxEmbedder.load` swaps the model atomically: a batch that already started finishes
on the old session and is tagged with the old version.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from selfreid.plugins.onnx_session import THREADS_HELP, session_options

__all__ = ["OnnxEmbedder", "InputSpec", "EmbedderError", "preprocess", "select_providers"]


class EmbedderError(RuntimeError):
    """The model is missing, unreadable, lacks its preprocessing metadata, or is not loaded yet."""


@dataclass(frozen=True)
class InputSpec:
    """Preprocessing of one exported model, as stated by its metadata."""

    height: int
    width: int
    channel_order: Literal["RGB", "BGR"]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @classmethod
    def from_metadata(cls, meta: dict[str, str], source: str = "model") -> InputSpec:
        """Parse ``metadata_props``; a missing or malformed key is an :class:`EmbedderError` naming it."""
        missing = [k for k in ("input_size", "channel_order", "mean", "std") if k not in meta]
        if missing:
            raise EmbedderError(f"{source}: ONNX metadata lacks {', '.join(missing)} (export with reid_model.export)")
        try:
            height, width = (int(v) for v in meta["input_size"].lower().split("x"))
            mean = tuple(float(v) for v in json.loads(meta["mean"]))
            std = tuple(float(v) for v in json.loads(meta["std"]))
        except (ValueError, TypeError) as exc:
            raise EmbedderError(f"{source}: malformed preprocessing metadata: {exc}") from None
        order = meta["channel_order"].upper()
        if order not in ("RGB", "BGR") or len(mean) != 3 or len(std) != 3 or min(std) <= 0:
            raise EmbedderError(f"{source}: channel_order must be RGB/BGR and mean/std 3 positive values")
        return cls(height, width, order, mean, std)  # type: ignore[arg-type]


def preprocess(images: Sequence[np.ndarray], spec: InputSpec) -> np.ndarray:
    """BGR ``uint8`` crops -> ``float32 [N, 3, H, W]`` as the model expects (see module docstring).

    Resizing is PIL's bilinear filter, the one the training transforms use, so serving sees the
    same pixels as training (OpenCV's INTER_LINEAR differs when shrinking: no antialiasing)."""
    from PIL import Image

    mean = np.asarray(spec.mean, np.float32).reshape(1, 1, 3)
    scale = 1.0 / np.asarray(spec.std, np.float32).reshape(1, 1, 3)
    out = np.empty((len(images), 3, spec.height, spec.width), np.float32)
    for i, image in enumerate(images):
        if image.ndim == 3 and image.shape[2] == 1:
            image = image[:, :, 0]
        rgb = np.repeat(image[:, :, None], 3, axis=2) if image.ndim == 2 else image[:, :, 2::-1]
        pil = Image.fromarray(np.ascontiguousarray(rgb))
        if pil.size != (spec.width, spec.height):
            pil = pil.resize((spec.width, spec.height), Image.Resampling.BILINEAR)
        pixels = np.asarray(pil, np.float32)
        if spec.channel_order == "BGR":
            pixels = pixels[:, :, ::-1]
        out[i] = ((pixels - mean) * scale).transpose(2, 0, 1)
    return out


def select_providers(device: str, available: Sequence[str]) -> list[Any]:
    """onnxruntime providers for ``device`` ('auto', 'cpu', 'cuda', 'cuda:N')."""
    cuda = "CUDAExecutionProvider" in available
    if device == "cpu" or (device == "auto" and not cuda):
        return ["CPUExecutionProvider"]
    if not cuda:
        raise EmbedderError(f"device {device!r} asked for, but onnxruntime offers only {', '.join(available)}")
    device_id = int(device.split(":", 1)[1]) if ":" in device else 0
    return [("CUDAExecutionProvider", {"device_id": device_id}), "CPUExecutionProvider"]


@dataclass(frozen=True)
class _Loaded:
    session: Any
    input_name: str
    spec: InputSpec
    version: str
    dim: int
    path: str


def _check_input(node: Any, spec: InputSpec, source: str) -> None:
    """The model must take what :func:`preprocess` makes: float32 ``[N, 3, H, W]`` at the metadata's size."""
    wanted = (None, 3, spec.height, spec.width)  # None: any batch size
    shape = list(node.shape)
    fits = len(shape) == 4 and all(
        not isinstance(got, int) or want is None or got == want for got, want in zip(shape, wanted)
    )
    if not fits or node.type != "tensor(float)":
        dims = ", ".join(map(str, shape))
        raise EmbedderError(
            f"{source}: input {node.name!r} is {node.type} [{dims}], but its metadata (input_size "
            f"{spec.height}x{spec.width}) makes the embedder feed tensor(float) [N, 3, {spec.height}, {spec.width}]"
        )


def _file_version(path: Path) -> str:
    return "sha256-" + hashlib.sha256(path.read_bytes()).hexdigest()[:12]


class OnnxEmbedder:
    """The ``onnx`` embedder plugin.

    Example:
        >>> emb = OnnxEmbedder(OnnxEmbedder.Settings(model="model.onnx"))  # doctest: +SKIP
        >>> emb.embed([crop_bgr]).shape  # doctest: +SKIP
        (1, 4096)
    """

    class Settings(BaseModel):
        model_config = ConfigDict(extra="forbid", frozen=True)

        model: str | None = Field(
            None, description="Fixed ONNX file; None = follow the registry's production model (hot swap)."
        )
        device: str = Field("auto", description="'auto' = CUDA when onnxruntime has it, else CPU; or 'cpu', 'cuda:N'.")
        threads: int | None = Field(None, ge=1, description=THREADS_HELP)

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or self.Settings()
        self._lock = threading.Lock()
        self._loaded: _Loaded | None = None
        if self.settings.model:
            self.load(self.settings.model)

    def load(self, onnx_path: str | Path) -> OnnxEmbedder:
        """Open ``onnx_path`` and swap it in; the current model keeps serving until the new one is ready."""
        import onnxruntime as ort

        path = Path(onnx_path)
        if not path.is_file():
            raise EmbedderError(f"ONNX model not found: {path}")
        options = session_options(self.settings.threads, spin=False)
        providers = select_providers(self.settings.device, ort.get_available_providers())
        try:
            session = ort.InferenceSession(str(path), options, providers=providers)
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own untyped errors
            raise EmbedderError(f"{path}: not a loadable ONNX model: {exc}") from None
        meta = session.get_modelmeta().custom_metadata_map
        spec = InputSpec.from_metadata(meta, str(path))
        _check_input(session.get_inputs()[0], spec, str(path))
        out_dim = session.get_outputs()[0].shape[-1]
        dim = int(meta.get("embedding_dim") or (out_dim if isinstance(out_dim, int) else 0))
        if dim <= 0:
            raise EmbedderError(f"{path}: embedding_dim is neither in the metadata nor a static output shape")
        version = meta.get("model_version") or _file_version(path)
        loaded = _Loaded(session, session.get_inputs()[0].name, spec, version, dim, str(path.resolve()))
        with self._lock:
            self._loaded = loaded
        return self

    def _current(self) -> _Loaded:
        with self._lock:
            loaded = self._loaded
        if loaded is None:
            raise EmbedderError("no ONNX model loaded: promote a model or set embedder.params.model")
        return loaded

    @property
    def loaded(self) -> bool:
        return self._loaded is not None

    @property
    def follows_registry(self) -> bool:
        """No fixed ``model`` in the settings: the service loads each promoted version."""
        return not self.settings.model

    @property
    def model_version(self) -> str:
        """Version tag of the loaded model ('' before the first :meth:`load`)."""
        return self._loaded.version if self._loaded else ""

    @property
    def dim(self) -> int:
        """Embedding width of the loaded model (0 before the first :meth:`load`)."""
        return self._loaded.dim if self._loaded else 0

    @property
    def model_path(self) -> str:
        return self._loaded.path if self._loaded else ""

    @property
    def input_spec(self) -> InputSpec:
        return self._current().spec

    @property
    def provider(self) -> str:
        """The execution provider that runs the model (first of the session's providers)."""
        return self._loaded.session.get_providers()[0] if self._loaded else ""

    def embed(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """BGR ``uint8`` crops -> ``float32 [N, dim]`` with unit L2 norm."""
        return self.embed_versioned(images)[0]

    def embed_versioned(self, images: Sequence[np.ndarray]) -> tuple[np.ndarray, str]:
        """Like :meth:`embed`, plus the version of the model that produced this very batch."""
        loaded = self._current()
        if len(images) == 0:
            return np.zeros((0, loaded.dim), np.float32), loaded.version
        batch = preprocess(images, loaded.spec)
        out = np.asarray(loaded.session.run(None, {loaded.input_name: batch})[0], np.float32)
        out = out.reshape(len(images), -1)
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        with np.errstate(invalid="ignore"):  # a NaN output stays NaN: the callers reject it by name
            return out / np.maximum(norms, 1e-12), loaded.version
