"""The self-training service end to end on a real pool (Con-ReID crops in the embedded Redis):
a promoted cycle, a rejected broken candidate, resume after a kill, and the wake-up triggers."""

from __future__ import annotations

import dataclasses
import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from conreid_tracks import as_pool_crops, conreid_tracks
from selfreid.pipeline.config import AppConfig
from selfreid.pipeline.runtime.pool import open_pool
from selfreid.pipeline.runtime.status import read_status
from selfreid.pipeline.training import service as train_service
from selfreid.pipeline.training.registry import ModelRegistry, production_key, promoted_channel, slim_checkpoint
from selfreid.reid_model.checkpoint import read_checkpoint, save_checkpoint
from selfreid.reid_model.config import ModelConfig, TrainConfig
from selfreid.reid_model.export import export_bundle, read_metadata
from selfreid.reid_model.model import build_model

PREFIX = "svc"
MODEL = {"backbone": "mobilenet_v2", "input_size": [128, 64]}


def _cfg(tmp_path: Path, **service) -> AppConfig:
    return AppConfig.model_validate({
        "data_dir": str(tmp_path / "site"),
        "pool": {"prefix": PREFIX},
        "train": {"model": MODEL, "batch_size": 8, "num_workers": 0, "device": "cpu",
                  "scl": {"warmup_epochs": 0, "positives": 3, "negatives": 20, "tracklet_positives": True}},
        "service": {"epochs": 1, "max_minutes": None, "snapshot_crops": 400, "snapshot_hours": None,
                    "holdout_fraction": 0.25, "min_crops": 16, "interval_minutes": None, "min_new_crops": None,
                    "drift_threshold": None, "check_seconds": 0.2,
                    # a 6-person test pool holds out 7 tracklets: the minimum of evidence is lowered to fit
                    "gate": {"min_tracklets": 4}, **service},
        "export": {"parity_crops": 8},
    })


@pytest.fixture(scope="module")
def v1_files(shared_data, tmp_path_factory) -> dict[str, Path]:
    """Version 1 = the ImageNet MobileNetV2 backbone, exported once for the module."""
    out = tmp_path_factory.mktemp("v1")
    cfg = TrainConfig(model=ModelConfig(**MODEL))
    model = build_model(cfg.model)
    ckpt = slim_checkpoint(save_checkpoint(out / "pretrained.pt", model, cfg), out / "checkpoint.pt")
    crops = [t.image() for t in conreid_tracks(shared_data, persons=2, track_len=2, per_camera=1)]
    bundle = export_bundle(model, out, "1", crops)
    return {**bundle.files, "checkpoint.pt": ckpt}


@pytest.fixture()
def site(tmp_path, redis_client, v1_files, shared_data):
    """A site whose registry serves version 1 and whose pool holds ~80 real crops of 6 people."""
    cfg = _cfg(tmp_path)
    registry = ModelRegistry(cfg.path(cfg.registry.directory), redis_client, PREFIX)
    registry.promote(registry.register(v1_files, embedding_dim=4096).version)
    pool = open_pool(cfg, redis_client)
    pool.add(as_pool_crops(conreid_tracks(shared_data, persons=6, track_len=3, per_camera=1)))
    return cfg, registry, pool


def _small(cfg: AppConfig, **service) -> AppConfig:
    """The same site training on a 40-crop snapshot (for tests where the model's quality is not the point)."""
    return cfg.model_copy(update={"service": cfg.service.model_copy(update={"snapshot_crops": 40, **service})})


def _pointer(client) -> str:
    return json.loads(client.get(production_key(PREFIX)))["version"]


def test_cycle_trains_exports_gates_and_promotes(site, redis_server, redis_client):
    cfg, registry, pool = site
    pubsub = redis_client.pubsub()
    pubsub.subscribe(promoted_channel(PREFIX))
    pubsub.get_message(timeout=1)  # the subscribe confirmation

    reports = train_service.run_train_service(cfg, redis_server.url, threading.Event(), once=True)

    assert len(reports) == 1
    report = reports[0]
    assert report.outcome == "promoted", report.detail
    assert report.version == "2" and report.parent == "1"
    assert report.parity["model.onnx"] >= 0.9999
    assert report.gate["passed"] and report.gate["candidate"]["tracklets_with_pairs"] >= 2
    assert report.train_crops + report.holdout_crops == pool.count() and report.holdout_crops > 0
    v2 = registry.production()
    assert v2.version == "2" and v2.parent == "1" and v2.status == "production"
    assert read_metadata(v2.onnx)["model_version"] == "2"
    assert read_checkpoint(v2.checkpoint)["epoch"] == 1
    assert _pointer(redis_client) == "2"
    message = pubsub.get_message(ignore_subscribe_messages=True, timeout=5)
    pubsub.close()  # an open subscriber keeps the embedded server from shutting down at teardown
    assert message and json.loads(message["data"]) == {"version": "2", "onnx": str(v2.onnx.resolve()),
                                                       "embedding_dim": 4096}
    status = read_status(redis_client, PREFIX)["train:0"]
    assert status["last_outcome"] == "promoted" and status["production"] == "2"


