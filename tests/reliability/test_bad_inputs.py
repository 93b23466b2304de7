"""Bad input, one row each in docs/reliability.md: broken videos and streams, odd frames, config
mistakes, missing weights, malformed pool entries, broken models, a Redis that refuses the password or
the writes, and hostile API requests. Each test feeds the real component the bad input (real files,
real Redis, real ONNX Runtime, real HTTP) and records what came back.

The standard: bad input gets a clear error and loses nothing.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import redis
from typer.testing import CliRunner

from selfreid.pipeline.cli import app
from selfreid.pipeline.config import AppConfig, parse_config
from selfreid.pipeline.ingest.service import CameraStats, PoolStats, run_ingest
from selfreid.pipeline.runtime.pool import open_pool
from selfreid.pipeline.runtime.redis_conn import EmbeddedRedis
from selfreid.pipeline.serving.embed import EmbedStats, run_embedder
from selfreid.pipeline.serving.embedding_store import EmbeddingStore
from selfreid.plugins import registry
from selfreid.plugins.contracts import Crop
from selfreid.plugins.embedders.onnx_embedder import OnnxEmbedder
from vtest_data import read_vtest

LOOSE_CROPS = {"min_height": 48, "min_width": 16, "min_confidence": 0.3, "every_k_frames": 1}
PREFIX = "bad"


def bad_input(case: str, expected: str) -> pytest.MarkDecorator:
    return pytest.mark.reliability("bad input", case=case, expected=expected)


def one_line(text: str) -> str:
    """CLI output without the console's line wrapping."""
    return " ".join(text.split())


def cli(args: list[str], env: dict[str, str] | None = None) -> tuple[int, str]:
    result = CliRunner().invoke(app, args, env=env)
    # anything but a clean exit is a traceback instead of a one-line error
    assert result.exception is None or isinstance(result.exception, SystemExit), f"{result.exception!r}"
    return result.exit_code, one_line(result.output)


def jpeg(image: np.ndarray, ext: str = ".jpg") -> bytes:
    return cv2.imencode(ext, image)[1].tobytes()


def wait_until(predicate: Callable[[], Any], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.05)


def tiny_onnx(path: Path, input_shape: tuple = ("N", 3, 16, 8), log: bool = False) -> Path:
    """A real ONNX embedder model, small enough to build per test: the mean of each colour channel
    (``log=True``: its logarithm, which is -inf for a black crop), with the serving metadata of a
    16x8 input whatever ``input_shape`` the graph really takes."""
    import onnx
    from onnx import TensorProto, helper

    nodes = [helper.make_node("ReduceMean", ["images"], ["mean"], axes=[2, 3], keepdims=0)]
    nodes.append(helper.make_node("Log" if log else "Identity", ["mean"], ["features"]))
    graph = helper.make_graph(
        nodes, "tiny", [helper.make_tensor_value_info("images", TensorProto.FLOAT, list(input_shape))],
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", 3])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    meta = {"input_size": "16x8", "channel_order": "RGB", "mean": "[0, 0, 0]", "std": "[1, 1, 1]",
            "embedding_dim": "3", "model_version": path.stem}
    for key, value in meta.items():
        prop = model.metadata_props.add()
        prop.key, prop.value = key, value
    onnx.save(model, str(path))
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------------------------------------
# Cameras: one ingest run with every broken camera and one good one
# ---------------------------------------------------------------------------------------------


@contextlib.contextmanager
def stalling_mjpeg_camera(frame: np.ndarray, frames_per_connection: int = 3) -> Iterator[str]:
    """An HTTP MJPEG camera that sends a few frames on each connection, then goes silent while
    keeping the connection open (a camera that hangs, not one that disconnects)."""
    image = jpeg(cv2.resize(frame, (320, 240)))
    part = b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n%s\r\n" % (len(image), image)
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    held: list[socket.socket] = []

    def serve() -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = server.accept()
                held.append(conn)
                conn.recv(4096)
                conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Type: multipart/x-mixed-replace; boundary=frame\r\n\r\n")
                conn.sendall(part * frames_per_connection)

    threading.Thread(target=serve, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.getsockname()[1]}/cam.mjpg"
    finally:
        server.close()
        for conn in held:
            conn.close()


def write_clip(path: Path, frames: list[np.ndarray]) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, frames[0].shape[1::-1])
    for frame in frames:
        writer.write(frame)
    writer.release()
    return path


def image_folder(folder: Path, images: list[np.ndarray]) -> Path:
    folder.mkdir()
    for i, image in enumerate(images):
        cv2.imwrite(str(folder / f"{i:06d}.jpg"), image)
    return folder


