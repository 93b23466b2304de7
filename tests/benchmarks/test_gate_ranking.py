"""G1's cross-camera scores (benchmarks/gate_ranking.py) on crafted tracklets with a known answer."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.gate_ranking import CROSS_SCORES, PARENT, cross_camera_scores, rank_cross_scores
from selfreid.pipeline.training.gate import Holdout

PEOPLE = 3


def _slice(swap: bool) -> tuple[np.ndarray, Holdout]:
    """Three people, each one tracklet of two crops in camera A and in camera B; A's people overlap in
    time (cannot-link). ``swap``: camera B's crops of people 0 and 1 look alike (a confused model)."""
    rng = np.random.default_rng(0)
    identity = np.eye(8)[:PEOPLE]
    rows, cams, groups, times = [], [], [], []
    for cam in ("A", "B"):
        for person in range(PEOPLE):
            look = identity[person] if not (swap and cam == "B" and person == 1) else identity[0]
            for t in (0.0, 5.0):
                rows.append(look + 0.01 * rng.standard_normal(8))
                cams.append(cam)
                groups.append(f"{cam}/{person}")
                times.append(t)
    emb = np.asarray(rows, dtype=np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    return emb, Holdout([np.zeros((4, 2, 3), np.uint8)] * len(rows), cams, groups, times)


def test_a_consistent_model_scores_perfectly() -> None:
    emb, held = _slice(swap=False)
    scores = cross_camera_scores(emb, held, threshold=0.5, min_gap=1.0)
    assert scores["cycle"] == 1.0
    assert scores["excess_matches"] == 0.0
    assert scores["shared_best"] == 0.0
    assert scores["margin"] == pytest.approx(1.0, abs=0.05)


def test_a_confused_model_scores_lower_on_every_cross_camera_score() -> None:
    good = cross_camera_scores(*_slice(swap=False), threshold=0.5, min_gap=1.0)
    bad = cross_camera_scores(*_slice(swap=True), threshold=0.5, min_gap=1.0)
    for name in good:
        assert bad[name] < good[name], name


def test_ranking_uses_the_plain_rule_against_the_parent() -> None:
    def row(label: float, score: float) -> dict[str, float]:
        return {"label": label, **{f"cross_{s}": score for s in CROSS_SCORES}}

    table = {PARENT: row(0.5, 0.5), "better": row(0.7, 0.9), "worse": row(0.3, 0.1)}
    ranked = rank_cross_scores(table)
    assert ranked["cycle"] == {"spearman": pytest.approx(1.0), "decisions_correct": 1.0}
