"""The three memory banks of SCL (method.md section 1.3), vectorised, on the training device.

* ``G`` ``[N, Dg]``: per-image global feature;
* ``L`` ``[N, S, Dl]``: per-image per-stripe local features (the seed stores ``[S, N, Dl]``; rows
  first keeps ``L[idx]`` one gather);
* ``M`` ``[N, Dm]``: the "mixture" bank the loss contrasts against, zero-initialised as in the seed.

Update rules (momentum ``m``, 0.5 in the seed), all ``index_add``-based:

* ``G[i] <- l2(m G[i] + (1-m) g_i)``, ``L[i,p] <- l2(m L[i,p] + (1-m) l_{i,p})`` after the optimiser step;
* ``M[y] <- l2(m M[y] + (1-m) x)`` for every *positive* slot ``y`` of anchor feature ``x`` (the self slot
  and the P neighbours), first with the un-normalised concatenated local feature ``u`` and then with
  the global feature ``g``, as the seed's autograd order does.

Two deliberate, documented differences from the seed's loops: (1) a slot hit several times in one
update (duplicate indices, or a neighbour of several anchors) receives the *mean* of its targets
once, so the result does not depend on iteration order; (2) the loss uses ``M`` as it was at
forward time and ``M`` is updated after backward (the seed writes ``M`` inside backward, while
later backward calls still read it).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["MemoryBanks", "momentum_update"]


def momentum_update(bank: torch.Tensor, index: torch.Tensor, values: torch.Tensor, momentum: float) -> None:
    """In place: ``bank[y] <- l2(m bank[y] + (1-m) mean(values targeting y))`` along the last dim.

    ``index`` ``[K]`` and ``values`` ``[K, ...]`` (same trailing shape as ``bank``'s rows); duplicates
    in ``index`` are averaged first (deterministic, order-free)."""
    index = index.reshape(-1)
    values = values.reshape(len(index), *bank.shape[1:]).to(bank.dtype)
    slots, inverse = torch.unique(index, return_inverse=True)
    sums = torch.zeros(len(slots), *bank.shape[1:], dtype=bank.dtype, device=bank.device)
    sums.index_add_(0, inverse, values)
    counts = torch.bincount(inverse, minlength=len(slots)).to(bank.dtype)
    mean = sums / counts.view(-1, *([1] * (bank.dim() - 1)))
    bank[slots] = F.normalize(momentum * bank[slots] + (1 - momentum) * mean, dim=-1)


class MemoryBanks:
    """G, L and M for ``size`` images; see the module docstring."""

    def __init__(
        self,
        size: int,
        global_dim: int,
        num_stripes: int,
        local_dim: int,
        momentum: float = 0.5,
        device: str | torch.device = "cpu",
    ) -> None:
        if global_dim != num_stripes * local_dim:
            raise ValueError(
                f"the mixture bank holds global ({global_dim}) and concatenated local "
                f"({num_stripes}x{local_dim}) features: they must have one width"
            )
        self.momentum = momentum
        self.G = torch.zeros(size, global_dim, device=device)
        self.L = torch.zeros(size, num_stripes, local_dim, device=device)
        self.M = torch.zeros(size, global_dim, device=device)

    def __len__(self) -> int:
        return len(self.G)

    @torch.no_grad()
    def fill(self, index: torch.Tensor, g: torch.Tensor, l: torch.Tensor) -> None:
        """Initialisation pass: write normalised features as they are (no momentum)."""
        self.G[index] = F.normalize(g.float(), dim=-1)
        self.L[index] = F.normalize(l.float(), dim=-1)

    @torch.no_grad()
    def update_features(self, index: torch.Tensor, g: torch.Tensor, l: torch.Tensor) -> None:
        """The G/L momentum update with the batch's (detached) features."""
        momentum_update(self.G, index, g.detach().float(), self.momentum)
        momentum_update(self.L, index, l.detach().float(), self.momentum)

    @torch.no_grad()
    def update_mixture(self, positives: torch.Tensor, u: torch.Tensor, g: torch.Tensor) -> None:
        """M update: ``positives`` ``[B, 1+P]`` (self first); ``u`` then ``g`` pulled into every slot."""
        cols = positives.shape[1]
        for feats in (u, g):
            values = feats.detach().float().unsqueeze(1).expand(-1, cols, -1)
            momentum_update(self.M, positives, values, self.momentum)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"G": self.G.cpu(), "L": self.L.cpu(), "M": self.M.cpu()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        for name in ("G", "L", "M"):
            current = getattr(self, name)
            if state[name].shape != current.shape:
                raise ValueError(
                    f"bank {name}: checkpoint shape {tuple(state[name].shape)}, expected {tuple(current.shape)}"
                )
            current.copy_(state[name])