def broken_media(folder: Path, frames: list[np.ndarray]) -> dict[str, Path]:
    """The good 8-frame clip and its broken variants."""
    clip = write_clip(folder / "clip.avi", frames)
    data = clip.read_bytes()
    corrupt = bytearray(data)
    middle = len(data) // 2
    corrupt[middle - 20_000 : middle + 20_000] = np.random.default_rng(0).bytes(40_000)
    media = {
        "clip": clip,
        "zero": folder / "zero.avi",
        "truncated": folder / "truncated.avi",
        "corrupt": folder / "corrupt.avi",
        "codec": folder / "codec.avi",  # the AVI with an unknown FOURCC: no decoder for its stream
    }
    media["zero"].write_bytes(b"")
    media["truncated"].write_bytes(data[: len(data) // 2])
    media["corrupt"].write_bytes(bytes(corrupt))
    media["codec"].write_bytes(data.replace(b"MJPG", b"QQQQ"))
    eight_k = cv2.resize(frames[0], (7680, 4320), interpolation=cv2.INTER_NEAREST)
    media["8k"] = image_folder(folder / "8k", [eight_k])
    media["1x1"] = image_folder(folder / "1x1", [frames[0][300:301, 400:401]] * 2)
    return media


@pytest.fixture(scope="module")
def cameras_run(shared_data, redis_server, tmp_path_factory) -> tuple[dict[str, CameraStats], dict[str, int]]:
    """``(final stats per camera, crops in the pool per camera)`` of one ingest run over the good
    camera ``ok`` and every broken one; it must end on its own (live cameras give up)."""
    folder = tmp_path_factory.mktemp("cameras")
    frames = read_vtest(shared_data, 8)
    media = broken_media(folder, frames)
    fast = {"open_timeout_s": 2.0, "reconnect_initial_s": 0.05, "reconnect_max_s": 0.1}
    with stalling_mjpeg_camera(frames[0]) as stalling_url:
        cameras = [
            {"id": "ok", "uri": str(media["clip"])},
            {"id": "zero-byte", "uri": str(media["zero"])},
            {"id": "truncated", "uri": str(media["truncated"])},
            {"id": "corrupt", "uri": str(media["corrupt"])},
            {"id": "codec", "uri": str(media["codec"])},
            {"id": "missing", "uri": str(folder / "nowhere.mp4")},
            {"id": "directory", "uri": str(folder)},
            {"id": "dead-rtsp", "source": "rtsp", "uri": f"rtsp://127.0.0.1:{free_port()}/live",
             "params": {**fast, "max_reconnects": 2}},
            {"id": "stalls", "source": "rtsp", "uri": stalling_url,
             "params": {**fast, "read_timeout_s": 1.0, "max_reconnects": 1}},
            {"id": "frame-8k", "source": "images", "uri": str(media["8k"])},
            {"id": "frame-1x1", "source": "images", "uri": str(media["1x1"])},
            {"id": "roi-outside", "uri": str(media["clip"]), "roi": [2000, 0, 2100, 100]},
            {"id": "roi-partly", "uri": str(media["clip"]), "roi": [600, 0, 1000, 576]},
        ]
        cfg = parse_config({
            "pool": {"prefix": f"{PREFIX}-cams", "params": {"retry_s": 0.05}},
            "ingest": {"cameras": cameras, "detector": {"plugin": "yolox"}, "device": "cpu", "crops": LOOSE_CROPS,
                       "metrics_port": None, "status_interval_s": 0.5, "flush_timeout_s": 2.0},
        })
        done: dict[str, Any] = {}
        thread = threading.Thread(target=lambda: done.update(run_ingest(cfg, redis_server.url, threading.Event())))
        thread.start()
        thread.join(timeout=90)
        assert not thread.is_alive(), "ingest did not end: a broken camera kept it running"
    client = redis.Redis.from_url(redis_server.url)
    try:
        return done, open_pool(cfg, client).count_by_camera()
    finally:
        client.close()


def others_went_on(run: tuple[dict[str, CameraStats], dict[str, int]]) -> str:
    stats, stored = run
    ok = stats["ok"]
    assert ok.state == "finished" and ok.frames == 8 and ok.errors == 0
    assert ok.written == ok.crops == stored["ok"] > 0
    return f"good camera: {ok.frames} frames, {ok.written} crops written"


@pytest.mark.parametrize("camera,named", [
    pytest.param("zero-byte", "zero.avi", marks=bad_input(
        "zero-byte video file", "the camera fails with an error naming the file; the other cameras go on")),
    pytest.param("codec", "codec.avi", marks=bad_input(
        "video with an unsupported codec (unknown FOURCC)",
        "the camera fails with an error naming the file; the other cameras go on")),
    pytest.param("missing", "nowhere.mp4", marks=bad_input(
        "camera file path that does not exist", "the camera fails with 'not found' and the path; the others go on")),
    pytest.param("directory", "is a directory, not a video file", marks=bad_input(
        "camera file path that is a directory",
        "the camera fails saying it is a directory (not 'not found'); the others go on")),
    pytest.param("roi-outside", "roi", marks=bad_input(
        "ROI entirely outside the frame (x1=2000 on a 768-px frame)",
        "the camera fails saying the ROI misses the frame (instead of silently masking every pixel)")),
])
def test_a_camera_that_cannot_work_fails_alone(observe, cameras_run, camera: str, named: str) -> None:
    stats = cameras_run[0][camera]
    observe(f"state {stats.state}, {stats.frames} frames: {stats.last_error}")
    assert stats.state == "failed" and stats.frames == 0 and named in stats.last_error
    observe(others_went_on(cameras_run))


@bad_input("ROI partly outside the frame (x2=1000 on a 768-px frame)",
           "a warning saying the ROI extends past the frame and which part is watched; the camera runs")
def test_roi_partly_outside_the_frame(observe, cameras_run) -> None:
    stats = cameras_run[0]["roi-partly"]
    observe(f"state {stats.state}, {stats.frames} frames; warning: {stats.last_error}")
    assert stats.state == "finished" and stats.frames == 8 and stats.source_counters.get("roi_clipped") == 1
    assert "extends past the 768x576 frame" in stats.last_error and "(600, 0, 768, 576)" in stats.last_error


@bad_input("truncated video file (cut in the middle)",
           "the frames before the cut are processed, then the camera ends normally")
def test_truncated_video(observe, cameras_run) -> None:
    stats = cameras_run[0]["truncated"]
    observe(f"state {stats.state}, {stats.frames} of 8 frames processed, {stats.errors} errors")
    assert stats.state == "finished" and 0 < stats.frames < 8 and stats.errors == 0
    observe(others_went_on(cameras_run))


@bad_input("corrupt video file (40 KB of random bytes in the middle)",
           "readable frames are processed, undecodable ones counted; the camera ends normally")
def test_corrupt_video(observe, cameras_run) -> None:
    stats = cameras_run[0]["corrupt"]
    counters = stats.source_counters
    observe(f"state {stats.state}, {stats.frames} frames processed, {counters.get('corrupt', 0)} undecodable")
    assert stats.state == "finished" and stats.frames + counters.get("corrupt", 0) >= 6 and stats.errors == 0
    observe(others_went_on(cameras_run))


@bad_input("dead RTSP URL (closed port)",
           "reconnects with backoff, then (max_reconnects) fails with the URL in the error; the others go on")
def test_dead_rtsp_url(observe, cameras_run) -> None:
    stats = cameras_run[0]["dead-rtsp"]
    observe(f"state {stats.state} after {stats.reconnects} reconnects: {stats.last_error}")
    assert stats.state == "failed" and stats.reconnects == 2 and "rtsp://127.0.0.1" in stats.last_error
    observe(others_went_on(cameras_run))


@bad_input("camera that stalls (sends 3 frames, then nothing, connection kept open)",
           "read_timeout_s ends the wait, the stream is reopened; the ingest never hangs")
def test_stalling_camera(observe, cameras_run) -> None:
    stats = cameras_run[0]["stalls"]
    observe(f"state {stats.state}, {stats.source_counters['frames']} frames received over {stats.reconnects} "
            f"reconnect(s): {stats.last_error}")
    assert stats.source_counters["frames"] == 6 and stats.reconnects == 1 and stats.state == "failed"
    assert stats.source_counters["stream_lost"] == 2 and "gave up after 1 reconnects" in stats.last_error
    observe(others_went_on(cameras_run))


@bad_input("8K frame (7680x4320)", "downscaled to max_pixels (counted) and processed")
def test_8k_frame(observe, cameras_run) -> None:
    stats = cameras_run[0]["frame-8k"]
    observe(f"state {stats.state}, {stats.frames} frame, {stats.detections} people found: {stats.last_error}")
    assert stats.state == "finished" and stats.frames == 1 and stats.errors == 0
    assert stats.source_counters["oversize_downscaled"] == 1 and stats.detections > 0


@bad_input("1x1 frame", "processed like any frame (nobody found); no error")
def test_1x1_frame(observe, cameras_run) -> None:
    stats = cameras_run[0]["frame-1x1"]
    observe(f"state {stats.state}, {stats.frames} frames, {stats.detections} detections, {stats.errors} errors")
    assert stats.state == "finished" and stats.frames == 2 and stats.errors == 0 and stats.crops == 0


# ---------------------------------------------------------------------------------------------
# Configuration files
# ---------------------------------------------------------------------------------------------

CAMERA = "    - {id: door, uri: door.mp4%s}\n"
CONFIG_CASES = [
    ("unknown key", "ingest:\n  cameras:\n" + CAMERA % ", fps: 5", "unknown key 'ingest.cameras.0.fps'"),
    ("wrong type", "ingest:\n  frame_queue: lots\n", "'ingest.frame_queue': Input should be a valid integer"),
    ("duplicate camera ids", "ingest:\n  cameras:\n" + CAMERA % "" * 2, "camera ids must be unique"),
    ("YAML syntax error", "ingest:\n  cameras:\n    - {id: door, uri: door.mp4\n  device: cpu\n", "line 3"),
    ("non-UTF-8 file (Latin-1 'é')", "ingest:\n  cameras:\n" + CAMERA % ", name: Caf\xe9", "not UTF-8"),
    ("unknown detector plugin", "ingest:\n  detector: {plugin: yolov99}\n",
     "ingest.detector: no detector plugin named 'yolov99'; available: hog, yolo, yolox"),
    ("misspelt camera source plugin", "ingest:\n  cameras:\n" + CAMERA % ", source: rtps",
     "ingest.cameras[0]: no source plugin named 'rtps'"),
    ("zero stride", "ingest:\n  cameras:\n" + CAMERA % ", stride: 0", "'ingest.cameras.0.stride': Input should be greater"),
    ("invalid ROI (x1 > x2)", "ingest:\n  cameras:\n" + CAMERA % ", roi: [100, 0, 50, 80]", "roi must be (x1, y1, x2, y2)"),
    ("negative ROI", "ingest:\n  cameras:\n" + CAMERA % ", roi: [-10, 0, 50, 80]", "0 <= x1 < x2"),
]


@pytest.mark.parametrize("text,message", [
    pytest.param(text, message, id=case.split(" (")[0].replace(" ", "-"), marks=bad_input(
        f"config: {case}", "`selfreid config check` exits 2 with one line naming the file and the key"))
    for case, text, message in CONFIG_CASES
])
def test_config_mistakes_are_one_line(observe, tmp_path, text: str, message: str) -> None:
    path = tmp_path / "site.yaml"
    path.write_bytes(text.encode("latin-1"))
    code, output = cli(["config", "check", str(path)])
    observe(f"exit {code}: {output}")
    assert code == 2 and output.startswith(f"error: {path}") and message in output


@bad_input("empty YAML file given to ingest", "exit 2: one line saying no camera is configured")
def test_empty_config(observe, tmp_path) -> None:
    path = tmp_path / "empty.yaml"
    path.write_text("")
    code, output = cli(["ingest", "-c", str(path)])
    observe(f"exit {code}: {output}")
    assert code == 2 and "no cameras configured" in output


# ---------------------------------------------------------------------------------------------
# Weights and models
# ---------------------------------------------------------------------------------------------


@bad_input("detector weights path that does not exist",
           "ingest exits 2 with one line: the path, and how to get weights")
def test_missing_detector_weights(observe, tmp_path, redis_server, shared_data) -> None:
    path = tmp_path / "site.yaml"
    clip = shared_data / "pets09-s2l1" / "vtest.avi"
    path.write_text(f"ingest:\n  cameras: [{{id: a, uri: '{clip}'}}]\n  metrics_port: null\n"
                    f"  detector: {{plugin: yolo, params: {{weights: {tmp_path}/yolo11s.pt}}}}\n")
    code, output = cli(["ingest", "-c", str(path)], env={"REDIS_URL": redis_server.url})
    observe(f"exit {code}: {output}")
    assert code == 2 and "weights not found" in output and f"{tmp_path}/yolo11s.pt" in output
    assert "download" in output


@bad_input("ReID backbone weights path that does not exist (train.model.weights_path)",
           "`selfreid models init` exits 2: the path, and how to get weights")
def test_missing_reid_weights(observe, tmp_path, redis_server, shared_data) -> None:
    path = tmp_path / "site.yaml"
    path.write_text(f"data_dir: {tmp_path}\ntrain:\n  model: {{backbone: mobilenet_v2, weights_path: {tmp_path}/mnv2.pth}}\n")
    crops = shared_data / "con-reid" / "bounding_box_train"
    code, output = cli(["models", "init", "-c", str(path), "--crops", str(crops)], env={"REDIS_URL": redis_server.url})
    observe(f"exit {code}: {output}")
    assert code == 2 and f"weights file not found: {tmp_path}/mnv2.pth" in output and "download" in output


@bad_input("promote a model version that does not exist", "exit 2: one line naming the version")
def test_promote_unknown_version(observe, tmp_path, redis_server) -> None:
    path = tmp_path / "site.yaml"
    path.write_text(f"data_dir: {tmp_path}\n")
    code, output = cli(["models", "promote", "42", "-c", str(path)], env={"REDIS_URL": redis_server.url})
    observe(f"exit {code}: {output}")
    assert code == 2 and "42" in output


# ---------------------------------------------------------------------------------------------
# Pool entries and models seen by the embed service
# ---------------------------------------------------------------------------------------------


@pytest.fixture()
def embed_cfg(tmp_path) -> AppConfig:
    return parse_config({"data_dir": str(tmp_path), "pool": {"prefix": f"{PREFIX}-emb"},
                         "embedder": {"batch_size": 8, "max_wait_ms": 20}})


def crops_of(images: list[np.ndarray], camera: str = "c1") -> list[Crop]:
    return [Crop(camera, 1.7e9 + i, i + 1, (0, 0, im.shape[1], im.shape[0]), i, 0.9, jpeg(im))
            for i, im in enumerate(images)]


def people(n: int) -> list[np.ndarray]:
    return [np.full((64, 32, 3), 40 + 30 * i, np.uint8) for i in range(n)]


def embed_until(cfg: AppConfig, url: str, embedder: OnnxEmbedder, done: Callable[[], Any]) -> EmbedStats:
    """Run the embed service on ``embedder`` until ``done()``, then stop it; its final counters."""
    stop, result = threading.Event(), {}
    thread = threading.Thread(target=lambda: result.setdefault("stats", run_embedder(cfg, url, stop, embedder)))
    thread.start()
    try:
        wait_until(done)
    finally:
        stop.set()
        thread.join(timeout=15)
    assert not thread.is_alive()
    return result["stats"]


def embedded_count_is(client: redis.Redis, n: int) -> bool:
    return len(EmbeddingStore(client, f"{PREFIX}-emb")) == n


def stored_vectors(client: redis.Redis) -> np.ndarray:
    entries = EmbeddingStore(client, f"{PREFIX}-emb").read("check", "t", 1000)
    return np.array([e.embedding.vector for e in entries]).reshape(len(entries), -1)


def rejected(client: redis.Redis) -> dict[str, str]:
    return {f[b"crop"].decode(): f[b"reason"].decode() for _, f in client.xrange(f"{PREFIX}-emb:embedder:rejected")}


@pytest.mark.parametrize("payload", [
    pytest.param(lambda good: good[: len(good) // 2], id="truncated", marks=bad_input(
        "truncated JPEG in the pool", "rejected with reason corrupt_jpeg and acknowledged; the rest embedded")),
    pytest.param(lambda good: b"", id="zero-byte", marks=bad_input(
        "0-byte JPEG in the pool", "rejected with reason corrupt_jpeg and acknowledged; the rest embedded")),
])
def test_undecodable_crop_in_pool(observe, tmp_path, embed_cfg, redis_server, redis_client, payload) -> None:
    pool = open_pool(embed_cfg, redis_client)
    good = crops_of(people(3))
    broken = Crop("c1", 1.7e9, 9, (0, 0, 32, 64), 9, 0.9, payload(good[0].jpeg))
    ids = pool.add(good + [broken])
    embedder = OnnxEmbedder(OnnxEmbedder.Settings(model=str(tiny_onnx(tmp_path / "tiny.onnx"))))
    stats = embed_until(embed_cfg, redis_server.url, embedder,
                        lambda: len(EmbeddingStore(redis_client, f"{PREFIX}-emb")) == 3 and not pool.pending("embedder"))
    observe(f"{len(broken.jpeg)}-byte crop: rejected {rejected(redis_client)}; {stats.embedded} others embedded, "
            f"{pool.pending('embedder')} pending")
    assert rejected(redis_client) == {ids[-1]: "corrupt_jpeg"} and stats.embedded == 3


@bad_input("pool entry with missing fields (no jpeg, box, track, ...)",
           "skipped with an error naming the entry and the fields, acknowledged (never redelivered), kept in "
           "Redis; the other crops of the batch are embedded")
def test_pool_entry_with_missing_fields(observe, tmp_path, embed_cfg, redis_server, redis_client, caplog) -> None:
    pool = open_pool(embed_cfg, redis_client)
    pool.add(crops_of(people(2)))
    bad_id = redis_client.xadd(pool.stream_key("c1"), {"cam": "c1", "ts": "1.7e9"}).decode()
    pool.add(crops_of(people(2)))
    embedder = OnnxEmbedder(OnnxEmbedder.Settings(model=str(tiny_onnx(tmp_path / "tiny.onnx"))))
    with caplog.at_level(logging.ERROR, logger="selfreid"):
        stats = embed_until(embed_cfg, redis_server.url, embedder,
                            lambda: embedded_count_is(redis_client, 4) and not pool.pending("embedder"))
    errors = [r.getMessage() for r in caplog.records if f"c1/{bad_id}" in r.getMessage()]
    still_there = bool(redis_client.xrange(pool.stream_key("c1"), bad_id, bad_id))
    observe(f"log: {errors[0] if errors else '(none)'}; {stats.embedded} good crops embedded; "
            f"{pool.pending('embedder')} pending; entry still in the stream: {still_there}")
    assert stats.embedded == 4 and len(errors) == 1 and "jpeg" in errors[0]
    assert redis_client.xrange(pool.stream_key("c1"), bad_id, bad_id)


@bad_input("extremely wide crop in the pool (2000x4 px)", "embedded like any crop (resized to the model input)")
def test_extremely_wide_crop(observe, tmp_path, embed_cfg, redis_server, redis_client) -> None:
    pool = open_pool(embed_cfg, redis_client)
    pool.add(crops_of([np.full((4, 2000, 3), 120, np.uint8)]))
    embedder = OnnxEmbedder(OnnxEmbedder.Settings(model=str(tiny_onnx(tmp_path / "tiny.onnx"))))
    stats = embed_until(embed_cfg, redis_server.url, embedder, lambda: embedded_count_is(redis_client, 1))
    vectors = stored_vectors(redis_client)
    observe(f"embedded {stats.embedded}, vector norm {np.linalg.norm(vectors[0]):.4f}, rejected {dict(stats.rejected)}")
    assert stats.embedded == 1 and np.isclose(np.linalg.norm(vectors[0]), 1.0)


@bad_input("NaN embeddings (a model that gives NaN for black crops)",
           "the NaN crop is rejected (embed_error) and acknowledged; only finite vectors reach the matcher")
def test_nan_embeddings_never_reach_the_gallery(observe, tmp_path, embed_cfg, redis_server, redis_client) -> None:
    pool = open_pool(embed_cfg, redis_client)
    ids = pool.add(crops_of(people(3) + [np.zeros((64, 32, 3), np.uint8)]))
    embedder = OnnxEmbedder(OnnxEmbedder.Settings(model=str(tiny_onnx(tmp_path / "nan.onnx", log=True))))
    stats = embed_until(embed_cfg, redis_server.url, embedder,
                        lambda: embedded_count_is(redis_client, 3) and not pool.pending("embedder"))
    vectors = stored_vectors(redis_client)
    observe(f"{len(vectors)} vectors stored, all finite: {bool(np.isfinite(vectors).all())}; "
            f"rejected {rejected(redis_client)}")
    assert np.isfinite(vectors).all() and rejected(redis_client) == {ids[-1]: "embed_error"}
    assert stats.embedded == 3 and stats.rejected == {"embed_error": 1}


@bad_input("promoted ONNX model whose input is not what the embedder feeds (64x64 vs metadata 16x8)",
           "the load fails with a message giving both shapes; crops wait in the pool and are embedded once a "
           "good model is promoted")
def test_wrong_model_input_shape(observe, tmp_path, embed_cfg, redis_server, redis_client, caplog) -> None:
    import json

    pool = open_pool(embed_cfg, redis_client)
    pool.add(crops_of(people(3)))
    bad = tiny_onnx(tmp_path / "square.onnx", input_shape=("N", 3, 64, 64))
    good = tiny_onnx(tmp_path / "tiny.onnx")

    def promote(version: str, path: Path) -> None:
        record = json.dumps({"version": version, "onnx": str(path), "embedding_dim": 3})
        redis_client.set(f"{PREFIX}-emb:models:production", record)
        redis_client.publish(f"{PREFIX}-emb:models:promoted", record)

    promote("square", bad)
    stop, result = threading.Event(), {}
    embedder = OnnxEmbedder()  # follows the registry
    thread = threading.Thread(target=lambda: result.setdefault("s", run_embedder(embed_cfg, redis_server.url, stop, embedder)))
    with caplog.at_level(logging.ERROR, logger="selfreid"):
        thread.start()
        try:
            wait_until(lambda: any("square" in r.getMessage() for r in caplog.records))
            waiting = pool.count() - len(EmbeddingStore(redis_client, f"{PREFIX}-emb"))
            promote("tiny", good)
            wait_until(lambda: embedded_count_is(redis_client, 3))
        finally:
            stop.set()
            thread.join(timeout=15)
    error = next(r.getMessage() for r in caplog.records if "square" in r.getMessage())
    observe(f"log: {error}; {waiting} crops waited in the pool; after a good promotion: "
            f"{result['s'].embedded} embedded by {embedder.model_version}")
    assert "[N, 3, 64, 64]" in error and "[N, 3, 16, 8]" in error and waiting == 3
    assert result["s"].embedded == 3 and embedder.model_version == "tiny"


# ---------------------------------------------------------------------------------------------
# Redis that refuses: wrong password, out of memory
# ---------------------------------------------------------------------------------------------


@pytest.fixture()
def own_redis(tmp_path) -> Iterator[tuple[EmbeddedRedis, redis.Redis]]:
    """A private embedded server (its settings are changed by the test) and an admin client on it."""
    server = EmbeddedRedis(tmp_path / "redis", appendonly=False).start()
    admin = redis.Redis.from_url(server.url)
    yield server, admin
    admin.config_set("maxmemory", 0)
    admin.config_set("requirepass", "")
    admin.close()
    server.stop()


@bad_input("Redis wrong password (REDIS_URL)",
           "ingest stops at once (exit 2) saying Redis refused the password, before reading any camera")
def test_redis_wrong_password(observe, tmp_path, own_redis, shared_data) -> None:
    server, admin = own_redis
    admin.config_set("requirepass", "right-one")
    path = tmp_path / "site.yaml"
    clip = shared_data / "pets09-s2l1" / "vtest.avi"
    path.write_text(f"ingest:\n  cameras: [{{id: a, uri: '{clip}'}}]\n  metrics_port: null\n  detector: {{plugin: yolox}}\n")
    started = time.monotonic()
    code, output = cli(["ingest", "-c", str(path)], env={"REDIS_URL": f"{server.url}?password=wrong-one"})
    error = output[output.index("error:"):] if "error:" in output else output
    observe(f"exit {code} after {time.monotonic() - started:.1f} s: {error}")
    assert code == 2 and "refused the password" in error and "wrong-one" not in error
    admin.auth("right-one")
    assert admin.keys("*") == []  # nothing was started, nothing written


@bad_input("Redis out of memory (maxmemory + noeviction) during ingest",
           "ingest reports the OOM error, holds the crops (no crash), and writes every one once memory is freed")
def test_redis_out_of_memory(observe, tmp_path, own_redis, shared_data, caplog) -> None:
    server, admin = own_redis
    admin.config_set("maxmemory-policy", "noeviction")
    admin.config_set("maxmemory", 1)  # below what the server already uses: every write is refused
    clip = write_clip(tmp_path / "clip.avi", read_vtest(shared_data, 8))
    cfg = parse_config({
        "pool": {"prefix": f"{PREFIX}-oom", "params": {"retry_s": 0.05}},
        "ingest": {"cameras": [{"id": "cam", "uri": str(clip), "realtime": True, "params": {"fps": 4}}],
                   "detector": {"plugin": "yolox"}, "device": "cpu", "crops": LOOSE_CROPS, "metrics_port": None,
                   "status_interval_s": 0.2, "flush_timeout_s": 20.0},
    })
    seen: list[PoolStats] = []
    result: dict[str, CameraStats] = {}
    thread = threading.Thread(target=lambda: result.update(
        run_ingest(cfg, server.url, threading.Event(), on_status=lambda s, p: seen.append(p))))
    thread.start()
    try:
        wait_until(lambda: seen and "maxmemory" in seen[-1].last_error and seen[-1].queued > 0)
        during = seen[-1]
        admin.config_set("maxmemory", 0)
    finally:
        thread.join(timeout=60)
    assert not thread.is_alive()
    stats, stored = result["cam"], open_pool(cfg, admin).count()
    observe(f"while full: log '{next((r.getMessage() for r in caplog.records if 'Redis is full' in r.getMessage()), '')}', "
            f"'{during.last_error}', {during.queued} crops held, connected={during.connected}; "
            f"after memory was freed: {stats.written} of {stats.crops} crops written, {stats.crop_drops} dropped, "
            f"{stored} in Redis")
    assert stats.crops > 0 and stats.written == stats.crops == stored and stats.crop_drops == 0
    full = [r.getMessage() for r in caplog.records if "Redis is full" in r.getMessage()]
    assert len(full) == 1 and "raise maxmemory" in full[0], "the cause is named, once"
    assert during.connected, "a full Redis is reachable: not reported as down"


# ---------------------------------------------------------------------------------------------
# The HTTP API
# ---------------------------------------------------------------------------------------------


@pytest.fixture()
def api_cfg(tmp_path) -> AppConfig:
    return parse_config({"data_dir": str(tmp_path), "pool": {"prefix": f"{PREFIX}-api"},
                         "api": {"max_upload_mb": 0.05, "port": free_port()}})


@pytest.fixture()
def api(api_cfg, redis_server, redis_client, tmp_path):
    from fastapi.testclient import TestClient

    from selfreid.pipeline.serving.api import create_app

    embedder = OnnxEmbedder(OnnxEmbedder.Settings(model=str(tiny_onnx(tmp_path / "nan.onnx", log=True))))
    hog = registry.create("detectors", "hog", {}, where="test", device="cpu")
    return TestClient(create_app(api_cfg, redis_server.url, embedder=embedder, detector=hog))


PERSON = np.full((64, 32, 3), 90, np.uint8)


@bad_input("query that is not an image (a PDF)", "400 saying the upload is not a decodable image")
def test_query_not_an_image(observe, api) -> None:
    resp = api.post("/search", content=b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\n")
    observe(f"{resp.status_code}: {resp.json()['detail']}")
    assert resp.status_code == 400 and "not a decodable image" in resp.json()["detail"]


@pytest.mark.parametrize("image", [
    pytest.param(cv2.cvtColor(PERSON, cv2.COLOR_BGR2GRAY), id="grayscale", marks=bad_input(
        "grayscale PNG query", "searched like a colour image (200)")),
    pytest.param(cv2.cvtColor(PERSON, cv2.COLOR_BGR2BGRA), id="rgba", marks=bad_input(
        "4-channel (RGBA) PNG query", "searched like a colour image (200)")),
])
def test_png_query_channels(observe, api, image: np.ndarray) -> None:
    resp = api.post("/search", content=jpeg(image, ".png"), headers={"Content-Type": "image/png"})
    observe(f"{resp.status_code}: model {resp.json().get('model_version')}, {resp.json().get('message')}")
    assert resp.status_code == 200 and resp.json()["model_version"] == "nan"
    assert "gallery of model version nan is empty" in resp.json()["message"]  # embedded, then looked up


@bad_input("query the model gives NaN for (a black image)", "422 naming the NaN values (not a 500, no NaN in JSON)")
def test_query_with_nan_embedding(observe, api) -> None:
    resp = api.post("/search", content=jpeg(np.zeros((64, 32, 3), np.uint8)))
    observe(f"{resp.status_code}: {resp.json()['detail']}")
    assert resp.status_code == 422 and "NaN" in resp.json()["detail"]


@pytest.mark.parametrize("chunked", [
    pytest.param(False, id="content-length", marks=bad_input(
        "oversized upload (200 KB over a 50 KB limit, with Content-Length)", "413 before the body is read")),
    pytest.param(True, id="chunked", marks=bad_input(
        "oversized chunked upload (no Content-Length)", "413 as soon as the limit is passed")),
])
def test_oversized_upload(observe, api, chunked: bool) -> None:
    body = bytes(200_000)
    content = (body[i : i + 16_384] for i in range(0, len(body), 16_384)) if chunked else body
    resp = api.post("/search", content=content)
    observe(f"{resp.status_code}: {resp.json()['detail']}")
    assert resp.status_code == 413 and "larger than 0.05 MB" in resp.json()["detail"]


TRAVERSALS = ["/../../etc/passwd", "/%2e%2e/%2e%2e/etc/passwd", "/report/..%2f..%2f..%2fetc%2fpasswd",
              "//etc/passwd", "/static/../../../../etc/passwd", "/..\\..\\etc\\passwd"]


def raw_get(port: int, path: str) -> tuple[int, bytes]:
    """One HTTP request with the path sent exactly as given (no client-side normalisation)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(f"GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".encode())
        reply = b""
        while chunk := conn.recv(65536):
            reply += chunk
    return int(reply.split(b" ", 2)[1]), reply


@bad_input("path traversal in the API URL (../, %2e%2e, ..%2f, //, backslashes)",
           "no file outside the API is ever served (404), the server stays up")
def test_path_traversal(observe, api_cfg, redis_server) -> None:
    from selfreid.pipeline.serving.api import run_api

    stop = threading.Event()
    thread = threading.Thread(target=run_api, args=(api_cfg, redis_server.url, stop), daemon=True)
    thread.start()
    try:
        wait_until(lambda: _answers(api_cfg.api.port))
        replies = {path: raw_get(api_cfg.api.port, path) for path in TRAVERSALS}
        health = raw_get(api_cfg.api.port, "/health")[0]
    finally:
        stop.set()
        thread.join(timeout=15)
    observe(", ".join(f"{path} -> {status}" for path, (status, _) in replies.items()) + f"; /health then {health}")
    assert all(status in (400, 404) and b"root:" not in body for status, body in replies.values())
    assert health == 200


def _answers(port: int) -> bool:
    try:
        return raw_get(port, "/health")[0] == 200
    except OSError:
        return False


# ---------------------------------------------------------------------------------------------
# The command line: options out of range, paths it cannot write, ids that never existed
# ---------------------------------------------------------------------------------------------


def numeric_options() -> list[tuple[list[str], str, Any, Any]]:
    """``(command words, option, min, max)`` of every int/float parameter of every command."""
    import typer

    found = []

    def walk(command: Any, words: list[str]) -> None:
        for name, sub in getattr(command, "commands", {}).items():
            walk(sub, [*words, name])
        for param in getattr(command, "params", []) if not hasattr(command, "commands") else []:
            if param.bare_type() in (int, float):
                found.append((words, param.opts[0], param.min, param.max))

    walk(typer.main.get_command(app), [])
    return found


def _required_args(words: list[str], tmp_path: Path) -> list[str]:
    """The other arguments a command needs before its options are even checked."""
    image = tmp_path / "x.jpg"
    image.write_bytes(jpeg(PERSON))
    extra = {"health": ["api"], "search": [str(image)], "forget": [], "eval": ["--model", "m.pt", "--data", "d"]}
    return extra.get(words[-1], [])


@bad_input("a number option out of its range, for every bounded option of every command "
           "(e.g. `eval --holdout-ids 0`, `search --top-k -1`, `api --port 70000`)",
           "exit 2 with the usage error naming the option and the range, before any work; no traceback")
def test_every_number_option_is_bounded(observe, tmp_path) -> None:
    options = numeric_options()
    unbounded = [f"{' '.join(w)} {opt}" for w, opt, low, high in options if low is None and high is None]
    assert not unbounded, f"number options without a bound: {unbounded}"
    seen = []
    for words, option, low, high in options:
        for value in [v for v in (low - 1 if low is not None else None, high + 1 if high is not None else None)
                      if v is not None]:
            args = [*words, *_required_args(words, tmp_path)]
            args += [str(value)] if option.isidentifier() or not option.startswith("-") else [f"{option}={value}"]
            code, output = cli(args)
            assert code == 2 and "Invalid value" in output and "Traceback" not in output, (args, output)
            seen.append(f"{' '.join(words)} {option}={value}")
    observe(f"{len(seen)} out-of-range values, each exit 2 with 'Invalid value ...': {', '.join(seen)}")
    assert len(seen) >= len(options)


@bad_input("`selfreid eval --holdout-ids 0` (used to print mAP 0.0000 as a result)",
           "exit 2: the option must be at least 1")
def test_eval_holdout_zero(observe, shared_data) -> None:
    code, output = cli(["eval", "--model", "none.pt", "--data", str(shared_data / "con-reid" / "bounding_box_train"),
                        "--holdout-ids", "0"])
    message = output[output.index("Invalid value"):] if "Invalid value" in output else output
    observe(f"exit {code}: {message}")
    assert code == 2 and "--holdout-ids" in message and "mAP" not in output


def site(tmp_path: Path, text: str = "") -> Path:
    path = tmp_path / "site.yaml"
    path.write_text(f"data_dir: {tmp_path / 'data'}\npool: {{prefix: {PREFIX}-cli}}\n{text}")
    return path


@pytest.mark.parametrize("args,option", [
    pytest.param(["report", "--out"], "--out", id="report", marks=bad_input(
        "`selfreid report --out` a folder (used to end in IsADirectoryError)",
        "exit 2: '--out PATH is a folder', nothing written")),
    pytest.param(["demo", "--report"], "--report", id="demo", marks=bad_input(
        "`selfreid demo --report` a folder", "exit 2 before the demo starts: '--report PATH is a folder'")),
    pytest.param(["train", "--data", ".", "--out"], "--out", id="train", marks=bad_input(
        "`selfreid train --out` an existing file", "exit 2: '--out PATH is a file', the file is kept")),
])
def test_cli_output_path_that_cannot_be_written(observe, tmp_path, redis_server, args, option) -> None:
    target = tmp_path / "target"
    if args[0] == "train":
        target.write_text("keep me")
    else:
        target.mkdir()
    code, output = cli([*args, str(target), "-c", str(site(tmp_path))], env={"REDIS_URL": redis_server.url})
    observe(f"exit {code}: {output}")
    assert code == 2 and output.startswith(f"error: {option} {target} is a")
    assert (target.read_text() == "keep me") if target.is_file() else not any(target.iterdir())


@pytest.mark.parametrize("args,message", [
    pytest.param(["config", "check", "{dir}"], "{dir} is a folder; give the site's YAML file", id="config", marks=bad_input(
        "a folder given as the config file", "exit 2: 'PATH is a folder; give the site's YAML file'")),
    pytest.param(["search", "{dir}"], "{dir} is a folder; give one image file", id="search", marks=bad_input(
        "a folder given as the `selfreid search` image", "exit 2: 'PATH is a folder; give one image file'")),
])
def test_folder_where_a_file_is_expected(observe, tmp_path, args, message) -> None:
    code, output = cli([a.replace("{dir}", str(tmp_path)) for a in args])
    observe(f"exit {code}: {output}")
    assert code == 2 and output.startswith(f"error: {message.replace('{dir}', str(tmp_path))}")


@pytest.mark.parametrize("args", [
    pytest.param(["report", "--out", "{tmp}/r.html"], id="report"),
    pytest.param(["models", "list"], id="models-list"),
    pytest.param(["search", "{tmp}/x.jpg"], id="search"),
    pytest.param(["run", "--duration", "1"], id="run"),
])
@bad_input("`data_dir` that cannot be created (a file lies on its path), embedded Redis",
           "exit 2: 'data_dir PATH cannot be created: Not a directory'; no traceback")
def test_data_dir_that_cannot_be_created(observe, tmp_path, args) -> None:
    (tmp_path / "file").write_text("")
    (tmp_path / "x.jpg").write_bytes(jpeg(PERSON))
    path = tmp_path / "site.yaml"
    path.write_text(f"data_dir: {tmp_path / 'file' / 'data'}\n")
    code, output = cli([a.replace("{tmp}", str(tmp_path)) for a in args] + ["-c", str(path)])
    observe(f"{args[0]}: exit {code}: {output}")
    assert code == 2 and output.startswith(f"error: data_dir {tmp_path / 'file' / 'data'} cannot be created")


@bad_input("`selfreid forget` of an id the site never assigned (used to look like a deletion)",
           "exit 2: 'identity N was never assigned', nothing deleted; an id forgotten before still exits 0 "
           "saying nothing is left")
def test_forget_an_id_that_never_existed(observe, tmp_path, redis_server, redis_client) -> None:
    from selfreid.plugins.matchers.gallery_store import GalleryStore

    store = GalleryStore(redis_client, f"{PREFIX}-cli")
    for _ in range(3):
        store.next_global_id()
    env = {"REDIS_URL": redis_server.url}
    code_never, never = cli(["forget", "42", "--yes", "-c", str(site(tmp_path))], env=env)
    code_gone, gone = cli(["forget", "3", "--yes", "-c", str(site(tmp_path))], env=env)
    observe(f"id 42: exit {code_never}: {never}; id 3 (assigned, nothing left): exit {code_gone}: {gone}")
    assert code_never == 2 and "identity 42 was never assigned" in never and "1 to 3" in never
    assert code_gone == 0 and "nothing stored any more" in gone


# ---------------------------------------------------------------------------------------------
# Images whose header declares a huge size
# ---------------------------------------------------------------------------------------------


def huge_jpeg(width: int = 12_000, height: int = 12_000) -> bytes:
    """A 1-KB JPEG whose header declares ``width`` x ``height`` pixels (a decompression bomb)."""
    data = bytearray(jpeg(PERSON))
    sof = data.index(b"\xff\xc0")  # baseline frame header: length(2) precision(1) height(2) width(2)
    data[sof + 5 : sof + 9] = height.to_bytes(2, "big") + width.to_bytes(2, "big")
    return bytes(data)


@pytest.mark.parametrize("side", [
    pytest.param(12_000, id="144MP", marks=bad_input(
        "query image of 1 KB declaring 12000x12000 pixels (decompression bomb), API",
        "413 naming the size and api.max_image_pixels, from the header: memory does not grow")),
    pytest.param(60_000, id="3.6GP", marks=bad_input(
        "query image of 1 KB declaring 60000x60000 pixels (beyond what Pillow reads at all), API",
        "413 naming the pixel count and api.max_image_pixels")),
])
def test_api_refuses_a_huge_image_before_decoding(observe, api, side: int) -> None:
    import resource

    bomb = huge_jpeg(side, side)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    resp = api.post("/search", content=bomb, headers={"Content-Type": "image/jpeg"})
    grew_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    detail = resp.json()["detail"]
    observe(f"{len(bomb)}-byte upload: {resp.status_code}: {detail}; peak memory grew {grew_mb:.0f} MB")
    assert resp.status_code == 413 and f"{side * side:,} pixels, over the limit of 50,000,000 (api.max_image_pixels)" in detail
    assert grew_mb < 200


@bad_input("`selfreid search` on an image file declaring 12000x12000 pixels",
           "exit 2: one line naming the size and api.max_image_pixels; nothing decoded")
def test_cli_search_refuses_a_huge_image(observe, tmp_path, redis_server) -> None:
    image = tmp_path / "bomb.jpg"
    image.write_bytes(huge_jpeg())
    model = tiny_onnx(tmp_path / "tiny.onnx")
    path = site(tmp_path, f"embedder: {{params: {{model: {model}}}}}\n")
    code, output = cli(["search", str(image), "-c", str(path)], env={"REDIS_URL": redis_server.url})
    observe(f"exit {code}: {output}")
    assert code == 2 and output.startswith(f"error: {image}: the image is 12000x12000") and "max_image_pixels" in output


# ---------------------------------------------------------------------------------------------
# The API's start: a port already in use, a Redis that refuses the password
# ---------------------------------------------------------------------------------------------


@bad_input("`selfreid api` on a port already in use (used to exit 0)",
           "exit 2: 'cannot listen on HOST:PORT: Address already in use'")
def test_api_port_in_use(observe, tmp_path, redis_server) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, output = cli(["api", "-c", str(site(tmp_path)), "--port", str(port)], env={"REDIS_URL": redis_server.url})
    observe(f"exit {code}: {output}")
    assert code == 2 and f"error: cannot listen on 127.0.0.1:{port}: Address already in use" in output


@bad_input("`selfreid run`'s api stage on a port already in use",
           "the api stage process exits 1 (the run shows it crashed), its log says why")
def test_run_api_stage_port_in_use(observe, tmp_path, redis_server) -> None:
    import multiprocessing as mp

    from selfreid.pipeline.orchestration.run import STAGES, RunOptions, _start

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        cfg = parse_config({"data_dir": str(tmp_path), "pool": {"prefix": f"{PREFIX}-run"},
                            "api": {"port": taken.getsockname()[1]}})
        stage = _start(mp.get_context("spawn"), next(s for s in STAGES if s.name == "api"), cfg, redis_server.url,
                       RunOptions())
        stage.process.join(120)
    error = next((line for line in stage.log_tail(40).splitlines() if "ApiError: cannot listen" in line), "")
    observe(f"api stage: {stage.state}; log: {error.split(': ', 1)[-1]}")
    assert stage.state == "crashed (1)" and "Address already in use" in error


@bad_input("`selfreid api` with a Redis that refuses the password (REDIS_URL)",
           "exit 2 at once, saying Redis refused the password (no endless retry), the password not shown")
def test_api_redis_wrong_password(observe, tmp_path, own_redis) -> None:
    server, admin = own_redis
    admin.config_set("requirepass", "right-one")
    started = time.monotonic()
    code, output = cli(["api", "-c", str(site(tmp_path)), "--port", str(free_port())],
                       env={"REDIS_URL": f"{server.url}?password=wrong-one"})
    observe(f"exit {code} after {time.monotonic() - started:.1f} s: {output}")
    assert code == 2 and "refused the password" in output and "wrong-one" not in output
    admin.auth("right-one")
