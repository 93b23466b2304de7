"""The HTTP API on a real gallery: search by image, identities, report page, health, and bad queries."""

from __future__ import annotations

import base64

import cv2
import numpy as np
import pytest

from selfreid.pipeline.config import parse_config
from selfreid.plugins import registry
from selfreid.plugins.contracts import Embedding
from selfreid.plugins.embedders.onnx_embedder import OnnxEmbedder
from selfreid.plugins.matchers.cross_camera import CrossCameraMatcher

PEOPLE = (9, 11, 12)  # ground-truth ids present in both virtual cameras


def _jpeg(image: np.ndarray) -> bytes:
    return cv2.imencode(".jpg", image)[1].tobytes()


@pytest.fixture()
def cfg(tmp_path):
    return parse_config({"data_dir": str(tmp_path), "pool": {"prefix": "api"},
                         "matcher": {"matcher": {"params": {"threshold": 0.85}}}})


@pytest.fixture()
def embedder(onnx_model):
    return OnnxEmbedder(OnnxEmbedder.Settings(model=str(onnx_model)))


@pytest.fixture()
def gallery(redis_client, embedder, vtest_crops):
    """Three people, each as one tracklet per virtual camera (6 crops each), matched and with thumbnails.
    Returns the held-out crops per person (later crops of camera B, not in the gallery)."""
    matcher = CrossCameraMatcher(CrossCameraMatcher.Settings(threshold=0.85, min_crops=5), client=redis_client, prefix="api")
    chosen, held_out = [], {}
    for person in PEOPLE:
        for cam in ("A", "B"):
            mine = [(b, c) for b, c in vtest_crops if b.gt_id == person and b.camera_id == cam]
            chosen += mine[:6]
            if cam == "B":
                held_out[person] = mine[-1][1]
    vectors = embedder.embed([c for _, c in chosen])
    embeddings = [Embedding(f"{b.camera_id}/{b.frame}", b.camera_id, 1.7e9 + b.frame / 7, b.track_id, v, "v1")
                  for (b, _), v in zip(chosen, vectors)]
    matcher.update(embeddings)
    matcher.flush()
    matcher.store.save_thumbnails({matcher.tracklet_of(b.camera_id, b.track_id): _jpeg(c) for b, c in chosen})
    gids = {p: {matcher.gallery("v1").tracklets[matcher.tracklet_of(b.camera_id, b.track_id)].global_id
                for b, _ in chosen if b.gt_id == p} for p in PEOPLE}
    return held_out, gids


def _client(cfg, redis_server, **kwargs):
    from fastapi.testclient import TestClient

    from selfreid.pipeline.serving.api import create_app

    return TestClient(create_app(cfg, redis_server.url, **kwargs))


def test_search_finds_the_person_in_both_cameras(cfg, redis_server, embedder, gallery):
    held_out, gids = gallery
    api = _client(cfg, redis_server, embedder=embedder)
    hits = 0
    for person, crop in held_out.items():
        resp = api.post("/search", content=_jpeg(crop), headers={"Content-Type": "image/jpeg"})
        assert resp.status_code == 200, resp.text
        body = resp.json()
        assert body["model_version"] == "v1" and len(body["people"]) == 1
        top = body["people"][0]["identities"][0]
        hits += len(gids[person]) == 1 and top["global_id"] in gids[person] and top["cameras"] == ["A", "B"]
        sighting = top["sightings"][0]
        assert {"camera_id", "track_id", "start_iso", "end_iso"} <= set(sighting)
        assert cv2.imdecode(np.frombuffer(base64.b64decode(sighting["thumbnail_jpeg_b64"]), np.uint8), 1) is not None
    assert hits >= 2


def test_report_identities_and_health(cfg, redis_server, embedder, gallery):
    api = _client(cfg, redis_server, embedder=embedder)
    health = api.get("/health")
    assert health.status_code == 200 and health.json()["model_version"] == "v1" and health.json()["redis"] is True
    idents = api.get("/identities").json()["identities"]
    assert 3 <= len(idents) <= 6 and any(len(i["cameras"]) == 2 for i in idents)
    page = api.get("/report")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert page.text.count("data:image/jpeg;base64,") >= 6 and "Person " in page.text


def test_bad_queries_get_clear_answers(cfg, redis_server, redis_client, embedder, vtest_crops):
    hog = registry.create("detectors", "hog", {}, where="test", device="cpu")
    api = _client(cfg, redis_server, embedder=embedder, detector=hog)
    junk = api.post("/search", content=b"\xff\xd8 not really a jpeg")
    assert junk.status_code == 400 and "not a decodable image" in junk.json()["detail"]
    assert api.post("/search", content=b"").status_code == 400
    empty = api.post("/search", content=_jpeg(vtest_crops[0][1])).json()  # nothing matched yet
    assert empty["people"] == [] and "gallery of model version v1 is empty" in empty["message"]
    wall = np.full((480, 640, 3), 128, np.uint8)  # a wide image without anybody in it
    nobody = api.post("/search", content=_jpeg(wall)).json()
    assert nobody["people"] == [] and nobody["message"] == "no person found in the image"


def test_no_model_is_503(cfg, redis_server, redis_client, vtest_crops):
    api = _client(cfg, redis_server, embedder=None)  # follows the registry, which is empty
    resp = api.post("/search", content=_jpeg(vtest_crops[0][1]))
    assert resp.status_code == 503 and "no production model" in resp.json()["detail"]
    assert api.get("/health").json()["model_version"] is None


def test_run_api_serves_until_stopped(cfg, redis_server, embedder):
    import socket
    import threading
    import urllib.request

    from selfreid.pipeline.serving import api as api_module

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = cfg.model_copy(update={"api": cfg.api.model_copy(update={"port": port}),
                                 "embedder": cfg.embedder.model_copy(update={"params": {"model": str(embedder.model_path)}})})
    stop = threading.Event()
    thread = threading.Thread(target=api_module.run_api, args=(cfg, redis_server.url, stop))
    thread.start()
    try:
        for _ in range(100):
            try:
                body = urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1).read()
                break
            except OSError:
                stop.wait(0.1)
        assert b'"model_version":"v1"' in body
    finally:
        stop.set()
        thread.join(timeout=15)
    assert not thread.is_alive()


def test_report_falls_back_to_the_newest_gallery_after_a_promotion(cfg, redis_client, onnx_model_factory, gallery):
    """Right after a promotion the served version's gallery is empty: the report says so and shows
    the newest version that has identities instead of an empty page."""
    from selfreid.pipeline.serving.api import render_report, report_identities
    from selfreid.pipeline.serving.search import IdentitySearch

    fresh = OnnxEmbedder(OnnxEmbedder.Settings(model=str(onnx_model_factory("v2"))))
    search = IdentitySearch(cfg, redis_client, embedder=fresh)
    version, identities, note = report_identities(search)
    assert version == "v1" and len(identities) >= 3 and "v2" in note
    assert "its gallery is still empty" in render_report(search)
