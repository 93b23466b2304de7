"""Selective positives and negatives for a batch (method.md section 1.4), vectorised.

``D[b, j] = lg ||g_b - G_j||^2 + (1-lg) mean_p ||l_bp - L_jp||^2 + lc 1[cam_b == cam_j]``, self removed.
After warm-up, positives are the P nearest slots and negatives the next K (ranks P+1..P+K). During
warm-up the positive is the anchor itself and the negatives are P+K random slots.

The result is an index matrix ``[B, 1+P+K]``: column 0 is the anchor's own slot, columns 1..P the
positives, the rest the negatives; the loss and the mixture-bank update read it.

Tracklet-aware positives (an improvement, off by default): slots sharing the anchor's group key
rank before every other slot as positives and are never negatives.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = [
    "Selection",
    "pairwise_distance",
    "select_neighbours",
    "select_warmup",
    "effective_counts",
    "scaled_counts",
]


@dataclass(frozen=True)
class Selection:
    """``index`` ``[B, 1+P+K]`` slots (self, positives, negatives) and ``positives`` = P."""

    index: torch.Tensor
    positives: int

    @property
    def positive_index(self) -> torch.Tensor:
        """``[B, 1+P]``: self and the positives (the slots the mixture bank pulls)."""
        return self.index[:, : 1 + self.positives]


_GROUP_FIRST = 1e6
"""Subtracted from same-group distances (which are at most 4 + lambda_c) so they rank first."""


def effective_counts(positives: int, negatives: int, size: int) -> tuple[int, int]:
    """``(P, K)`` clipped to a bank of ``size`` slots: ``K = min(K, N-P-1)`` as the seed does."""
    p = min(positives, size - 1)
    return p, max(0, min(negatives, size - p - 1))


def pairwise_distance(
    g: torch.Tensor,
    l: torch.Tensor,
    G: torch.Tensor,
    L: torch.Tensor,
    lambda_g: float,
    lambda_c: float = 0.0,
    cams: torch.Tensor | None = None,
    bank_cams: torch.Tensor | None = None,
) -> torch.Tensor:
    """The seed's combined distance ``[B, N]`` (module docstring). ``l`` ``[B,S,Dl]``, ``L`` ``[N,S,Dl]``.

    Bank rows are unit vectors (``G[j]`` and every ``L[j, p]``; :class:`MemoryBanks` keeps them so),
    hence ``||g - G_j||^2 = ||g||^2 + 1 - 2 <g, G_j>`` and the mean over stripes of squared distances
    is ``(||u||^2 + S - 2 <u, U_j>) / S`` for the concatenations u, U: two matmuls, no pass over
    the bank's norms."""
    stripes = l.shape[1]
    g, u = g.float(), l.flatten(1).float()
    d_g = g.pow(2).sum(1, keepdim=True) + 1 - 2 * g @ G.T
    d_l = (u.pow(2).sum(1, keepdim=True) + stripes - 2 * u @ L.flatten(1).T) / stripes
    d = (lambda_g * d_g + (1 - lambda_g) * d_l).clamp_min_(0)
    if lambda_c and cams is not None and bank_cams is not None:
        d = d + lambda_c * (cams[:, None] == bank_cams[None, :]).to(d.dtype)
    return d


def select_neighbours(
    dist: torch.Tensor,
    index: torch.Tensor,
    positives: int,
    negatives: int,
    groups: torch.Tensor | None = None,
) -> Selection:
    """P nearest as positives, the next K as negatives; ``index`` ``[B]`` are the anchors' own slots.
    ``groups`` ``[N]`` (codes, -1 = none) enables tracklet-aware positives."""
    size = dist.shape[1]
    rows = torch.arange(len(index), device=dist.device)
    excluded = torch.zeros_like(dist, dtype=torch.bool)
    excluded[rows, index] = True
    rank_key = dist.masked_fill(excluded, float("inf"))
    if groups is not None:
        same = (groups[index][:, None] == groups[None, :]) & (groups[index][:, None] >= 0) & ~excluded
        # Same-tracklet slots first (ordered by distance among themselves), then the rest by distance.
        rank_key = torch.where(same, rank_key - _GROUP_FIRST, rank_key)
        excluded = excluded | same
    p, k = effective_counts(positives, negatives, size)
    pos = torch.topk(rank_key, p, dim=1, largest=False).indices
    excluded[rows[:, None], pos] = True
    if groups is not None:
        k = min(k, int((~excluded).sum(1).min()))
    neg = torch.topk(dist.masked_fill(excluded, float("inf")), k, dim=1, largest=False).indices
    return Selection(torch.cat([index[:, None], pos, neg], dim=1), p)


def select_warmup(
    index: torch.Tensor,
    size: int,
    positives: int,
    negatives: int,
    generator: torch.Generator | None = None,
    self_negative_bug: bool = False,
) -> Selection:
    """Warm-up selection: positive = self; negatives = the first P+K slots of one random permutation
    per batch, the anchor removed. With ``self_negative_bug`` the seed's ``np.delete`` bug is
    reproduced: it removes the entry at *position* ``index`` instead of the anchor's value, so the
    anchor can stay among its own negatives."""
    p, k = effective_counts(positives, negatives, size)
    count = p + k
    perm = torch.randperm(size, generator=generator, device="cpu").to(index.device)
    candidates = perm[: count + 1].expand(len(index), -1)
    if self_negative_bug:
        keep = torch.arange(count + 1, device=index.device)[None, :] != index[:, None]
    else:
        keep = candidates != index[:, None]
    # Stable sort puts the kept entries first, in permutation order; take the first P+K.
    order = torch.argsort((~keep).to(torch.int8), dim=1, stable=True)[:, :count]
    neg = torch.gather(candidates, 1, order)
    return Selection(torch.cat([index[:, None], neg], dim=1), 0)


SEED_POOL_SIZE = 12936
"""Market-1501's training-set size, for which the seed's P=7, K=500 were chosen."""


def scaled_counts(positives: int, negatives: int, size: int, cameras: int) -> tuple[int, int]:
    """``scale_with_pool``: keep the seed's negative window as the same *fraction* of the pool
    (K = 500/12936 of N, at least P and at most the configured K), and cap P so that a camera's
    share of the pool holds about ten crops per positive (P <= N / (10 C))."""
    p = max(1, min(positives, size // max(1, 10 * cameras)))
    k = max(p, min(negatives, round(negatives * size / SEED_POOL_SIZE)))
    return effective_counts(p, k, size)
