"""Detection recall and precision against MOT-format ground truth (IoU matching, Hungarian).

Rows whose ``considered`` flag (column 7) is 0 are *ignore regions*: a missed ignored box is not a
miss, and a detection matched to one is not a false positive. Only frames present in the ground
truth are scored. Used by the D1 benchmark and by integration tests.

Example::

    gt = load_mot_gt("gt_frames_0001-0400.txt", max_frame=400)
    score = detection_recall(gt, {1: [(499, 158, 530, 233)], 2: []})
    score.recall, score.precision
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from selfreid.plugins.contracts import Box, Detection

__all__ = ["GroundTruth", "DetectionScore", "load_mot_gt", "iou_matrix", "detection_recall"]


@dataclass(frozen=True)
class GroundTruth:
    """One frame: ``boxes`` float ``[N, 4]`` xyxy pixels, ``considered`` bool ``[N]``, ``ids`` int ``[N]``."""

    boxes: np.ndarray
    considered: np.ndarray
    ids: np.ndarray


@dataclass(frozen=True)
class DetectionScore:
    tp: int
    fp: int
    fn: int
    ignored: int  # detections matched to ignored (considered == 0) boxes
    frames: int

    @property
    def recall(self) -> float:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else 0.0

    @property
    def precision(self) -> float:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else 0.0

    def as_dict(self) -> dict[str, float]:
        return {
            "recall": self.recall,
            "precision": self.precision,
            "tp": self.tp,
            "fp": self.fp,
            "fn": self.fn,
            "ignored_matches": self.ignored,
            "frames": self.frames,
        }


def load_mot_gt(path: str | Path, max_frame: int | None = None) -> dict[int, GroundTruth]:
    """Read a MOT ``gt.txt`` (frame, id, left, top, width, height, considered, ...) into per-frame boxes."""
    table = np.loadtxt(path, delimiter=",", ndmin=2)
    if max_frame is not None:
        table = table[table[:, 0] <= max_frame]
    gt = {}
    for frame in np.unique(table[:, 0]).astype(int):
        rows = table[table[:, 0] == frame]
        boxes = np.concatenate([rows[:, 2:4], rows[:, 2:4] + rows[:, 4:6]], axis=1)
        gt[int(frame)] = GroundTruth(boxes=boxes, considered=rows[:, 6] != 0, ids=rows[:, 1].astype(int))
    return gt


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of xyxy boxes ``a [N, 4]`` and ``b [M, 4]`` -> ``[N, M]``."""
    a, b = np.asarray(a, float).reshape(-1, 4), np.asarray(b, float).reshape(-1, 4)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=2)
    area_a = np.prod(a[:, 2:] - a[:, :2], axis=1)
    area_b = np.prod(b[:, 2:] - b[:, :2], axis=1)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def _as_boxes(dets: Sequence[Detection | Box]) -> np.ndarray:
    return np.array([d.box if isinstance(d, Detection) else d for d in dets], dtype=float).reshape(-1, 4)


def detection_recall(
    gt: Mapping[int, GroundTruth], detections: Mapping[int, Sequence[Detection | Box]], iou: float = 0.5
) -> DetectionScore:
    """Match each frame's detections to its boxes one-to-one (max total IoU, pairs below ``iou`` dropped)."""
    from scipy.optimize import linear_sum_assignment

    tp = fp = fn = ignored = 0
    for frame, truth in gt.items():
        boxes = _as_boxes(detections.get(frame, ()))
        overlap = iou_matrix(truth.boxes, boxes)
        rows, cols = linear_sum_assignment(-np.where(overlap >= iou, overlap, 0.0))
        good = overlap[rows, cols] >= iou
        rows, cols = rows[good], cols[good]
        matched_considered = truth.considered[rows]
        tp += int(matched_considered.sum())
        ignored += int((~matched_considered).sum())
        fn += int(truth.considered.sum()) - int(matched_considered.sum())
        fp += len(boxes) - len(cols)
    return DetectionScore(tp=tp, fp=fp, fn=fn, ignored=ignored, frames=len(gt))
