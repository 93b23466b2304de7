"""Label-free association calibration: the match threshold that follows the model.

The cosine at which two tracklets are "the same person" depends on the model (ImageNet features sit
close together, adapted features spread out), so a fixed threshold throws away what adaptation
gains. The pool itself holds two signals that need no labels:

* **positives**: two time-separated halves of one tracklet show the same person (first half vs
  second half, the middle ``min_gap`` seconds dropped so the halves are not near-duplicate frames);
* **negatives (cannot-link)**: two tracklets of one camera whose time spans overlap show two
  different people.

Scores are cosines of L2-normalised *mean* features, as the matcher compares tracklet means: a
positive is the first half's mean against the second half's, a negative one tracklet's mean against
the other's. ``query_crops = k`` instead scores only the first ``k`` crops of the query side (the
first half; each tracklet of a cannot-link pair in turn), mimicking a matcher that decides at
``min_crops = k`` crops.

From the two score distributions a threshold is chosen (``method``):

* ``"midpoint"`` (default): halfway between the positive and the negative mean;
* ``"eer"``: the equal-error point, where the share of negatives at or above the threshold equals the
  share of positives below it (empirical distributions);
* ``"negative_tail"``: ``mean_neg + k * std_neg`` (``k`` = :data:`NEGATIVE_TAIL_K`).

Chosen by measurement (M1 protocol on vtest; 8 cases: 4 models calibrated on the scored clip's
crops, 2 of them also on the gate's held-out pool tracklets and on the whole pool): the
product-vs-oracle IDF1 gap, mean over the cases, is 0.027 for ``midpoint`` (0 in 5 cases), 0.044 with
``query_crops=5``, 0.067 for ``eer`` (0.048 with ``query_crops=5``) and 0.061-0.167 for
``negative_tail``. Ten people make these numbers a guide, not a proof.

``separation`` is the sensitivity index d' = (mu_pos - mu_neg) / sqrt((s_pos^2 + s_neg^2) / 2): unbounded
(unlike the AUC, which saturates at 1.0 on a small, well-separated pool), so it keeps ranking models
that both separate perfectly; ``auc`` is stored as well.

Example::

    cal = fit_calibration(features, tracklets, cameras, times)
    matcher.set_calibration(cal)             # the matcher joins tracklets with cosine >= cal.threshold
    record["calibration"] = cal.to_dict()    # JSON-safe, round-trips with AssociationCalibration.from_dict
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal, NamedTuple

import numpy as np
from numpy.typing import ArrayLike

__all__ = [
    "AssociationCalibration",
    "CalibrationError",
    "TrackletPairs",
    "tracklet_pairs",
    "pool_tracklets",
    "TRACK_REUSE_GAP_S",
    "pair_scores",
    "calibrate_scores",
    "fit_calibration",
    "Method",
    "METHODS",
    "NEGATIVE_TAIL_K",
    "MIN_AUC",
    "CALIBRATION_METADATA_KEY",
]

Method = Literal["midpoint", "eer", "negative_tail"]
METHODS: tuple[str, ...] = ("midpoint", "eer", "negative_tail")
NEGATIVE_TAIL_K = 2.0
CALIBRATION_METADATA_KEY = "association_calibration"  # ONNX metadata_props key holding AssociationCalibration.to_json()
MIN_PAIRS = 3  # fewer positives or negatives than this: no calibration (the caller keeps its threshold)
MIN_AUC = 0.5  # at or below chance the pool's positives do not outrank its cannot-link pairs: no threshold to read
TRACK_REUSE_GAP_S = 60.0  # one camera's track id silent this long has been reused (far beyond any tracker's lost-track buffer)


class CalibrationError(ValueError):
    """The pool does not hold enough positive or cannot-link pairs to calibrate."""


@dataclass(frozen=True)
class AssociationCalibration:
    """How one model version's tracklet cosines are turned into link decisions.

    ``threshold``: cosine (of L2-normalised tracklet means) at or above which two tracklets of
    different cameras may join one identity. The rest describes where it came from and how well the
    model separates the pool's positives from its cannot-link negatives.
    """

    threshold: float
    method: str
    positive_mean: float
    positive_std: float
    negative_mean: float
    negative_std: float
    n_positive: int
    n_negative: int
    separation: float  # d' (see the module docstring)
    auc: float  # P(positive score > negative score)

    @property
    def informative(self) -> bool:
        """Whether the threshold means anything: the pool's positives outrank its cannot-link pairs
        more often than not (``auc > MIN_AUC``). On PETS, ImageNet features score tracklets that walk
        side by side (overlapping crops, one background) above a tracklet's own two halves (AUC 0.38
        and 0.43 in two demo runs); their midpoint cost 0.08 IDF1 against the matcher's default."""
        return self.auc > MIN_AUC

    def to_dict(self) -> dict[str, Any]:
        """Plain floats/ints/strs, rounded to 6 digits: fits a JSON registry record and ONNX metadata."""
        return {k: round(v, 6) if isinstance(v, float) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AssociationCalibration:
        """Inverse of :meth:`to_dict`; unknown keys (from a newer writer) are ignored, missing ones raise."""
        names = {f.name for f in fields(cls)}
        missing = names - set(data)
        if missing:
            raise CalibrationError(f"calibration record lacks {sorted(missing)}")
        kinds = {f.name: str(f.type) for f in fields(cls)}  # annotations are strings (``from __future__``)
        cast = {"float": float, "int": int, "str": str}
        try:
            return cls(**{k: cast[kinds[k]](data[k]) for k in names})
        except (TypeError, ValueError) as exc:
            raise CalibrationError(f"malformed calibration record: {exc}") from None

    def to_json(self) -> str:
        """One JSON object (the ONNX metadata value under :data:`CALIBRATION_METADATA_KEY`)."""
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, raw: str | bytes) -> AssociationCalibration:
        """Inverse of :meth:`to_json`; malformed text is a :class:`CalibrationError`."""
        try:
            data = json.loads(raw)
        except ValueError as exc:
            raise CalibrationError(f"calibration is not JSON: {exc}") from None
        if not isinstance(data, dict):
            raise CalibrationError("calibration is not a JSON object")
        return cls.from_dict(data)


