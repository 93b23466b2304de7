"""The backfill on a real Redis: a promoted version's gallery rebuilt from the pool, ids carried over,
bounded, resumable, and never counting a crop the live embedder will still embed."""

from __future__ import annotations

import json
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from selfreid.pipeline.config import parse_config
from selfreid.pipeline.config.service import BackfillConfig
from selfreid.pipeline.runtime.pool import open_pool
from selfreid.pipeline.runtime.status import read_status
from selfreid.pipeline.serving.backfill import (
    Backfill,
    backfill_hook,
    backfill_progress,
    run_backfill,
    serving_statement,
)
from selfreid.pipeline.training.registry import ModelRegistry, open_registry, production_key
from selfreid.plugins.contracts import Crop, Embedding
from selfreid.plugins.matchers.cross_camera import CrossCameraMatcher
from selfreid.plugins.matchers.gallery_store import GalleryStore, TrackletRecord, tracklet_key

T0 = 1.7e9
DIM = 8


class FakeEmbedder:
    """A deterministic 'model': the crop's mean colour spread over DIM dimensions."""

    model_version = "v2"
    dim = DIM

    def __init__(self) -> None:
        self.calls = 0

    def embed(self, images):
        self.calls += len(images)
        out = np.stack([np.resize(img.reshape(-1, 3).mean(0), DIM) + 1.0 for img in images]).astype(np.float32)
        return out / np.linalg.norm(out, axis=1, keepdims=True)

    def embed_versioned(self, images):
        return self.embed(images), self.model_version


@pytest.fixture()
def cfg(tmp_path):
    return parse_config({"data_dir": str(tmp_path), "pool": {"prefix": "bf"}})


def _jpeg(shade: int) -> bytes:
    return cv2.imencode(".jpg", np.full((32, 16, 3), shade, np.uint8))[1].tobytes()


# two tracklets on camera A (tracks 1 and 2), one on B (track 1, the same person as A/1), 4 crops each,
# and one crop of A/9 that no tracklet holds (never matched)
LAYOUT = [("A", 1, 0.0, 40), ("A", 2, 1.0, 120), ("B", 1, 30.0, 45)]


def _crops() -> list[Crop]:
    out = [Crop(cam, T0 + start + k, k, (0, 0, 16, 32), track, 0.9, _jpeg(shade + k))
           for cam, track, start, shade in LAYOUT for k in range(4)]
    return out + [Crop("A", T0 + 2.5, 9, (0, 0, 16, 32), 9, 0.9, _jpeg(200))]


def _site(cfg, client, deliver: int | None = None, version: str = "v1"):
    """The pool with the crops, the live embedder having been given ``deliver`` of them (default all),
    and ``version``'s gallery of the three tracklets (global ids 1, 2, 1)."""
    pool = open_pool(cfg, client)
    pool.add(_crops())
    for camera in pool.cameras():
        client.xgroup_create(pool.stream_key(camera), "embedder", id="0")
    if deliver != 0:
        pool.ack("embedder", [c.crop_id for c in pool.read("embedder", "live", deliver or 100)])
    gallery = GalleryStore(client, "bf")
    records = [TrackletRecord(tracklet_key(cam, track, T0 + start), cam, track, T0 + start, T0 + start + 3, 4, 4.0,
                              np.ones(4, np.float32), gid)
               for (cam, track, start, _), gid in zip(LAYOUT, (1, 2, 1))]
    gallery.register_version(version, 4)
    gallery.save_tracklets(version, records)
    return pool, gallery


