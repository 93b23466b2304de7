"""Label-free association calibration: pair extraction on crafted tracklets, thresholds with known answers."""

from __future__ import annotations

import json

import numpy as np
import pytest

from selfreid.reid_model.calibration import (
    AssociationCalibration,
    CalibrationError,
    calibrate_scores,
    fit_calibration,
    pair_scores,
    pool_tracklets,
    tracklet_pairs,
)


def test_pairs_from_crafted_tracklets():
    # camera c0: a [0, 10] and b [5, 12] overlap; d [20, 30] overlaps neither; camera c1: e [0, 10] overlaps a
    # in time but in another camera, so it is no cannot-link
    tracklets = ["a"] * 6 + ["b"] * 2 + ["d"] * 3 + ["e"] * 2
    cameras = ["c0"] * 11 + ["c1"] * 2
    times = [0, 2, 4, 6, 8, 10, 5, 12, 20, 25, 30, 0, 10]
    pos, neg = tracklet_pairs(tracklets, cameras, times, min_gap=3)
    assert neg == [("a", "b")]
    halves = {tuple(p.tolist()): tuple(q.tolist()) for p, q in pos}
    # a: the middle 3 s (3.5..6.5) dropped; b: 2 crops 7 s apart; d: 25 is in the dropped middle; e: 10 s apart
    assert halves == {(0, 1): (4, 5), (6,): (7,), (8,): (10,), (11,): (12,)}


def test_a_reused_track_id_starts_a_new_tracklet_and_cannot_links_only_its_own_time():
    # camera c: track 1 at 0-10 s, the tracker restarts, track 1 again at 3600-3610 s; track 2 at 1800 s
    cameras, tracks = ["c"] * 7, [1, 1, 1, 2, 2, 1, 1]
    times = [0.0, 5.0, 10.0, 1800.0, 1805.0, 3600.0, 3610.0]
    labels = pool_tracklets(cameras, tracks, times)
    assert labels == ["c/1", "c/1", "c/1", "c/2", "c/2", "c/1~1", "c/1~1"]
    pos, neg = tracklet_pairs(labels, cameras, times, min_gap=1)
    assert neg == []  # as one tracklet, c/1 spanned c/2 and would have been cannot-linked with it
    assert len(pos) == 3  # and its "halves" would have been two different people
    assert pool_tracklets(cameras, tracks, times, max_gap_s=10_000) == [f"c/{t}" for t in tracks]
    assert pool_tracklets(cameras, tracks, None) == [f"c/{t}" for t in tracks]


def test_short_tracklets_give_no_positive_and_touching_spans_are_cannot_link():
    pos, neg = tracklet_pairs(["a", "a", "b", "b"], ["c"] * 4, [0, 0.5, 0.5, 3], min_gap=1)
    assert [(p.tolist(), q.tolist()) for p, q in pos] == [([2], [3])]  # a lasts 0.5 s < min_gap
    assert neg == [("a", "b")]  # b starts when a ends: both on screen at 0.5 s


def test_a_label_in_two_cameras_is_an_error():
    with pytest.raises(ValueError, match="unique across cameras"):
        tracklet_pairs(["a", "a"], ["c0", "c1"], [0, 1])


@pytest.mark.parametrize(
    ("pos", "neg", "expected"),
    [((0.8, 0.1), (0.4, 0.1), 0.6), ((0.7, 0.05), (0.5, 0.15), 0.65), ((0.3, 0.1), (0.0, 0.05), 0.1)],
)
def test_equal_error_threshold_of_known_gaussians(pos, neg, expected):
    """Two Gaussians cross their error rates where (mu_p - t) / s_p = (t - mu_n) / s_n."""
    rng = np.random.default_rng(0)
    cal = calibrate_scores(rng.normal(*pos, 20_000), rng.normal(*neg, 20_000), method="eer")
    assert cal.threshold == pytest.approx(expected, abs=0.01)
    d_prime = (pos[0] - neg[0]) / np.sqrt((pos[1] ** 2 + neg[1] ** 2) / 2)
    assert cal.separation == pytest.approx(d_prime, rel=0.03)
    assert cal.n_positive == cal.n_negative == 20_000 and cal.method == "eer"


def test_midpoint_negative_tail_and_auc():
    rng = np.random.default_rng(1)
    pos, neg = rng.normal(0.8, 0.05, 20_000), rng.normal(0.4, 0.15, 20_000)
    assert calibrate_scores(pos, neg).threshold == pytest.approx(0.6, abs=0.005)  # default: midpoint of the means
    cal = calibrate_scores(pos, neg, method="negative_tail")
    assert cal.threshold == pytest.approx(0.4 + 2 * 0.15, abs=0.01)
    assert cal.auc == pytest.approx(0.9944, abs=0.002)  # Phi(0.4 / sqrt(0.05^2 + 0.15^2))
    separated = calibrate_scores([0.9, 0.8, 0.85], [0.1, 0.2, 0.3], method="eer")
    assert separated.auc == 1.0 and separated.threshold == pytest.approx(0.55)  # middle of the gap


