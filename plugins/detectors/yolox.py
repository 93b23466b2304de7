"""YOLOX person detector on plain onnxruntime (no Ultralytics, no torch at inference)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from selfreid.plugins.contracts import Detection
from selfreid.plugins.detectors.common import (
    DetectorError,
    letterbox,
    nms,
    resolve_device,
    to_detections,
    weights_path,
)
from selfreid.plugins.onnx_session import THREADS_HELP, session_options

__all__ = ["YoloxOnnxDetector", "decode_yolox", "dynamic_model", "fit_input_hw"]

log = logging.getLogger(__name__)

STRIDES = (8, 16, 32)
WEIGHTS_HINT = (
    "Set ingest.detector.params.weights to a YOLOX .onnx export (80-class COCO head, raw grid outputs), e.g. "
    "yolox_nano.onnx of https://github.com/Megvii-BaseDetection/YOLOX/releases, or put the sample data at "
    "../shared/data (SELFREID_SHARED_DATA) for its models/yolox_nano.onnx."
)


def decode_yolox(raw: np.ndarray, input_hw: tuple[int, int]) -> np.ndarray:
    """Raw grid predictions ``[A, 5 + C]`` -> ``[A, 5 + C]`` with xyxy boxes in input pixels.

    Rows follow strides 8, 16, 32 in row-major grid order: ``xy = (p[:2] + grid) * stride``,
    ``wh = exp(p[2:4]) * stride``. Columns 4.. (objectness, class scores) are kept as they are.
    """
    grids, strides = [], []
    for step in STRIDES:
        gh, gw = input_hw[0] // step, input_hw[1] // step
        ys, xs = np.meshgrid(np.arange(gh), np.arange(gw), indexing="ij")
        grids.append(np.stack((xs, ys), axis=-1).reshape(-1, 2))
        strides.append(np.full((gh * gw, 1), step))
    grid, stride = np.concatenate(grids), np.concatenate(strides)
    xy = (raw[:, :2] + grid) * stride
    wh = np.exp(raw[:, 2:4]) * stride
    return np.concatenate([xy - wh / 2, xy + wh / 2, raw[:, 4:]], axis=1)


def dynamic_model(path: Path) -> tuple[bytes, tuple[int, int]] | None:
    """The model at ``path`` with a dynamic batch, height and width, and its square input ``(h, w)``;
    None when its input is not a fixed ``[1, 3, h, w]`` or its ``Reshape`` shapes are not YOLOX's.

    YOLOX exports fix the batch at 1 in three ``Reshape`` shapes ``[1, 85, -1]``; ``0`` ("copy the
    input's dimension") makes them follow the batch. The convolutions already take any size that is a
    multiple of 32. Done in memory: the weights file is never written.
    """
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    dims = model.graph.input[0].type.tensor_type.shape.dim
    if len(dims) != 4 or any(d.dim_param for d in dims) or dims[0].dim_value != 1:
        return None
    square = (int(dims[2].dim_value), int(dims[3].dim_value))
    reshape_shapes = {n.input[1] for n in model.graph.node if n.op_type == "Reshape"}
    patched = 0
    for init in model.graph.initializer:
        shape = numpy_helper.to_array(init) if init.name in reshape_shapes else None
        if shape is not None and shape.ndim == 1 and len(shape) == 3 and shape[0] == 1:
            init.CopyFrom(numpy_helper.from_array(np.array([0, *shape[1:]], dtype=shape.dtype), init.name))
            patched += 1
    if patched != len(reshape_shapes):
        return None
    del model.graph.value_info[:]  # the intermediate shapes recorded for batch 1
    dims[0].dim_param, dims[2].dim_param, dims[3].dim_param = "batch", "height", "width"
    out = model.graph.output[0].type.tensor_type.shape.dim
    out[0].dim_param, out[1].dim_param = "batch", "anchors"
    return model.SerializeToString(), square


def fit_input_hw(shape: tuple[int, ...], square: tuple[int, int]) -> tuple[int, int]:
    """The input ``(h, w)`` for a frame of ``shape`` at the scale the square model input would give it,
    without the padding: the letterboxed frame rounded up to a multiple of the largest stride
    (768x576 -> 320x416 instead of 416x416)."""
    scale = min(square[0] / shape[0], square[1] / shape[1])
    step = STRIDES[-1]
    h, w = (min(side, -(-round(x * scale) // step) * step) for x, side in zip(shape[:2], square))
    return h, w


class YoloxOnnxDetector:
    """YOLOX (e.g. the sample ``yolox_nano.onnx``) on onnxruntime, built as ``cls(settings, device="auto")``.

    Preprocessing is the YOLOX default: BGR, 0-255, letterboxed to the model input padded
    bottom/right with 114, no normalisation. Score = objectness x class score, person = class 0,
    then NMS. A model exported with a fixed batch of 1 (the sample file) runs one image per call
    in a loop, unless ``batch_frames`` opens it up (:func:`dynamic_model`): then the frames of all
    cameras of one ingest tick go through one forward pass. ``fit_input`` drops the square input's
    padding (:func:`fit_input_hw`). ``device="auto"`` picks the CUDA execution provider when
    onnxruntime-gpu offers it.
    """

    class Settings(BaseModel):
        model_config = ConfigDict(extra="forbid", frozen=True)

        weights: str | None = Field(
            None, description="YOLOX .onnx file; None = the sample data's yolox_nano.onnx."
        )
        conf: float = Field(0.3, ge=0, le=1, description="Minimum objectness x person score.")
        iou: float = Field(0.45, gt=0, le=1, description="NMS IoU threshold.")
        person_class: int = Field(
            0, ge=0, description="Class index of 'person' in the model's head (COCO: 0)."
        )
        threads: int | None = Field(None, ge=1, description=THREADS_HELP)
        spin: bool = Field(
            False,
            description="Idle onnxruntime threads spin-wait for work: a little lower latency on an idle box, "
            "but they burn the cores that decoding, the embedder and the matcher need.",
        )
        batch_frames: bool = Field(
            False,
            description="One forward pass for the frames of every camera of a tick (a fixed batch-1 export "
            "is opened up in memory); off = one pass per frame.",
        )
        fit_input: bool = Field(
            False,
            description="Letterbox to the frame's aspect rounded up to 32 px (768x576 -> 416x320) instead "
            "of the square input: same scale, ~23% fewer pixels; boxes may differ slightly at the bottom edge.",
        )

    def __init__(self, settings: Settings, device: str = "auto") -> None:
        from selfreid.plugins.assets import yolox_nano_weights

        try:
            import onnxruntime as ort
        except ImportError:
            raise DetectorError(
                "onnxruntime is not installed: pip install 'selfreid[cpu]' (or [gpu])"
            ) from None
        self.settings = settings
        self.weights = weights_path(settings.weights, yolox_nano_weights(), "YOLOX", WEIGHTS_HINT)
        self.device = resolve_device(device)
        providers = ["CPUExecutionProvider"]
        if self.device.startswith("cuda") and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        opened = dynamic_model(self.weights) if settings.batch_frames or settings.fit_input else None
        if opened is None and (settings.batch_frames or settings.fit_input):
            log.warning("%s: not a fixed-size YOLOX export; batch_frames/fit_input are off", self.weights)
        options = session_options(settings.threads, settings.spin)
        self.session = ort.InferenceSession(opened[0] if opened else str(self.weights), options, providers=providers)
        spec = self.session.get_inputs()[0]
        self.input_name = spec.name
        self.input_hw = opened[1] if opened else (int(spec.shape[2]), int(spec.shape[3]))
        self.fit_input = opened is not None and settings.fit_input
        fixed = spec.shape[0] if isinstance(spec.shape[0], int) else None  # None = dynamic
        self.batch = (None if settings.batch_frames else 1) if opened else fixed

    def detect(self, images: Sequence[np.ndarray]) -> list[list[Detection]]:
        step = self.batch or max(1, len(images))
        out: list[list[Detection]] = []
        for start in range(0, len(images), step):
            out += self._detect_batch(images[start : start + step])
        return out

    def _detect_batch(self, images: Sequence[np.ndarray]) -> list[list[Detection]]:
        hw = self._batch_hw(images)
        boxed = [letterbox(image, hw) for image in images]
        blob = np.stack([b.transpose(2, 0, 1) for b, _ in boxed]).astype(np.float32)
        raw = self.session.run(None, {self.input_name: blob})[0]
        return [self._postprocess(r, hw, scale, image.shape) for r, (_, scale), image in zip(raw, boxed, images)]

    def _batch_hw(self, images: Sequence[np.ndarray]) -> tuple[int, int]:
        """The input size of one forward pass: the square input, or with ``fit_input`` the smallest size
        that holds every frame of the batch at the square input's scale."""
        if not self.fit_input:
            return self.input_hw
        sizes = [fit_input_hw(image.shape, self.input_hw) for image in images]
        return max(h for h, _ in sizes), max(w for _, w in sizes)

    def _postprocess(
        self, raw: np.ndarray, hw: tuple[int, int], scale: float, shape: tuple[int, ...]
    ) -> list[Detection]:
        pred = decode_yolox(raw, hw)
        scores = pred[:, 4] * pred[:, 5 + self.settings.person_class]
        keep = scores >= self.settings.conf
        boxes, scores = pred[keep, :4] / scale, scores[keep]
        kept = nms(boxes, scores, self.settings.iou)
        return to_detections(boxes[kept], scores[kept], shape)
