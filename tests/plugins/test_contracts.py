"""Every registered source, detector and tracker plugin, built through the registry, meets its Protocol."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from selfreid.pipeline.config import CameraConfig
from selfreid.plugins import registry

KINDS = ("sources", "detectors", "trackers")
OPTIONAL = {("sources", "gstreamer"): "gi"}  # plugin -> the optional module it needs
BUILTIN = [
    (p.kind, p.name) for kind in KINDS for p in registry.available(kind) if p.distribution == "selfreid"
]


def source_uri(name: str, tmp_path: Path, shared_data: Path) -> str:
    if name == "images":
        cv2.imwrite(str(tmp_path / "000001.png"), np.zeros((48, 64, 3), np.uint8))
        return str(tmp_path)
    return {
        "file": str(shared_data / "pets09-s2l1" / "vtest.avi"),
        "rtsp": "rtsp://127.0.0.1:1/never-contacted-at-construction",
        "webcam": "0",
        "gstreamer": "videotestsrc num-buffers=1",
    }[name]


def deps(kind: str, name: str, tmp_path: Path, shared_data: Path) -> dict[str, Any]:
    if kind == "sources":
        return {"camera": CameraConfig(id="c1", source=name, uri=source_uri(name, tmp_path, shared_data))}
    if kind == "detectors":
        return {"device": "cpu"}
    return {"frame_rate": 10.0}


def test_every_builtin_kind_is_covered() -> None:
    assert {k for k, _ in BUILTIN} == set(KINDS)
    assert len(BUILTIN) == 10


@pytest.mark.parametrize(("kind", "name"), BUILTIN, ids=[f"{k}/{n}" for k, n in BUILTIN])
def test_plugin_satisfies_its_protocol(kind: str, name: str, tmp_path: Path, shared_data: Path) -> None:
    module = OPTIONAL.get((kind, name))
    if module and importlib.util.find_spec(module) is None:
        pytest.skip(f"optional dependency '{module}' is not installed")
    instance = registry.create(
        kind, name, {}, where=f"test.{kind}", **deps(kind, name, tmp_path, shared_data)
    )
    assert isinstance(instance, registry.KINDS[kind])
    if kind == "sources":
        assert instance.camera_id == "c1" and isinstance(instance.state, str) and instance.reconnects == 0
        instance.close()