def test_backfill_rebuilds_the_gallery_with_the_ids_carried_over(cfg, redis_client):
    pool, gallery = _site(cfg, redis_client)
    embedder = FakeEmbedder()
    epoch = gallery.epoch()
    progress = Backfill(redis_client, "bf", pool, embedder, "v2", BackfillConfig(batch_size=3)).run()

    assert progress.state == "done" and progress.embedded == 12 and progress.skipped == 1
    assert (progress.tracklets, progress.carried, progress.completeness) == (3, 3, 1.0)
    records = {r.key: r for r in gallery.load_tracklets("v2")}
    assert {r.key: (r.global_id, r.count) for r in records.values()} == {
        tracklet_key(cam, track, T0 + start): (gid, 4) for (cam, track, start, _), gid in zip(LAYOUT, (1, 2, 1))}
    assert all(r.feature_sum.shape == (DIM,) and abs(r.end - r.start - 3) < 1e-6 for r in records.values())
    assert "v2" in gallery.versions() and gallery.epoch() == epoch + 1  # the matcher reloads
    # the matcher serves version 2 from the backfilled gallery: person 1 is on both cameras already, and
    # a live crop of a tracklet that goes on after the switch joins it with its id
    gallery.save_segments({"A|1": {"key": tracklet_key("A", 1, T0), "last_ts": T0 + 3}})
    matcher = CrossCameraMatcher(client=redis_client, prefix="bf")
    assert sorted(r.camera_id for r in matcher.identities("v2")[1]) == ["A", "B"]
    live = Embedding("A/live", "A", T0 + 4, 1, embedder.embed([np.full((32, 16, 3), 44, np.uint8)])[0], "v2")
    [assignment] = matcher.update([live])
    assert (assignment.global_id, assignment.is_new) == (1, False)
    assert {r.key: r.count for r in gallery.load_tracklets("v2")}[tracklet_key("A", 1, T0)] == 5
    assert "gallery complete: 3 of 3 earlier tracklets carried over" in serving_statement(redis_client, "bf", "v2")


def test_backfill_leaves_crops_the_live_embedder_was_not_given_and_catches_up(cfg, redis_client):
    pool, gallery = _site(cfg, redis_client, deliver=0)  # nothing delivered yet: the live path embeds it all
    job = Backfill(redis_client, "bf", pool, FakeEmbedder(), "v2", BackfillConfig(batch_size=2))
    job.begin()
    assert job.step() == 0 and gallery.load_tracklets("v2") == []
    # the live embedder takes camera A's 5 oldest crops (under v1) before the switch
    redis_client.xreadgroup("embedder", "live", {pool.stream_key("A"): ">"}, count=5)
    progress = job.run()
    assert (progress.embedded, progress.skipped) == (5, 0)  # A/1 (4 crops) and the first of A/2
    assert sum(r.count for r in gallery.load_tracklets("v2")) == progress.embedded


def test_backfill_resumes_after_a_crash_without_counting_twice(cfg, redis_client):
    pool, gallery = _site(cfg, redis_client)
    first = Backfill(redis_client, "bf", pool, FakeEmbedder(), "v2", BackfillConfig(batch_size=3))
    first.begin()
    first.step()
    first.step()  # ... and the process dies here
    assert backfill_progress(redis_client, "bf", "v2").state == "running"
    assert "being rebuilt" in serving_statement(redis_client, "bf", "v2")
    embedder = FakeEmbedder()
    progress = Backfill(redis_client, "bf", pool, embedder, "v2", BackfillConfig(batch_size=3)).run()
    assert progress.state == "done" and progress.embedded + progress.skipped == 13
    assert embedder.calls < 12  # the batches done before the crash were not embedded again
    assert sorted(r.count for r in gallery.load_tracklets("v2")) == [4, 4, 4]


def test_backfill_is_bounded_and_says_how_complete_the_gallery_is(cfg, redis_client):
    pool, gallery = _site(cfg, redis_client)
    progress = Backfill(redis_client, "bf", pool, FakeEmbedder(), "v2", BackfillConfig(max_crops=4, batch_size=4)).run()
    assert progress.state == "partial" and progress.embedded + progress.skipped == 4
    assert progress.carried < progress.tracklets
    statement = serving_statement(redis_client, "bf", "v2")
    assert statement.startswith("Model version v2 serves; gallery ") and "% complete" in statement


