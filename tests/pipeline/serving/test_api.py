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


class _FixedBoxes:
    """A detector that finds people at given boxes (the query is built with people exactly there)."""

    def __init__(self, boxes: list[tuple[int, int, int, int]]) -> None:
        from selfreid.plugins.contracts import Detection

        self.detections = [Detection(box=tuple(map(float, b)), confidence=0.9) for b in boxes]

    def detect(self, frames):
        return [list(self.detections) for _ in frames]


def test_a_full_frame_lists_who_was_detected_and_their_best_scores(cfg, redis_client, embedder, gallery):
    from selfreid.pipeline.cli.serving import search_lines
    from selfreid.pipeline.serving.search import IdentitySearch

    held_out, gids = gallery
    crops = [cv2.resize(held_out[p], (64, 160)) for p in PEOPLE[:2]]
    frame = np.full((200, 400, 3), 128, np.uint8)
    boxes = [(20, 20, 84, 180), (200, 20, 264, 180)]
    for (x1, y1, x2, y2), crop in zip(boxes, crops):
        frame[y1:y2, x1:x2] = crop
    search = IdentitySearch(cfg, redis_client, embedder=embedder, detector=_FixedBoxes(boxes))

    strict = search.search_image(frame, min_score=1.0)  # nobody reaches a perfect score
    assert [p["box"] for p in strict["people"]] == [list(b) for b in boxes]
    assert all(p["identities"] == [] and p["best_global_id"] is not None for p in strict["people"])
    lines = search_lines("frame.jpg", strict)
    assert lines[0] == "frame.jpg (model version v1): 2 person(s) found, none with an identity above the threshold 1.00"
    assert lines[1] == (f"person 1 (box [20, 20, 84, 180]): closest identity {strict['people'][0]['best_global_id']} "
                        f"scores {strict['people'][0]['best_score']:.3f}, below 1.00")

    loose = search.search_image(frame, min_score=0.0)
    lines = search_lines("frame.jpg", loose)
    assert lines[0] == "frame.jpg (model version v1): 2 of 2 person(s) matched"
    assert any(line.startswith("person 2 (box [200, 20, 264, 180]): ") for line in lines)
    sighting = loose["people"][0]["identities"][0]["sightings"][0]
    assert f"    camera {sighting['camera_id']} track {sighting['track_id']}: {sighting['start_iso']} to " \
           f"{sighting['end_iso']}" in lines


def test_cli_search_prints_plain_lines_never_cut(cfg, redis_server, onnx_model, gallery, tmp_path):
    from typer.testing import CliRunner

    from selfreid.pipeline.cli.app import app

    held_out, _ = gallery
    query = tmp_path / "query.jpg"
    query.write_bytes(_jpeg(held_out[PEOPLE[0]]))
    runner = CliRunner()

    def search(prefix: str) -> tuple[int, list[str]]:
        site = tmp_path / f"{prefix}.yaml"
        site.write_text(f"data_dir: {tmp_path}\npool: {{prefix: {prefix}}}\nembedder: {{params: {{model: {onnx_model}}}}}\n")
        result = runner.invoke(app, ["search", str(query), "-c", str(site), "--min-score", "0"],
                               env={"REDIS_URL": redis_server.url})
        assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
        return result.exit_code, result.output.splitlines()

    code, lines = search("api")
    times = [line for line in lines if line.startswith("    camera ")]
    assert code == 0 and lines[0] == "query.jpg (model version v1): 1 of 1 person(s) matched" and times
    assert all(line.count("T") == 2 and line.count("+00:00") == 2 and "…" not in line for line in times)
    code, lines = search("empty")
    assert code == 0 and lines == ["query.jpg (model version v1): the gallery of model version v1 is empty"]


def test_startup_message_says_where_and_whether_a_token_is_needed():
    from selfreid.pipeline.config import ApiConfig
    from selfreid.pipeline.serving.api import startup_message

    open_api = startup_message(ApiConfig(port=8123))
    assert open_api.startswith("API listening on http://127.0.0.1:8123, report page http://127.0.0.1:8123/report;")
    assert "no token is required" in open_api
    guarded = startup_message(ApiConfig(host="::", port=8123, token="x" * 16))
    assert guarded.startswith("API listening on http://[::]:8123 (every interface)") and "a token is required" in guarded
