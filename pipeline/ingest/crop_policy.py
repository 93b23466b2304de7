"""Which tracked people become pool crops, and their JPEG bytes.

A crop is worth keeping when the person is large enough to carry identity, stands upright
(aspect), was detected confidently, is sharp (variance of the Laplacian) and is not mostly
hidden behind another person (coverage by another box). One crop per track every
``every_k_frames`` processed frames keeps the pool from filling with near-duplicates of a
person standing still. Checks run cheapest first; the pixels are only touched for people
that passed every geometric check.

Example:
    >>> policy = CropPolicy(CropPolicyConfig())          # doctest: +SKIP
    >>> crops = policy.select(frame, tracked_detections)  # doctest: +SKIP
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import cv2
import numpy as np

from selfreid.pipeline.config.ingest import CropPolicyConfig
from selfreid.plugins.contracts import Crop, Detection, Frame

__all__ = ["CropPolicy", "clip_boxes", "coverage", "sharpness", "encode_jpeg"]

FORGET_EVERY = 256
"""Processed frames between clean-ups of the per-track rate-limit memory."""


def clip_boxes(boxes: np.ndarray, width: int, height: int) -> np.ndarray:
    """Round ``[N, 4]`` float boxes to whole pixels inside a ``width x height`` image (int32)."""
    out = np.rint(np.asarray(boxes, dtype=np.float64).reshape(-1, 4)).astype(np.int32)
    out[:, [0, 2]] = np.clip(out[:, [0, 2]], 0, width)
    out[:, [1, 3]] = np.clip(out[:, [1, 3]], 0, height)
    return out


def coverage(boxes: np.ndarray) -> np.ndarray:
    """For each box, the largest fraction of its area covered by another box in front of it (``[N]``, 0..1).

    "In front" = bottom edge at least as low in the image: with a camera looking down on a
    floor, the person whose feet are lower is nearer and hides the other one.
    """
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    if len(b) < 2:
        return np.zeros(len(b))
    iw = np.clip(np.minimum(b[:, None, 2], b[None, :, 2]) - np.maximum(b[:, None, 0], b[None, :, 0]), 0, None)
    ih = np.clip(np.minimum(b[:, None, 3], b[None, :, 3]) - np.maximum(b[:, None, 1], b[None, :, 1]), 0, None)
    area = np.maximum((b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]), 1e-9)
    inter = iw * ih * (b[None, :, 3] >= b[:, None, 3])
    np.fill_diagonal(inter, 0.0)
    covered: np.ndarray = (inter / area[:, None]).max(axis=1)
    return covered


def sharpness(image: np.ndarray) -> float:
    """Variance of the Laplacian of the grey image: low means blurred (motion or focus)."""
    grey = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY) if image.ndim == 3 else image
    return float(cv2.Laplacian(grey, cv2.CV_32F).var())


def encode_jpeg(image: np.ndarray, quality: int) -> bytes:
    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise ValueError(f"JPEG encoding failed for an image of shape {image.shape}")
    return buf.tobytes()


class CropPolicy:
    """Selects and encodes the crops of one camera (keeps per-track state: one instance per camera).

    ``rejected`` counts the reasons crops were skipped (``confidence``, ``size``, ``aspect``,
    ``rate``, ``occluded``, ``blur``, ``untracked``) for tuning.
    """

    def __init__(self, config: CropPolicyConfig) -> None:
        self.config = config
        self.rejected: Counter[str] = Counter()
        self._processed = 0
        self._last_crop: dict[int, int] = {}

    def select(self, frame: Frame, tracks: Sequence[Detection]) -> list[Crop]:
        """The crops to store for this processed frame (``tracks`` = the tracker's output)."""
        self._processed += 1
        if self._processed % FORGET_EVERY == 0:
            self._forget_old_tracks()
        if not tracks:
            return []
        height, width = frame.image.shape[:2]
        boxes = clip_boxes(np.array([t.box for t in tracks]), width, height)
        covered = coverage(boxes)
        crops = []
        for det, box, cover in zip(tracks, boxes, covered):
            reason = self._geometry_reject(det, box, float(cover))
            crop = self._crop(frame, det, box) if reason is None else None
            if crop is None:
                self.rejected[reason or "blur"] += 1
                continue
            crops.append(crop)
            self._last_crop[crop.track_id] = self._processed
        return crops

    def _geometry_reject(self, det: Detection, box: np.ndarray, cover: float) -> str | None:
        c = self.config
        w, h = int(box[2] - box[0]), int(box[3] - box[1])
        if det.track_id is None:
            return "untracked"
        if det.confidence < c.min_confidence:
            return "confidence"
        if h < c.min_height or w < c.min_width:
            return "size"
        if not c.min_aspect <= h / w <= c.max_aspect:
            return "aspect"
        last = self._last_crop.get(det.track_id)
        if last is not None and self._processed - last < c.every_k_frames:
            return "rate"
        if cover > c.max_overlap:
            return "occluded"
        return None

    def _crop(self, frame: Frame, det: Detection, box: np.ndarray) -> Crop | None:
        x1, y1, x2, y2 = (int(v) for v in box)
        patch = frame.image[y1:y2, x1:x2]
        if sharpness(patch) < self.config.min_sharpness:
            return None
        return Crop(
            camera_id=frame.camera_id,
            timestamp=frame.timestamp,
            frame_index=frame.index,
            box=(float(x1), float(y1), float(x2), float(y2)),
            track_id=int(det.track_id),  # type: ignore[arg-type]
            confidence=float(det.confidence),
            jpeg=encode_jpeg(patch, self.config.jpeg_quality),
        )

    def _forget_old_tracks(self) -> None:
        horizon = self._processed - self.config.every_k_frames
        self._last_crop = {t: f for t, f in self._last_crop.items() if f > horizon}
