"""The periodic self-training service: pool snapshot -> SCL fine-tuning -> ONNX -> gate -> registry.

``run_train_service(cfg, redis_url, stop, once=False)`` wakes every ``service.check_seconds`` and
starts a cycle when one of its triggers fires (:class:`Triggers`):

* **schedule**: ``service.interval_minutes`` since the last cycle ended;
* **growth**: the pool grew by ``service.min_new_crops`` crops since the last cycle;
* **drift**: a camera's mean embedding (production model, on a sample of its newest pool crops)
  moved more than ``service.drift_threshold`` (``1 - cosine`` of the means) from the reference
  taken when that model started serving: lighting, season or camera changes that the model has
  not seen yet.

A cycle (:class:`Cycle`) runs through stages, recording each one in ``{state_dir}/cycle.json``
(atomic writes) before moving on, so a killed service resumes the same cycle where it stopped:

1. ``snapshot``: a camera-balanced pool snapshot, decoded and saved to ``snapshot.npz`` with each
   crop's camera, track and timestamp; whole tracklets (``camera/track`` keys) are held out for the
   gate (``service.holdout_fraction``);
2. ``train``: the SCL trainer warm-starts from the production checkpoint with tracklet keys as
   groups and the timestamps (``train.mode: site`` uses both); it checkpoints every epoch in
   ``train/`` and resumes from there after a crash. With ``train.interpolation.enabled`` the
   result is then interpolated toward the production weights, the mixing weight chosen label-free
   on the training crops (:func:`~selfreid.reid_model.interpolation.conservative_update`);
3. ``export``: weights sanity check, ONNX export under the reserved version number, parity check;
4. ``gate``: :func:`~selfreid.pipeline.training.gate.run_gate` against the production ONNX;
5. ``register`` and ``promote``: the registry's atomic write and promotion (pub/sub).

A failed check ends the cycle as ``rejected`` with its reason; production is never touched.
"""

from __future__ import annotations

import io
import json
import logging
import shutil
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import redis

from selfreid.pipeline.config import AppConfig
from selfreid.pipeline.runtime.pool import open_pool
from selfreid.pipeline.runtime.redis_conn import connect
from selfreid.pipeline.runtime.signals import StopFlag
from selfreid.pipeline.runtime.status import publish_status
from selfreid.pipeline.training.gate import Holdout, nonfinite_parameters, run_gate
from selfreid.pipeline.training.registry import ModelRegistry, open_registry, slim_checkpoint
from selfreid.plugins.codec import decode_jpeg
from selfreid.plugins.contracts import Crop, PoolStore
from selfreid.reid_model.calibration import AssociationCalibration, pool_tracklets
from selfreid.reid_model.checkpoint import load_model, read_checkpoint
from selfreid.reid_model.data import ArrayCropDataset
from selfreid.reid_model.export import ExportError, atomic_write_bytes, embed_onnx, export_bundle
from selfreid.reid_model.interpolation import conservative_update
from selfreid.reid_model.trainer import LAST, SCLTrainer
from selfreid.reid_model.trainer import LOG as TRAIN_LOG

__all__ = ["CycleReport", "Cycle", "Triggers", "run_train_service", "decode_crops"]

log = logging.getLogger(__name__)

STAGES = ("snapshot", "train", "export", "gate", "register", "promote", "done")
STATUS_EVERY_S = 5.0


class CycleInterrupted(Exception):
    """``stop`` was set during training; the cycle resumes from its last checkpoint on the next start."""


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _write_json(path: Path, data: dict[str, Any]) -> None:
    atomic_write_bytes(path, json.dumps(data, indent=2, default=float).encode())


def decode_crops(crops: list[Crop]) -> tuple[list[np.ndarray], list[int]]:
    """Decoded BGR images and the positions of the crops whose JPEG decoded."""
    images, kept = [], []
    for i, crop in enumerate(crops):
        image = decode_jpeg(crop.jpeg)
        if image is not None:
            images.append(image)
            kept.append(i)
    return images, kept


