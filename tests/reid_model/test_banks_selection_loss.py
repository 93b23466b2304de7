"""Bank updates, neighbour selection and the loss, on tiny hand-checked tensors."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from selfreid.reid_model.banks import MemoryBanks, momentum_update
from selfreid.reid_model.config import SCLConfig
from selfreid.reid_model.loss import positive_weights, scl_loss
from selfreid.reid_model.selection import (
    Selection,
    effective_counts,
    group_constraints,
    pairwise_distance,
    scaled_counts,
    select_neighbours,
    select_warmup,
)


def test_momentum_update_rule_and_duplicates() -> None:
    bank = F.normalize(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]), dim=1)
    before = bank.clone()
    x = torch.tensor([[0.0, 2.0], [4.0, 0.0], [0.0, 6.0]])
    momentum_update(bank, torch.tensor([0, 2, 0]), x, 0.5)
    # slot 0 gets the mean of its two targets once; slot 1 is untouched
    assert torch.allclose(bank[0], F.normalize(0.5 * before[0] + 0.5 * torch.tensor([0.0, 4.0]), dim=0))
    assert torch.allclose(bank[2], F.normalize(0.5 * before[2] + 0.5 * x[1], dim=0))
    assert torch.equal(bank[1], before[1])


def test_mixture_bank_starts_at_zero_and_takes_u_then_g() -> None:
    banks = MemoryBanks(4, global_dim=4, num_stripes=2, local_dim=2, momentum=0.5)
    assert torch.count_nonzero(banks.M) == 0
    u = torch.tensor([[1.0, 0.0, 1.0, 0.0]])  # norm sqrt(2), as an un-normalised concatenation
    g = torch.tensor([[0.0, 0.0, 0.0, 1.0]])
    banks.update_mixture(torch.tensor([[1, 3]]), u, g)
    after_u = F.normalize(u[0], dim=0)  # l2(0.5 * 0 + 0.5 u)
    expected = F.normalize(0.5 * after_u + 0.5 * g[0], dim=0)
    for slot in (1, 3):
        assert torch.allclose(banks.M[slot], expected)
    assert torch.count_nonzero(banks.M[[0, 2]]) == 0


def test_feature_update_normalises_per_stripe() -> None:
    banks = MemoryBanks(3, global_dim=4, num_stripes=2, local_dim=2)
    banks.fill(torch.arange(3), torch.randn(3, 4), torch.randn(3, 2, 2))
    banks.update_features(torch.tensor([1]), torch.randn(1, 4), torch.randn(1, 2, 2))
    assert torch.allclose(banks.L.norm(dim=2), torch.ones(3, 2), atol=1e-6)
    assert torch.allclose(banks.G.norm(dim=1), torch.ones(3), atol=1e-6)


def _unit(n: int, d: int, seed: int) -> torch.Tensor:
    return F.normalize(torch.randn(n, d, generator=torch.Generator().manual_seed(seed)), dim=-1)


def test_pairwise_distance_matches_the_definition() -> None:
    G, L = (
        _unit(6, 4, 0),
        F.normalize(torch.randn(6, 2, 3, generator=torch.Generator().manual_seed(1)), dim=-1),
    )
    g, l = G[:2] * 0.9, L[:2]
    cams, bank_cams = torch.tensor([0, 1]), torch.tensor([0, 1, 0, 1, 0, 1])
    d = pairwise_distance(g, l, G, L, 0.3, 0.05, cams, bank_cams)
    for b in range(2):
        for j in range(6):
            ref = 0.3 * (g[b] - G[j]).pow(2).sum() + 0.7 * (l[b] - L[j]).pow(2).sum(1).mean()
            ref = ref + 0.05 * float(cams[b] == bank_cams[j])
            assert math.isclose(float(d[b, j]), float(ref), abs_tol=1e-5)


def test_positives_are_the_nearest_and_negatives_the_next_window() -> None:
    dist = torch.tensor([[0.0, 0.5, 0.1, 0.9, 0.3, 0.7, 0.2], [0.4, 0.0, 0.8, 0.1, 0.6, 0.2, 0.9]])
    sel = select_neighbours(dist, torch.tensor([0, 1]), positives=2, negatives=3)
    assert sel.index[0].tolist() == [0, 2, 6, 4, 1, 5]
    assert sel.index[1].tolist() == [1, 3, 5, 0, 4, 2]
    assert sel.positive_index.tolist() == [[0, 2, 6], [1, 3, 5]]


def test_negative_count_is_clipped_to_the_pool() -> None:
    assert effective_counts(7, 500, 100) == (7, 92)
    sel = select_neighbours(torch.rand(2, 5), torch.tensor([0, 1]), positives=2, negatives=50)
    assert sel.index.shape == (2, 1 + 2 + 2)
    for row, own in zip(sel.index.tolist(), (0, 1)):
        assert row[0] == own and own not in row[1:] and len(set(row)) == len(row)


def test_camera_penalty_changes_the_ranking() -> None:
    G = torch.tensor([[1.0, 0.0], [0.99, 0.141], [0.98, 0.199], [0.0, 1.0]])
    G = F.normalize(G, dim=1)
    L = G.view(4, 1, 2)
    cams = torch.tensor([0, 0, 1, 1])
    plain = pairwise_distance(G[:1], L[:1], G, L, 0.5, 0.0, cams[:1], cams)
    penalised = pairwise_distance(G[:1], L[:1], G, L, 0.5, 0.05, cams[:1], cams)
    assert select_neighbours(plain, torch.tensor([0]), 1, 1).index[0, 1] == 1  # same camera nearest
    assert select_neighbours(penalised, torch.tensor([0]), 1, 1).index[0, 1] == 2  # cross-camera wins


def test_tracklet_positives_come_first_and_are_never_negatives() -> None:
    dist = torch.tensor([[0.0, 0.1, 0.2, 0.9, 0.95, 0.3, 0.4]])
    groups = torch.tensor([0, -1, -1, 0, 0, -1, -1])
    same = group_constraints(groups, torch.tensor([0]))
    sel = select_neighbours(dist, torch.tensor([0]), positives=3, negatives=3, constraints=same)
    assert sel.index[0].tolist() == [0, 3, 4, 1, 2, 5, 6]
    sel = select_neighbours(dist, torch.tensor([0]), positives=1, negatives=4, constraints=same)
    assert sel.index[0, 1] == 3 and 4 not in sel.index[0, 2:].tolist()


def test_warmup_positive_is_self_and_self_is_never_a_negative() -> None:
    gen = torch.Generator().manual_seed(0)
    idx = torch.arange(10)
    for _ in range(50):
        sel = select_warmup(idx, 10, positives=3, negatives=5, generator=gen)
        assert sel.positives == 0 and sel.index.shape == (10, 9)
        assert torch.equal(sel.index[:, 0], idx)
        assert not (sel.index[:, 1:] == idx[:, None]).any()
        assert all(len(set(r)) == 9 for r in sel.index.tolist())


def test_warmup_bug_flag_lets_self_be_a_negative() -> None:
    gen = torch.Generator().manual_seed(0)
    idx = torch.arange(10)
    hits = sum(
        int((select_warmup(idx, 10, 3, 5, gen, self_negative_bug=True).index[:, 1:] == idx[:, None]).any())
        for _ in range(50)
    )
    assert hits > 0


def test_scaled_counts_follow_the_pool() -> None:
    assert scaled_counts(7, 500, 12936, 6) == (7, 500)
    assert scaled_counts(7, 500, 1294, 6) == (7, 50)
    assert scaled_counts(7, 500, 120, 6) == (2, 5)


def test_loss_equals_a_hand_computed_value() -> None:
    cfg = SCLConfig(positives=1, negatives=1, lambda_t=0.5, alpha=2.0, lambda_p=0.25, temperature_scale=2.0)
    M = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    g = torch.tensor([[1.0, 0.0]])
    l = torch.tensor([[[0.0, 1.0]]])  # one stripe: u = (0, 1)
    sel = Selection(torch.tensor([[0, 1, 2]]), positives=1)
    w0, w1 = 0.5, 2.0 * 0.5 / 1
    assert positive_weights(1, 0.5, 2.0).tolist() == [w0, w1]

    def term(z):
        logz = math.log(sum(math.exp(v) for v in z))
        return w0 * (logz - z[0]) + w1 * (logz - z[1])

    expected = 0.25 * term([0.0, 2.0, 0.0]) + 0.75 * term([2.0, 0.0, -2.0])
    assert math.isclose(float(scl_loss(g, l, M, sel, cfg)), expected, rel_tol=1e-6)
    warm = Selection(torch.tensor([[0, 1, 2]]), positives=0)
    z_u, z_g = [0.0, 2.0, 0.0], [2.0, 0.0, -2.0]
    lse = lambda z: math.log(sum(math.exp(v) for v in z))  # noqa: E731
    expected_warm = 0.25 * w0 * (lse(z_u) - z_u[0]) + 0.75 * w0 * (lse(z_g) - z_g[0])
    assert math.isclose(float(scl_loss(g, l, M, warm, cfg)), expected_warm, rel_tol=1e-6)


def test_loss_gives_no_gradient_to_the_bank() -> None:
    M = torch.randn(4, 4, requires_grad=True)
    g = F.normalize(torch.randn(2, 4), dim=1).requires_grad_()
    l = F.normalize(torch.randn(2, 2, 2), dim=2).requires_grad_()
    scl_loss(g, l, M, Selection(torch.tensor([[0, 1, 2], [1, 0, 3]]), 1), SCLConfig()).backward()
    assert M.grad is None and g.grad is not None and l.grad is not None
