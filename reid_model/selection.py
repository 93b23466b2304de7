"""Selective positives and negatives for a batch (method.md section 1.4), vectorised.

``D[b, j] = lg ||g_b - G_j||^2 + (1-lg) mean_p ||l_bp - L_jp||^2 + lc 1[cam_b == cam_j]``, self removed.
After warm-up, positives are the P nearest slots and negatives the next K (ranks P+1..P+K). During
warm-up the positive is the anchor itself and the negatives are P+K random slots.

The result is an index matrix ``[B, 1+P+K]``: column 0 is the anchor's own slot, columns 1..P the
positives, the rest the negatives; the loss and the mixture-bank update read it.

Pool structure (off by default): :class:`Constraints` masks make must-link slots (the anchor's
tracklet: ``scl.tracklet_positives``, or site mode's time-separated same-tracklet crops) rank before
every other slot as positives and never be negatives; in site mode cannot-link slots (co-occurring
tracklets) are never positives and fill their own guaranteed-negative columns.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = [
    "Selection",
    "Constraints",
    "group_constraints",
    "pairwise_distance",
    "select_neighbours",
    "select_warmup",
    "effective_counts",
    "scaled_counts",
]


@dataclass(frozen=True)
class Selection:
    """``index`` ``[B, 1+P+K]`` slots (self, positives, negatives) and ``positives`` = P.

    Site mode adds ``guaranteed`` columns right after the positives (cannot-link negatives) and
    ``valid`` ``[B, 1+P+K]`` (False marks padding in those columns; the loss ignores it)."""

    index: torch.Tensor
    positives: int
    guaranteed: int = 0
    valid: torch.Tensor | None = None

    @property
    def positive_index(self) -> torch.Tensor:
        """``[B, 1+P]``: self and the positives (the slots the mixture bank pulls)."""
        return self.index[:, : 1 + self.positives]

    @property
    def window_start(self) -> int:
        """First column of the rank-window negatives."""
        return 1 + self.positives + self.guaranteed


@dataclass(frozen=True)
class Constraints:
    """Pair masks ``[B, N]`` for a batch of anchors (see :mod:`selfreid.reid_model.structure`).

    ``must_link`` slots rank first as positives and are never negatives; ``ignore`` slots are
    neither; ``cannot_link`` slots are never positives and the nearest of them fill the guaranteed
    negative columns; ``other_camera`` marks the slots another camera saw (inter-camera positives)."""

    must_link: torch.Tensor | None = None
    ignore: torch.Tensor | None = None
    cannot_link: torch.Tensor | None = None
    other_camera: torch.Tensor | None = None


_GROUP_FIRST = 1e6
"""Subtracted from must-link distances (which are at most 4 + lambda_c) so they rank first."""


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


def group_constraints(groups: torch.Tensor, index: torch.Tensor) -> Constraints:
    """``scl.tracklet_positives``: slots sharing the anchor's group code (``-1`` = none) are must-link."""
    same = (groups[index][:, None] == groups[None, :]) & (groups[index][:, None] >= 0)
    same[torch.arange(len(index), device=index.device), index] = False
    return Constraints(must_link=same)


def _nearest(key: torch.Tensor, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``count`` smallest entries per row: ``(indices, finite)``."""
    values, idx = torch.topk(key, count, dim=1, largest=False)
    return idx, torch.isfinite(values)


def _positives(rank_key: torch.Tensor, dist: torch.Tensor, excluded: torch.Tensor, count: int, cross_camera: int,
               other_camera: torch.Tensor | None) -> torch.Tensor:
    """``[B, count]`` positive slots: the ``rank_key`` order, except that the last ``cross_camera`` are
    the nearest (``dist``, ``excluded`` left out) slots of other cameras, as far as every row has that many."""
    if other_camera is None or not cross_camera:  # the default: no extra pass over the [B, N] matrices
        return _nearest(rank_key, count)[0]
    cross_key = dist.masked_fill(excluded | ~other_camera, float("inf"))
    cross_camera = min(cross_camera, count, int(torch.isfinite(cross_key).sum(1).min()))
    if not cross_camera:
        return _nearest(rank_key, count)[0]
    cross, _ = _nearest(cross_key, cross_camera)
    rest = rank_key.scatter(1, cross, float("inf"))
    return torch.cat([_nearest(rest, count - cross_camera)[0], cross], dim=1)


def select_neighbours(
    dist: torch.Tensor,
    index: torch.Tensor,
    positives: int,
    negatives: int,
    constraints: Constraints | None = None,
    guaranteed: int = 0,
    skip: int = 0,
    cross_camera: int = 0,
) -> Selection:
    """P nearest as positives, the next K as negatives; ``index`` ``[B]`` are the anchors' own slots.

    With ``constraints``: must-link slots rank first as positives, cannot-link slots are never
    positives and the ``guaranteed`` nearest of them take their own columns (as many as the best-off
    row has; padded with the anchor's slot, marked invalid, in rows with fewer); ``skip`` drops that many ranks before the window;
    ``cross_camera`` of the P positives are the nearest slots of other cameras (``other_camera``).
    P and K shrink when some row has too few candidates."""
    c = constraints or Constraints()
    rows = torch.arange(len(index), device=dist.device)
    excluded = torch.zeros_like(dist, dtype=torch.bool)
    excluded[rows, index] = True
    if c.ignore is not None:
        excluded |= c.ignore
    rank_key = dist.masked_fill(excluded, float("inf"))
    if c.must_link is not None:
        rank_key = torch.where(c.must_link, rank_key - _GROUP_FIRST, rank_key)
        excluded = excluded | c.must_link
    if c.cannot_link is not None:
        rank_key = rank_key.masked_fill(c.cannot_link, float("inf"))
    p, k = effective_counts(positives, negatives, dist.shape[1])
    p = min(p, int(torch.isfinite(rank_key).sum(1).min()))
    pos = _positives(rank_key, dist, excluded, p, cross_camera, c.other_camera)
    excluded[rows[:, None], pos] = True
    columns, valid = [index[:, None], pos], [torch.ones(len(index), 1 + p, dtype=torch.bool, device=dist.device)]
    candidates = c.cannot_link & ~excluded if c.cannot_link is not None else torch.zeros_like(excluded)
    guaranteed = min(guaranteed, int(candidates.sum(1).max()))
    if guaranteed:
        neg_cl, ok = _nearest(dist.masked_fill(~candidates, float("inf")), guaranteed)
        neg_cl = torch.where(ok, neg_cl, index[:, None])
        excluded[rows[:, None], neg_cl] = True
        columns.append(neg_cl)
        valid.append(ok)
    available = int((~excluded).sum(1).min())
    skip = min(skip, available)
    k = min(k, available - skip)
    window, _ = _nearest(dist.masked_fill(excluded, float("inf")), skip + k)
    columns.append(window[:, skip:])
    valid.append(torch.ones(len(index), k, dtype=torch.bool, device=dist.device))
    mask = torch.cat(valid, dim=1)
    return Selection(torch.cat(columns, dim=1), p, guaranteed, None if bool(mask.all()) else mask)


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
