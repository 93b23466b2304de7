"""Validation gate on real exported models and real Con-ReID tracklets."""

from __future__ import annotations

import copy
from dataclasses import replace

import numpy as np
import pytest
import torch

from conreid_tracks import conreid_tracks
from selfreid.pipeline.config.service import GateConfig
from selfreid.pipeline.training.gate import (
    Holdout,
    _compare,
    calibration_rows,
    calibration_veto,
    decide,
    evidence_text,
    labelled_scores,
    nonfinite_parameters,
    paired_delta,
    pool_scores,
    proxy_scores,
    run_gate,
)
from selfreid.reid_model.calibration import calibrate_scores
from selfreid.reid_model.config import ModelConfig
from selfreid.reid_model.export import export_onnx
from selfreid.reid_model.model import build_model


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model(ModelConfig(backbone="mobilenet_v2", input_size=(128, 64))).eval()


@pytest.fixture(scope="module")
def baseline_onnx(model, tmp_path_factory):
    return export_onnx(model, tmp_path_factory.mktemp("base") / "model.onnx", None, "1")


@pytest.fixture(scope="module")
def holdout(shared_data) -> Holdout:
    tracks = conreid_tracks(shared_data, persons=6, track_len=3, per_camera=1, first=40)
    return Holdout([t.image() for t in tracks], [t.camera_id for t in tracks], [t.group for t in tracks])


def test_proxy_scores_on_synthetic_embeddings():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(6, 32))
    emb = np.repeat(centres, 3, axis=0) + 0.05 * rng.normal(size=(18, 32))
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    groups = [f"g{i // 3}" for i in range(18)]
    cams = ["c1", "c2"] * 9
    good = proxy_scores(emb.astype(np.float32), cams, groups, k=3)
    assert good["track_nn_agreement"] == 1.0
    assert good["effective_rank"] > 4 and abs(good["mean_cosine"]) < 0.5
    shuffled = proxy_scores(emb[rng.permutation(18)].astype(np.float32), cams, groups, k=3)
    assert shuffled["track_nn_agreement"] < 0.5
    collapsed = np.tile(emb[:1], (18, 1)) + 1e-4 * rng.normal(size=(18, 32))
    bad = proxy_scores(collapsed.astype(np.float32), cams, groups)
    assert bad["mean_cosine"] > 0.99 and bad["effective_rank"] < 1.1


def test_same_model_passes_with_numbers(model, baseline_onnx, holdout):
    decision = run_gate(baseline_onnx, baseline_onnx, holdout, GateConfig(), candidate_model=model)
    assert decision.passed, decision.reason
    assert decision.candidate["score"] == pytest.approx(decision.baseline["score"])
    assert decision.candidate["tracklets_with_pairs"] >= 10
    assert 0.0 < decision.candidate["track_nn_agreement"] <= 1.0


def test_nan_weights_are_rejected_before_anything_runs(model, baseline_onnx, holdout):
    broken = copy.deepcopy(model)
    with torch.no_grad():
        broken.global_head[0].weight[0, :3] = float("nan")
    assert nonfinite_parameters(broken) == 3
    decision = run_gate(baseline_onnx, baseline_onnx, holdout, GateConfig(), candidate_model=broken)
    assert not decision.passed and decision.reason.startswith("non-finite weights: 3")


def test_collapsed_candidate_is_rejected(model, baseline_onnx, holdout, tmp_path):
    collapsed = copy.deepcopy(model)
    torch.manual_seed(3)
    with torch.no_grad():  # every head outputs its BN bias: one embedding for everybody
        for head in [collapsed.global_head, *collapsed.local_heads]:
            head[0].weight.zero_()
            head[0].bias.zero_()
            head[1].bias.copy_(torch.randn_like(head[1].bias))
    path = export_onnx(collapsed, tmp_path / "collapsed.onnx", None, "2")
    decision = run_gate(path, baseline_onnx, holdout, GateConfig(), candidate_model=collapsed)
    assert not decision.passed and "collapsed embeddings" in decision.reason
    assert decision.candidate["mean_cosine"] > 0.99


