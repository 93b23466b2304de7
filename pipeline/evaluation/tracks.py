"""Cross-camera identity quality of one model on a labelled clip, under the association it deploys with.

A site operator with one labelled clip (MOT-format ground truth: ``frame,id,x,y,w,h,considered,...``)
checks an adaptation with ``selfreid eval-tracks``; benchmark M1 calls the same code. The protocol is
M1's (:mod:`selfreid.pipeline.evaluation.vtest`): crops at the ground-truth boxes of frames
``first..last`` (``considered`` rows), one view split into two virtual cameras (``time``: first and
second half of the frames; ``halves``: left and right half of the image), per-camera tracklets by
ground-truth id (a perfect tracker inside each camera, ids renumbered so the matcher never sees
them), every ``every_k``-th frame embedded and fed to the matcher in time order.

**Product association**: the ``cross_camera`` matcher with the product's settings (or the site's,
``settings``), cannot-link enforced, at the model's **stored calibration** (ONNX metadata key
:data:`~selfreid.reid_model.calibration.CALIBRATION_METADATA_KEY`). A model without one is calibrated
label-free on the clip's own crops (positives: halves of one tracklet; negatives: tracklets one
camera sees at once), never from the labels. For comparison only, the **oracle** IDF1 is the best
over matcher thresholds on the scored data itself (what labels could buy), and ``gap`` the
difference.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from selfreid.pipeline.evaluation.vtest import (
    FPS,
    GtBox,
    PrecomputedEmbedder,
    Split,
    every_tracklet_new,
    idf1,
    load_gt,
    match_tracklets,
    read_crops,
    virtual_cameras,
)
from selfreid.plugins.matchers.cross_camera import CrossCameraMatcher
from selfreid.reid_model.calibration import (
    CALIBRATION_METADATA_KEY,
    AssociationCalibration,
    CalibrationError,
    Method,
    fit_calibration,
)

__all__ = ["TracksError", "Clip", "load_clip", "clip_calibration", "stored_calibration", "oracle_threshold",
           "score_tracks", "evaluate_tracks", "COARSE_STEP"]

COARSE_STEP = 0.05  # oracle search: this grid over [-0.2, 0.95], then steps of 0.01 around the best
Progress = Callable[[str, int, int], None]  # (step description, done, total)


class TracksError(ValueError):
    """The clip, its ground truth or the model cannot be scored (the message names the file)."""


@dataclass(frozen=True)
class Clip:
    """Ground-truth boxes with virtual cameras and per-camera track ids, and the crops to embed."""

    boxes: list[GtBox]
    crops: list[tuple[GtBox, np.ndarray]]
    fps: float = FPS

    def tracklet_labels(self) -> tuple[list[str], list[str], list[float]]:
        """Per crop: tracklet label (``camera/track``), camera, time in seconds (no ground-truth ids)."""
        keys = [(b.camera_id, b.track_id, b.frame / self.fps) for b, _ in self.crops]
        return [f"{c}/{t}" for c, t, _ in keys], [c for c, _, _ in keys], [s for _, _, s in keys]


def _frame_range(gt: Path) -> tuple[int, int]:
    try:
        frames = np.loadtxt(gt, delimiter=",", ndmin=2, usecols=0)
    except ValueError as exc:
        raise TracksError(f"{gt}: not MOT-format ground truth (frame,id,x,y,w,h,considered,...): {exc}") from None
    if frames.size == 0:
        raise TracksError(f"{gt}: no rows")
    return int(frames.min()), int(frames.max())


def load_clip(gt: Path, video: Path, frames: tuple[int, int] | None = None, split: Split = "time", every_k: int = 4,
              fps: float = FPS) -> Clip:
    """Read the ground truth of ``frames`` (inclusive; None = all), make the virtual cameras, cut the crops."""
    import cv2

    if not gt.is_file() or not video.is_file():
        raise TracksError(f"{gt if not gt.is_file() else video}: no such file")
    first, last = frames or _frame_range(gt)
    cap = cv2.VideoCapture(str(video))
    width = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH))
    cap.release()
    if width <= 0:
        raise TracksError(f"{video}: not a video OpenCV can read")
    try:
        boxes = virtual_cameras(load_gt(gt, last, first), split, width, last, first)
    except (ValueError, IndexError) as exc:
        raise TracksError(f"{gt}: not MOT-format ground truth (frame,id,x,y,w,h,considered,...): {exc}") from None
    if len({b.camera_id for b in boxes}) < 2:
        raise TracksError(f"{gt}: frames {first}-{last} give boxes in fewer than two virtual cameras ({split} split)")
    try:
        crops = read_crops(video, boxes, every_k)
    except RuntimeError as exc:
        raise TracksError(str(exc)) from None
    return Clip(boxes, crops, fps)


def clip_calibration(clip: Clip, vectors: np.ndarray, method: Method = "midpoint") -> AssociationCalibration:
    """Label-free calibration from the clip's own crops (its per-camera tracklets and their times)."""
    tracklets, cameras, times = clip.tracklet_labels()
    return fit_calibration(vectors, tracklets, cameras, times, method=method)


def stored_calibration(model: Path) -> AssociationCalibration | None:
    """The calibration an exported model carries in its metadata, or None."""
    from selfreid.reid_model.export import read_metadata

    raw = read_metadata(model).get(CALIBRATION_METADATA_KEY)
    return AssociationCalibration.from_json(raw) if raw else None