def test_nan_candidate_is_rejected_and_version_1_keeps_serving(site, redis_server, redis_client, monkeypatch):
    cfg, registry, _ = site

    class PoisonedTrainer(train_service.SCLTrainer):
        def fit(self, *args, **kwargs):
            result = super().fit(*args, **kwargs)
            with torch.no_grad():
                self.model.local_heads[3][0].weight[:2, :5] = float("nan")
            save_checkpoint(result.checkpoint, self.model, self.cfg, result.epochs)
            return result

    monkeypatch.setattr(train_service, "SCLTrainer", PoisonedTrainer)
    report = train_service.run_train_service(_small(cfg), redis_server.url, threading.Event(), once=True)[0]

    assert report.outcome == "rejected"
    assert report.detail == "non-finite weights: 10 NaN/Inf values in the trained model"
    assert registry.production().version == "1" and _pointer(redis_client) == "1"
    assert [v.version for v in registry.versions()] == ["1"], "a NaN model is never exported or registered"
    assert read_status(redis_client, PREFIX)["train:0"]["last_outcome"] == "rejected"


RUN_ONCE = """
import sys, threading
from selfreid.pipeline.config import AppConfig
from selfreid.pipeline.training.service import run_train_service
cfg = AppConfig.model_validate_json(open(sys.argv[1]).read())
run_train_service(cfg, sys.argv[2], threading.Event(), once=True)
"""


@pytest.mark.slow
def test_killed_cycle_resumes_from_its_checkpoint(site, tmp_path, redis_server, redis_client):
    cfg, registry, _ = site
    cfg = _small(cfg, epochs=2)
    (tmp_path / "cfg.json").write_text(cfg.model_dump_json())
    last = cfg.path(cfg.service.state_dir) / "cycle" / "train" / "last.pt"
    proc = subprocess.Popen([sys.executable, "-c", RUN_ONCE, str(tmp_path / "cfg.json"), redis_server.url])
    try:
        deadline = time.monotonic() + 300
        while not last.is_file() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert last.is_file(), "no checkpoint was written"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    done_before = read_checkpoint(last)["epoch"]
    assert done_before == 1, "killed after its first checkpoint, before the end"
    state = json.loads((cfg.path(cfg.service.state_dir) / "cycle.json").read_text())
    assert state["outcome"] == "running" and state["stage"] == "train"
    assert registry.production().version == "1"

    report = train_service.run_train_service(cfg, redis_server.url, threading.Event(), once=True)[0]

    assert report.cycle_id == state["cycle_id"], "the same cycle went on"
    assert report.resumed_from_epoch == done_before and report.resumed_from_step == 0
    assert report.epochs == 2
    log = [json.loads(line)["epoch"] for line in (last.parent / "train_log.jsonl").read_text().splitlines()]
    assert log == [1, 2], "each epoch trained exactly once across the kill"
    assert report.outcome in {"promoted", "rejected"}, report.detail  # the gate decides; both end the cycle
    assert registry.production().version == ("2" if report.outcome == "promoted" else "1")


def test_triggers_growth_and_drift(site, shared_data):
    cfg, registry, pool = site
    cfg = cfg.model_copy(update={"service": cfg.service.model_copy(
        update={"min_new_crops": 30, "drift_threshold": 0.05, "drift_sample_crops": 60, "drift_every_minutes": 1e-6})})
    triggers = train_service.Triggers(cfg, pool, registry)
    assert triggers.due() is None, "the first look only takes the drift reference"
    assert triggers.state["drift_reference"]["version"] == "1"
    assert triggers.due() is None and max(triggers.state["drift"].values()) < 0.05

    # camera c1 suddenly sees inverted images (a sensor switching to a new mode): its mean moves
    def invert(jpeg: bytes) -> bytes:
        return cv2.imencode(".jpg", 255 - cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR))[1].tobytes()

    fresh = as_pool_crops(conreid_tracks(shared_data, persons=12, track_len=3, per_camera=1, first=20))
    inverted = [dataclasses.replace(c, jpeg=invert(c.jpeg)) for c in fresh if c.camera_id == "c1"][:8]
    pool.add(inverted)
    reason = triggers.due()
    assert reason and reason.startswith("drift: camera c1"), reason

    pool.add(as_pool_crops(conreid_tracks(shared_data, persons=3, track_len=4, per_camera=2, first=50)))
    assert triggers.due().startswith("growth: pool grew by")
    triggers.cycle_done()
    assert not (triggers.due() or "").startswith("growth")


def test_snapshot_tracklets_split_a_reused_track_id_and_survive_a_reload(tmp_path):
    snap = train_service.Snapshot([b"x"] * 4, ["c"] * 4, [7, 7, 7, 7], np.zeros(4, bool), [0.0, 1.0, 900.0, 901.0])
    assert snap.groups == ["c/7", "c/7", "c/7~1", "c/7~1"]
    snap.save(tmp_path / "snap.npz")
    assert train_service.Snapshot.load(tmp_path / "snap.npz").groups == snap.groups