def test_too_few_pairs_and_unknown_method():
    with pytest.raises(CalibrationError, match="too few pairs"):
        calibrate_scores([0.9, 0.8], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="unknown calibration method 'best'"):
        calibrate_scores([0.9, 0.8, 0.7], [0.1, 0.2, 0.3], method="best")  # type: ignore[arg-type]


def _pool(rng, people: int = 6, crops: int = 8, dim: int = 16, noise: float = 0.3):
    """Two cameras; in each, all people are on screen together for ``crops`` seconds (every pair co-occurs)."""
    centres = rng.standard_normal((people, dim))
    feats, tracklets, cameras, times = [], [], [], []
    for cam in ("c0", "c1"):
        for p in range(people):
            for i in range(crops):
                feats.append(centres[p] + noise * rng.standard_normal(dim))
                tracklets.append(f"{cam}/{p}")
                cameras.append(cam)
                times.append(100.0 * (cam == "c1") + i)
    feats = np.asarray(feats, np.float32)
    return feats / np.linalg.norm(feats, axis=1, keepdims=True), tracklets, cameras, times


def test_fit_on_a_synthetic_pool_separates_and_round_trips():
    feats, tracklets, cameras, times = _pool(np.random.default_rng(2))
    cal = fit_calibration(feats, tracklets, cameras, times)
    assert cal.n_positive == 12 and cal.n_negative == 2 * 15  # 6 people x 2 cameras; C(6, 2) per camera
    assert fit_calibration(feats, tracklets, cameras, times, query_crops=5).n_negative == 2 * 2 * 15  # both ways
    assert cal.negative_mean < cal.threshold < cal.positive_mean and cal.auc == 1.0 and cal.separation > 3
    record = json.loads(json.dumps(cal.to_dict()))
    assert AssociationCalibration.from_dict({**record, "added_later": 1}).threshold == pytest.approx(cal.threshold)
    with pytest.raises(CalibrationError, match="lacks"):
        AssociationCalibration.from_dict({"threshold": 0.5})
    noisier = fit_calibration(*_pool(np.random.default_rng(2), noise=0.8))
    assert noisier.separation < cal.separation  # a worse model separates the pool less
    assert AssociationCalibration.from_json(cal.to_json()) == AssociationCalibration.from_dict(cal.to_dict())
    with pytest.raises(CalibrationError, match="malformed"):
        AssociationCalibration.from_dict({**record, "threshold": "high"})


def test_query_crops_score_only_the_first_crops_of_the_query_side():
    """Two tracklets of one camera on screen together; c0/a's first 2 crops differ from its rest."""
    e = np.eye(3)
    feats = np.array([e[0], e[0], e[1], e[1], e[1], e[1], e[2], e[2], e[2], e[2]])
    tracklets = ["a"] * 6 + ["b"] * 4
    times = [0, 1, 2, 3, 4, 5, 0, 1, 4, 5]
    pairs = tracklet_pairs(tracklets, ["c0"] * 10, times, min_gap=1)
    pos, neg = pair_scores(feats, tracklets, times, pairs, query_crops=2)
    assert pos.tolist() == [0.0, 1.0]  # a: crops 0-1 (e0) vs its second half (e1); b: e2 vs e2
    # a's first 2 crops (e0) vs all of b (e2): 0; b's first 2 (e2) vs all of a (mean of 2 e0 + 4 e1): 0
    assert neg.tolist() == [0.0, 0.0]
    whole_pos, whole_neg = pair_scores(feats, tracklets, times, pairs, query_crops=None)
    assert whole_pos[0] == pytest.approx(1 / np.sqrt(5)) and whole_neg.tolist() == [0.0]  # (2 e0 + e1)/sqrt 5 vs e1


def test_fit_without_cooccurrence_raises():
    feats, tracklets, cameras, times = _pool(np.random.default_rng(3), people=6)
    one_at_a_time = [t + 10 * int(k.split("/")[1]) for t, k in zip(times, tracklets)]
    with pytest.raises(CalibrationError, match="0 cannot-link"):
        fit_calibration(feats, tracklets, cameras, one_at_a_time)


def test_a_calibration_whose_positives_do_not_outrank_its_negatives_is_uninformative():
    assert calibrate_scores([0.9, 0.8, 0.85], [0.2, 0.3, 0.25]).informative
    inverted = calibrate_scores([0.69, 0.60, 0.72], [0.75, 0.80, 0.70])  # ImageNet features on PETS groups
    assert inverted.auc < 0.5 and not inverted.informative