# --------------------------------------------------------------------------- snapshot
@dataclass
class Snapshot:
    """The crops one cycle trains and gates on, saved so that a resumed cycle sees the same data."""

    jpegs: list[bytes]
    camera_ids: list[str]
    track_ids: list[int]
    holdout: np.ndarray  # bool [N]
    times: list[float] | None = None  # capture timestamps, seconds (None: a snapshot from before they were kept)

    @cached_property
    def groups(self) -> list[str]:
        """Tracklet label of each crop (a reused track id starts a new tracklet: ``pool_tracklets``);
        computed once, as callers index it crop by crop."""
        return pool_tracklets(self.camera_ids, self.track_ids, self.times)

    def save(self, path: Path) -> None:
        offsets = np.cumsum([0] + [len(j) for j in self.jpegs])
        buffer = io.BytesIO()
        np.savez(buffer, allow_pickle=False, data=np.frombuffer(b"".join(self.jpegs), np.uint8), offsets=offsets,
                 cams=np.array(self.camera_ids, dtype=str), tracks=np.array(self.track_ids, np.int64),
                 holdout=self.holdout, **({"times": np.array(self.times, np.float64)} if self.times is not None else {}))
        atomic_write_bytes(path, buffer.getvalue())

    @classmethod
    def load(cls, path: Path) -> Snapshot:
        with np.load(path, allow_pickle=False) as f:
            data, offsets = f["data"].tobytes(), f["offsets"]
            jpegs = [data[a:b] for a, b in zip(offsets[:-1], offsets[1:])]
            times = f["times"].tolist() if "times" in f.files else None
            return cls(jpegs, f["cams"].tolist(), f["tracks"].tolist(), f["holdout"].astype(bool), times)

    def images(self) -> list[np.ndarray]:
        images = []
        for i, jpeg in enumerate(self.jpegs):
            image = decode_jpeg(jpeg)
            if image is None:  # every crop decoded when the snapshot was taken
                raise ValueError(f"snapshot crop {i} no longer decodes")
            images.append(image)
        return images


def holdout_mask(groups: list[str], fraction: float, seed: int) -> np.ndarray:
    """Hold out whole tracklets (those with two or more crops, so that they can be judged), about
    ``fraction`` of the crops; at least two tracklets when that many exist. Seeded (``train.seed``),
    so successive cycles on an unchanged pool are judged on the same tracklets."""
    keys, inverse, sizes = np.unique(np.asarray(groups), return_inverse=True, return_counts=True)
    eligible = np.flatnonzero(sizes >= 2)
    rng = np.random.default_rng(seed)
    rng.shuffle(eligible)
    chosen: list[np.intp] = []
    total = 0
    for g in eligible:
        if total >= fraction * len(groups) and len(chosen) >= 2:
            break
        chosen.append(g)
        total += sizes[g]
    return np.isin(inverse, chosen)


def take_snapshot(pool: PoolStore, cfg: AppConfig, seed: int) -> Snapshot:
    since = cfg.service.snapshot_hours * 3600 if cfg.service.snapshot_hours else None
    crops = pool.snapshot(cfg.service.snapshot_crops, since)
    _, kept = decode_crops(crops)
    crops = [crops[i] for i in kept]
    cameras, tracks, times = [c.camera_id for c in crops], [c.track_id for c in crops], [c.timestamp for c in crops]
    mask = holdout_mask(pool_tracklets(cameras, tracks, times), cfg.service.holdout_fraction, seed)
    return Snapshot([c.jpeg for c in crops], cameras, tracks, mask, times)


