"""The embed and match services on a real Redis: batching, ack after store, corrupt JPEGs, hot swap, and the
promoted version's calibration reaching the running matcher."""

from __future__ import annotations

import json
import logging
import threading
import time

import cv2
import numpy as np
import pytest

from selfreid.pipeline.config import parse_config
from selfreid.pipeline.runtime.pool import open_pool
from selfreid.pipeline.serving.embed import run_embedder
from selfreid.pipeline.serving.embedding_store import EmbeddingStore
from selfreid.pipeline.serving.match import run_matcher
from selfreid.plugins.contracts import Crop, EmbedderBase


@pytest.fixture()
def cfg(tmp_path):
    return parse_config({"data_dir": str(tmp_path), "pool": {"prefix": "es"},
                         "embedder": {"batch_size": 8, "max_wait_ms": 30}})


def _crops(vtest_crops, start: int, n: int, corrupt: int = 0) -> list[Crop]:
    out = []
    for box, image in vtest_crops[start : start + n]:
        jpeg = cv2.imencode(".jpg", image)[1].tobytes()
        out.append(Crop(box.camera_id, 1.7e9 + box.frame / 7, box.frame, box.box, box.track_id, 0.9, jpeg))
    out += [Crop("A", 1.7e9, 1, (0, 0, 1, 1), 99, 0.9, b"\xff\xd8garbage") for _ in range(corrupt)]
    return out


def _promote(client, version: str, path) -> None:
    record = json.dumps({"version": version, "onnx": str(path), "embedding_dim": 4096})
    client.set("es:models:production", record)
    client.publish("es:models:promoted", record)


