"""What a tracked pool says about pairs of crops without labels (site mode, ``train.mode: site``).

Per crop the pool knows its tracklet, camera and time. Two facts follow:

* crops of one tracklet show one person; those at least ``min_separation`` seconds apart are
  **must-link** pairs (closer ones are near-duplicate frames and are left out of the loss);
* two tracklets of one camera whose time spans overlap show two people: their crops are
  **cannot-link** pairs (CycAs, Wang et al. ECCV 2020), i.e. guaranteed negatives.

:func:`pool_structure` precomputes a tracklet-level cannot-link matrix once (``T x T``, T = number of
tracklets); :meth:`PoolStructure.constraints` turns it into ``[B, N]`` masks for a batch of anchors
with gathers only. The masks feed :func:`selfreid.reid_model.selection.select_neighbours`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from selfreid.reid_model.selection import Constraints

__all__ = ["PoolStructure", "pool_structure", "hidden_positives"]


@dataclass(frozen=True)
class PoolStructure:
    """Per-slot tracklet codes ``[N]`` (-1 = unknown), times ``[N]`` (float64, NaN = unknown) and the
    tracklet-level cannot-link matrix ``[T, T]``."""

    tracklet: torch.Tensor
    time: torch.Tensor
    cannot_link: torch.Tensor
    cameras: int
    min_separation: float

    @property
    def tracklets(self) -> int:
        return len(self.cannot_link)

    def to(self, device: str | torch.device) -> PoolStructure:
        return PoolStructure(
            self.tracklet.to(device), self.time.to(device), self.cannot_link.to(device), self.cameras, self.min_separation
        )

    def constraints(self, index: torch.Tensor) -> Constraints:
        """``[B, N]`` masks for the anchors in slots ``index`` (the anchor itself is in none)."""
        trk = self.tracklet
        a = trk[index]
        known = (a[:, None] >= 0) & (trk[None, :] >= 0)
        same = known & (a[:, None] == trk[None, :])
        same[torch.arange(len(index), device=index.device), index] = False
        gap = (self.time[index][:, None] - self.time[None, :]).abs()
        # Unknown times (NaN) compare False: such crops count as separated, the tracklet is all we know.
        close = gap < self.min_separation
        cannot = torch.zeros_like(same)
        if self.tracklets:
            cannot = known & self.cannot_link[a.clamp_min(0)][:, trk.clamp_min(0)]
        return Constraints(must_link=same & ~close, ignore=same & close, cannot_link=cannot)

    def estimated_identities(self) -> int:
        """People in the pool, label-free and rough: tracklets per camera (each person passes each
        camera about once; a fragmenting tracker makes this an overestimate, which errs towards the
        seed's behaviour)."""
        return max(1, round(self.tracklets / max(self.cameras, 1)))


def pool_structure(
    tracklets: torch.Tensor, cameras: torch.Tensor, times: torch.Tensor | None, min_separation: float = 1.0
) -> PoolStructure:
    """Build the structure from per-crop tracklet codes ``[N]`` (-1 = none), camera ids ``[N]`` and
    times ``[N]`` in seconds (None: unknown, so no cannot-link and every same-tracklet pair counts).

    A tracklet's span is ``[min time, max time]`` of its crops; its camera is that of its first crop."""
    n = len(tracklets)
    time = (
        torch.full((n,), math.nan, dtype=torch.float64)
        if times is None
        else torch.as_tensor(times, dtype=torch.float64).reshape(n)
    )
    codes = torch.as_tensor(tracklets, dtype=torch.long).reshape(n)
    count = int(codes.max()) + 1 if n and int(codes.max()) >= 0 else 0
    members = codes >= 0
    c, t = codes[members], time[members]
    start = torch.full((count,), math.inf, dtype=torch.float64).scatter_reduce(0, c, t, "amin")
    end = torch.full((count,), -math.inf, dtype=torch.float64).scatter_reduce(0, c, t, "amax")
    position = torch.arange(n)[members]
    first = torch.full((count,), n, dtype=torch.long).scatter_reduce(0, c, position, "amin")
    cam = torch.as_tensor(cameras, dtype=torch.long).reshape(n)[first]
    overlap = (start[:, None] <= end[None, :]) & (start[None, :] <= end[:, None])  # NaN spans: False
    cannot = overlap & (cam[:, None] == cam[None, :]) & ~torch.eye(count, dtype=torch.bool)
    cameras_seen = len(torch.unique(torch.as_tensor(cameras))) if n else 0
    return PoolStructure(codes, time, cannot, cameras_seen, min_separation)


def hidden_positives(size: int, identities: int, positives: int) -> float:
    """Expected number of the anchor's own crops left among the negatives: a pool of ``size`` crops
    over ``identities`` people holds ``size / identities`` per person, minus the anchor and its
    ``positives``. On Market-1501 that is about 9 in a window of 500; on a site pool of ten people
    and a thousand crops about 90, all of them among the nearest."""
    return max(0.0, size / max(identities, 1) - 1 - positives)
