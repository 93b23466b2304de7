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

__all__ = ["positive_weights", "weighted_cross_entropy", "scl_loss"]


def positive_weights(positives: int, lambda_t: float, alpha: float) -> torch.Tensor:
    """``[1+P]``: ``w_0 = lambda_t`` (self), ``w_j = alpha (1-lambda_t) / P``."""
    w = torch.full((1 + positives,), alpha * (1 - lambda_t) / max(positives, 1))
    w[0] = lambda_t
    return w


def weighted_cross_entropy(logits: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``mean_b sum_j w_j (-log softmax(logits_b)_j)`` over the first ``len(weights)`` entries of the
    last dim; ``logits`` ``[B, ..., n]`` gives a ``[...]`` result (one value per branch)."""
    logp = torch.log_softmax(logits, dim=-1)[..., : len(weights)]
    return -(logp * weights.to(logp.device)).sum(-1).mean(0)


def scl_loss(
    g: torch.Tensor, l: torch.Tensor, bank: torch.Tensor, selection: Selection, cfg: SCLConfig
) -> torch.Tensor:
    """``lambda_p L_u + (1-lambda_p) L_g`` for a batch; ``g`` ``[B, Dg]``, ``l`` ``[B, S, Dl]``.

    The selected bank rows are gathered once (``[B, 1+P+K, D]``, no gradient) and both branches'
    logits come from one batched matmul: this gather is the step's main extra memory traffic."""
    rows = bank[selection.index].detach().float()
    feats = torch.stack([l.flatten(1).float(), g.float()], dim=1)  # [B, 2, D]: u, g
    logits = torch.bmm(feats, rows.transpose(1, 2)) * cfg.temperature_scale  # [B, 2, 1+P+K]
    w = positive_weights(selection.positives, cfg.lambda_t, cfg.alpha)
    local, glob = weighted_cross_entropy(logits, w)
    return cfg.lambda_p * local + (1 - cfg.lambda_p) * glob