def _wait(predicate, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError("condition not reached in time")


def _embedder_status(client, field: str) -> bytes | None:
    """A field of the embedder's status report, ``None`` until it published one (a loaded machine may
    take a while)."""
    keys = list(client.scan_iter("es:status:embedder:*"))
    return client.hget(keys[0], field) if keys else None


def _start(target, cfg, url):
    stop = threading.Event()
    result: dict = {}
    thread = threading.Thread(target=lambda: result.setdefault("stats", target(cfg, url, stop)), daemon=True)
    thread.start()
    return stop, thread, result


def test_embedder_waits_embeds_swaps_and_acks(cfg, redis_server, redis_client, onnx_model_factory, vtest_crops):
    pool = open_pool(cfg, redis_client)
    store = EmbeddingStore(redis_client, "es")
    pool.add(_crops(vtest_crops, 0, 10, corrupt=1))
    stop, thread, result = _start(run_embedder, cfg, redis_server.url)
    try:
        # No production model yet: the embedder says it waits, and embeds and acks nothing.
        _wait(lambda: b"waiting" in (_embedder_status(redis_client, "state") or b""))
        assert len(store) == 0
        _promote(redis_client, "v1", onnx_model_factory("v1"))
        _wait(lambda: len(store) == 10)
        _promote(redis_client, "v2", onnx_model_factory("v2"))
        _wait(lambda: json.loads(_embedder_status(redis_client, "model_version") or "null") == "v2")
        pool.add(_crops(vtest_crops, 10, 6))
        _wait(lambda: len(store) == 16)
    finally:
        stop.set()
        thread.join(timeout=15)
    assert not thread.is_alive()
    stats = result["stats"]
    assert stats.embedded == 16 and stats.rejected == {"corrupt_jpeg": 1} and stats.swaps == 2
    items = store.read("check", "c", 100)
    versions = [i.embedding.model_version for i in items]
    assert versions == ["v1"] * 10 + ["v2"] * 6  # every crop embedded once, tagged with the model that did it
    assert all(i.embedding.vector.shape == (4096,) and abs(np.linalg.norm(i.embedding.vector) - 1) < 1e-4 for i in items)
    assert items[0].jpeg[:2] == b"\xff\xd8" and items[0].embedding.quality == pytest.approx(0.9)
    assert pool.pending("embedder") == 0  # all acked, the corrupt one included
    rejected = redis_client.xrange("es:embedder:rejected")
    assert len(rejected) == 1 and rejected[0][1][b"reason"] == b"corrupt_jpeg"


def test_match_service_consumes_embeddings(cfg, redis_server, redis_client, onnx_model_factory, vtest_crops):
    from selfreid.plugins.contracts import Embedding
    from selfreid.plugins.embedders.onnx_embedder import OnnxEmbedder

    embedder = OnnxEmbedder(OnnxEmbedder.Settings(model=str(onnx_model_factory("v1"))))
    store = EmbeddingStore(redis_client, "es")
    chosen = [(b, c) for b, c in vtest_crops if b.gt_id in (9, 11)][:24]
    chosen += [(b, c) for b, c in vtest_crops if b.gt_id == 15 and b.camera_id == "B"][:2]  # too short to decide early
    vectors = embedder.embed([c for _, c in chosen])
    store.add([(Embedding(f"{b.camera_id}/{b.frame}", b.camera_id, 1.7e9 + b.frame / 7, b.track_id, v, "v1"),
                cv2.imencode(".jpg", c)[1].tobytes()) for (b, c), v in zip(chosen, vectors)])
    stop, thread, result = _start(run_matcher, cfg, redis_server.url)
    try:
        _wait(lambda: redis_client.xlen("es:events") >= 2)
    finally:
        stop.set()
        thread.join(timeout=15)
    assert result["stats"].embeddings == len(chosen) and result["stats"].errors == 0
    assert redis_client.xpending("es:embeddings", "matcher")["pending"] == 0
    assert redis_client.hlen("es:match:thumbs") >= 2 and redis_client.hlen("es:match:v:v1") >= 2
    tracklets = [json.loads(v) for v in redis_client.hvals("es:match:v:v1")]
    assert all(t["global_id"] is not None for t in tracklets)  # short ones were decided at stop


class FlakyEmbedder(EmbedderBase):
    """Fails on any batch holding a crop narrower than 10 px (a stand-in for a runtime error)."""

    model_version, dim = "vx", 3

    def embed(self, images):
        if any(im.shape[1] < 10 for im in images):
            raise RuntimeError("kernel failure")
        return np.ones((len(images), 3), np.float32) / np.sqrt(3)


def test_a_crop_the_model_fails_on_is_rejected_not_retried_forever(cfg, redis_server, redis_client, vtest_crops):
    pool = open_pool(cfg, redis_client)
    crops = _crops(vtest_crops, 0, 4)
    narrow = Crop("A", 1.7e9, 1, (0, 0, 5, 40), 98, 0.9, cv2.imencode(".jpg", np.zeros((40, 5, 3), np.uint8))[1].tobytes())
    pool.add(crops + [narrow])
    stop = threading.Event()
    result = {}
    thread = threading.Thread(target=lambda: result.setdefault("s", run_embedder(cfg, redis_server.url, stop, FlakyEmbedder())))
    thread.start()
    try:
        _wait(lambda: len(EmbeddingStore(redis_client, "es")) == 4)
        _wait(lambda: pool.pending("embedder") == 0)
    finally:
        stop.set()
        thread.join(timeout=15)
    assert result["s"].rejected == {"embed_error": 1} and result["s"].embedded == 4


@pytest.mark.parametrize("pinned", [None, 0.85], ids=["calibrated", "pinned"])
def test_a_promoted_versions_calibration_reaches_the_running_matcher(
        pinned, tmp_path, redis_server, redis_client, onnx_model_factory, caplog):
    """Two tracklets of two cameras at cosine 0.6: linked once version 1's calibration (threshold 0.5)
    reaches the running matcher on promotion; a threshold pinned in the config (0.85) still wins."""
    from selfreid.pipeline.training.registry import open_registry
    from selfreid.plugins.contracts import Embedding
    from selfreid.reid_model.calibration import AssociationCalibration

    cfg = parse_config({"data_dir": str(tmp_path), "pool": {"prefix": "es"},
                        # 4-d stand-in embeddings: no backfill re-embeds the pool with the real model
                        "registry": {"backfill": {"enabled": False}},
                        "matcher": {"matcher": {"params": {"min_crops": 1, "threshold": pinned}}}})
    calibration = AssociationCalibration(0.5, "eer", 0.8, 0.1, 0.2, 0.1, 40, 60, 4.2, 0.99)
    registry = open_registry(cfg, redis_client)
    onnx = onnx_model_factory("v1")
    version = registry.register({"model.onnx": onnx}, embedding_dim=4, calibration=calibration)
    store = EmbeddingStore(redis_client, "es")
    stop, thread, result = _start(run_matcher, cfg, redis_server.url)
    try:
        with caplog.at_level(logging.INFO, logger="selfreid"):
            _wait(lambda: redis_client.exists("es:status:matcher:0"))  # running, before the promotion
            registry.promote(version.version)
            applied = f"version {version.version} now links at cosine >= {pinned or 0.5:.3f}"
            _wait(lambda: applied in caplog.text)
        vectors = {"A": [1.0, 0.0, 0.0, 0.0], "B": [0.6, 0.8, 0.0, 0.0]}
        store.add([(Embedding(f"{cam}/1", cam, 1.7e9 + i * 20, 1, np.float32(v), version.version), b"")
                   for i, (cam, v) in enumerate(vectors.items())])
        _wait(lambda: redis_client.hlen("es:match:gid") == 2)
    finally:
        stop.set()
        thread.join(timeout=15)
    ids = {k.split(b"|")[0]: int(v) for k, v in redis_client.hgetall("es:match:gid").items()}
    assert (ids[b"A"] == ids[b"B"]) is (pinned is None)


def test_a_second_matcher_is_a_standby_that_takes_over(cfg, redis_server, redis_client):
    from selfreid.pipeline.orchestration.run import stream_backlog
    from selfreid.plugins.contracts import Embedding

    store = EmbeddingStore(redis_client, "es")

    def add_and_wait_consumed(track: int) -> None:
        store.add([(Embedding(f"{cam}/{track}", cam, 1.7e9 + track, track, np.float32([1, 0, 0, 0]), "v1"), b"")
                   for cam in ("A", "B")])
        _wait(lambda: stream_backlog(redis_client, store.key, "matcher") == 0)

    first = _start(run_matcher, cfg, redis_server.url)
    _wait(lambda: redis_client.exists("es:matcher:leader"))
    second = _start(run_matcher, cfg, redis_server.url)
    try:
        add_and_wait_consumed(1)
        first[0].set()
        first[1].join(timeout=15)
        add_and_wait_consumed(2)  # only the standby is left to read these
    finally:
        for stop, thread, _ in (first, second):
            stop.set()
            thread.join(timeout=15)
    assert (first[2]["stats"].embeddings, second[2]["stats"].embeddings) == (2, 2)
