"""Every built-in plugin, built through the registry, meets its Protocol: every member the pipeline uses."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from selfreid.pipeline.config import CameraConfig
from selfreid.plugins import contracts, registry

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


STATEFUL = {"pools": "redis_streams", "embedders": "onnx", "indexes": "faiss", "matchers": "cross_camera"}
STATEFUL_CASES = sorted(STATEFUL.items())


def test_every_builtin_plugin_of_the_other_kinds_is_covered() -> None:
    others = {p.kind for p in registry.available() if p.distribution == "selfreid"} - set(KINDS)
    assert others == set(STATEFUL) | {"trainers"}  # the trainer is no pipeline stage: SCL trains in-process
    builtin = {(p.kind, p.name) for p in registry.available() if p.distribution == "selfreid"}
    assert {(kind, name) for kind, name in builtin if kind in STATEFUL} == set(STATEFUL.items())


@pytest.mark.parametrize(("kind", "name"), STATEFUL_CASES, ids=[f"{k}/{n}" for k, n in STATEFUL_CASES])
def test_stateful_plugin_satisfies_its_protocol(kind: str, name: str, redis_client: Any) -> None:
    deps: dict[str, Any] = {
        "pools": {"client": redis_client, "prefix": "ct"},
        "matchers": {"client": redis_client, "prefix": "ct",
                     "index_factory": lambda: registry.create("indexes", "faiss")},
    }.get(kind, {})
    instance = registry.create(kind, name, {}, where=f"test.{kind}", **deps)
    assert isinstance(instance, registry.KINDS[kind])
    missing = [m for m in registry.protocol_members(registry.KINDS[kind]) if not hasattr(instance, m)]
    assert missing == []


def test_base_classes_give_every_optional_member() -> None:
    """A plugin subclassing its stage's base class writes only the core and meets the whole Protocol."""

    class Fixed(contracts.EmbedderBase):
        model_version, dim = "f-1", 2

        def embed(self, images: Any) -> np.ndarray:
            return np.tile(np.float32([0.6, 0.8]), (len(images), 1))

    class Still(contracts.SourceBase):
        camera_id = "c1"

        def frames(self) -> Any:
            yield contracts.Frame("c1", 1, 0.0, np.zeros((2, 2, 3), np.uint8))

    class AtOnce(contracts.MatcherBase):
        def update(self, embeddings: Any) -> list[contracts.Assignment]:
            return []

        def prune(self, now: float | None = None, max_age_s: float | None = None) -> int:
            return 0

        def tracklet_of(self, camera_id: str, track_id: int) -> str | None:
            return None

    embedder, source, matcher = Fixed(), Still(), AtOnce()
    assert isinstance(embedder, contracts.Embedder) and isinstance(source, contracts.Source)
    assert isinstance(matcher, contracts.Matcher)
    vectors, version = embedder.embed_versioned([None])
    assert version == "f-1" and vectors.shape == (1, 2) and not embedder.follows_registry and embedder.loaded
    with pytest.raises(NotImplementedError, match="fixed model"):
        embedder.load("other.onnx")
    assert (source.live, dict(source.counters), source.last_error, source.reconnects) == (False, {}, None, 0)
    matcher.set_calibration(None, "1")  # accepted, ignored
    assert matcher.flush() == [] and dict(matcher.rejected) == {}
    with pytest.raises(TypeError, match="abstract"):
        contracts.MatcherBase()  # type: ignore[abstract]
