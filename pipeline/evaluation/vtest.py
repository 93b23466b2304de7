"""Cross-camera identity evaluation on PETS09-S2L1 (``vtest.avi``) split into virtual cameras.

What is measured: the **ReID + matching stage alone**. Crops are cut at the ground-truth boxes
(frames 1-400, ``considered`` rows only) and grouped into per-camera tracklets by the ground-truth
id, i.e. a perfect detector and tracker inside each virtual camera. Track ids are renumbered per
camera, so the matcher never sees a ground-truth identity. Splits:

* ``time``: frames 1-200 are camera ``A``, frames 201-400 camera ``B`` (7 of the 10 people are in both);
* ``halves``: the left and right halves of the frame (box centre decides), same frames.

Every crop (every ``every_k``-th frame) is embedded, fed to the matcher in time order, and the global
id of each tracklet labels all of its ground-truth boxes. IDF1 (py-motmetrics) is then computed
over one sequence in which each (camera, frame) is its own frame, so an identity is counted
correct only if the same person gets the same global id in both cameras. The baseline
``every tracklet a new identity`` is scored the same way. Scoring at product settings (the model's
label-free calibration, next to the oracle threshold) lives in :mod:`selfreid.pipeline.evaluation.tracks`,
which any MOT-format clip can use (``selfreid eval-tracks``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import cv2
import numpy as np

from selfreid.plugins.contracts import Embedder, EmbedderBase, Embedding, Matcher

__all__ = ["GtBox", "load_gt", "virtual_cameras", "read_crops", "match_tracklets", "idf1", "evaluate", "FPS",
           "PrecomputedEmbedder", "calibrated_idf1", "THRESHOLDS", "FIXED_THRESHOLD", "PRODUCT_KEYS", "Split",
           "every_tracklet_new"]

FPS = 7.0  # PETS S2L1 was recorded at about 7 fps (the container says 10)
THRESHOLDS = (0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.88, 0.9, 0.92, 0.95)
FIXED_THRESHOLD = 0.85  # the matcher's default, calibrated for ImageNet features
PRODUCT_KEYS = ("idf1", "idp", "idr", "threshold", "calibration_source", "calibration", "oracle_idf1",
                "oracle_threshold", "gap", "identities_found", "identities_true")
Split = Literal["time", "halves"]


@dataclass(frozen=True)
class GtBox:
    frame: int
    gt_id: int
    box: tuple[float, float, float, float]  # x1, y1, x2, y2
    camera_id: str = ""
    track_id: int = -1


def load_gt(path: Path, last_frame: int = 400, first_frame: int = 1) -> list[GtBox]:
    """Considered ground-truth rows (MOT format, column 7 = 1) of frames ``first_frame..last_frame``."""
    rows = np.loadtxt(path, delimiter=",", ndmin=2)
    rows = rows[(rows[:, 6] == 1) & (rows[:, 0] >= first_frame) & (rows[:, 0] <= last_frame)]
    return [GtBox(int(r[0]), int(r[1]), (r[2], r[3], r[2] + r[4], r[3] + r[5])) for r in rows]


def _camera_of(box: GtBox, split: Split, width: int, last_frame: int, first_frame: int) -> str:
    if split == "time":
        return "A" if box.frame <= (first_frame + last_frame - 1) // 2 else "B"
    return "A" if (box.box[0] + box.box[2]) / 2 < width / 2 else "B"


def virtual_cameras(boxes: Sequence[GtBox], split: Split = "time", width: int = 768, last_frame: int = 400,
                    first_frame: int = 1) -> list[GtBox]:
    """Assign each box a virtual camera and a per-camera track id (ground-truth ids renumbered); the
    ``time`` split cuts frames ``first_frame..last_frame`` in the middle."""
    out: list[GtBox] = []
    numbering: dict[tuple[str, int], int] = {}
    for b in sorted(boxes, key=lambda b: (b.frame, b.gt_id)):
        cam = _camera_of(b, split, width, last_frame, first_frame)
        track = numbering.setdefault((cam, b.gt_id), len([k for k in numbering if k[0] == cam]) + 1)
        out.append(GtBox(b.frame, b.gt_id, b.box, cam, track))
    return out


def _frames(video: Path, last_frame: int) -> Iterator[tuple[int, np.ndarray]]:
    cap = cv2.VideoCapture(str(video))
    try:
        for index in range(1, last_frame + 1):
            ok, frame = cap.read()
            if not ok:
                raise RuntimeError(f"{video}: could not decode frame {index}")
            yield index, frame
    finally:
        cap.release()


def read_crops(video: Path, boxes: Sequence[GtBox], every_k: int = 4) -> list[tuple[GtBox, np.ndarray]]:
    """The BGR crop of every box on every ``every_k``-th frame."""
    by_frame: dict[int, list[GtBox]] = {}
    for b in boxes:
        if (b.frame - 1) % every_k == 0:
            by_frame.setdefault(b.frame, []).append(b)
    crops = []
    for index, frame in _frames(video, max(by_frame, default=0)):
        for b in by_frame.get(index, []):
            x1, y1, x2, y2 = (int(round(v)) for v in b.box)
            crop = frame[max(0, y1) : y2, max(0, x1) : x2]
            if crop.size:
                crops.append((b, crop.copy()))
    return crops


def match_tracklets(
    crops: Sequence[tuple[GtBox, np.ndarray]], embedder: Embedder, matcher: Matcher, batch: int = 32, fps: float = FPS
) -> dict[tuple[str, int], int]:
    """Embed crops in time order, feed the matcher, and return ``(camera, track) -> global id``."""
    ordered = sorted(crops, key=lambda c: (c[0].frame, c[0].camera_id))
    labels: dict[tuple[str, int], int] = {}
    for start in range(0, len(ordered), batch):
        chunk = ordered[start : start + batch]
        vectors = embedder.embed([c for _, c in chunk])
        embeddings = [
            Embedding(f"{b.camera_id}/{b.frame}/{b.track_id}", b.camera_id, b.frame / fps, b.track_id, v, embedder.model_version)
            for (b, _), v in zip(chunk, vectors)
        ]
        for a in matcher.update(embeddings):
            labels[(a.camera_id, a.track_id)] = a.global_id
    for a in matcher.flush():
        labels[(a.camera_id, a.track_id)] = a.global_id
    return labels


def _iou_distance(a: np.ndarray, b: np.ndarray, max_distance: float = 0.5) -> np.ndarray:
    """``1 - IoU`` of ``[x, y, w, h]`` boxes, NaN beyond ``max_distance`` (motmetrics' convention;
    its own ``iou_matrix`` calls ``np.asfarray``, which NumPy 2 removed)."""
    if len(a) == 0 or len(b) == 0:
        return np.empty((len(a), len(b)))
    tl = np.maximum(a[:, None, :2], b[None, :, :2])
    br = np.minimum(a[:, None, :2] + a[:, None, 2:], b[None, :, :2] + b[None, :, 2:])
    inter = np.prod(np.clip(br - tl, 0, None), axis=2)
    union = a[:, None, 2:].prod(axis=2) + b[None, :, 2:].prod(axis=2) - inter
    dist = 1 - inter / np.maximum(union, 1e-12)
    dist[dist > max_distance] = np.nan
    return dist


def idf1(boxes: Sequence[GtBox], labels: dict[tuple[str, int], int]) -> dict[str, float]:
    """IDF1/IDP/IDR (py-motmetrics) of global ids over all virtual cameras as one sequence."""
    import motmetrics as mm

    acc = mm.MOTAccumulator(auto_id=False)
    cameras = sorted({b.camera_id for b in boxes})
    frames: dict[tuple[str, int], list[GtBox]] = {}
    for b in boxes:
        frames.setdefault((b.camera_id, b.frame), []).append(b)
    for (cam, frame), group in sorted(frames.items()):
        gt_xywh = np.array([[b.box[0], b.box[1], b.box[2] - b.box[0], b.box[3] - b.box[1]] for b in group])
        hyp = [(labels[(b.camera_id, b.track_id)], row) for b, row in zip(group, gt_xywh) if (b.camera_id, b.track_id) in labels]
        hyp_xywh = np.array([row for _, row in hyp]).reshape(-1, 4)
        dist = _iou_distance(gt_xywh, hyp_xywh)
        acc.update([b.gt_id for b in group], [gid for gid, _ in hyp], dist, frameid=cameras.index(cam) * 100_000 + frame)
    summary = mm.metrics.create().compute(acc, metrics=["idf1", "idp", "idr", "num_switches"], name="all")
    return {k: float(summary[k].iloc[0]) for k in summary.columns}


def every_tracklet_new(boxes: Sequence[GtBox]) -> dict[tuple[str, int], int]:
    """The trivial baseline: no cross-camera association at all."""
    keys = sorted({(b.camera_id, b.track_id) for b in boxes})
    return {k: i + 1 for i, k in enumerate(keys)}


def evaluate(
    data_dir: Path,
    embedder: Embedder,
    matcher_factory: Callable[[], Matcher],
    split: Split = "time",
    every_k: int = 4,
    crops: Sequence[tuple[GtBox, np.ndarray]] | None = None,
) -> dict[str, float]:
    """IDF1 of the matcher (fresh from ``matcher_factory``) and of the every-tracklet-new baseline."""
    boxes = virtual_cameras(load_gt(data_dir / "pets09-s2l1" / "gt_frames_0001-0400.txt"), split)
    if crops is None:
        crops = read_crops(data_dir / "pets09-s2l1" / "vtest.avi", boxes, every_k)
    else:  # crops cut for another split: give them this split's cameras and track ids
        by_key = {(b.frame, b.gt_id): b for b in boxes}
        crops = [(by_key[(b.frame, b.gt_id)], image) for b, image in crops]
    labels = match_tracklets(crops, embedder, matcher_factory())
    scores = idf1(boxes, labels)
    baseline = idf1(boxes, every_tracklet_new(boxes))
    return {
        **scores,
        "baseline_idf1": baseline["idf1"],
        "tracklets": len({(b.camera_id, b.track_id) for b in boxes}),
        "identities_found": len(set(labels.values())),
        "identities_true": len({b.gt_id for b in boxes}),
        "crops": len(crops),
    }


class PrecomputedEmbedder(EmbedderBase):
    """An embedder answering from vectors computed once (both splits share the same crops)."""

    def __init__(self, crops: Sequence[tuple[GtBox, np.ndarray]], vectors: np.ndarray, version: str) -> None:
        self._by_id = {id(c): v for (_, c), v in zip(crops, vectors)}
        self.model_version = version
        self.dim = vectors.shape[1]

    def embed(self, images: Sequence[np.ndarray]) -> np.ndarray:
        return np.stack([self._by_id[id(i)] for i in images])


def calibrated_idf1(data_dir: Path, crops: Sequence[tuple[GtBox, np.ndarray]], vectors: np.ndarray, version: str,
                    scratch_client, stored=None) -> dict:
    """IDF1 on the ``time`` split at the threshold that is best on the ``halves`` split (same frames,
    another camera layout, so the scored split never tunes its own threshold), and at the fixed 0.85.

    ``product``: IDF1 at **product settings** (:func:`selfreid.pipeline.evaluation.tracks.score_tracks`):
    the model's label-free calibration (``stored``, an ``AssociationCalibration``; None = fitted on
    these unlabelled crops), next to the oracle (best threshold on the scored split) and their gap.

    ``crops`` are the ``time`` split's (:func:`read_crops`), ``vectors`` their embeddings by the model
    under test. The matcher keeps its state in Redis: ``scratch_client`` must be a server of its own,
    it is flushed before every run.
    """
    from selfreid.pipeline.evaluation.tracks import Clip, score_tracks
    from selfreid.plugins.matchers.cross_camera import CrossCameraMatcher

    embedder = PrecomputedEmbedder(crops, vectors, version)

    def run(split: Split, threshold: float) -> dict:
        scratch_client.flushall()
        settings = CrossCameraMatcher.Settings(threshold=threshold)
        return evaluate(data_dir, embedder, lambda: CrossCameraMatcher(settings, client=scratch_client, prefix="m1"),
                        split, crops=crops)

    calibration = {t: run("halves", t)["idf1"] for t in THRESHOLDS}
    chosen = max(calibration, key=calibration.__getitem__)
    scored, fixed = run("time", chosen), run("time", FIXED_THRESHOLD)
    product = score_tracks(Clip(virtual_cameras(load_gt(data_dir / "pets09-s2l1" / "gt_frames_0001-0400.txt")), list(crops)),
                           vectors, version, scratch_client, calibration=stored)
    return {"idf1": scored["idf1"], "threshold": chosen, "idf1_at_0.85": fixed["idf1"],
            "halves_calibration": calibration, "baseline_idf1": scored["baseline_idf1"],
            "identities_found": scored["identities_found"], "identities_true": scored["identities_true"],
            "product": {k: product[k] for k in PRODUCT_KEYS}}
