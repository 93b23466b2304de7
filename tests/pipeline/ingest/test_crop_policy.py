"""Crop policy on synthetic numpy frames: each filter, the rate limit and the JPEG round trip."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from selfreid.pipeline.config.ingest import CropPolicyConfig
from selfreid.pipeline.ingest.crop_policy import CropPolicy, clip_boxes, coverage, encode_jpeg, sharpness
from selfreid.plugins.contracts import Detection, Frame


def textured_frame(index: int = 0, h: int = 480, w: int = 640) -> Frame:
    rng = np.random.default_rng(index)
    image = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)  # sharp everywhere
    return Frame(camera_id="cam", index=index, timestamp=100.0 + index, image=image)


def det(box, conf=0.9, track=1) -> Detection:
    return Detection(box=tuple(float(v) for v in box), confidence=conf, track_id=track)


def policy(**overrides) -> CropPolicy:
    base = dict(
        min_height=64,
        min_width=24,
        min_aspect=1.2,
        max_aspect=5.0,
        min_confidence=0.4,
        min_sharpness=15.0,
        max_overlap=0.5,
        every_k_frames=1,
        jpeg_quality=90,
    )
    return CropPolicy(CropPolicyConfig(**{**base, **overrides}))


def test_good_person_becomes_a_decodable_crop_with_its_metadata():
    frame = textured_frame(7)
    (crop,) = policy().select(frame, [det((100.4, 50.6, 140.2, 170.0), conf=0.8, track=4)])
    assert crop.box == (100.0, 51.0, 140.0, 170.0)
    assert (crop.camera_id, crop.frame_index, crop.timestamp, crop.track_id) == ("cam", 7, 107.0, 4)
    assert crop.confidence == pytest.approx(0.8)
    image = cv2.imdecode(np.frombuffer(crop.jpeg, np.uint8), cv2.IMREAD_COLOR)
    assert image.shape == (119, 40, 3)


@pytest.mark.parametrize(
    ("box", "conf", "reason"),
    [
        ((0, 0, 40, 60), 0.9, "size"),  # too short
        ((0, 0, 20, 100), 0.9, "size"),  # too narrow
        ((0, 0, 100, 100), 0.9, "aspect"),  # square: not a standing person
        ((0, 0, 30, 200), 0.9, "aspect"),  # 6.7 : a sliver
        ((0, 0, 40, 100), 0.3, "confidence"),
    ],
)
def test_geometry_and_confidence_filters(box, conf, reason):
    p = policy()
    assert p.select(textured_frame(), [det(box, conf)]) == []
    assert p.rejected == {reason: 1}


def test_box_outside_the_frame_is_clipped_before_the_size_check():
    p = policy()
    (crop,) = p.select(textured_frame(h=200, w=200), [det((170, -20, 230, 150))])
    assert crop.box == (170.0, 0.0, 200.0, 150.0)
    assert p.select(textured_frame(h=200, w=200), [det((190, 0, 260, 150), track=2)]) == []
    assert p.rejected["size"] == 1


def test_blurred_person_is_skipped():
    frame = textured_frame()
    image = frame.image.copy()
    image[0:200, 0:100] = 128  # flat: zero Laplacian variance
    flat = Frame("cam", 0, 0.0, image)
    p = policy()
    assert p.select(flat, [det((10, 10, 60, 150))]) == []
    assert p.rejected == {"blur": 1}
    assert sharpness(image[0:200, 0:100]) == 0.0 and sharpness(frame.image[0:200, 0:100]) > 1000


def test_occluded_person_is_skipped_and_the_one_in_front_kept():
    front = det((100, 100, 160, 260), track=1)
    behind = det((110, 120, 160, 250), track=2)  # fully inside the front box
    apart = det((400, 100, 450, 240), track=3)
    crops = policy().select(textured_frame(), [front, behind, apart])
    assert sorted(c.track_id for c in crops) == [1, 3]
    cov = coverage(np.array([front.box, behind.box, apart.box]))
    assert cov.tolist() == [0.0, 1.0, 0.0]  # only the box whose feet are lower counts as in front


def test_at_most_one_crop_per_track_every_k_frames():
    p = policy(every_k_frames=3)
    kept = []
    for i in range(9):
        crops = p.select(
            textured_frame(i), [det((10, 10, 60, 150), track=1), det((300, 10, 350, 150), track=2)]
        )
        kept += [(c.frame_index, c.track_id) for c in crops]
    assert kept == [(i, t) for i in (0, 3, 6) for t in (1, 2)]
    assert p.rejected == {"rate": 12}


def test_untracked_detections_never_become_crops():
    p = policy()
    assert p.select(textured_frame(), [Detection((10, 10, 60, 150), 0.9)]) == []
    assert p.rejected == {"untracked": 1}


def test_jpeg_quality_changes_size_and_boxes_are_clipped():
    patch = textured_frame().image[:128, :64]
    assert len(encode_jpeg(patch, 30)) < len(encode_jpeg(patch, 95))
    assert clip_boxes(np.array([[-5.0, 3.4, 700.0, 480.6]]), 640, 480).tolist() == [[0, 3, 640, 480]]