class TrackletPairs(NamedTuple):
    """``positives``: (first-half crop indices, second-half crop indices), one per usable tracklet.
    ``cannot_link``: (tracklet, tracklet) label pairs of one camera whose time spans overlap."""

    positives: list[tuple[np.ndarray, np.ndarray]]
    cannot_link: list[tuple[str, str]]


def _group(tracklets: Sequence[str], cameras: Sequence[str], times: Sequence[float]) -> dict[str, np.ndarray]:
    """Crop indices of each tracklet, in time order; a tracklet label must belong to one camera."""
    if not len(tracklets) == len(cameras) == len(times):
        raise ValueError(f"tracklets, cameras and times differ in length: {len(tracklets)}, {len(cameras)}, {len(times)}")
    order = np.argsort(np.asarray(times, dtype=np.float64), kind="stable")
    groups: dict[str, list[int]] = {}
    camera_of: dict[str, str] = {}
    for i in order:
        label, cam = str(tracklets[i]), str(cameras[i])
        if camera_of.setdefault(label, cam) != cam:
            raise ValueError(f"tracklet {label!r} appears in cameras {camera_of[label]!r} and {cam!r}; "
                             "tracklet labels must be unique across cameras (e.g. 'camera/track')")
        groups.setdefault(label, []).append(int(i))
    return {k: np.asarray(v) for k, v in groups.items()}


def pool_tracklets(
    cameras: Sequence[str], track_ids: Sequence[int], times: Sequence[float] | None,
    max_gap_s: float = TRACK_REUSE_GAP_S,
) -> list[str]:
    """Tracklet label of each pool crop: ``"camera/track"``, plus ``"~k"`` for the k-th reuse of that id.

    A tracker numbers its tracks from 1 again when it restarts (an ingest restart, a looped file), so
    one ``camera/track`` can hold several people hours apart. Left as one tracklet, its "halves" would
    be a false positive pair and its span would cannot-link everything the camera saw in between.
    A silence longer than ``max_gap_s`` starts a new tracklet. Without times the ids are taken as
    they are.

    Example::

        >>> pool_tracklets(["a", "a", "a", "b"], [1, 1, 1, 1], [0.0, 1.0, 500.0, 2.0])
        ['a/1', 'a/1', 'a/1~1', 'b/1']
    """
    labels = [f"{c}/{t}" for c, t in zip(cameras, track_ids)]
    if times is None:
        return labels
    t = np.asarray(times, dtype=np.float64)
    last: dict[str, tuple[float, int]] = {}
    for i in np.argsort(t, kind="stable"):
        seen, reuse = last.get(labels[i], (t[i], 0))
        reuse += int(t[i] - seen > max_gap_s)
        last[labels[i]] = (t[i], reuse)
        if reuse:
            labels[i] = f"{labels[i]}~{reuse}"
    return labels


