"""YOLOX person detector on plain onnxruntime (no Ultralytics, no torch at inference)."""

from __future__ import annotations

from collections.abc import Sequence

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

__all__ = ["YoloxOnnxDetector", "decode_yolox"]

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
    for stride in STRIDES:
        gh, gw = input_hw[0] // stride, input_hw[1] // stride
        ys, xs = np.meshgrid(np.arange(gh), np.arange(gw), indexing="ij")
        grids.append(np.stack((xs, ys), axis=-1).reshape(-1, 2))
        strides.append(np.full((gh * gw, 1), stride))
    grid, stride = np.concatenate(grids), np.concatenate(strides)
    xy = (raw[:, :2] + grid) * stride
    wh = np.exp(raw[:, 2:4]) * stride
    return np.concatenate([xy - wh / 2, xy + wh / 2, raw[:, 4:]], axis=1)


class YoloxOnnxDetector:
    """YOLOX (e.g. the sample ``yolox_nano.onnx``) on onnxruntime, built as ``cls(settings, device="auto")``.

    Preprocessing is the YOLOX default: BGR, 0-255, letterboxed to the model input padded
    bottom/right with 114, no normalisation. Score = objectness x class score, person = class 0,
    then NMS. A model exported with a fixed batch of 1 (the sample file) runs one image per call
    in a loop; a dynamic-batch export gets the whole list at once. ``device="auto"`` picks the CUDA
    execution provider when onnxruntime-gpu offers it.
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
        self.session = ort.InferenceSession(str(self.weights), providers=providers)
        spec = self.session.get_inputs()[0]
        self.input_name = spec.name
        self.input_hw = (int(spec.shape[2]), int(spec.shape[3]))
        self.batch = spec.shape[0] if isinstance(spec.shape[0], int) else None  # None = dynamic

    def detect(self, images: Sequence[np.ndarray]) -> list[list[Detection]]:
        step = self.batch or max(1, len(images))
        out: list[list[Detection]] = []
        for start in range(0, len(images), step):
            out += self._detect_batch(images[start : start + step])
        return out

    def _detect_batch(self, images: Sequence[np.ndarray]) -> list[list[Detection]]:
        boxed = [letterbox(image, self.input_hw) for image in images]
        blob = np.stack([b.transpose(2, 0, 1) for b, _ in boxed]).astype(np.float32)
        raw = self.session.run(None, {self.input_name: blob})[0]
        return [self._postprocess(r, scale, image.shape) for r, (_, scale), image in zip(raw, boxed, images)]

    def _postprocess(self, raw: np.ndarray, scale: float, shape: tuple[int, ...]) -> list[Detection]:
        pred = decode_yolox(raw, self.input_hw)
        scores = pred[:, 4] * pred[:, 5 + self.settings.person_class]
        keep = scores >= self.settings.conf
        boxes, scores = pred[keep, :4] / scale, scores[keep]
        kept = nms(boxes, scores, self.settings.iou)
        return to_detections(boxes[kept], scores[kept], shape)
