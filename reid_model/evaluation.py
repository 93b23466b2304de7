"""Feature extraction and Market-1501 evaluation (mAP, CMC rank-1/5/10), vectorised.

Protocol (Market-1501): for each query, gallery items with the query's identity *and* camera, and
junk items (id -1), are removed from its ranking; id 0 (distractors) stays as a wrong match;
queries with no remaining true match are skipped. The ranking uses the standard distance on the
serving embedding (cosine by default). The seed's test-time same-camera penalty (method.md 1.7)
is available as ``camera_penalty`` and must be reported separately: under this protocol every
remaining same-camera item is wrong, so the penalty can only help.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, TypeAlias

import numpy as np
import torch

from selfreid.reid_model.data import CropDataset
from selfreid.reid_model.model import ReIDModel
from selfreid.reid_model.transforms import build_transform, input_spec, preprocess_bgr

__all__ = ["Labels", "extract_features", "distance_matrix", "evaluate", "evaluate_features"]

Labels: TypeAlias = torch.Tensor | np.ndarray | Sequence[int]
"""Identity or camera ids, one per item: a tensor, an array or a list."""


@torch.no_grad()
def extract_features(
    model: ReIDModel,
    data: CropDataset | Sequence[np.ndarray],
    batch_size: int = 64,
    device: str | torch.device = "cpu",
    num_workers: int = 0,
) -> torch.Tensor:
    """Serving embeddings ``float32 [N, D]`` (eval mode, test transform) of a dataset or of BGR arrays."""
    model = model.to(device)
    was_training = model.training
    model.eval()
    spec = input_spec(model.cfg)
    try:
        if isinstance(data, CropDataset):
            data.transform = build_transform(spec)
            loader = torch.utils.data.DataLoader(data, batch_size=batch_size, num_workers=num_workers)
            batches = (x for x, _ in loader)
        else:
            batches = (
                preprocess_bgr(data[i : i + batch_size], spec.input_size, spec)
                for i in range(0, len(data), batch_size)
            )
        feats = [model.embed(x.to(device)).float().cpu() for x in batches]
    finally:
        model.train(was_training)
    return torch.cat(feats) if feats else torch.empty(0, model.embedding_dim)


def distance_matrix(
    query: torch.Tensor, gallery: torch.Tensor, metric: Literal["cosine", "euclidean"] = "cosine"
) -> torch.Tensor:
    """``[Q, G]`` distances: ``1 - cos`` or Euclidean."""
    if metric == "cosine":
        q = torch.nn.functional.normalize(query.float(), dim=1)
        g = torch.nn.functional.normalize(gallery.float(), dim=1)
        return 1.0 - q @ g.T
    return torch.cdist(query.float(), gallery.float())


def evaluate(
    dist: torch.Tensor,
    q_pids: Labels,
    g_pids: Labels,
    q_cams: Labels,
    g_cams: Labels,
    ranks: Sequence[int] = (1, 5, 10),
) -> dict[str, float]:
    """mAP and CMC from a ``[Q, G]`` distance matrix under the Market protocol (module docstring).
    Returns ``{"mAP", "rank1", "rank5", "rank10", "num_queries"}`` (fractions in [0, 1])."""
    q_pids, g_pids, q_cams, g_cams = (torch.as_tensor(t).long() for t in (q_pids, g_pids, q_cams, g_cams))
    order = torch.argsort(dist, dim=1, stable=True)
    pid = g_pids[order]
    same_id = pid == q_pids[:, None]
    junk = (same_id & (g_cams[order] == q_cams[:, None])) | (pid == -1)
    valid = ~junk
    match = same_id & valid
    has_match = match.any(dim=1)
    match, valid = match[has_match], valid[has_match]
    if not len(match):
        return {"mAP": 0.0, **{f"rank{r}": 0.0 for r in ranks}, "num_queries": 0}
    position = valid.long().cumsum(1)  # 1-based rank among kept gallery items
    hits = match.long().cumsum(1)
    precision = hits.double() / position.clamp(min=1).double()
    ap = (precision * match).sum(1) / match.sum(1)
    first = torch.where(match, position, torch.full_like(position, 1 << 30)).min(1).values
    result = {"mAP": float(ap.mean())}
    result.update({f"rank{r}": float((first <= r).double().mean()) for r in ranks})
    result["num_queries"] = int(has_match.sum())
    return result


def evaluate_features(
    query: torch.Tensor,
    gallery: torch.Tensor,
    q_pids: Labels,
    g_pids: Labels,
    q_cams: Labels,
    g_cams: Labels,
    metric: Literal["cosine", "euclidean"] = "cosine",
    camera_penalty: float | None = None,
) -> dict[str, float]:
    """:func:`evaluate` on features; ``camera_penalty`` adds the seed's ``lambda_c * 1[same camera]``."""
    dist = distance_matrix(query, gallery, metric)
    if camera_penalty:
        same = torch.as_tensor(q_cams)[:, None] == torch.as_tensor(g_cams)[None, :]
        dist = dist + camera_penalty * same.to(dist.dtype)
    return evaluate(dist, q_pids, g_pids, q_cams, g_cams)
