"""``selfreid run``: every stage end to end on two bundled videos, ordered clean shutdown, crashes
reported through the exit code. Real processes, the real embedded Redis, real video."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis
import yaml

from selfreid.pipeline.config import load_config
from selfreid.pipeline.orchestration.run import INIT, STAGES, RunOptions, StageError, _select, pool_backlog, resolve_sample_data
from selfreid.pipeline.runtime.redis_conn import EmbeddedRedis
from selfreid.plugins.contracts import Crop

REPO = Path(__file__).resolve().parents[3]
LOCAL = REPO / "configs" / "local.yaml"


def _run(tmp_path: Path, shared_data: Path, *args: str, config: Path = LOCAL) -> subprocess.Popen:
    env = {**os.environ, "SELFREID_DATA_DIR": str(tmp_path / "data"), "SELFREID_SHARED_DATA": str(shared_data)}
    env.pop("REDIS_URL", None)
    return subprocess.Popen(
        [sys.executable, "-m", "selfreid.pipeline.cli", "run", "--config", str(config), *args],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )


def _servers_in(folder: Path) -> list[int]:
    """Pids of processes (the embedded redis-server) still running in ``folder``."""
    pids = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if Path(os.readlink(proc / "cwd")) == folder.resolve():
                pids.append(int(proc.name))
        except OSError:
            continue
    return pids


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _small_config(tmp_path: Path) -> Path:
    """configs/local.yaml with a crop every frame (enough crops for one training cycle from a few
    seconds of video) and a free API port."""
    raw = yaml.safe_load(LOCAL.read_text())
    raw["ingest"]["crops"]["every_k_frames"] = 1
    raw["service"]["min_crops"] = 16
    raw["api"]["port"] = _free_port()
    path = tmp_path / "local_small.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _crop(camera: str, track: int) -> Crop:
    import cv2
    import numpy as np

    jpeg = cv2.imencode(".jpg", np.zeros((128, 64, 3), np.uint8))[1].tobytes()
    return Crop(camera_id=camera, timestamp=time.time(), frame_index=track, track_id=track, box=(0, 0, 64, 128),
                confidence=0.9, jpeg=jpeg)


def test_sample_paths_follow_selfreid_shared_data(monkeypatch: pytest.MonkeyPatch, shared_data: Path) -> None:
    monkeypatch.setenv("SELFREID_SHARED_DATA", str(shared_data))
    cfg = resolve_sample_data(load_config(LOCAL))
    assert [Path(c.uri) for c in cfg.ingest.cameras] == [
        shared_data / "pets09-s2l1" / "vtest.avi", shared_data / "clips" / "one-by-one-person-detection.mp4"
    ]
    assert all(Path(c.uri).is_file() for c in cfg.ingest.cameras)


def test_unknown_stage_is_a_clear_error() -> None:
    with pytest.raises(StageError, match="unknown stage.*trainr"):
        _select(RunOptions(stages=("trainr",)))
    assert [s.name for s in STAGES] == ["ingest", "embedder", "matcher", "train", "api"]  # shutdown order


def test_a_missing_stage_module_is_reported_not_faked(monkeypatch: pytest.MonkeyPatch) -> None:
    from selfreid.pipeline.orchestration import run as local_run

    ghost = local_run.StageSpec("ghost", "selfreid.pipeline.no_such_stage:run_ghost")
    monkeypatch.setattr(local_run, "STAGES", (*STAGES, ghost))
    found, missing = _select(RunOptions())
    assert [s.name for s in found] == [s.name for s in STAGES] and missing == ["ghost"]
    with pytest.raises(StageError, match="no stage to run: ghost not installed"):
        _select(RunOptions(stages=("ghost",)))


def test_pool_backlog_counts_undelivered_and_unacknowledged(redis_client) -> None:
    from selfreid.pipeline.runtime.pool import open_pool

    pool = open_pool(load_config(None), redis_client)
    pool.add([_crop("a", 1), _crop("a", 2), _crop("b", 3)])
    assert pool_backlog(pool, "embedder") == 3  # no group yet: everything is waiting
    got = pool.read("embedder", "c1", count=2)
    assert pool_backlog(pool, "embedder") == 3  # 2 delivered but not acknowledged + 1 undelivered
    pool.ack("embedder", [c.crop_id for c in got])
    assert pool_backlog(pool, "embedder") == 1
    pool.ack("embedder", [c.crop_id for c in pool.read("embedder", "c1", count=10)])
    assert pool_backlog(pool, "embedder") == 0


def test_sigint_stops_cleanly_and_a_crashing_stage_fails_the_run(tmp_path: Path, shared_data: Path) -> None:
    run = _run(tmp_path, shared_data, "--stages", "ingest", "--duration", "120")
    deadline = time.monotonic() + 60
    log = tmp_path / "data" / "logs" / "ingest.log"
    while time.monotonic() < deadline and "starting" not in (log.read_text() if log.exists() else ""):
        time.sleep(0.5)
    time.sleep(2.0)
    run.send_signal(signal.SIGINT)
    out, _ = run.communicate(timeout=60)
    assert run.returncode == 0, out
    assert "ended: interrupted" in out and "stopped" in out
    assert _servers_in(tmp_path / "data" / "redis") == [], "the embedded redis-server outlived the run"

    broken = tmp_path / "broken.yaml"
    raw = yaml.safe_load(LOCAL.read_text())
    raw["ingest"]["detector"] = {"plugin": "yolo", "params": {"weights": "/nonexistent/yolo.pt"}}
    broken.write_text(yaml.safe_dump(raw))
    crash = _run(tmp_path, shared_data, "--stages", "ingest", "--until-idle", config=broken)
    out, _ = crash.communicate(timeout=120)
    assert crash.returncode == 1, out
    assert "ingest crashed" in out and "nonexistent" in out  # the stage's own error, from its log


@pytest.mark.slow
def test_all_stages_end_to_end_on_two_cameras(tmp_path: Path, shared_data: Path) -> None:
    """Two videos as two cameras through ingest, embedder, matcher, one training cycle and the API;
    the run ends by itself and leaves nothing unacknowledged in the pool's consumer groups."""
    config = _small_config(tmp_path)
    run = _run(tmp_path, shared_data, "--until-idle", "--train-once", "--max-frames", "40", "--duration", "240",
               config=config)
    out, _ = run.communicate(timeout=300)
    assert run.returncode == 0, out
    assert "ended: idle" in out, out
    logs = tmp_path / "data" / "logs"
    assert {p.stem for p in logs.glob("*.log")} == {s.name for s in (INIT, *STAGES)}, out

    assert _servers_in(tmp_path / "data" / "redis") == [], "the embedded redis-server outlived the run"

    cfg = load_config(LOCAL)
    prefix = cfg.pool.prefix
    with EmbeddedRedis(tmp_path / "data" / "redis") as server:  # the pool persisted (AOF); reopen it
        client = redis.Redis.from_url(server.url)
        from selfreid.pipeline.runtime.pool import open_pool

        pool = open_pool(cfg, client)
        counts = pool.count_by_camera()
        assert set(counts) == {"pets-view1", "corridor"} and all(n > 0 for n in counts.values()), counts
        for group in ("embedder", "trainer"):
            assert pool.pending(group) == 0, group
        assert pool_backlog(pool, "embedder") == 0
        assert client.get(f"{prefix}:models:production") is not None
        assert client.xlen(f"{prefix}:events") > 0  # the matcher assigned identities
        client.close()
    cycle = json.loads((tmp_path / "data" / cfg.service.state_dir / "cycle.json").read_text())
    assert cycle["outcome"] in ("promoted", "rejected"), cycle  # trained, exported and gated: not skipped
    assert cycle["train_crops"] >= 16 and cycle["version"], cycle
