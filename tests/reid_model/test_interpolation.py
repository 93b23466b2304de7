"""WiSE-FT interpolation and the label-free choice of its mixing weight."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from selfreid.reid_model.calibration import fit_calibration
from selfreid.reid_model.checkpoint import read_checkpoint, save_checkpoint
from selfreid.reid_model.config import InterpolationConfig
from selfreid.reid_model.interpolation import choose_alpha, interpolate_checkpoint, interpolate_state, parent_state
from selfreid.reid_model.model import build_model


def _states():
    parent = {"w": torch.zeros(2, 2), "bn.num_batches_tracked": torch.tensor(0)}
    child = {"w": torch.full((2, 2), 4.0), "bn.num_batches_tracked": torch.tensor(7)}
    return parent, child


def test_alpha_zero_is_the_parent_one_the_child() -> None:
    parent, child = _states()
    assert torch.equal(interpolate_state(parent, child, 0.0)["w"], parent["w"])
    assert torch.equal(interpolate_state(parent, child, 1.0)["w"], child["w"])
    half = interpolate_state(parent, child, 0.25)
    assert torch.allclose(half["w"], torch.full((2, 2), 1.0))
    assert int(half["bn.num_batches_tracked"]) == 7  # integer buffers come from the child


def test_mismatched_weights_are_refused() -> None:
    parent, child = _states()
    with pytest.raises(ValueError, match="keys"):
        interpolate_state({"w": parent["w"]}, child, 0.5)
    with pytest.raises(ValueError, match="shape"):
        interpolate_state({**parent, "w": torch.zeros(3)}, child, 0.5)


# A pool of 4 tracklets in one camera, all overlapping in time (6 cannot-link pairs), 4 crops each.
TRACKLETS = [f"c0/{t}" for t in range(4) for _ in range(4)]
CAMERAS = ["c0"] * 16
TIMES = [float(i % 4) for i in range(16)]


def _crops() -> torch.Tensor:
    """Crops as vectors: dims 0-3 the person (one-hot), dims 4-7 per-crop nuisance."""
    gen = torch.Generator().manual_seed(0)
    person = F.one_hot(torch.arange(16) // 4, 4).float()
    return torch.cat([person, 2.0 * torch.randn(16, 4, generator=gen)], dim=1)


def _separation(state: dict[str, torch.Tensor]) -> float:
    features = F.normalize(_crops() @ state["w"], dim=1)
    return fit_calibration(features, TRACKLETS, CAMERAS, TIMES).separation


@pytest.mark.parametrize("better", ["parent", "child"])
def test_label_free_alpha_picks_the_better_separated_end(better: str) -> None:
    identity = torch.diag(torch.tensor([1.0] * 4 + [0.0] * 4))  # keeps the person, drops the nuisance
    nuisance = torch.diag(torch.tensor([0.2] * 4 + [1.0] * 4))  # mostly nuisance
    parent, child = (identity, nuisance) if better == "parent" else (nuisance, identity)
    choice = choose_alpha({"w": parent}, {"w": child}, _separation, (0.25, 0.5, 0.75, 1.0))
    assert choice.alpha == (0.25 if better == "parent" else 1.0)
    assert list(choice.scores) == [0.25, 0.5, 0.75, 1.0]
    ordered = [choice.scores[a] for a in choice.scores]
    assert ordered == sorted(ordered, reverse=better == "parent")


def test_ties_go_to_the_parent_side() -> None:
    parent, child = _states()
    assert choose_alpha(parent, child, lambda state: 1.0, (1.0, 0.5, 0.75)).alpha == 0.5


def test_interpolate_checkpoint_writes_the_chosen_mix_and_keeps_the_training_state(tiny_cfg, tmp_path) -> None:
    parent = parent_state(tiny_cfg, None)
    torch.manual_seed(1)
    child = build_model(tiny_cfg.model)
    last = save_checkpoint(tmp_path / "last.pt", child, tiny_cfg, epoch=2, metrics={"loss": 1.0}, banks={})
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (40, 20, 3), dtype=np.uint8) for _ in range(16)]
    cfg = InterpolationConfig(alphas=(0.5, 1.0))
    choice = interpolate_checkpoint(last, parent, images, TRACKLETS, CAMERAS, TIMES, cfg)
    assert choice.alpha in (0.5, 1.0) and set(choice.scores) == {0.5, 1.0}
    written = read_checkpoint(choice.checkpoint)
    expected = interpolate_state(parent, child.state_dict(), choice.alpha)
    assert all(torch.allclose(written["model"][k].float(), v.float()) for k, v in expected.items())
    assert written["metrics"]["interpolation_alpha"] == choice.alpha and "banks" not in written
    assert "banks" in read_checkpoint(last)  # the training checkpoint is untouched


def test_unscorable_pool_keeps_the_child() -> None:
    parent, child = _states()
    assert choose_alpha(parent, child, lambda state: float("-inf"), (0.25, 1.0)).alpha == 1.0
