"""Validation gate: a trained candidate replaces the production model only if it is not worse.

Both models are compared as **exported ONNX files** (what would really serve) on the same data:

1. sanity, always: finite weights (checked on the torch candidate before export) and finite
   embeddings; a NaN anywhere rejects at once;
2. collapse, always: the candidate's mean pairwise cosine must stay below
   ``gate.max_mean_cosine`` and the effective rank (``exp`` of the entropy of the normalised
   singular values) above ``gate.min_effective_rank``: a model that maps everyone to one vector
   scores perfectly on "same track = nearest neighbour" and must still fail;
3. evidence, when a model serves: fewer than ``gate.min_tracklets`` usable held-out tracklets
   (tracklets with two or more crops) is "not enough evidence": the serving model stays, and the
   decision carries the counts (:class:`Evidence`);
4. label-free score, always, on a held-out slice of the pool (whole tracklets the candidate never
   trained on), ``gate.score`` picks it (benchmark G1 measures how each ranks models as labelled
   identity quality does). The pool's own structure gives positives (the two time-separated halves of
   one tracklet) and cannot-link negatives (tracklets one camera sees at the same time):

   * ``separation``: d' between the two (the association calibration's own number);
   * ``half_retrieval``: per tracklet, its first half retrieves its second half ahead of every
     co-occurring tracklet;
   * ``cannot_link``: per cannot-link pair, the share of positives it scores below (1 - the rate of
     violations);
   * ``track_nn``: the nearest other crop belongs to the same tracklet (the seed gate's proxy; the
     only one without timestamps).

   Both models are scored on the same crops, so the gate looks at the **paired** change (per
   tracklet or pair; for ``separation`` a paired bootstrap over them): it rejects when the change is
   below ``-gate.max_proxy_drop`` *and* significantly negative (``change + gate.proxy_z * standard
   error < 0``); the **cross-camera neighbour rate** stands in when nothing else can be judged;
5. calibration: the candidate's (and the serving model's) association calibration is fitted on the
   held-out embeddings (:func:`~selfreid.reid_model.calibration.fit_calibration`) and returned with the
   decision, so the registry stores it with the version;
6. labelled, when ``gate.validation_dir`` is a Market-layout folder (``query/`` and
   ``bounding_box_test/``): mAP and rank-1 must not drop by more than ``gate.max_labelled_drop``.

Example:
    >>> decision = run_gate(cand_onnx, prod_onnx, holdout, cfg.service.gate, candidate_model=model)  # doctest: +SKIP
    >>> decision.passed, decision.reason  # doctest: +SKIP
    (False, 'collapsed embeddings: mean pairwise cosine 0.998 > 0.9')
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from selfreid.pipeline.config.service import GateConfig
from selfreid.reid_model.calibration import (
    AssociationCalibration,
    CalibrationError,
    TrackletPairs,
    calibrate_scores,
    tracklet_pairs,
)
from selfreid.reid_model.export import embed_onnx

__all__ = [
    "Holdout",
    "Evidence",
    "GateDecision",
    "PoolScores",
    "SCORES",
    "BOOTSTRAP_SAMPLES",
    "nonfinite_parameters",
    "per_crop_scores",
    "proxy_scores",
    "pool_scores",
    "paired_delta",
    "judge",
    "calibration_veto",
    "decide",
    "labelled_scores",
    "run_gate",
    "calibration_rows",
    "evidence_text",
]

SCORES = ("separation", "half_retrieval", "cannot_link", "track_nn")
CALIBRATION_FIELDS = (  # (key of AssociationCalibration.to_dict(), what a report calls it)
    ("threshold", "match threshold (label-free calibration)"),
    ("separation", "separation d' (tracklet halves vs cannot-link)"),
    ("auc", "P(positive pair > cannot-link pair)"),
    ("n_positive", "positive pairs (tracklet halves)"),
    ("n_negative", "cannot-link pairs"),
)
BOOTSTRAP_SAMPLES = 400  # paired bootstrap of d' (seeded: the same slice gives the same verdict)


@dataclass
class Holdout:
    """Held-out pool crops: BGR images with their camera ids, tracklet keys (``"cam/track"``) and,
    when known, capture times in seconds (without them there are no halves and no cannot-links)."""

    images: list[np.ndarray]
    camera_ids: list[str]
    groups: list[str]
    times: list[float] | None = None

    def __len__(self) -> int:
        return len(self.images)

    def pairs(self, min_gap: float) -> TrackletPairs:
        """Same-tracklet halves and cannot-link pairs (empty without times)."""
        if self.times is None:
            return TrackletPairs([], [])
        return tracklet_pairs(self.groups, self.camera_ids, self.times, min_gap)


@dataclass(frozen=True)
class Evidence:
    """How much the held-out slice can tell: crops, tracklets, usable tracklets (two or more crops),
    tracklets split into two halves (positives) and cannot-link pairs."""

    crops: int
    tracklets: int
    usable_tracklets: int
    positive_pairs: int
    cannot_link_pairs: int

    @classmethod
    def of(cls, holdout: Holdout, pairs: TrackletPairs) -> Evidence:
        sizes = np.unique(np.asarray(holdout.groups), return_counts=True)[1] if len(holdout) else np.zeros(0)
        return cls(len(holdout), len(sizes), int((sizes >= 2).sum()), len(pairs.positives), len(pairs.cannot_link))


@dataclass
class GateDecision:
    """The verdict, a one-line reason, every number measured for both models, the evidence counts
    and both models' association calibrations (``AssociationCalibration.to_dict()``, or None)."""

    passed: bool
    reason: str
    candidate: dict[str, Any] = field(default_factory=dict)
    baseline: dict[str, Any] = field(default_factory=dict)
    evidence: dict[str, int] = field(default_factory=dict)
    calibration: dict[str, Any] | None = None
    baseline_calibration: dict[str, Any] | None = None
    verdict: str = ""  # promote | reject | not_enough_evidence

    def __post_init__(self) -> None:
        self.verdict = self.verdict or ("promote" if self.passed else "reject")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def nonfinite_parameters(model: torch.nn.Module) -> int:
    """Number of NaN/Inf values among the model's parameters and buffers (BN statistics included)."""
    tensors = [*model.parameters(), *model.buffers()]
    return int(sum((~torch.isfinite(t.detach())).sum() for t in tensors if t.is_floating_point()))