def _halves(idx: np.ndarray, t: np.ndarray, min_gap: float) -> tuple[np.ndarray, np.ndarray] | None:
    """First and second half of one tracklet in time, the middle ``min_gap`` seconds dropped."""
    start, end = t[idx[0]], t[idx[-1]]
    reach = (end - start - min_gap) / 2
    if reach < 0:
        return None
    first, second = idx[t[idx] <= start + reach], idx[t[idx] >= end - reach]
    if len(first) == 0 or len(second) == 0 or first[-1] == second[0]:
        return None
    return first, second


def tracklet_pairs(
    tracklets: Sequence[str], cameras: Sequence[str], times: Sequence[float], min_gap: float = 1.0
) -> TrackletPairs:
    """Label-free positive and negative pairs from the pool's structure (one entry per crop).

    Args:
        tracklets: tracklet label of each crop, unique across cameras (e.g. ``"cam0/17"``).
        cameras: camera of each crop.
        times: timestamp of each crop, seconds.
        min_gap: seconds dropped between the two halves of a tracklet; shorter tracklets give no positive.

    Example::

        >>> pos, neg = tracklet_pairs(["a", "a", "a", "b", "b"], ["c"] * 5, [0, 1, 5, 0.5, 4], min_gap=1)
        >>> [(p.tolist(), q.tolist()) for p, q in pos], neg
        ([([0, 1], [2]), ([3], [4])], [('a', 'b')])
    """
    groups = _group(tracklets, cameras, times)
    t = np.asarray(times, dtype=np.float64)
    positives = [h for idx in groups.values() if (h := _halves(idx, t, min_gap)) is not None]
    spans = sorted(((t[idx[0]], t[idx[-1]], str(cameras[idx[0]]), label) for label, idx in groups.items()))
    cannot_link = []
    for i, (_, end_a, cam_a, a) in enumerate(spans):
        for start_b, _, cam_b, b in spans[i + 1 :]:
            if start_b > end_a:  # sorted by start: no later tracklet overlaps a
                break
            if cam_a == cam_b:
                cannot_link.append((a, b))
    return TrackletPairs(positives, cannot_link)


def _mean_feature(features: np.ndarray, idx: np.ndarray) -> np.ndarray:
    mean: np.ndarray = features[idx].mean(0)
    return mean / max(float(np.linalg.norm(mean)), 1e-12)


