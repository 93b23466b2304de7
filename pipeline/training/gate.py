"""Validation gate: a trained candidate replaces the production model only if it is not worse.

Both models are compared as **exported ONNX files** (what would really serve) on the same data:

1. sanity, always: finite weights (checked on the torch candidate before export) and finite
   embeddings; a NaN anywhere rejects at once;
2. collapse, always: the candidate's mean pairwise cosine must stay below
   ``gate.max_mean_cosine`` and the effective rank (``exp`` of the entropy of the normalised
   singular values) above ``gate.min_effective_rank``: a model that maps everyone to one vector
   scores perfectly on "same track = nearest neighbour" and must still fail;
3. label-free proxy, always, on a held-out slice of the pool (whole tracklets the candidate never
   trained on): **same-track nearest-neighbour agreement** (the nearest other crop belongs to the
   same camera+track) is the score. Both models are scored on the same crops, so the gate looks at
   the **paired** per-crop change: it rejects when the change is below ``-gate.max_proxy_drop``
   *and* significantly negative (``change + gate.proxy_z * standard error < 0``). Hundreds of
   held-out crops (a real site) make the standard error small and the gate strict; a slice of ten
   cannot tell one flipped neighbour from a worse model, and does not reject on it;
   the **cross-camera neighbour rate** (share of the k nearest non-tracklet neighbours that come
   from another camera; a model that encodes the camera's look scores low) is the score instead
   when the slice has no multi-crop tracklets;
4. labelled, when ``gate.validation_dir`` is a Market-layout folder (``query/`` and
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
from selfreid.reid_model.export import embed_onnx

__all__ = [
    "Holdout",
    "GateDecision",
    "nonfinite_parameters",
    "per_crop_scores",
    "proxy_scores",
    "paired_delta",
    "labelled_scores",
    "run_gate",
]


@dataclass
class Holdout:
    """Held-out pool crops: BGR images with their camera ids and tracklet keys (``"cam/track"``)."""

    images: list[np.ndarray]
    camera_ids: list[str]
    groups: list[str]

    def __len__(self) -> int:
        return len(self.images)


@dataclass
class GateDecision:
    """The verdict, a one-line reason and every number measured for both models."""

    passed: bool
    reason: str
    candidate: dict[str, float] = field(default_factory=dict)
    baseline: dict[str, float] = field(default_factory=dict)

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


def _judged(agree: np.ndarray, cross: np.ndarray) -> np.ndarray:
    """The per-crop values behind ``score``: track agreement where tracklets exist, else cross-camera rate."""
    return agree if np.isfinite(agree).any() else cross


def proxy_scores(emb: np.ndarray, camera_ids: Sequence[str], groups: Sequence[str], k: int = 5) -> dict[str, float]:
    """Label-free numbers of ``float32 [N, D]`` unit embeddings (module docstring, items 2-3).

    ``track_nn_agreement`` is NaN when no tracklet has two crops; ``score`` is the number the
    gate compares (track agreement, else the cross-camera rate).
    """
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
        "score": float(np.nanmean(_judged(agree, cross))),
    }


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


def _measure(onnx_path: Path, holdout: Holdout, cfg: GateConfig) -> tuple[dict[str, float], np.ndarray | None]:
    """The model's numbers and its per-crop proxy values (None when its embeddings are not finite)."""
    emb = embed_onnx(onnx_path, holdout.images)
    if not np.isfinite(emb).all():
        return {"nonfinite_embeddings": float((~np.isfinite(emb)).any(axis=1).sum())}, None
    scores = proxy_scores(emb, holdout.camera_ids, holdout.groups, cfg.neighbours)
    if cfg.validation_dir:
        scores.update({f"labelled_{k}": v for k, v in labelled_scores(onnx_path, cfg.validation_dir).items()})
    return scores, _judged(*per_crop_scores(emb, holdout.camera_ids, holdout.groups, cfg.neighbours))


def paired_delta(candidate: np.ndarray, baseline: np.ndarray) -> tuple[float, float]:
    """Mean and standard error of the per-crop difference (candidate - baseline) over the crops both
    judge: both models are measured on the same crops, so the noise of the slice cancels out."""
    d = (candidate - baseline)[np.isfinite(candidate) & np.isfinite(baseline)]
    if len(d) < 2:
        return (float(d.mean()) if len(d) else 0.0), float("inf")
    return float(d.mean()), float(d.std(ddof=1) / np.sqrt(len(d)))


def _compare(cand: dict[str, float], base: dict[str, float], cfg: GateConfig) -> str | None:
    """The first reason to reject, or None. ``cand`` carries ``score_delta``/``score_delta_se`` when
    a baseline was measured."""
    if cand["mean_cosine"] > cfg.max_mean_cosine:
        return f"collapsed embeddings: mean pairwise cosine {cand['mean_cosine']:.4f} > {cfg.max_mean_cosine}"
    if cand["effective_rank"] < cfg.min_effective_rank:
        return f"collapsed embeddings: effective rank {cand['effective_rank']:.2f} < {cfg.min_effective_rank}"
    if base:
        delta, se = cand["score_delta"], cand["score_delta_se"]
        if delta < -cfg.max_proxy_drop and delta + cfg.proxy_z * se < 0:
            return (f"label-free score dropped: {cand['score']:.4f} vs production {base['score']:.4f} "
                    f"(paired change {delta:+.4f} +- {se:.4f} over the held-out crops; same-track neighbour agreement)")
    for key in ("labelled_mAP", "labelled_rank1"):
        if key in cand and key in base and cand[key] < base[key] - cfg.max_labelled_drop:
            return f"{key.removeprefix('labelled_')} dropped on {cfg.validation_dir}: {cand[key]:.4f} < {base[key]:.4f}"
    return None


def run_gate(candidate_onnx: str | Path, baseline_onnx: str | Path | None, holdout: Holdout, cfg: GateConfig,
             candidate_model: torch.nn.Module | None = None) -> GateDecision:
    """Decide whether ``candidate_onnx`` may replace ``baseline_onnx`` (None = nothing serves yet:
    only the sanity and collapse checks apply)."""
    if candidate_model is not None:
        bad = nonfinite_parameters(candidate_model)
        if bad:
            return GateDecision(False, f"non-finite weights: {bad} NaN/Inf values in the trained model")
    if len(holdout) < 2:
        return GateDecision(False, f"held-out slice too small to judge ({len(holdout)} crops)")
    cand, cand_crops = _measure(Path(candidate_onnx), holdout, cfg)
    if cand_crops is None:
        return GateDecision(False, "non-finite embeddings from the exported candidate", cand)
    base: dict[str, float] = {}
    if baseline_onnx:
        base, base_crops = _measure(Path(baseline_onnx), holdout, cfg)
        if base_crops is not None:
            cand["score_delta"], cand["score_delta_se"] = paired_delta(cand_crops, base_crops)
        else:  # a broken production model: any finite candidate is better
            cand["score_delta"], cand["score_delta_se"] = float("inf"), 0.0
    reason = _compare(cand, base, cfg)
    if reason:
        return GateDecision(False, reason, cand, base)
    verdict = f"score {cand['score']:.4f}" + (
        f" vs production {base['score']:.4f} (paired change {cand['score_delta']:+.4f} +- {cand['score_delta_se']:.4f})"
        if base else " (no production model)")
    return GateDecision(True, f"passed: {verdict}", cand, base)