# --------------------------------------------------------------------------- one cycle
@dataclass
class CycleReport:
    """What a cycle did; also the ``cycle.json`` state while it runs."""

    cycle_id: str
    reason: str
    stage: str = "snapshot"
    outcome: str = "running"  # running | promoted | rejected | skipped | failed
    detail: str = ""
    parent: str | None = None
    version: str | None = None
    started: float = field(default_factory=time.time)
    finished: float | None = None
    resumed_from_epoch: int | None = None
    resumed_from_step: int | None = None
    train_loss: float | None = None
    epochs: int | None = None
    checkpoint: str | None = None
    interpolation: dict[str, Any] = field(default_factory=dict)
    parity: dict[str, float] = field(default_factory=dict)
    gate: dict[str, Any] = field(default_factory=dict)
    train_crops: int = 0
    holdout_crops: int = 0


class Cycle:
    """One resumable training cycle in ``state_dir`` (see the module docstring for the stages)."""

    def __init__(self, cfg: AppConfig, pool: PoolStore, registry: ModelRegistry, report: CycleReport) -> None:
        self.cfg = cfg
        self.pool = pool
        self.registry = registry
        self.report = report
        self._candidate = None
        self.dir = cfg.path(cfg.service.state_dir) / "cycle"
        self.dir.mkdir(parents=True, exist_ok=True)

    @classmethod
    def start_or_resume(cls, cfg: AppConfig, pool: PoolStore, registry: ModelRegistry, reason: str) -> Cycle:
        """The unfinished cycle of a killed service, else a fresh one."""
        state_file = cfg.path(cfg.service.state_dir) / "cycle.json"
        saved = _read_json(state_file)
        if saved.get("outcome") == "running":
            log.info("resuming cycle %s at stage %s", saved["cycle_id"], saved["stage"])
            return cls(cfg, pool, registry, CycleReport(**saved))
        shutil.rmtree(cfg.path(cfg.service.state_dir) / "cycle", ignore_errors=True)
        return cls(cfg, pool, registry, CycleReport(uuid.uuid4().hex[:12], reason))

    @property
    def state_file(self) -> Path:
        return self.dir.parent / "cycle.json"

    def save(self) -> None:
        _write_json(self.state_file, asdict(self.report))

    def finish(self, outcome: str, detail: str) -> CycleReport:
        self.report.outcome, self.report.detail, self.report.stage = outcome, detail, "done"
        self.report.finished = time.time()
        self.save()
        log.info("cycle %s %s: %s", self.report.cycle_id, outcome, detail)
        return self.report

    def run(self, stop: StopFlag | None = None, progress: Callable[..., None] | None = None) -> CycleReport:
        """Run the remaining stages; returns the final report (``outcome`` != ``running``), or the
        running report when ``stop`` interrupted it (the next start resumes). ``progress(**fields)``
        receives the stage and the training epochs as they happen."""
        progress = progress or (lambda **fields: None)
        steps = {"snapshot": self._snapshot, "train": lambda: self._train(stop, progress), "export": self._export,
                 "gate": self._gate, "register": self._register, "promote": self._promote}
        while self.report.outcome == "running":
            if stop is not None and stop.is_set():
                return self.report
            self.save()
            progress(stage=self.report.stage)
            try:
                outcome = steps[self.report.stage]()
            except CycleInterrupted as exc:
                log.info("cycle %s: %s; it resumes on the next start", self.report.cycle_id, exc)
                return self.report
            except ExportError as exc:
                return self.finish("rejected", str(exc))
            except Exception as exc:  # noqa: BLE001 - a cycle must never take the service down
                log.exception("cycle %s failed at stage %s", self.report.cycle_id, self.report.stage)
                return self.finish("failed", f"{self.report.stage}: {type(exc).__name__}: {exc}")
            if outcome is not None:
                return self.finish(*outcome)
            self.report.stage = STAGES[STAGES.index(self.report.stage) + 1]
        return self.report

    # -- stages: each returns None to continue, or (outcome, detail) to end the cycle
    def _snapshot(self):
        snap = take_snapshot(self.pool, self.cfg, seed=self.cfg.train.seed)
        train = int((~snap.holdout).sum())
        self.report.train_crops, self.report.holdout_crops = train, int(snap.holdout.sum())
        if train < self.cfg.service.min_crops:
            return "skipped", f"{train} training crops in the pool snapshot, service.min_crops is {self.cfg.service.min_crops}"
        snap.save(self.dir / "snapshot.npz")
        production = self.registry.production()
        self.report.parent = production.version if production else None
        return None

    def _snapshot_data(self) -> tuple[Snapshot, list[np.ndarray]]:
        snap = Snapshot.load(self.dir / "snapshot.npz")
        return snap, snap.images()

    def _train(self, stop: StopFlag | None, progress: Callable[..., None]):
        snap, images = self._snapshot_data()
        train = np.flatnonzero(~snap.holdout)
        cams = sorted(set(snap.camera_ids))
        train_images, groups = [images[i] for i in train], [snap.groups[i] for i in train]
        times = [snap.times[i] for i in train] if snap.times is not None else None
        camera_codes = [cams.index(snap.camera_ids[i]) for i in train]
        dataset = ArrayCropDataset(train_images, camera_codes, groups, times)
        out_dir = self.dir / "train"
        if (out_dir / LAST).is_file():
            state = read_checkpoint(out_dir / LAST)
            self.report.resumed_from_epoch, self.report.resumed_from_step = int(state["epoch"]), int(state.get("step", 0))
        parent = self.registry.get(self.report.parent) if self.report.parent else None
        init = str(parent.checkpoint) if parent is not None and parent.checkpoint else None
        cfg = self.cfg.train.model_copy(update={"epochs": self.cfg.service.epochs,
                                                "max_minutes": self.cfg.service.max_minutes})

        def after_epoch(trainer: SCLTrainer, record: dict) -> None:
            progress(epoch=record["epoch"], epochs=cfg.epochs, loss=record["loss"])
            if stop is not None and stop.is_set():
                raise CycleInterrupted(f"stopped after epoch {record['epoch']}")

        result = SCLTrainer(cfg, progress=False, after_epoch=after_epoch).fit(
            dataset, out_dir, init_checkpoint=init, resume=True)
        self.report.checkpoint, self.report.epochs = str(result.checkpoint), result.epochs
        self.report.train_loss = result.metrics.get("loss")
        cameras = [str(c) for c in camera_codes]
        choice = conservative_update(result.checkpoint, cfg, init, train_images, groups, cameras, times)
        if choice is not None and choice.checkpoint is not None:
            self.report.checkpoint = str(choice.checkpoint)
            scores = {str(a): v if np.isfinite(v) else None for a, v in choice.scores.items()}
            self.report.interpolation = {"alpha": choice.alpha, "separation": scores}
        return None

    def _load_candidate(self):
        """The trained model (loaded once per process; the checkpoint path is in the report)."""
        if self._candidate is None:
            self._candidate = load_model(self.report.checkpoint)[0]
        return self._candidate

    def _export(self):
        model = self._load_candidate()
        bad = nonfinite_parameters(model)
        if bad:
            self.report.gate = {"passed": False, "reason": f"non-finite weights: {bad} NaN/Inf values in the trained model"}
            return "rejected", self.report.gate["reason"]
        snap, images = self._snapshot_data()
        parity_crops = [images[i] for i in np.flatnonzero(snap.holdout)[: self.cfg.export.parity_crops]]
        self.report.version = self.report.version or self.registry.next_version()
        ex = self.cfg.export
        bundle = export_bundle(model, self.dir / "export", self.report.version, parity_crops or images[:ex.parity_crops],
                               opset=ex.opset, min_cosine=ex.parity_min_cosine, exporter=ex.exporter, slim=ex.slim,
                               fp16=ex.fp16, int8=ex.int8, variant_min_cosine=ex.variant_min_cosine)
        self.report.parity = bundle.parity
        return None

    def _gate(self):
        snap, images = self._snapshot_data()
        held = np.flatnonzero(snap.holdout)
        holdout = Holdout([images[i] for i in held], [snap.camera_ids[i] for i in held], [snap.groups[i] for i in held],
                          [snap.times[i] for i in held] if snap.times is not None else None)
        production = self.registry.production()
        decision = run_gate(self.dir / "export" / "model.onnx", production.onnx if production else None, holdout,
                            self.cfg.service.gate, candidate_model=self._load_candidate())
        self.report.gate = decision.as_dict()
        if production is not None and production.calibration is None and decision.baseline_calibration:
            # version 1 of a site whose pool was empty at start: its first calibration, measured by this gate
            self.registry.calibrate(production.version, AssociationCalibration.from_dict(decision.baseline_calibration))
        return None

    def _register(self):
        if any(v.version == self.report.version for v in self.registry.versions()):
            return self._gate_outcome()  # registered just before a crash
        files = {p.name: p for p in (self.dir / "export").glob("*.onnx")}
        metrics = {"parity": self.report.parity, "gate": self.report.gate, "train_crops": self.report.train_crops,
                   "interpolation": self.report.interpolation,
                   "epochs": self.report.epochs, "cycle": self.report.cycle_id, "reason": self.report.reason,
                   "history": self._history(), "started": self.report.started}
        files["checkpoint.pt"] = slim_checkpoint(self.report.checkpoint, self.dir / "export" / "checkpoint.pt")
        state = read_checkpoint(self.report.checkpoint)  # its train config: the model may be the parent's
        self.registry.register(files, embedding_dim=int(state["embedding_dim"]), parent=self.report.parent,
                               version=self.report.version, config=json.loads(state["train_config"]), metrics=metrics,
                               gate={k: self.report.gate.get(k) for k in ("passed", "reason", "verdict", "evidence")},
                               calibration=self.report.gate.get("calibration"))
        return self._gate_outcome()

    def _history(self) -> list[dict[str, Any]]:
        """The epoch records of this cycle's training (a resumed cycle appended to the same log)."""
        log_file = self.dir / "train" / TRAIN_LOG
        return [json.loads(line) for line in log_file.read_text().splitlines() if line.strip()] if log_file.is_file() else []

    def _gate_outcome(self):
        return None if self.report.gate["passed"] else ("rejected", self.report.gate["reason"])

    def _promote(self):
        self.registry.promote(self.report.version)
        return "promoted", f"version {self.report.version} serves ({self.report.gate['reason']})"


