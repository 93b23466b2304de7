"""Conservative updates: weight interpolation toward the parent (WiSE-FT, Wortsman et al. CVPR 2022).

``theta(a) = (1 - a) theta_parent + a theta_child``: ``a = 0`` is the parent (the production model,
or the ImageNet start), ``a = 1`` the freshly adapted child. Fine-tuning on a small pool tends to
forget; a point between the two often keeps the gain and less of the damage. The mixing weight is
chosen **without labels**: every candidate ``a`` embeds the pool and is scored by the association
calibration's ``separation`` (same-tracklet halves vs cannot-link tracklets,
:func:`selfreid.reid_model.calibration.fit_calibration`); the best-separated one wins, ties going to
the smaller ``a`` (closer to the parent).

Example::

    choice = interpolate_checkpoint("runs/a/last.pt", parent, dataset, tracklets, cameras, times)
    choice.checkpoint, choice.alpha, choice.scores   # runs/a/interpolated.pt, 0.5, {0.25: 1.9, ...}
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from selfreid.reid_model.calibration import CalibrationError, fit_calibration
from selfreid.reid_model.checkpoint import load_model, read_checkpoint, save_checkpoint
from selfreid.reid_model.config import InterpolationConfig, TrainConfig
from selfreid.reid_model.data import CropDataset
from selfreid.reid_model.evaluation import extract_features
from selfreid.reid_model.model import ReIDModel, build_model

__all__ = [
    "AlphaChoice",
    "interpolate_state",
    "choose_alpha",
    "separation_score",
    "parent_state",
    "interpolate_checkpoint",
    "conservative_update",
    "INTERPOLATED",
]

INTERPOLATED = "interpolated.pt"
State = Mapping[str, torch.Tensor]


@dataclass(frozen=True)
class AlphaChoice:
    """The chosen ``alpha``, every candidate's label-free score, and where the weights went."""

    alpha: float
    scores: dict[float, float]
    checkpoint: Path | None = None
    info: dict[str, float] = field(default_factory=dict)


def interpolate_state(parent: State, child: State, alpha: float) -> dict[str, torch.Tensor]:
    """``(1-alpha) parent + alpha child`` for every floating tensor; integer buffers (BatchNorm's
    ``num_batches_tracked``) are taken from the child. Both must have the same keys and shapes."""
    if parent.keys() != child.keys():
        missing = sorted(set(parent.keys()) ^ set(child.keys()))[:3]
        raise ValueError(f"parent and child weights differ in keys, e.g. {missing}")
    out = {}
    for name, c in child.items():
        p = parent[name]
        if p.shape != c.shape:
            raise ValueError(f"{name}: parent shape {tuple(p.shape)}, child {tuple(c.shape)}")
        out[name] = torch.lerp(p.to(c), c, alpha) if c.is_floating_point() else c.clone()
    return out


def choose_alpha(
    parent: State, child: State, score: Callable[[dict[str, torch.Tensor]], float], alphas: Sequence[float]
) -> AlphaChoice:
    """Score each candidate's interpolated weights; the best wins (ties: the smaller alpha). When no
    candidate can be scored (``-inf``: too few pairs in the pool) the largest alpha is kept."""
    scores = {float(a): float(score(interpolate_state(parent, child, a))) for a in sorted(alphas)}
    if not any(np.isfinite(list(scores.values()))):
        return AlphaChoice(max(scores), scores)
    best = max(scores, key=lambda a: (scores[a], -a))
    return AlphaChoice(best, scores)


def separation_score(
    model: ReIDModel,
    data: CropDataset | Sequence[np.ndarray],
    tracklets: Sequence[str],
    cameras: Sequence[str],
    times: Sequence[float],
    min_gap: float = 1.0,
    device: str | torch.device = "cpu",
) -> Callable[[dict[str, torch.Tensor]], float]:
    """A scorer for :func:`choose_alpha`: load the weights into ``model``, embed ``data`` and return
    the calibration's separation (``-inf`` when the pool has too few pairs to calibrate)."""

    def score(state: dict[str, torch.Tensor]) -> float:
        model.load_state_dict(state)
        features = extract_features(model, data, device=device)
        try:
            return fit_calibration(features, tracklets, cameras, times, min_gap=min_gap).separation
        except CalibrationError:
            return float("-inf")

    return score