def test_decision_rule_on_scores():
    cfg = GateConfig(max_proxy_drop=0.02, proxy_z=1.64, max_labelled_drop=0.0, validation_dir="val")
    base = {"mean_cosine": 0.3, "effective_rank": 50.0, "score": 0.60, "labelled_mAP": 0.4, "labelled_rank1": 0.7}

    def cand(delta: float, se: float, **changes) -> dict:
        return {**base, "score": base["score"] + delta, "score_delta": delta, "score_delta_se": se, **changes}

    assert _compare(cand(0.0, 0.0), base, cfg) is None
    assert _compare(cand(-0.01, 0.001), base, cfg) is None, "within the tolerance"
    assert "label-free score dropped" in _compare(cand(-0.10, 0.02), base, cfg), "large and significant"
    assert _compare(cand(-0.10, 0.10), base, cfg) is None, "one flipped crop out of ten is not evidence"
    strict = cfg.model_copy(update={"proxy_z": 0.0})
    assert "label-free score dropped" in _compare(cand(-0.10, 0.10), base, strict)
    assert "mAP dropped" in _compare(cand(0.0, 0.0, labelled_mAP=0.39), base, cfg)
    assert "rank1 dropped" in _compare(cand(0.0, 0.0, labelled_rank1=0.69), base, cfg)
    assert "effective rank" in _compare(cand(0.0, 0.0, effective_rank=1.5), base, cfg)
    assert _compare({k: v for k, v in base.items()}, {}, cfg) is None, "no production model: absolute checks only"


def test_paired_delta_uses_only_crops_both_judge():
    cand = np.array([1.0, 0.0, 1.0, np.nan, 1.0])
    base = np.array([1.0, 1.0, 1.0, 1.0, np.nan])
    delta, se = paired_delta(cand, base)
    assert delta == pytest.approx(-1 / 3) and se == pytest.approx(np.std([0, -1, 0], ddof=1) / np.sqrt(3))
    assert paired_delta(np.array([0.5]), np.array([1.0]))[1] == float("inf")


def test_labelled_validation_set(model, baseline_onnx, holdout, shared_data, tmp_path):
    tracks = conreid_tracks(shared_data, persons=5, track_len=2, per_camera=1, first=10)
    (tmp_path / "query").mkdir()
    (tmp_path / "bounding_box_test").mkdir()
    first_cam = {}
    for t in tracks:  # one camera per person is the query, the others the gallery
        folder = "query" if first_cam.setdefault(t.pid, t.camera_id) == t.camera_id else "bounding_box_test"
        (tmp_path / folder / t.path.name).symlink_to(t.path)
    scores = labelled_scores(baseline_onnx, tmp_path)
    assert 0.0 < scores["mAP"] <= 1.0 and 0.0 <= scores["rank1"] <= 1.0
    decision = run_gate(baseline_onnx, baseline_onnx, holdout, GateConfig(validation_dir=str(tmp_path)))
    assert decision.passed and decision.candidate["labelled_mAP"] == pytest.approx(scores["mAP"])


def _timed(holdout: Holdout, tracks) -> Holdout:
    """The slice with capture times: every tracklet of a camera starts at 0 (they co-occur, so they
    cannot link), one crop every 2 s."""
    rank: dict[str, int] = {}
    times = []
    for t in tracks:
        rank[t.group] = rank.get(t.group, -1) + 1
        times.append(2.0 * rank[t.group])
    return Holdout(holdout.images, holdout.camera_ids, holdout.groups, times)


