"""The SCL loss (method.md section 1.5).

For a feature ``f`` (the global ``g``, or the concatenated, *un-normalised* local feature ``u`` of
norm sqrt(S), as in the seed) and the selection's slots ``I = [self, P positives, K negatives]``::

    z_k = <f, M[I_k]> * t                       (t = 10, i.e. temperature 0.1)
    L_f = mean_b sum_{j=0..P} w_j (-log softmax(z)_j),  w_0 = lambda_t,  w_j = alpha (1-lambda_t) / P
    L   = lambda_p L_u + (1 - lambda_p) L_g

The softmax denominator covers every entry (other positives included). During warm-up the
selection has no positives (P = 0) and only the j = 0 term remains. ``M`` receives no gradient.
"""

from __future__ import annotations

import torch

from selfreid.reid_model.config import SCLConfig
from selfreid.reid_model.selection import Selection

__all__ = ["positive_weights", "contrastive_term", "scl_loss"]


def positive_weights(positives: int, lambda_t: float, alpha: float) -> torch.Tensor:
    """``[1+P]``: ``w_0 = lambda_t`` (self), ``w_j = alpha (1-lambda_t) / P``."""
    w = torch.full((1 + positives,), alpha * (1 - lambda_t) / max(positives, 1))
    w[0] = lambda_t
    return w


def contrastive_term(f: torch.Tensor, bank: torch.Tensor, index: torch.Tensor, weights: torch.Tensor,
                     scale: float) -> torch.Tensor:
    """``mean_b sum_j w_j CE(z_b, j)`` with ``z_b = <f_b, bank[index_b]> * scale``."""
    logits = torch.einsum("bd,bkd->bk", f.float(), bank[index].detach().float()) * scale
    logp = torch.log_softmax(logits, dim=1)[:, : len(weights)]
    return -(logp * weights.to(logp.device)).sum(1).mean()


def scl_loss(g: torch.Tensor, l: torch.Tensor, bank: torch.Tensor, selection: Selection, cfg: SCLConfig) -> torch.Tensor:
    """``lambda_p L_u + (1-lambda_p) L_g`` for a batch; ``g`` ``[B, Dg]``, ``l`` ``[B, S, Dl]``."""
    w = positive_weights(selection.positives, cfg.lambda_t, cfg.alpha)
    t = cfg.temperature_scale
    local = contrastive_term(l.flatten(1), bank, selection.index, w, t)
    glob = contrastive_term(g, bank, selection.index, w, t)
    return cfg.lambda_p * local + (1 - cfg.lambda_p) * glob
