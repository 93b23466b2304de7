"""Helpers shared by the source, detector and tracker tests: frames and ground truth of PETS09 S2L1."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from selfreid.pipeline.evaluation.detection import GroundTruth, load_mot_gt

__all__ = ["vtest_path", "read_vtest", "vtest_gt"]


def vtest_path(shared_data: Path) -> Path:
    return shared_data / "pets09-s2l1" / "vtest.avi"


def read_vtest(shared_data: Path, n: int) -> list[np.ndarray]:
    """The first ``n`` decoded frames (frame 1 first), read directly with OpenCV."""
    import cv2

    cap = cv2.VideoCapture(str(vtest_path(shared_data)))
    frames = []
    while len(frames) < n:
        ok, image = cap.read()
        assert ok, f"vtest.avi ended before frame {len(frames) + 1}"
        frames.append(image)
    cap.release()
    return frames


def vtest_gt(shared_data: Path, max_frame: int) -> dict[int, GroundTruth]:
    return load_mot_gt(shared_data / "pets09-s2l1" / "gt_frames_0001-0400.txt", max_frame=max_frame)