def pair_scores(
    features: ArrayLike, tracklets: Sequence[str], times: Sequence[float], pairs: TrackletPairs,
    query_crops: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Cosines of the positive pairs and of the cannot-link pairs (see the module docstring).

    With ``query_crops = k``: positive = first ``k`` crops of the first half vs the second half;
    each cannot-link pair gives two negatives, the first ``k`` crops (in time) of one tracklet vs the
    whole other. With None: whole half vs whole half, and whole tracklet vs whole tracklet.
    """
    feats = np.asarray(features, dtype=np.float64)
    head = slice(None, query_crops)
    pos = [float(_mean_feature(feats, a[head]) @ _mean_feature(feats, b)) for a, b in pairs.positives]
    labels, t = np.asarray([str(x) for x in tracklets]), np.asarray(times, dtype=np.float64)
    members = {}
    for label in {x for pair in pairs.cannot_link for x in pair}:
        idx = np.flatnonzero(labels == label)
        members[label] = idx[np.argsort(t[idx], kind="stable")]
    whole = {label: _mean_feature(feats, idx) for label, idx in members.items()}
    if query_crops is None:
        neg = [float(whole[a] @ whole[b]) for a, b in pairs.cannot_link]
    else:
        first = {label: _mean_feature(feats, idx[head]) for label, idx in members.items()}
        neg = [float(first[x] @ whole[y]) for a, b in pairs.cannot_link for x, y in ((a, b), (b, a))]
    return np.asarray(pos, dtype=np.float64), np.asarray(neg, dtype=np.float64)


def _auc(pos: np.ndarray, neg: np.ndarray) -> float:
    """P(pos > neg) + 0.5 P(pos == neg)."""
    ranked = np.sort(neg)
    below = np.searchsorted(ranked, pos, "left")
    ties = np.searchsorted(ranked, pos, "right") - below
    return float((below + 0.5 * ties).sum() / (len(pos) * len(neg)))


def _equal_error_threshold(pos: np.ndarray, neg: np.ndarray) -> float:
    """The cut where false accepts (neg >= t) and false rejects (pos < t) are closest, halfway between
    neighbouring scores; when the sets do not overlap, the middle of the gap between them."""
    if pos.min() > neg.max():
        return float((pos.min() + neg.max()) / 2)
    cuts = np.unique(np.concatenate([pos, neg]))
    cuts = (cuts[1:] + cuts[:-1]) / 2
    far = 1 - np.searchsorted(np.sort(neg), cuts, "left") / len(neg)  # share of negatives >= cut
    frr = np.searchsorted(np.sort(pos), cuts, "left") / len(pos)  # share of positives < cut
    gap = np.abs(far - frr)
    return float(cuts[gap == gap.min()].mean())


def calibrate_scores(positive: ArrayLike, negative: ArrayLike, method: Method = "midpoint") -> AssociationCalibration:
    """A calibration from positive and negative cosine scores (see the module docstring for ``method``).

    Raises:
        CalibrationError: fewer than 3 positives or negatives.
    """
    pos, neg = np.asarray(positive, np.float64).ravel(), np.asarray(negative, np.float64).ravel()
    if len(pos) < MIN_PAIRS or len(neg) < MIN_PAIRS:
        raise CalibrationError(
            f"too few pairs to calibrate: {len(pos)} positive (tracklets long enough to split) and {len(neg)} "
            f"cannot-link (same-camera tracklets overlapping in time); {MIN_PAIRS} of each are needed"
        )
    if method == "midpoint":
        threshold = float((pos.mean() + neg.mean()) / 2)
    elif method == "eer":
        threshold = _equal_error_threshold(pos, neg)
    elif method == "negative_tail":
        threshold = float(neg.mean() + NEGATIVE_TAIL_K * neg.std())
    else:
        raise ValueError(f"unknown calibration method {method!r}; choose one of {', '.join(METHODS)}")
    pooled = math.sqrt((pos.var() + neg.var()) / 2)
    return AssociationCalibration(
        threshold=float(np.clip(threshold, -1.0, 1.0)),
        method=method,
        positive_mean=float(pos.mean()),
        positive_std=float(pos.std()),
        negative_mean=float(neg.mean()),
        negative_std=float(neg.std()),
        n_positive=len(pos),
        n_negative=len(neg),
        separation=float((pos.mean() - neg.mean()) / max(pooled, 1e-6)),
        auc=_auc(pos, neg),
    )


def fit_calibration(
    features: ArrayLike,
    tracklets: Sequence[str],
    cameras: Sequence[str],
    times: Sequence[float],
    *,
    method: Method = "midpoint",
    min_gap: float = 1.0,
    query_crops: int | None = None,
) -> AssociationCalibration:
    """Calibrate association for one model from its embeddings of the (unlabelled) pool.

    Args:
        features: ``float32 [N, D]`` L2-normalised embeddings of N crops by the model (NumPy or a CPU tensor).
        tracklets, cameras, times: per crop, as in :func:`tracklet_pairs`.
        method: ``"midpoint"``, ``"eer"`` or ``"negative_tail"``.
        min_gap: seconds between the two halves of a tracklet.
        query_crops: score only the first ``k`` crops of the query side (a matcher deciding at
            ``min_crops = k``); None (default, measured best) = whole halves and whole tracklets.

    Raises:
        CalibrationError: fewer than 3 positive or 3 cannot-link pairs in the pool.
    """
    feats = np.asarray(features, dtype=np.float64)
    if len(feats) != len(tracklets):
        raise ValueError(f"{len(feats)} features for {len(tracklets)} crops")
    pairs = tracklet_pairs(tracklets, cameras, times, min_gap)
    pos, neg = pair_scores(feats, tracklets, times, pairs, query_crops)
    return calibrate_scores(pos, neg, method)