# --------------------------------------------------------------------------- triggers
def camera_means(embeddings: np.ndarray, camera_ids: list[str]) -> dict[str, np.ndarray]:
    """Unit-normalised mean embedding per camera."""
    out = {}
    for cam in sorted(set(camera_ids)):
        mean = embeddings[np.asarray(camera_ids) == cam].mean(axis=0)
        out[cam] = mean / max(float(np.linalg.norm(mean)), 1e-12)
    return out


def drift(reference: dict[str, list[float]], current: dict[str, np.ndarray]) -> dict[str, float]:
    """``1 - cos`` between each camera's current and reference mean (cameras in both only)."""
    return {cam: float(1.0 - np.dot(np.asarray(reference[cam]), vec)) for cam, vec in current.items() if cam in reference}


class Triggers:
    """Decides when a cycle is due; remembers its reference points in ``{state_dir}/service.json``."""

    def __init__(self, cfg: AppConfig, pool: PoolStore, registry: ModelRegistry) -> None:
        self.cfg = cfg
        self.pool = pool
        self.registry = registry
        self.path = cfg.path(cfg.service.state_dir) / "service.json"
        self.state = _read_json(self.path)

    def save(self) -> None:
        _write_json(self.path, self.state)

    def cycle_done(self) -> None:
        self.state.update({"last_cycle_end": time.time(), "pool_count": self.pool.count()})
        self.save()

    def due(self) -> str | None:
        """The reason a cycle should start now, or None."""
        svc = self.cfg.service
        last = self.state.get("last_cycle_end")
        if last is None:
            self.state.update({"last_cycle_end": time.time(), "pool_count": self.pool.count()})
            self.save()
        elif svc.interval_minutes and time.time() - last >= svc.interval_minutes * 60:
            return f"schedule: {svc.interval_minutes:g} min since the last cycle"
        grown = self.pool.count() - int(self.state.get("pool_count", 0))
        if svc.min_new_crops and grown >= svc.min_new_crops:
            return f"growth: pool grew by {grown} crops"
        return self._drift_reason()

    def _drift_reason(self) -> str | None:
        svc = self.cfg.service
        production = self.registry.production()
        if svc.drift_threshold is None or production is None:
            return None
        if time.time() - self.state.get("last_drift_check", 0.0) < svc.drift_every_minutes * 60:
            return None
        self.state["last_drift_check"] = time.time()
        crops = self.pool.snapshot(svc.drift_sample_crops, None)
        images, kept = decode_crops(crops)
        if len(images) < 2:
            return None
        means = camera_means(embed_onnx(production.onnx, images), [crops[i].camera_id for i in kept])
        ref = self.state.get("drift_reference") or {}
        if ref.get("version") != production.version:
            self.state["drift_reference"] = {"version": production.version,
                                             "means": {c: v.tolist() for c, v in means.items()}}
            self.save()
            return None
        moved = drift(ref["means"], means)
        self.state["drift"] = moved
        worst = max(moved, key=lambda cam: moved[cam], default=None)
        if worst is not None and moved[worst] > svc.drift_threshold:
            return f"drift: camera {worst} mean embedding moved {moved[worst]:.3f} > {svc.drift_threshold}"
        return None


