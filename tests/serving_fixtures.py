"""Fixtures shared by the serving tests (embedder, matcher, services, API): a real MobileNetV2 ReID
model exported to ONNX with the serving metadata, and real crops of vtest.avi."""

from __future__ import annotations

from pathlib import Path

import pytest

__all__ = ["torch_reid_model", "onnx_model_factory", "onnx_model", "vtest_boxes", "vtest_crops"]

_CACHE: dict[str, object] = {}


@pytest.fixture(scope="session")
def torch_reid_model():
    """The ImageNet MobileNetV2 ReID model (offline weights), eval mode, 2 threads."""
    import torch

    from selfreid.reid_model.config import ModelConfig
    from selfreid.reid_model.model import build_model

    if "model" not in _CACHE:
        torch.set_num_threads(2)
        torch.manual_seed(0)
        _CACHE["model"] = build_model(ModelConfig(backbone="mobilenet_v2")).eval()
    return _CACHE["model"]


@pytest.fixture(scope="session")
def onnx_model_factory(torch_reid_model, tmp_path_factory):
    """``make(version) -> Path``: the same network exported under a given model version."""
    from selfreid.reid_model.export import export_onnx

    folder = tmp_path_factory.mktemp("onnx")

    def make(version: str) -> Path:
        key = f"onnx:{version}"
        if key not in _CACHE:
            _CACHE[key] = export_onnx(torch_reid_model, folder / f"{version}.onnx", model_version=version)
        return _CACHE[key]

    return make


@pytest.fixture(scope="session")
def onnx_model(onnx_model_factory) -> Path:
    return onnx_model_factory("v1")


@pytest.fixture(scope="session")
def vtest_boxes(shared_data):
    """Ground-truth boxes of frames 1-400 on two virtual cameras (time split)."""
    from selfreid.pipeline.evaluation.vtest import load_gt, virtual_cameras

    return virtual_cameras(load_gt(shared_data / "pets09-s2l1" / "gt_frames_0001-0400.txt"), "time")


@pytest.fixture(scope="session")
def vtest_crops(shared_data, vtest_boxes):
    """BGR crops of every 8th frame at the ground-truth boxes (280 crops)."""
    from selfreid.pipeline.evaluation.vtest import read_crops

    if "crops" not in _CACHE:
        _CACHE["crops"] = read_crops(shared_data / "pets09-s2l1" / "vtest.avi", vtest_boxes, every_k=8)
    return _CACHE["crops"]
