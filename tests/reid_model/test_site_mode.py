"""Site mode on tiny tensors with known co-occurrences: structure, selection, debiased loss, trainer."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from selfreid.reid_model.config import SCLConfig, TrainConfig
from selfreid.reid_model.data import ArrayCropDataset
from selfreid.reid_model.loss import debiased_log_denominator, scl_loss
from selfreid.reid_model.selection import Selection, select_neighbours
from selfreid.reid_model.structure import hidden_positives, pool_structure
from selfreid.reid_model.trainer import LOG, SCLTrainer

# slot:       0    1    2    3    4    5     6     7    8    9
TRACKLET = [0, 0, 0, 1, 1, 2, 2, 3, 3, -1]
CAMERA = [0, 0, 0, 0, 0, 0, 0, 1, 1, 0]
TIME = [0.0, 0.5, 3.0, 1.0, 2.0, 10.0, 11.0, 0.0, 2.0, 1.0]
# Tracklet 0 (cam 0, 0-3 s) and 1 (cam 0, 1-2 s) co-occur: cannot-link. Tracklet 2 (cam 0, later) and 3
# (cam 1, same time) do not. Slot 1 is 0.5 s from slot 0: a near-duplicate, neither positive nor negative.
DIST = torch.tensor([[0.0, 0.01, 0.9, 0.05, 0.5, 0.3, 0.2, 0.1, 0.4, 0.6]])


def _structure():
    return pool_structure(torch.tensor(TRACKLET), torch.tensor(CAMERA), torch.tensor(TIME), min_separation=1.0)


def test_cannot_link_needs_one_camera_and_overlapping_time() -> None:
    s = _structure()
    assert s.cannot_link.tolist() == [
        [False, True, False, False],
        [True, False, False, False],
        [False, False, False, False],
        [False, False, False, False],
    ]
    c = s.constraints(torch.tensor([0]))
    assert torch.nonzero(c.must_link[0]).flatten().tolist() == [2]
    assert torch.nonzero(c.ignore[0]).flatten().tolist() == [1]
    assert torch.nonzero(c.cannot_link[0]).flatten().tolist() == [3, 4]
    assert s.estimated_identities() == 2  # 4 tracklets over 2 cameras


def test_without_times_every_same_tracklet_crop_is_a_positive_and_nothing_is_cannot_link() -> None:
    s = pool_structure(torch.tensor(TRACKLET), torch.tensor(CAMERA), None)
    c = s.constraints(torch.tensor([0]))
    assert torch.nonzero(c.must_link[0]).flatten().tolist() == [1, 2]
    assert not c.cannot_link.any()


def test_site_selection_picks_tracklet_positives_and_guaranteed_negatives() -> None:
    c = _structure().constraints(torch.tensor([0]))
    sel = select_neighbours(DIST, torch.tensor([0]), positives=2, negatives=3, constraints=c, guaranteed=2)
    # positives: own time-separated crop 2 first, then the nearest crop that is not cannot-link (7, not 3);
    # guaranteed negatives: co-occurring tracklet 1 (3, 4); window: the rest by distance, slot 1 left out.
    assert sel.index[0].tolist() == [0, 2, 7, 3, 4, 6, 5, 8]
    assert sel.positives == 2 and sel.guaranteed == 2 and sel.window_start == 5 and sel.valid is None
    # The seed's selection would take the co-occurring slot 3 as a positive.
    assert select_neighbours(DIST, torch.tensor([0]), 2, 3).index[0, 1:3].tolist() == [1, 3]


def test_cross_camera_positives_take_the_nearest_crops_of_other_cameras() -> None:
    dist = DIST.clone()
    dist[0, 7] = 0.7  # camera 1's nearest crop is now slot 8 (0.4); camera 0's slots 6 (0.2) and 5 (0.3) are nearer
    idx = torch.tensor([0])
    other = torch.tensor(CAMERA)[idx][:, None] != torch.tensor(CAMERA)[None, :]
    c = replace(_structure().constraints(idx), other_camera=other)
    assert select_neighbours(dist, idx, positives=2, negatives=3, constraints=c).index[0, 1:3].tolist() == [2, 6]
    sel = select_neighbours(dist, idx, positives=2, negatives=3, constraints=c, cross_camera=1)
    assert sel.index[0, 1:3].tolist() == [2, 8]  # the own tracklet's crop, then camera 1's nearest
    assert 8 not in sel.index[0, 3:].tolist() and 6 in sel.index[0, 3:].tolist()
    everyone = select_neighbours(dist, idx, positives=2, negatives=3, constraints=c, cross_camera=5)
    assert everyone.positives == 2 and everyone.index[0, 1:3].tolist() == [8, 7], "at most P, nearest first"


def test_missing_guaranteed_negatives_are_padded_and_marked_invalid() -> None:
    s = _structure()
    dist = torch.cat([DIST, DIST.roll(5, dims=1)])
    idx = torch.tensor([0, 5])  # slot 5's tracklet co-occurs with none
    sel = select_neighbours(dist, idx, positives=1, negatives=2, constraints=s.constraints(idx), guaranteed=3)
    assert sel.guaranteed == 2  # as many columns as the best-off row fills (slot 0: slots 3 and 4)
    assert sel.valid is not None and sel.valid[0].all()
    assert sel.valid[1].tolist() == [True, True, False, False, True, True]
    assert torch.equal(sel.index[1, 2:4], torch.tensor([5, 5]))  # padding = the anchor's own slot
    skipped = select_neighbours(DIST, torch.tensor([0]), 2, 3, s.constraints(torch.tensor([0])), 2, skip=1)
    assert skipped.index[0, 5:].tolist() == [5, 8, 9]


def _feats_and_bank():
    g = torch.tensor([[1.0, 0.0]])
    l = torch.tensor([[[0.0, 1.0]]])
    M = F.normalize(torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0], [0.6, 0.8], [-1.0, 0.0], [0.0, -1.0]]), dim=1)
    return g, l, M


def test_padding_columns_do_not_change_the_loss() -> None:
    g, l, M = _feats_and_bank()
    cfg = SCLConfig(positives=1, negatives=2)
    plain = Selection(torch.tensor([[0, 1, 4, 5]]), positives=1)
    padded = Selection(
        torch.tensor([[0, 1, 2, 0, 4, 5]]), 1, guaranteed=2, valid=torch.tensor([[True, True, True, False, True, True]])
    )
    with_cl = Selection(torch.tensor([[0, 1, 2, 4, 5]]), 1, guaranteed=1)
    assert math.isclose(float(scl_loss(g, l, M, padded, cfg)), float(scl_loss(g, l, M, with_cl, cfg)), rel_tol=1e-6)
    assert not math.isclose(float(scl_loss(g, l, M, plain, cfg)), float(scl_loss(g, l, M, with_cl, cfg)))


def test_debiased_denominator_follows_chuang_et_al() -> None:
    z = torch.tensor([[2.0, 1.0, 0.5, 1.5, 0.2, -0.3]])  # self, 1 positive, 1 guaranteed, 3 window
    floor = torch.tensor([-10.0])
    assert torch.allclose(debiased_log_denominator(z, 1, 3, 0.0, floor), torch.logsumexp(z, -1))
    e = z.exp()[0]
    h, kw = 1.0, 3
    estimate = (e[3:].sum() - h * e[:2].mean()) / (1 - h / kw)
    expected = math.log(float(e[:3].sum() + estimate))
    assert math.isclose(float(debiased_log_denominator(z, 1, 3, h, floor)), expected, rel_tol=1e-6)
    # A window made only of positive-like entries is clamped at the floor, never negative.
    same = torch.tensor([[1.0, 1.0, 1.0, 1.0]])
    assert math.isfinite(float(debiased_log_denominator(same, 1, 2, 1.0, torch.tensor([-5.0]))))


def test_hidden_positives_count_the_anchors_crops_beyond_the_positives() -> None:
    assert hidden_positives(100, 10, 7) == 2.0
    assert hidden_positives(100, 50, 7) == 0.0  # two crops per person: none left over


@pytest.mark.parametrize("site", [{"window": "debiased"}, {"window": "skip"}, {"window": "seed"},
                                  {"window": "debiased", "cross_camera_positives": 1}],
                         ids=["debiased", "skip", "seed", "cross-camera"])
def test_site_mode_trains_and_logs_its_structure(tiny_cfg, tiny_crops, tmp_path, site) -> None:
    images, cams = tiny_crops
    groups = [f"{c}/{i // 6}" for i, c in enumerate(cams)]  # 6 tracklets of 2 crops
    times = [float(i % 6) for i in range(12)]
    cfg = TrainConfig.model_validate(
        {**tiny_cfg.model_dump(), "mode": "site", "site": {**site, "cannot_link_negatives": 2}}
    )
    result = SCLTrainer(cfg, progress=False).fit(ArrayCropDataset(images, cams, groups, times), tmp_path)
    assert result.finished and math.isfinite(result.metrics["loss"])
    record = json.loads((tmp_path / LOG).read_text().splitlines()[-1])
    assert record["mode"] == "site" and record["tracklets"] == 6 and record["identities"] == 2


def test_mode_is_validated() -> None:
    assert TrainConfig().mode == "scl"
    with pytest.raises(ValueError, match="mode"):
        TrainConfig.model_validate({"mode": "clusters"})
    with pytest.raises(ValueError, match="window"):
        TrainConfig.model_validate({"site": {"window": "nope"}})
