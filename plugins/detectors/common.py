"""Small pieces the built-in detectors share: device choice, letterbox, NMS, box conversion."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from selfreid.plugins.contracts import Detection

__all__ = ["DetectorError", "resolve_device", "letterbox", "nms", "to_detections", "weights_path"]


class DetectorError(RuntimeError):
    """A detector cannot be built (weights missing, backend not installed)."""


def resolve_device(device: str) -> str:
    """``"auto"`` -> ``"cuda:0"`` when torch sees a GPU, else ``"cpu"``; anything else is returned as is."""
    if device != "auto":
        return device
    import torch

    return "cuda:0" if torch.cuda.is_available() else "cpu"


def weights_path(configured: str | None, default: Path | None, what: str, hint: str) -> Path:
    """The configured weights file (must exist), else the offline default; a clear error otherwise."""
    path = Path(configured).expanduser() if configured else default
    if path is None:
        raise DetectorError(
            f"no {what} weights: none configured and the offline default is not installed. {hint}"
        )
    if not path.is_file():
        raise DetectorError(f"{what} weights not found: {path}. {hint}")
    return path


def letterbox(image: np.ndarray, size: tuple[int, int], pad_value: int = 114) -> tuple[np.ndarray, float]:
    """Resize into ``size`` ``(h, w)`` keeping the aspect ratio, pad bottom/right; returns (image, scale)."""
    import cv2

    h, w = image.shape[:2]
    scale = min(size[0] / h, size[1] / w)
    resized = cv2.resize(
        image, (int(round(w * scale)), int(round(h * scale))), interpolation=cv2.INTER_LINEAR
    )
    out = np.full((size[0], size[1], 3), pad_value, dtype=np.uint8)
    out[: resized.shape[0], : resized.shape[1]] = resized
    return out, scale


def nms(boxes: np.ndarray, scores: np.ndarray, iou: float) -> np.ndarray:
    """Indices kept by greedy non-maximum suppression (``boxes`` xyxy), best score first."""
    if len(boxes) == 0:
        return np.zeros(0, dtype=int)
    import cv2

    xywh = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)
    keep = cv2.dnn.NMSBoxes(xywh.tolist(), scores.astype(float).tolist(), 0.0, iou)
    return np.asarray(keep, dtype=int).reshape(-1)


def to_detections(boxes: np.ndarray, scores: np.ndarray, shape: tuple[int, ...]) -> list[Detection]:
    """xyxy boxes clipped to the image ``shape`` as :class:`Detection` objects (degenerate ones dropped)."""
    h, w = shape[:2]
    boxes = np.asarray(boxes, dtype=float).reshape(-1, 4).copy()
    boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, w)
    boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, h)
    return [
        Detection(box=(float(b[0]), float(b[1]), float(b[2]), float(b[3])), confidence=float(s))
        for b, s in zip(boxes, np.asarray(scores, dtype=float).reshape(-1))
        if b[2] > b[0] and b[3] > b[1]
    ]