def _labels(clip: Clip, vectors: np.ndarray, version: str, client, settings: CrossCameraMatcher.Settings,
            calibration: AssociationCalibration | None) -> tuple[dict[tuple[str, int], int], float]:
    """Global id of every tracklet from a fresh matcher (``client`` is flushed), and its threshold."""
    client.flushall()
    matcher = CrossCameraMatcher(settings, client=client, prefix="eval")
    if calibration is not None:
        matcher.set_calibration(calibration, version)
    labels = match_tracklets(clip.crops, PrecomputedEmbedder(clip.crops, vectors, version), matcher, fps=clip.fps)
    return labels, matcher.threshold(version)


def oracle_threshold(clip: Clip, vectors: np.ndarray, version: str, client,
                     settings: CrossCameraMatcher.Settings) -> tuple[float, dict[str, float]]:
    """The matcher threshold with the best IDF1 on the clip itself (labels used: comparison only)."""

    def score(t: float) -> float:
        pinned = settings.model_copy(update={"threshold": round(float(t), 3)})
        return idf1(clip.boxes, _labels(clip, vectors, version, client, pinned, None)[0])["idf1"]

    coarse = {round(t, 3): score(t) for t in np.arange(-0.2, 0.95 + 1e-9, COARSE_STEP)}
    centre = max(coarse, key=coarse.__getitem__)
    fine = {round(t, 3): score(t) for t in centre + np.arange(-4, 5) * 0.01 if -1 <= t <= 1 and round(t, 3) not in coarse}
    curve = {**coarse, **fine}
    return max(curve, key=curve.__getitem__), {f"{k:.2f}": round(v, 4) for k, v in sorted(curve.items())}


def score_tracks(clip: Clip, vectors: np.ndarray, version: str, client, *,
                 calibration: AssociationCalibration | None = None,
                 settings: CrossCameraMatcher.Settings | None = None, method: Method = "midpoint",
                 oracle: bool = True) -> dict[str, Any]:
    """IDF1/IDP/IDR and identities of ``vectors`` (the model's embeddings of ``clip.crops``) under the
    product association, and the oracle IDF1 for comparison.

    ``calibration``: the model's stored one; None = fitted label-free on the clip (``method``). ``client``
    must be a Redis of its own (flushed before every matcher run).
    """
    settings = settings or CrossCameraMatcher.Settings()
    source = "stored"
    if calibration is None:
        try:
            calibration, source = clip_calibration(clip, vectors, method), "fitted on the clip (label-free)"
        except CalibrationError as exc:
            source = f"none ({exc})"
    if settings.threshold is not None:
        source = f"pinned threshold {settings.threshold} (calibration not used)"
    labels, threshold = _labels(clip, vectors, version, client, settings, calibration)
    scores = idf1(clip.boxes, labels)
    out: dict[str, Any] = {
        **scores,
        "identities_found": len(set(labels.values())),
        "identities_true": len({b.gt_id for b in clip.boxes}),
        "tracklets": len({(b.camera_id, b.track_id) for b in clip.boxes}),
        "crops": len(clip.crops),
        "threshold": round(threshold, 4),
        "calibration_source": source,
        "calibration": calibration.to_dict() if calibration is not None else None,
        "baseline_idf1": idf1(clip.boxes, every_tracklet_new(clip.boxes))["idf1"],
        "assignment": {"margin": settings.margin, "min_crops": settings.min_crops},
    }
    if oracle:
        best, curve = oracle_threshold(clip, vectors, version, client, settings)
        out.update(oracle_threshold=best, oracle_idf1=curve[f"{best:.2f}"], gap=round(curve[f"{best:.2f}"] - scores["idf1"], 4),
                   oracle_curve=curve)
    return out


def evaluate_tracks(model: Path, gt: Path, video: Path, *, frames: tuple[int, int] | None = None, split: Split = "time",
                    every_k: int = 4, fps: float = FPS, settings: CrossCameraMatcher.Settings | None = None,
                    progress: Progress | None = None) -> dict[str, Any]:
    """Score an exported model (``.onnx``) on a labelled clip: what ``selfreid eval-tracks`` prints."""
    import redis

    from selfreid.pipeline.runtime.redis_conn import EmbeddedRedis
    from selfreid.plugins.embedders.onnx_embedder import EmbedderError, OnnxEmbedder
    from selfreid.reid_model.export import ExportError

    step = progress or (lambda *_: None)
    step("reading the clip", 0, 1)
    clip = load_clip(gt, video, frames, split, every_k, fps)
    frames = frames or (min(b.frame for b in clip.boxes), max(b.frame for b in clip.boxes))
    step("reading the clip", 1, 1)
    try:
        embedder = OnnxEmbedder(OnnxEmbedder.Settings(model=str(model)))
        calibration = stored_calibration(model)
    except (EmbedderError, ExportError, CalibrationError) as exc:
        raise TracksError(f"{model}: {exc}") from None
    vectors = _embed(embedder, [c for _, c in clip.crops], step)
    with tempfile.TemporaryDirectory(prefix="selfreid-eval-") as tmp, EmbeddedRedis(Path(tmp), appendonly=False) as server:
        client = redis.Redis.from_url(server.url)
        try:
            step("matching", 0, 1)
            out = score_tracks(clip, vectors, embedder.model_version, client, calibration=calibration, settings=settings)
            step("matching", 1, 1)
        finally:
            client.close()
    return {"model": str(model), "model_version": embedder.model_version, "gt": str(gt), "video": str(video),
            "frames": list(frames), "split": split, "every_k": every_k, **out}


def _embed(embedder, images: Sequence[np.ndarray], step: Progress, batch: int = 64) -> np.ndarray:
    chunks = []
    for start in range(0, len(images), batch):
        step("embedding crops", start, len(images))
        chunks.append(embedder.embed(images[start : start + batch]))
    step("embedding crops", len(images), len(images))
    return np.concatenate(chunks) if chunks else np.zeros((0, embedder.dim), np.float32)