# --------------------------------------------------------------------------- the service
class _Heartbeat:
    """Publishes the service's status every few seconds from a thread (training blocks for minutes)."""

    def __init__(self, client: redis.Redis, prefix: str) -> None:
        self.client, self.prefix = client, prefix
        self.fields: dict[str, Any] = {"state": "starting"}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="train-status", daemon=True)

    def __enter__(self) -> _Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.update(state="stopped")

    def update(self, **fields: Any) -> None:
        self.fields.update(fields)
        self._publish()

    def _publish(self) -> None:
        try:
            publish_status(self.client, self.prefix, "train", self.fields)
        except (redis.RedisError, OSError) as exc:
            log.warning("train status not published: %s", exc)

    def _loop(self) -> None:
        while not self._stop.wait(STATUS_EVERY_S):
            self._publish()


def _run_one(cfg: AppConfig, pool: PoolStore, registry: ModelRegistry, triggers: Triggers, reason: str,
             beat: _Heartbeat, stop: StopFlag) -> CycleReport:
    cycle = Cycle.start_or_resume(cfg, pool, registry, reason)
    beat.update(state="training", cycle=cycle.report.cycle_id, reason=cycle.report.reason)
    report = cycle.run(stop, progress=beat.update)
    if report.outcome != "running":
        triggers.cycle_done()
    production = registry.production()
    beat.update(state="idle", last_outcome=report.outcome, last_detail=report.detail,
                last_cycle=report.cycle_id, production=production.version if production else None)
    return report


def run_train_service(cfg: AppConfig, redis_url: str, stop: StopFlag, once: bool = False) -> list[CycleReport]:
    """Run until ``stop`` is set (or one cycle with ``once``); returns the reports of the cycles run.

    An unfinished cycle of a previous run is resumed first, whatever the triggers say.
    """
    client = connect(redis_url)
    reports: list[CycleReport] = []
    try:
        pool = open_pool(cfg, client)
        registry = open_registry(cfg, client)
        triggers = Triggers(cfg, pool, registry)
        unfinished = _read_json(cfg.path(cfg.service.state_dir) / "cycle.json").get("outcome") == "running"
        with _Heartbeat(client, cfg.pool.prefix) as beat:
            beat.update(state="idle")
            reason = "resume" if unfinished else ("once" if once else None)
            while not stop.is_set():
                reason = reason or triggers.due()
                if reason:
                    reports.append(_run_one(cfg, pool, registry, triggers, reason, beat, stop))
                    reason = None
                if once:
                    break
                stop.wait(cfg.service.check_seconds)
    finally:
        client.close()
    return reports
