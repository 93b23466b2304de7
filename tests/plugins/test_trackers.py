"""Ultralytics ByteTrack / BoT-SORT behind our Tracker contract, on 20 real frames of vtest."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from selfreid.pipeline.evaluation.detection import iou_matrix
from selfreid.plugins.contracts import Detection, Frame
from selfreid.plugins.detectors.yolox import YoloxOnnxDetector
from selfreid.plugins.trackers.ultralytics_trackers import BotSortTracker, ByteTrackTracker, DetectionsView
from vtest_data import read_vtest, vtest_gt

N_FRAMES = 20
TRACKERS = {
    "bytetrack": lambda: ByteTrackTracker(ByteTrackTracker.Settings(), frame_rate=7.0),
    "botsort": lambda: BotSortTracker(BotSortTracker.Settings(), frame_rate=7.0),
    "botsort+gmc": lambda: BotSortTracker(
        BotSortTracker.Settings(gmc_method="sparseOptFlow"), frame_rate=7.0
    ),
}


@pytest.fixture(scope="module")
def detected(shared_data: Path) -> list[tuple[Frame, list[Detection]]]:
    """Frames 1..20 with real YOLOX detections (fast on CPU)."""
    images = read_vtest(shared_data, N_FRAMES)
    detector = YoloxOnnxDetector(YoloxOnnxDetector.Settings())
    return [(Frame("cam1", i + 1, i / 7.0, img), detector.detect([img])[0]) for i, img in enumerate(images)]


@pytest.mark.parametrize("name", list(TRACKERS))
def test_each_person_keeps_one_track_id(name: str, detected, shared_data: Path) -> None:
    tracker = TRACKERS[name]()
    gt = vtest_gt(shared_data, max_frame=N_FRAMES)
    ids_per_person: dict[int, list[int]] = defaultdict(list)
    for frame, dets in detected:
        tracks = tracker.update(frame, dets)
        assert all(isinstance(t.track_id, int) for t in tracks)
        assert {t.box for t in tracks} <= {d.box for d in dets}  # the detector's boxes, not Kalman estimates
        truth = gt[frame.index]
        if not tracks:
            continue
        overlap = iou_matrix(truth.boxes, np.array([t.box for t in tracks]))
        for person, row in zip(truth.ids, overlap):
            if row.max() >= 0.5:
                ids_per_person[int(person)].append(tracks[int(row.argmax())].track_id)
    followed = {p: ids for p, ids in ids_per_person.items() if len(ids) >= N_FRAMES - 3}
    assert len(followed) >= 3, ids_per_person
    for person, ids in followed.items():
        assert len(set(ids)) == 1, f"{name}: person {person} got track ids {ids}"


def test_ids_are_per_instance_and_empty_frames_are_fine(detected) -> None:
    frame, dets = detected[0]
    a, b = ByteTrackTracker(ByteTrackTracker.Settings()), ByteTrackTracker(ByteTrackTracker.Settings())
    first_a = sorted(t.track_id for t in a.update(frame, dets))
    first_b = sorted(t.track_id for t in b.update(frame, dets))
    assert first_a == first_b == list(range(1, len(first_a) + 1))  # activated on the first frame
    assert a.update(detected[1][0], []) == []


def test_track_buffer_is_scaled_to_the_frame_rate() -> None:
    assert (
        ByteTrackTracker(ByteTrackTracker.Settings(track_buffer=30), frame_rate=7.0)._tracker.max_frames_lost
        == 7
    )
    assert (
        BotSortTracker(BotSortTracker.Settings(track_buffer=30), frame_rate=60.0)._tracker.max_frames_lost
        == 60
    )


def test_detections_view_matches_what_ultralytics_reads() -> None:
    view = DetectionsView.of([Detection((10, 20, 30, 60), 0.9), Detection((0, 0, 4, 8), 0.2)])
    assert np.allclose(view.xywh, [[20, 40, 20, 40], [2, 4, 4, 8]])
    high = view[view.conf > 0.5]
    assert len(high) == 1 and np.allclose(high.xyxy, [[10, 20, 30, 60]]) and high.cls.tolist() == [0.0]