def parent_state(cfg: TrainConfig, init_checkpoint: str | Path | None) -> dict[str, torch.Tensor]:
    """The weights training started from: the init checkpoint's, else the model the trainer builds
    (``torch.manual_seed(cfg.seed)`` then :func:`build_model`, exactly as its setup does)."""
    if init_checkpoint:
        state: dict[str, torch.Tensor] = read_checkpoint(init_checkpoint)["model"]
        return state
    torch.manual_seed(cfg.seed)
    return build_model(cfg.model).state_dict()


def _whole_tracklets(tracklets: Sequence[str], limit: int, seed: int) -> np.ndarray:
    """Indices of crops of randomly drawn whole tracklets, at most ``limit`` crops (sorted)."""
    labels, inverse = np.unique(np.asarray([str(t) for t in tracklets]), return_inverse=True)
    if len(tracklets) <= limit:
        return np.arange(len(tracklets))
    keep, total = [], 0
    sizes = np.bincount(inverse)
    for label in np.random.default_rng(seed).permutation(len(labels)):
        if total + sizes[label] <= limit:
            keep.append(label)
            total += sizes[label]
    return np.flatnonzero(np.isin(inverse, keep))


def interpolate_checkpoint(
    checkpoint: str | Path,
    parent: State,
    images: Sequence[np.ndarray],
    tracklets: Sequence[str],
    cameras: Sequence[str],
    times: Sequence[float],
    cfg: InterpolationConfig | None = None,
    out: str | Path | None = None,
    device: str | torch.device = "cpu",
) -> AlphaChoice:
    """Choose alpha on the pool (BGR crops with each crop's tracklet, camera and time)
    and write the interpolated model as a checkpoint without training state (``out``, default
    ``interpolated.pt`` beside ``checkpoint``); ``checkpoint`` is left as it is, so a resumed run is
    unaffected. At most ``cfg.max_crops`` crops of whole tracklets are embedded per candidate."""
    cfg = cfg or InterpolationConfig()
    state = read_checkpoint(checkpoint)
    model, train_cfg = load_model(checkpoint, device)
    keep = _whole_tracklets(tracklets, cfg.max_crops, seed=0).tolist()
    score = separation_score(
        model,
        [images[i] for i in keep],
        [tracklets[i] for i in keep],
        [cameras[i] for i in keep],
        [times[i] for i in keep],
        cfg.min_gap_s,
        device,
    )
    choice = choose_alpha(parent, state["model"], score, cfg.alphas)
    model.load_state_dict(interpolate_state(parent, state["model"], choice.alpha))
    metrics = {**state.get("metrics", {}), "interpolation_alpha": choice.alpha}
    path = Path(out) if out else Path(checkpoint).with_name(INTERPOLATED)
    save_checkpoint(path, model, train_cfg, state["epoch"], metrics)
    return AlphaChoice(choice.alpha, choice.scores, path, {"crops_scored": float(len(keep))})


def conservative_update(
    checkpoint: str | Path,
    cfg: TrainConfig,
    init_checkpoint: str | Path | None,
    images: Sequence[np.ndarray],
    tracklets: Sequence[str] | None,
    cameras: Sequence[str],
    times: Sequence[float] | None,
    device: str | torch.device = "cpu",
) -> AlphaChoice | None:
    """After training: :func:`interpolate_checkpoint` toward the start when ``cfg.interpolation`` is
    enabled and the pool has tracklets and times; None otherwise (keep ``checkpoint``)."""
    if not cfg.interpolation.enabled or tracklets is None or times is None:
        return None
    parent = parent_state(cfg, init_checkpoint)
    cams = [str(c) for c in cameras]
    return interpolate_checkpoint(checkpoint, parent, images, tracklets, cams, times, cfg.interpolation, device=device)