def test_a_version_whose_gallery_is_kept_only_gains_the_tracklets_it_lacks(cfg, redis_client):
    pool, gallery = _site(cfg, redis_client)
    kept = TrackletRecord(tracklet_key("A", 1, T0), "A", 1, T0, T0 + 3, 1, 1.0, np.ones(DIM, np.float32), 1)
    gallery.register_version("v2", DIM)
    gallery.save_tracklets("v2", [kept])
    progress = Backfill(redis_client, "bf", pool, FakeEmbedder(), "v2").run()
    assert progress.embedded == 8 and progress.carried == 3
    assert {r.key: r.count for r in gallery.load_tracklets("v2")}[kept.key] == 1


def test_nothing_to_carry_over_is_said_so(cfg, redis_client):
    pool = open_pool(cfg, redis_client)
    pool.add(_crops())
    embedder = FakeEmbedder()
    progress = Backfill(redis_client, "bf", pool, embedder, "v1").run()
    assert progress.state == "done" and embedder.calls == 0
    assert serving_statement(redis_client, "bf", "v1").startswith("Model version v1 serves; no earlier tracklet")
    assert serving_statement(redis_client, "bf", None) == "No model version serves yet."


def test_the_registry_hook_backfills_and_never_blocks_a_promotion(cfg, redis_client, tmp_path):
    _site(cfg, redis_client)
    progress = run_backfill(cfg, redis_client, "v2", "v2.onnx", embedder=FakeEmbedder())
    assert progress.state == "done" and read_status(redis_client, "bf")["backfill:v2"]["state"] == "done"
    assert run_backfill(cfg, redis_client, "v2", "v2.onnx", BackfillConfig(enabled=False)) is None
    backfill_hook(cfg, redis_client)(SimpleNamespace(version="v3", onnx=tmp_path / "missing.onnx"))  # no raise
    assert backfill_progress(redis_client, "bf", "v3").state == "failed"
    assert "gallery rebuild failed (ONNX model not found" in serving_statement(redis_client, "bf", "v3")


def test_no_backfill_for_an_embedder_with_a_fixed_model(cfg, redis_client, onnx_model):
    """The Embedder contract (``follows_registry``) decides: a fixed model never serves the promoted version."""
    _site(cfg, redis_client)
    fixed = cfg.model_copy(update={"embedder": cfg.embedder.model_copy(update={"params": {"model": str(onnx_model)}})})
    assert run_backfill(fixed, redis_client, "v2", "v2.onnx") is None
    assert backfill_progress(redis_client, "bf", "v2") is None


def test_promoting_through_the_registry_backfills_before_the_switch(cfg, redis_client, onnx_model_factory):
    """Blue/green end to end: `open_registry(...).promote("2")` returns with version 2's gallery already
    holding the earlier tracklets under their global ids, and only then does version 2 serve."""
    import onnx

    _site(cfg, redis_client, version="1")
    plain = ModelRegistry(cfg.path(cfg.registry.directory), redis_client, "bf")  # no hook: set the scene
    for version in ("1", "2"):
        path = onnx_model_factory(version)
        dim = int({p.key: p.value for p in onnx.load(str(path)).metadata_props}["embedding_dim"])
        plain.register({"model.onnx": path}, embedding_dim=dim, version=version)
    plain.promote("1")
    switched: list[str] = []
    registry = open_registry(cfg, redis_client)
    hook = registry.before_switch
    assert hook is not None

    def spy(target):
        hook(target)
        switched.append(json.loads(redis_client.get(production_key("bf")))["version"])  # still version 1

    registry.before_switch = spy
    assert registry.promote("2").version == "2"

    assert switched == ["1"]
    assert json.loads(redis_client.get(production_key("bf")))["version"] == "2"
    records = GalleryStore(redis_client, "bf").load_tracklets("2")
    assert {r.key: (r.global_id, r.count) for r in records} == {
        tracklet_key(cam, track, T0 + start): (gid, 4) for (cam, track, start, _), gid in zip(LAYOUT, (1, 2, 1))}
    assert backfill_progress(redis_client, "bf", "2").state == "done"
    assert "gallery complete: 3 of 3 earlier tracklets carried over" in serving_statement(redis_client, "bf", "2")