def _synthetic_slice(noise: float, seed: int = 0) -> tuple[np.ndarray, Holdout]:
    """8 people x 2 cameras, one 4-crop tracklet each; tracklets of one camera overlap in time."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(8, 32))
    emb, cams, groups, times = [], [], [], []
    for person in range(8):
        for cam in ("c1", "c2"):
            for k in range(4):
                emb.append(centres[person] + noise * rng.normal(size=32))
                cams.append(cam), groups.append(f"{cam}/{person}"), times.append(2.0 * k)
    emb = np.asarray(emb)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    return emb.astype(np.float32), Holdout([None] * len(emb), cams, groups, times)


def test_pool_scores_follow_identity_quality_on_synthetic_slices():
    good_emb, slice_ = _synthetic_slice(noise=0.2)
    poor_emb, _ = _synthetic_slice(noise=1.5)
    good, poor = pool_scores(good_emb, slice_), pool_scores(poor_emb, slice_)
    assert good.values["score_half_retrieval"] == 1.0 and good.values["score_cannot_link"] == 1.0
    assert good.values["score_separation"] > poor.values["score_separation"] > 0
    assert good.values["score_half_retrieval"] > poor.values["score_half_retrieval"]
    assert good.calibration is not None and good.calibration.n_positive == 16
    assert good.calibration.n_negative == 2 * 28, "every pair of one camera's 8 co-occurring tracklets"
    untimed = pool_scores(good_emb, Holdout(slice_.images, slice_.camera_ids, slice_.groups))
    assert np.isnan(untimed.values["score_separation"]) and untimed.calibration is None
    assert untimed.values["score_track_nn"] == good.values["score_track_nn"] > 0, "needs no timestamps"


def test_too_little_evidence_keeps_the_serving_model(tmp_path):
    emb, slice_ = _synthetic_slice(noise=0.2)
    cfg = GateConfig(min_tracklets=17)  # the slice has 16 usable tracklets
    missing = tmp_path / "never-read.onnx"  # the verdict comes before any embedding
    decision = run_gate(missing, missing, slice_, cfg)
    assert not decision.passed and decision.verdict == "not_enough_evidence"
    assert decision.reason.startswith("not enough evidence: 16 usable held-out tracklets")
    assert "gate.min_tracklets is 17" in decision.reason and "serving model stays" in decision.reason
    assert decision.evidence == {"crops": 64, "tracklets": 16, "usable_tracklets": 16, "positive_pairs": 16,
                                 "cannot_link_pairs": 56}
    assert decision.as_dict()["evidence"]["usable_tracklets"] == 16
    two = Holdout(slice_.images[:8], slice_.camera_ids[:8], slice_.groups[:8], slice_.times[:8])
    assert run_gate(missing, missing, two, GateConfig()).evidence["usable_tracklets"] == 2, "issue 15's case"


def test_without_a_serving_model_there_is_no_evidence_minimum(model, baseline_onnx, holdout):
    decision = run_gate(baseline_onnx, None, holdout, GateConfig(min_tracklets=1000), candidate_model=model)
    assert decision.passed, decision.reason
    assert decision.evidence["usable_tracklets"] < 1000


def test_gate_calibrates_both_models_on_the_slice(model, baseline_onnx, holdout, shared_data):
    tracks = conreid_tracks(shared_data, persons=6, track_len=3, per_camera=1, first=40)
    timed = _timed(holdout, tracks)
    decision = run_gate(baseline_onnx, baseline_onnx, timed, GateConfig(), candidate_model=model)
    assert decision.passed and decision.verdict == "promote", decision.reason
    assert decision.candidate["score_name"] == "separation" and decision.reason.startswith("passed: separation")
    assert decision.candidate["score_delta"] == pytest.approx(0.0, abs=1e-6)
    assert decision.calibration is not None and decision.calibration == decision.baseline_calibration
    assert decision.calibration["n_positive"] == decision.evidence["positive_pairs"] > 0
    assert decision.calibration["threshold"] == pytest.approx(decision.candidate["threshold"], abs=1e-5)


def test_report_rows_show_both_calibrations_and_the_counts(tmp_path):
    emb, slice_ = _synthetic_slice(noise=0.2)
    decision = run_gate(tmp_path / "x.onnx", tmp_path / "x.onnx", slice_, GateConfig(min_tracklets=99)).as_dict()
    assert calibration_rows(decision) == []
    assert evidence_text(decision) == ("held-out slice: 64 crops, 16 tracklets (16 usable), 16 positive pairs, "
                                       "56 cannot-link pairs")
    scores = pool_scores(emb, slice_)
    rows = calibration_rows({"calibration": scores.calibration.to_dict(), "baseline_calibration": None})
    assert rows[0]["candidate"] == pytest.approx(scores.calibration.threshold, abs=1e-6) and rows[0]["baseline"] is None
    assert [r["measure"].split()[0] for r in rows] == ["match", "separation", "P(positive", "positive", "cannot-link"]


def test_a_candidate_with_an_uninformative_calibration_of_its_own_is_vetoed():
    assert calibration_veto(None) is None  # too few pairs: the evidence rules decide
    assert calibration_veto(calibrate_scores([0.9, 0.8, 0.85], [0.2, 0.3, 0.25])) is None
    reason = calibration_veto(calibrate_scores([0.69, 0.60, 0.72], [0.75, 0.80, 0.70]))
    assert reason is not None and "uninformative (AUC 0.11)" in reason
    good_emb, slice_ = _synthetic_slice(noise=0.2)
    good, poor = pool_scores(good_emb, slice_), pool_scores(_synthetic_slice(noise=1.5)[0], slice_)
    assert decide(good, poor, GateConfig()) == (None, "separation")
    inverted = replace(good, calibration=calibrate_scores([0.69, 0.60, 0.72], [0.75, 0.80, 0.70]))
    assert decide(inverted, poor, GateConfig())[0] == reason, "the benchmarks' gate decides as run_gate does"
