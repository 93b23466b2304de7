"""Detection recall/precision against MOT ground truth, ignore rows included."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from selfreid.pipeline.evaluation.detection import detection_recall, iou_matrix, load_mot_gt
from selfreid.plugins.contracts import Detection

GT = """\
1,1,10,10,20,40,1,0,0,0
1,2,100,100,20,40,1,0,0,0
1,3,200,200,20,40,0,0,0,0
2,1,12,10,20,40,1,0,0,0
3,1,14,10,20,40,1,0,0,0
"""


@pytest.fixture()
def gt(tmp_path: Path):
    path = tmp_path / "gt.txt"
    path.write_text(GT)
    return load_mot_gt(path, max_frame=2)


def test_load_mot_gt_converts_to_xyxy_and_keeps_the_flag(gt) -> None:
    assert sorted(gt) == [1, 2]  # max_frame drops frame 3
    assert np.allclose(gt[1].boxes[0], [10, 10, 30, 50])
    assert gt[1].considered.tolist() == [True, True, False] and gt[1].ids.tolist() == [1, 2, 3]


def test_recall_precision_and_ignore_rows(gt) -> None:
    dets = {
        1: [
            Detection((11, 11, 31, 51), 0.9),  # person 1: hit
            Detection((200, 200, 220, 240), 0.8),  # the ignored box: neither hit nor false positive
            Detection((400, 400, 420, 440), 0.7),  # nothing there: false positive
        ],
        2: [(60, 10, 80, 50)],  # plain tuples work too; IoU 0 with person 1: a miss and a false positive
        7: [(0, 0, 5, 5)],  # frames without ground truth are not scored
    }
    score = detection_recall(gt, dets, iou=0.5)
    assert (score.tp, score.fp, score.fn, score.ignored, score.frames) == (1, 2, 2, 1, 2)
    assert score.recall == pytest.approx(1 / 3) and score.precision == pytest.approx(1 / 3)


def test_matching_is_one_to_one_and_respects_the_threshold(gt) -> None:
    twice = {1: [Detection((10, 10, 30, 50), 0.9), Detection((10, 10, 30, 50), 0.8)]}
    assert detection_recall(gt, twice).as_dict()["tp"] == 1 and detection_recall(gt, twice).fp == 1
    shifted = {1: [(20, 10, 40, 50)]}  # IoU 1/3 with person 1
    assert detection_recall(gt, shifted, iou=0.5).tp == 0
    assert detection_recall(gt, shifted, iou=0.3).tp == 1


def test_iou_matrix() -> None:
    m = iou_matrix(np.array([[0, 0, 10, 10]]), np.array([[0, 0, 10, 10], [5, 0, 15, 10], [20, 20, 30, 30]]))
    assert np.allclose(m, [[1.0, 1 / 3, 0.0]])
    assert iou_matrix(np.zeros((0, 4)), np.zeros((2, 4))).shape == (0, 2)
