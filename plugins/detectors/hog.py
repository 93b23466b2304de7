"""OpenCV's HOG + linear SVM people detector (Dalal & Triggs): the fallback that needs no weights."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from selfreid.plugins.contracts import Detection
from selfreid.plugins.detectors.common import nms, to_detections

__all__ = ["HogDetector"]


class HogDetector:
    """People by ``cv2.HOGDescriptor_getDefaultPeopleDetector``; built as ``cls(settings, device="auto")``.

    CPU only (``device`` is accepted and ignored). The 64x128 window needs people at least ~100 px
    tall, so frames are upscaled by ``upscale`` first. Windows include a margin around the person;
    boxes are shrunk by ``pad_x``/``pad_y`` per side (the factors of OpenCV's ``peopledetect.py``).
    ``confidence`` is the logistic of the SVM margin (margin 0 -> 0.5), so thresholds read like
    probabilities although they are not calibrated ones. Images are processed one by one.
    """

    class Settings(BaseModel):
        model_config = ConfigDict(extra="forbid", frozen=True)

        upscale: float = Field(
            1.5, gt=0, le=4, description="Resize factor before detection; >1 finds smaller people, slower."
        )
        win_stride: int = Field(8, ge=1, description="Window step in pixels; smaller is denser and slower.")
        padding: int = Field(8, ge=0, description="Pixels added around the image for border windows.")
        scale: float = Field(1.05, gt=1, description="Image pyramid step.")
        hit_threshold: float = Field(
            0.0, description="SVM margin a window needs (raise to cut false positives)."
        )
        conf: float = Field(0.5, ge=0, le=1, description="Minimum confidence (logistic of the margin).")
        iou: float = Field(0.4, gt=0, le=1, description="NMS IoU threshold over the grouped windows.")
        pad_x: float = Field(
            0.15, ge=0, lt=0.5, description="Fraction of the window width removed on each side."
        )
        pad_y: float = Field(
            0.05, ge=0, lt=0.5, description="Fraction of the window height removed on top and bottom."
        )

    def __init__(self, settings: Settings, device: str = "auto") -> None:
        import cv2

        self.settings = settings
        self.device = "cpu"
        self.hog = cv2.HOGDescriptor()
        # A float32 array at run time (the stubs say Sequence[float]); asarray does not copy it.
        self.hog.setSVMDetector(np.asarray(cv2.HOGDescriptor.getDefaultPeopleDetector(), dtype=np.float32))

    def detect(self, images: Sequence[np.ndarray]) -> list[list[Detection]]:
        return [self._detect_one(image) for image in images]

    def _detect_one(self, image: np.ndarray) -> list[Detection]:
        import cv2

        s = self.settings
        work = (
            image
            if s.upscale == 1
            else cv2.resize(image, None, fx=s.upscale, fy=s.upscale, interpolation=cv2.INTER_LINEAR)
        )
        rects, margins = self.hog.detectMultiScale(
            work,
            hitThreshold=s.hit_threshold,
            winStride=(s.win_stride, s.win_stride),
            padding=(s.padding, s.padding),
            scale=s.scale,
        )
        if len(rects) == 0:
            return []
        xywh = np.asarray(rects, dtype=float) / s.upscale
        scores = np.array([1.0 / (1.0 + math.exp(-float(m))) for m in np.ravel(margins)])
        x, y, w, h = xywh.T
        boxes = np.stack(
            [x + s.pad_x * w, y + s.pad_y * h, x + (1 - s.pad_x) * w, y + (1 - s.pad_y) * h], axis=1
        )
        keep = scores >= s.conf
        boxes, scores = boxes[keep], scores[keep]
        kept = nms(boxes, scores, s.iou)
        return to_detections(boxes[kept], scores[kept], image.shape)
