from __future__ import annotations

import numpy as np
import pytest
import torch

from selfreid.reid_model.evaluation import distance_matrix, evaluate, evaluate_features


def _brute_force(dist: np.ndarray, q_pids, g_pids, q_cams, g_cams) -> tuple[float, list[float]]:
    """Per-query reference (the classic Market eval loop)."""
    aps, cmc = [], np.zeros(10)
    for i in range(len(q_pids)):
        order = np.argsort(dist[i], kind="stable")
        keep = [
            j for j in order if not ((g_pids[j] == q_pids[i] and g_cams[j] == q_cams[i]) or g_pids[j] == -1)
        ]
        hits = [g_pids[j] == q_pids[i] for j in keep]
        if not any(hits):
            continue
        first = hits.index(True)
        cmc[first:] += 1
        found, precisions = 0, []
        for k, h in enumerate(hits):
            if h:
                found += 1
                precisions.append(found / (k + 1))
        aps.append(np.mean(precisions))
    return float(np.mean(aps)), list(cmc / len(aps))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_vectorised_evaluation_equals_brute_force(seed: int) -> None:
    rng = np.random.default_rng(seed)
    q_pids, q_cams = rng.integers(1, 6, 15), rng.integers(0, 3, 15)
    g_pids, g_cams = rng.integers(-1, 6, 60), rng.integers(0, 3, 60)  # -1 junk, 0 distractor
    dist = rng.random((15, 60))
    result = evaluate(torch.tensor(dist), q_pids, g_pids, q_cams, g_cams)
    ap, cmc = _brute_force(dist, q_pids, g_pids, q_cams, g_cams)
    assert result["mAP"] == pytest.approx(ap)
    assert [result["rank1"], result["rank5"], result["rank10"]] == pytest.approx([cmc[0], cmc[4], cmc[9]])


def test_same_camera_same_id_is_ignored_and_camera_penalty_is_opt_in() -> None:
    q = torch.tensor([[1.0, 0.0]])
    g = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.8, 0.2]])
    # gallery 0: same id same camera (ignored); 1: wrong id, same camera; 2: true match, other camera
    args = ([7], [7, 3, 7], [0], [0, 0, 1])
    plain = evaluate_features(q, g, *args)
    assert plain["rank1"] == 0.0 and plain["mAP"] == pytest.approx(0.5)
    penalised = evaluate_features(q, g, *args, camera_penalty=1.0)
    assert penalised["rank1"] == 1.0


def test_distances() -> None:
    a, b = torch.tensor([[3.0, 4.0]]), torch.tensor([[3.0, 4.0], [0.0, 1.0]])
    assert distance_matrix(a, b).tolist()[0] == pytest.approx([0.0, 0.2])
    assert distance_matrix(a, b, "euclidean").tolist()[0] == pytest.approx([0.0, 18**0.5])
