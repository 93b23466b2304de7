from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from selfreid.reid_model.data import (
    ArrayCropDataset,
    DataError,
    camera_balanced_order,
    image_folder_dataset,
    parse_market_name,
    read_market,
    split_market,
)
from selfreid.reid_model.transforms import INPUT_SPEC, bgr_to_pil, build_transform, preprocess_bgr


def test_market_names() -> None:
    assert parse_market_name("0002_c1s1_000003.jpg") == (2, 1, 1, 3)
    assert parse_market_name("0002_c1s1_000003_1.jpg") == (2, 1, 1, 3)
    assert parse_market_name("-1_c3s2_000151_02.jpg") == (-1, 3, 2, 151)
    assert parse_market_name("0000_c6s4_001234_00.jpg") == (0, 6, 4, 1234)
    assert parse_market_name("Thumbs.db") is None


def test_read_market_and_split(shared_data) -> None:
    items = read_market(shared_data / "con-reid" / "bounding_box_train")
    assert (
        len(items) == 7711
        and len({i.pid for i in items}) == 71
        and {i.camera for i in items} == set(range(1, 7))
    )
    train, query, gallery = split_market(items, 20, seed=0)
    held = {i.pid for i in query}
    assert len(held) == 20 and held == {i.pid for i in gallery} and not held & {i.pid for i in train}
    for pid in held:  # one query camera per id, never in its gallery
        q_cams = {i.camera for i in query if i.pid == pid}
        assert len(q_cams) == 1 and not q_cams & {i.camera for i in gallery if i.pid == pid}
    assert split_market(items, 20, seed=0)[1] == query


def test_read_market_errors(tmp_path) -> None:
    with pytest.raises(DataError):
        read_market(tmp_path / "missing")
    with pytest.raises(DataError, match="no images"):
        read_market(tmp_path)


def test_bgr_and_grayscale_become_rgb() -> None:
    bgr = np.zeros((4, 2, 3), np.uint8)
    bgr[..., 0] = 255  # blue
    assert bgr_to_pil(bgr).getpixel((0, 0)) == (0, 0, 255)
    gray = np.full((4, 2), 9, np.uint8)
    assert bgr_to_pil(gray).getpixel((0, 0)) == (9, 9, 9)
    x = preprocess_bgr([bgr, gray], (8, 4))
    assert x.shape == (2, 3, 8, 4)
    assert x[0, 2].mean() == pytest.approx((1 - INPUT_SPEC.mean[2]) / INPUT_SPEC.std[2], rel=1e-5)


def test_array_dataset_and_groups(tiny_crops) -> None:
    images, cams = tiny_crops
    ds = ArrayCropDataset(images, cams, groups=["a", "b", "a", "", *["c"] * 8])
    ds.transform = build_transform(INPUT_SPEC)
    x, i = ds[11]
    assert x.shape == (3, 256, 128) and i == 11
    assert ds.group_ids()[:4].tolist() == [0, 1, 0, -1]
    with pytest.raises(DataError):
        ArrayCropDataset(images, cams[:3])


def test_image_folder_cameras_from_names_or_subfolders(tmp_path) -> None:
    img = Image.new("L", (8, 16))
    (tmp_path / "a").mkdir()
    img.save(tmp_path / "a" / "0001_c4s1_000010.jpg")
    (tmp_path / "b").mkdir()
    img.save(tmp_path / "b" / "x.png")
    ds = image_folder_dataset(tmp_path)
    assert ds.camera_ids.tolist() == [4, 1]
    assert ds.image(1).mode == "RGB"


def test_camera_balanced_order_visits_cameras_evenly() -> None:
    cams = torch.tensor([0] * 90 + [1] * 10)
    order = camera_balanced_order(cams, torch.Generator().manual_seed(0))
    assert len(order) == 100
    share = (cams[order] == 1).float().mean()
    assert 0.35 < share < 0.65  # vs 0.10 for plain shuffling
    assert set(order[cams[order] == 1].tolist()) == set(range(90, 100))  # the small camera cycles fully


def test_train_transform_augments_repeatably() -> None:
    from selfreid.reid_model.config import AugmentConfig

    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 32, 3), dtype=np.uint8))
    spec = INPUT_SPEC.__class__("RGB", INPUT_SPEC.mean, INPUT_SPEC.std, (64, 32))
    aug = AugmentConfig(flip_p=0.5, pad_crop=4, erasing_p=1.0)
    a = build_transform(spec, aug, torch.Generator().manual_seed(3))(img)
    b = build_transform(spec, aug, torch.Generator().manual_seed(3))(img)
    assert torch.equal(a, b) and not torch.equal(a, build_transform(spec)(img))
    assert (a == 0).all(dim=0).any()  # an erased (or padded) region