def _effective_rank(emb: np.ndarray) -> float:
    s = np.linalg.svd(emb.astype(np.float64), compute_uv=False)
    p = s / max(s.sum(), 1e-12)
    p = p[p > 0]
    return float(np.exp(-(p * np.log(p)).sum()))


def per_crop_scores(emb: np.ndarray, camera_ids: Sequence[str], groups: Sequence[str], k: int = 5
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Per held-out crop: ``agree`` (1 if its nearest other crop is from its own tracklet, 0 if not,
    NaN for a crop alone in its tracklet) and ``cross`` (share of its ``k`` nearest non-tracklet
    neighbours that come from another camera)."""
    n = len(emb)
    cams = np.asarray(camera_ids)
    keys = np.unique(np.asarray(groups), return_inverse=True)[1]
    sim = emb.astype(np.float64) @ emb.astype(np.float64).T
    np.fill_diagonal(sim, -np.inf)
    sizes = np.bincount(keys)
    agree = np.where(sizes[keys] >= 2, (keys[sim.argmax(axis=1)] == keys).astype(float), np.nan)
    other = np.where(keys[:, None] == keys[None, :], -np.inf, sim)
    top = np.argsort(-other, axis=1)[:, : min(k, max(n - int(sizes.max()), 1))]
    valid = np.isfinite(np.take_along_axis(other, top, axis=1))
    cross = ((cams[top] != cams[:, None]) & valid).sum(1) / np.maximum(valid.sum(1), 1)
    return agree, cross


def proxy_scores(emb: np.ndarray, camera_ids: Sequence[str], groups: Sequence[str], k: int = 5) -> dict[str, float]:
    """Label-free numbers of ``float32 [N, D]`` unit embeddings that need no timestamps: collapse
    (mean cosine, effective rank), same-track neighbour agreement (NaN when no tracklet has two crops)
    and the cross-camera neighbour rate."""
    n = len(emb)
    agree, cross = per_crop_scores(emb, camera_ids, groups, k)
    sim = emb.astype(np.float64) @ emb.astype(np.float64).T
    judged = np.isfinite(agree)
    return {
        "crops": float(n),
        "tracklets_with_pairs": float((np.bincount(np.unique(np.asarray(groups), return_inverse=True)[1]) >= 2).sum()),
        "track_nn_agreement": float(agree[judged].mean()) if judged.any() else float("nan"),
        "cross_camera_rate": float(cross.mean()),
        "mean_cosine": float(sim[~np.eye(n, dtype=bool)].mean()) if n > 1 else 1.0,
        "effective_rank": _effective_rank(emb),
    }


def _unit(x: np.ndarray) -> np.ndarray:
    return x / max(float(np.linalg.norm(x)), 1e-12)


@dataclass
class PoolScores:
    """One model's label-free scores on a held-out slice: the global numbers (``values``), the
    per-item values behind each score (aligned across models measured on the same slice), and the
    calibration fitted on the slice (None when it has too few pairs)."""

    values: dict[str, Any]  # floats, and the name of the score the gate used (``score_name``)
    items: dict[str, np.ndarray]
    positives: np.ndarray
    negatives: np.ndarray
    calibration: AssociationCalibration | None


def _pair_cosines(emb: np.ndarray, groups: Sequence[str], pairs: TrackletPairs
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Positive cosines (halves), cannot-link cosines (tracklet means) and per positive tracklet
    the half-retrieval hit (1: the first half is closer to its own second half than to every
    co-occurring tracklet; NaN: no co-occurring tracklet)."""
    feats = emb.astype(np.float64)
    labels = np.asarray([str(g) for g in groups])
    means = {g: _unit(feats[labels == g].mean(0)) for g in np.unique(labels)}
    partners: dict[str, list[str]] = {}
    for a, b in pairs.cannot_link:
        partners.setdefault(a, []).append(b)
        partners.setdefault(b, []).append(a)
    pos, hits = [], []
    for first, second in pairs.positives:
        q, own = _unit(feats[first].mean(0)), _unit(feats[second].mean(0))
        pos.append(float(q @ own))
        others = partners.get(labels[first[0]], [])
        hits.append(float(pos[-1] > max(float(q @ means[u]) for u in others)) if others else np.nan)
    neg = [float(means[a] @ means[b]) for a, b in pairs.cannot_link]
    return np.asarray(pos), np.asarray(neg), np.asarray(hits)


def pool_scores(emb: np.ndarray, holdout: Holdout, k: int = 5, min_gap: float = 1.0) -> PoolScores:
    """Every label-free score of ``float32 [N, D]`` unit embeddings of ``holdout`` (module docstring, item 4).

    ``values["score_<name>"]`` is each candidate score (NaN when the slice cannot judge it).
    """
    values = proxy_scores(emb, holdout.camera_ids, holdout.groups, k)
    agree, _ = per_crop_scores(emb, holdout.camera_ids, holdout.groups, k)
    pos, neg, hits = _pair_cosines(emb, holdout.groups, holdout.pairs(min_gap))
    below = (pos[None, :] > neg[:, None]).mean(1) if len(pos) else np.full(len(neg), np.nan)
    items = {"track_nn": agree, "half_retrieval": hits, "cannot_link": below}
    try:
        calibration = calibrate_scores(pos, neg)
    except CalibrationError:
        calibration = None
    values.update({f"score_{name}": float(np.nanmean(v)) if np.isfinite(v).any() else float("nan")
                   for name, v in items.items()})
    values["score_separation"] = calibration.separation if calibration else float("nan")
    values["threshold"] = calibration.threshold if calibration else float("nan")
    return PoolScores(values, items, pos, neg, calibration)


def labelled_scores(onnx_path: str | Path, validation_dir: str | Path) -> dict[str, float]:
    """mAP / rank-1 of an exported model on a Market-layout folder (``query/``, ``bounding_box_test/``)."""
    import cv2

    from selfreid.reid_model.data import read_market
    from selfreid.reid_model.evaluation import evaluate_features

    root = Path(validation_dir)
    query, gallery = read_market(root / "query"), read_market(root / "bounding_box_test")

    def features(items):
        return torch.from_numpy(embed_onnx(onnx_path, [cv2.imread(str(it.path)) for it in items]))

    def column(items, name):
        return torch.tensor([getattr(it, name) for it in items])

    result = evaluate_features(features(query), features(gallery), column(query, "pid"), column(gallery, "pid"),
                               column(query, "camera"), column(gallery, "camera"))
    return {"mAP": result["mAP"], "rank1": result["rank1"]}


def _measure(onnx_path: Path, holdout: Holdout, cfg: GateConfig) -> PoolScores | None:
    """The model's scores on the slice (None when its embeddings are not finite)."""
    emb = embed_onnx(onnx_path, holdout.images)
    if not np.isfinite(emb).all():
        return None
    scores = pool_scores(emb, holdout, cfg.neighbours, cfg.min_gap_s)
    if cfg.validation_dir:
        scores.values.update({f"labelled_{k}": v for k, v in labelled_scores(onnx_path, cfg.validation_dir).items()})
    return scores


def paired_delta(candidate: np.ndarray, baseline: np.ndarray) -> tuple[float, float]:
    """Mean and standard error of the per-item difference (candidate - baseline) over the items both
    judge: both models are measured on the same crops, so the noise of the slice cancels out."""
    d = (candidate - baseline)[np.isfinite(candidate) & np.isfinite(baseline)]
    if len(d) < 2:
        return (float(d.mean()) if len(d) else 0.0), float("inf")
    return float(d.mean()), float(d.std(ddof=1) / np.sqrt(len(d)))


def _d_prime(pos: np.ndarray, neg: np.ndarray) -> np.ndarray:
    """d' along the last axis (rows of resampled scores)."""
    pooled = np.sqrt((pos.var(-1) + neg.var(-1)) / 2)
    return (pos.mean(-1) - neg.mean(-1)) / np.maximum(pooled, 1e-6)


def _separation_delta(cand: PoolScores, base: PoolScores) -> tuple[float, float]:
    """Change of d' and its paired-bootstrap standard error (positives and cannot-link pairs resampled,
    the same draws for both models)."""
    rng = np.random.default_rng(0)
    p = rng.integers(0, len(cand.positives), (BOOTSTRAP_SAMPLES, len(cand.positives)))
    n = rng.integers(0, len(cand.negatives), (BOOTSTRAP_SAMPLES, len(cand.negatives)))
    deltas = (_d_prime(cand.positives[p], cand.negatives[n]) - _d_prime(base.positives[p], base.negatives[n]))
    return float(_d_prime(cand.positives, cand.negatives) - _d_prime(base.positives, base.negatives)), float(deltas.std())


def _judged_score(cand: PoolScores, wanted: str) -> str:
    """The configured score if the slice can judge it, else the first that it can (``cross_camera``
    as the last resort)."""
    for name in (wanted, *SCORES):
        if np.isfinite(cand.values[f"score_{name}"]):
            return name
    return "cross_camera"


def _delta(cand: PoolScores, base: PoolScores, name: str) -> tuple[float, float]:
    """Paired change of score ``name`` (candidate - baseline) and its standard error."""
    if name == "separation":
        return _separation_delta(cand, base)
    if name == "cross_camera":
        return float(cand.values["cross_camera_rate"] - base.values["cross_camera_rate"]), float("inf")
    return paired_delta(cand.items[name], base.items[name])


def _compare(cand: dict[str, Any], base: dict[str, Any], cfg: GateConfig) -> str | None:
    """The first reason to reject, or None. ``cand`` carries ``score``, ``score_name``,
    ``score_delta`` and ``score_delta_se`` when a baseline was measured."""
    if cand["mean_cosine"] > cfg.max_mean_cosine:
        return f"collapsed embeddings: mean pairwise cosine {cand['mean_cosine']:.4f} > {cfg.max_mean_cosine}"
    if cand["effective_rank"] < cfg.min_effective_rank:
        return f"collapsed embeddings: effective rank {cand['effective_rank']:.2f} < {cfg.min_effective_rank}"
    if base:
        delta, se = cand["score_delta"], cand["score_delta_se"]
        if delta < -cfg.max_proxy_drop and delta + cfg.proxy_z * se < 0:
            return (f"label-free score dropped: {cand['score']:.4f} vs production {base['score']:.4f} "
                    f"(paired change {delta:+.4f} +- {se:.4f} over the held-out slice; {cand.get('score_name', 'score')})")
    for key in ("labelled_mAP", "labelled_rank1"):
        if key in cand and key in base and cand[key] < base[key] - cfg.max_labelled_drop:
            return f"{key.removeprefix('labelled_')} dropped on {cfg.validation_dir}: {cand[key]:.4f} < {base[key]:.4f}"
    return None


def _score_of(scores: PoolScores, name: str) -> float:
    return scores.values["cross_camera_rate" if name == "cross_camera" else f"score_{name}"]


def _not_enough(evidence: Evidence, cfg: GateConfig) -> GateDecision:
    reason = (f"not enough evidence: {evidence.usable_tracklets} usable held-out tracklets "
              f"(of {evidence.tracklets}, {evidence.crops} crops; gate.min_tracklets is {cfg.min_tracklets}); "
              "the serving model stays")
    return GateDecision(False, reason, evidence=asdict(evidence), verdict="not_enough_evidence")


def judge(cand: PoolScores, base: PoolScores | None, cfg: GateConfig, broken_baseline: bool = False
          ) -> tuple[str | None, str]:
    """The gate's rule on two models' scores of one slice: ``(reason to reject or None, score name)``.
    Adds ``score``/``score_name`` (and ``score_delta``/``score_delta_se`` against a baseline) to the
    scores' ``values``. ``broken_baseline``: the serving model's embeddings were not finite."""
    name = _judged_score(cand, cfg.score)
    cand.values.update(score=_score_of(cand, name), score_name=name)
    if base is not None:
        base.values.update(score=_score_of(base, name), score_name=name)
        cand.values["score_delta"], cand.values["score_delta_se"] = _delta(cand, base, name)
    elif broken_baseline:  # any finite candidate is better
        cand.values["score_delta"], cand.values["score_delta_se"] = float("inf"), 0.0
    return _compare(cand.values, base.values if base is not None else {}, cfg), name


def calibration_veto(calibration: AssociationCalibration | None) -> str | None:
    """Why a candidate may not serve with this calibration of its own, or None. An uninformative one
    (:attr:`~selfreid.reid_model.calibration.AssociationCalibration.informative`) would leave the
    matcher at its default threshold, which an adapted model's cosines do not fit."""
    if calibration is None or calibration.informative:
        return None
    return (f"its association calibration is uninformative (AUC {calibration.auc:.2f}): held-out tracklet halves "
            "are no closer than co-occurring tracklets, so no match threshold could be read for it")


def decide(cand: PoolScores, base: PoolScores | None, cfg: GateConfig, broken_baseline: bool = False
           ) -> tuple[str | None, str]:
    """The gate's decision on two models' scores of one slice, as :func:`run_gate` makes it: the rule of
    :func:`judge`, then :func:`calibration_veto` on the candidate's own calibration."""
    reason, name = judge(cand, base, cfg, broken_baseline)
    return reason or calibration_veto(cand.calibration), name


def run_gate(candidate_onnx: str | Path, baseline_onnx: str | Path | None, holdout: Holdout, cfg: GateConfig,
             candidate_model: torch.nn.Module | None = None) -> GateDecision:
    """Decide whether ``candidate_onnx`` may replace ``baseline_onnx`` (None = nothing serves yet:
    only the sanity and collapse checks apply, and no evidence minimum)."""
    if candidate_model is not None:
        bad = nonfinite_parameters(candidate_model)
        if bad:
            return GateDecision(False, f"non-finite weights: {bad} NaN/Inf values in the trained model")
    evidence = Evidence.of(holdout, holdout.pairs(cfg.min_gap_s))
    if baseline_onnx and evidence.usable_tracklets < cfg.min_tracklets:
        return _not_enough(evidence, cfg)
    if len(holdout) < 2:
        return GateDecision(False, f"held-out slice too small to judge ({len(holdout)} crops)", evidence=asdict(evidence))
    cand = _measure(Path(candidate_onnx), holdout, cfg)
    if cand is None:
        return GateDecision(False, "non-finite embeddings from the exported candidate", evidence=asdict(evidence))
    base = _measure(Path(baseline_onnx), holdout, cfg) if baseline_onnx else None
    reason, name = decide(cand, base, cfg, broken_baseline=bool(baseline_onnx) and base is None)
    base_values = base.values if base is not None else {}
    calibrations = (cand.calibration.to_dict() if cand.calibration else None,
                    base.calibration.to_dict() if base is not None and base.calibration else None)
    if reason:
        return GateDecision(False, reason, cand.values, base_values, asdict(evidence), *calibrations)
    verdict = f"{name} {cand.values['score']:.4f}" + (
        f" vs production {base_values['score']:.4f} (paired change {cand.values['score_delta']:+.4f} "
        f"+- {cand.values['score_delta_se']:.4f})" if base_values else " (no production model)")
    return GateDecision(True, f"passed: {verdict}", cand.values, base_values, asdict(evidence), *calibrations)


def calibration_rows(decision: dict[str, Any]) -> list[dict[str, Any]]:
    """Both models' association calibrations from a decision dict (:meth:`GateDecision.as_dict`), as rows
    ``{"measure", "candidate", "baseline"}`` for a report (None where a model has none); [] when neither has one."""
    cand, base = decision.get("calibration") or {}, decision.get("baseline_calibration") or {}
    if not cand and not base:
        return []
    return [{"measure": label, "candidate": cand.get(key), "baseline": base.get(key)} for key, label in CALIBRATION_FIELDS]


def evidence_text(decision: dict[str, Any]) -> str | None:
    """One line with the held-out slice's counts from a decision dict, or None when it has none."""
    e = decision.get("evidence") or {}
    if not e:
        return None
    return (f"held-out slice: {e['crops']} crops, {e['tracklets']} tracklets ({e['usable_tracklets']} usable), "
            f"{e['positive_pairs']} positive pairs, {e['cannot_link_pairs']} cannot-link pairs")
