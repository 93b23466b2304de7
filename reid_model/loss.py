"""The SCL loss (method.md section 1.5).

For a feature ``f`` (the global ``g``, or the concatenated, *un-normalised* local feature ``u`` of
norm sqrt(S), as in the seed) and the selection's slots ``I = [self, P positives, K negatives]``::

    z_k = <f, M[I_k]> * t                       (t = 10, i.e. temperature 0.1)
    L_f = mean_b sum_{j=0..P} w_j (-log softmax(z)_j),  w_0 = lambda_t,  w_j = alpha (1-lambda_t) / P
    L   = lambda_p L_u + (1 - lambda_p) L_g

The softmax denominator covers every entry (other positives included). During warm-up the
selection has no positives (P = 0) and only the j = 0 term remains. ``M`` receives no gradient.

Site mode (``hidden > 0``): the rank window still holds about ``h`` of the anchor's own crops when
the pool has few people. Its share of the denominator is replaced by the debiased estimate of
Chuang et al. (NeurIPS 2020, eq. 5) with ``N tau+ = h``::

    N_g = max((sum_window e^z - h mean_pos e^z) / (1 - h/K_w),  K_w e^(-t |f|))

where ``mean_pos`` runs over the self and positive columns and ``-t |f|`` is the lowest logit a
unit bank row can give. Padding columns (``selection.valid`` False) are left out.
"""

from __future__ import annotations

import torch

from selfreid.reid_model.config import SCLConfig
from selfreid.reid_model.selection import Selection

__all__ = ["positive_weights", "weighted_cross_entropy", "debiased_log_denominator", "scl_loss"]


def positive_weights(positives: int, lambda_t: float, alpha: float) -> torch.Tensor:
    """``[1+P]``: ``w_0 = lambda_t`` (self), ``w_j = alpha (1-lambda_t) / P``."""
    w = torch.full((1 + positives,), alpha * (1 - lambda_t) / max(positives, 1))
    w[0] = lambda_t
    return w


def weighted_cross_entropy(
    logits: torch.Tensor, weights: torch.Tensor, log_denominator: torch.Tensor | None = None
) -> torch.Tensor:
    """``mean_b sum_j w_j (-log softmax(logits_b)_j)`` over the first ``len(weights)`` entries of the
    last dim; ``logits`` ``[B, ..., n]`` gives a ``[...]`` result (one value per branch). A given
    ``log_denominator`` ``[B, ...]`` replaces the softmax's logsumexp."""
    if log_denominator is None:
        log_denominator = torch.logsumexp(logits, dim=-1)
    logp = logits[..., : len(weights)] - log_denominator.unsqueeze(-1)
    return -(logp * weights.to(logp.device)).sum(-1).mean(0)


def debiased_log_denominator(
    logits: torch.Tensor, positives: int, window_start: int, hidden: float, floor_logit: torch.Tensor
) -> torch.Tensor:
    """``log(sum_{j < window_start} e^z_j + N_g)`` (module docstring); ``logits`` ``[B, ..., n]``
    (masked columns at ``-inf``), ``floor_logit`` broadcastable to ``[B, ...]``."""
    window = logits.shape[-1] - window_start
    if window <= 0 or hidden <= 0:
        return torch.logsumexp(logits, dim=-1)
    hidden = min(hidden, 0.5 * window)  # keeps 1 - tau+ >= 0.5
    shift = logits.amax(-1, keepdim=True).detach()
    e = (logits - shift).exp()
    shift = shift.squeeze(-1)
    estimate = (e[..., window_start:].sum(-1) - hidden * e[..., : 1 + positives].mean(-1)) / (1 - hidden / window)
    floor = window * (floor_logit - shift).exp()
    return shift + (e[..., :window_start].sum(-1) + torch.maximum(estimate, floor)).log()


def scl_loss(
    g: torch.Tensor,
    l: torch.Tensor,
    bank: torch.Tensor,
    selection: Selection,
    cfg: SCLConfig,
    hidden: float = 0.0,
) -> torch.Tensor:
    """``lambda_p L_u + (1-lambda_p) L_g`` for a batch; ``g`` ``[B, Dg]``, ``l`` ``[B, S, Dl]``;
    ``hidden`` > 0 debiases the rank window (module docstring).

    The selected bank rows are gathered once (``[B, 1+P+K, D]``, no gradient) and both branches'
    logits come from one batched matmul: this gather is the step's main extra memory traffic."""
    rows = bank[selection.index].detach().float()
    feats = torch.stack([l.flatten(1).float(), g.float()], dim=1)  # [B, 2, D]: u, g
    logits = torch.bmm(feats, rows.transpose(1, 2)) * cfg.temperature_scale  # [B, 2, 1+P+K]
    if selection.valid is not None:
        logits = logits.masked_fill(~selection.valid[:, None, :], float("-inf"))
    log_den = None
    if hidden > 0:
        floor = -cfg.temperature_scale * feats.detach().norm(dim=-1)
        log_den = debiased_log_denominator(logits, selection.positives, selection.window_start, hidden, floor)
    w = positive_weights(selection.positives, cfg.lambda_t, cfg.alpha)
    local_global = weighted_cross_entropy(logits, w, log_den)  # [2]
    return cfg.lambda_p * local_global[0] + (1 - cfg.lambda_p) * local_global[1]
