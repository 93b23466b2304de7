"""``selfreid run``: every stage of one site on this machine, around one Redis, with a live view.

Design choices:

* **One process per stage** (``multiprocessing`` with the ``spawn`` start method). Ingest
  (decode + detect), the embedder (onnxruntime), the trainer (torch) and the matcher are CPU
  heavy and would serialise on the GIL as threads; a process per stage is also what Docker
  Compose runs, so a crash stays in its stage and is reported with its exit code, exactly as a
  container would be. ``spawn`` (not ``fork``) because the parent may already hold threads
  (rich's refresh, Redis connections) and torch/onnxruntime thread pools do not survive a fork.
* **The parent owns Redis.** With no ``REDIS_URL`` the embedded server is started once, before
  any stage, and every child gets its ``unix://`` URL. redis-server daemonises into its own
  session, so a terminal Ctrl-C (sent to the whole process group) does not reach it; the parent
  stops it only after every child has exited, so it outlives them all.
* **Ordered shutdown.** Each stage has its own stop event. On Ctrl-C / SIGTERM / ``--duration`` /
  ``--until-idle`` the parent stops ``ingest`` first, waits until the embedder's consumer group
  has nothing undelivered or unacknowledged (bounded), then stops ``embedder``, ``matcher``,
  ``train`` and ``api`` in that order; each flushes and acknowledges before returning. Children
  ignore SIGINT so that only the parent decides the order; SIGTERM sent to a child directly
  stops that child gracefully.
* **Status from Redis.** The live table is built from :mod:`selfreid.pipeline.runtime.status` (what
  every stage publishes) plus each process's state, so it shows the same thing as
  ``selfreid health`` and the API. Each stage's own output goes to ``{data_dir}/logs/<stage>.log``;
  the last lines are printed when a stage crashes.

The exit code is 0 when every stage returned normally, 1 when one crashed or had to be killed.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import logging
import multiprocessing as mp
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console

from selfreid.pipeline.config import AppConfig
from selfreid.pipeline.config.redis import redact_url
from selfreid.pipeline.runtime.redis_conn import connect, redis_endpoint
from selfreid.pipeline.runtime.signals import StopFlag, stop_on_signals
from selfreid.plugins.codec import as_text

if TYPE_CHECKING:  # the parent stays light: each stage imports its own stack
    from selfreid.plugins.contracts import PoolStore

__all__ = [
    "STAGES",
    "RunOptions",
    "StageError",
    "StageSpec",
    "init_models",
    "pool_backlog",
    "resolve_sample_data",
    "run_local",
    "stream_backlog",
]

log = logging.getLogger(__name__)

SAMPLE_PREFIX = "../shared/data/"
LAST_RUN_STATUS = "last_run_status.json"


class StageError(RuntimeError):
    """``selfreid run`` cannot start: no stage is available, or an unknown stage was asked for."""


@dataclass(frozen=True)
class StageSpec:
    """A long-running stage: ``target`` is ``module:function`` with the ``run_<stage>`` signature."""

    name: str
    target: str
    drains: str | None = None  # "pool" or "embeddings": the stream this stage empties before it stops


# Which consumer group a draining stage reads.
DRAIN_GROUPS = {"pool": "embedder", "embeddings": "matcher"}


# Shutdown order; stages start in the reverse order so that consumers are up before producers.
# ``models`` is a one-shot started first: version 1 when the registry is empty (the embedder
# waits for a production model and takes it when it is promoted).
INIT = StageSpec("models", "selfreid.pipeline.orchestration.run:init_models")
STAGES: tuple[StageSpec, ...] = (
    StageSpec("ingest", "selfreid.pipeline.ingest.service:run_ingest"),
    StageSpec("embedder", "selfreid.pipeline.serving.embed:run_embedder", drains="pool"),
    StageSpec("matcher", "selfreid.pipeline.serving.match:run_matcher", drains="embeddings"),
    StageSpec("train", "selfreid.pipeline.training.service:run_train_service"),
    StageSpec("api", "selfreid.pipeline.serving.api:run_api"),
)


@dataclass(frozen=True)
class RunOptions:
    duration_s: float | None = None
    until_idle: bool = False
    train_once: bool = False
    max_frames: int | None = None
    stages: tuple[str, ...] | None = None
    drain_timeout_s: float = 60.0
    stop_timeout_s: float = 60.0


# --------------------------------------------------------------------------- configuration
def resolve_sample_data(cfg: AppConfig) -> AppConfig:
    """Camera URIs written as ``../shared/data/...`` point at the sample data wherever it is
    (``$SELFREID_SHARED_DATA``, or ``../shared/data`` beside the checkout or the working directory)."""
    from selfreid.plugins.assets import shared_data_dir

    data = shared_data_dir()
    if data is None:
        return cfg
    cameras = [
        cam.model_copy(update={"uri": str(data / cam.uri[len(SAMPLE_PREFIX):])}) if cam.uri.startswith(SAMPLE_PREFIX) else cam
        for cam in cfg.ingest.cameras
    ]
    return cfg.model_copy(update={"ingest": cfg.ingest.model_copy(update={"cameras": cameras})})


def _select(options: RunOptions) -> tuple[list[StageSpec], list[str]]:
    """The requested stages whose module is installed, and the missing ones' names (found without
    importing them: the parent stays light, each stage imports its own stack in its process)."""
    known = {spec.name for spec in STAGES}
    unknown = sorted(set(options.stages or ()) - known)
    if unknown:
        raise StageError(f"unknown stage(s) {', '.join(unknown)}; choose from {', '.join(known)}")
    wanted = [spec for spec in STAGES if options.stages is None or spec.name in options.stages]
    found = [spec for spec in wanted if importlib.util.find_spec(spec.target.partition(":")[0]) is not None]
    missing = [spec.name for spec in wanted if spec not in found]
    if not found:
        raise StageError(f"no stage to run: {', '.join(missing)} not installed")
    return found, missing


def _stage_kwargs(spec: StageSpec, options: RunOptions) -> dict[str, Any]:
    if spec.name == "ingest":
        return {"max_frames": options.max_frames}
    if spec.name == "train":
        return {"once": options.train_once}
    return {}


# --------------------------------------------------------------------------- child side
def _stage_main(
    name: str, target: str, cfg: AppConfig, redis_url: str, stop: StopFlag, kwargs: dict, log_path: str
) -> None:
    """Entry point of a stage process: output to its log file, signals to ``stop``, then run."""
    log_file = open(log_path, "a", buffering=1)  # noqa: SIM115 - lives as long as the process
    os.dup2(log_file.fileno(), 1)
    os.dup2(log_file.fileno(), 2)
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format=f"%(asctime)s {name} %(levelname)s %(name)s: %(message)s"
    )
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    module, _, function = target.partition(":")
    run = getattr(importlib.import_module(module), function)
    logging.getLogger(name).info("starting %s (pid %d, redis %s)", target, os.getpid(), redact_url(redis_url))
    try:
        run(cfg, redis_url, stop, **kwargs)
    except BaseException:
        logging.getLogger(name).exception("stage %s crashed", name)
        raise


def init_models(cfg: AppConfig, redis_url: str, stop: StopFlag) -> None:
    """One-shot stage: register and serve version 1 on this run's Redis when the registry is empty."""

    from selfreid.pipeline.training.bootstrap import initialise_registry, parity_images
    from selfreid.pipeline.training.registry import open_registry

    client = connect(redis_url)
    try:
        registry = open_registry(cfg, client)
        if not registry.versions():
            version = initialise_registry(cfg, registry, parity_images(cfg, client, None, cfg.export.parity_crops))
            log.info("model version %s initialised and serving", version.version)
    finally:
        client.close()


@dataclass
class StageProcess:
    """One running stage and its stop event, as seen from the parent."""

    spec: StageSpec
    process: mp.process.BaseProcess
    stop: StopFlag
    log_path: Path
    stopping: bool = False

    @property
    def state(self) -> str:
        code = self.process.exitcode
        if code is None:
            return "stopping" if self.stopping else "running"
        return ("stopped" if self.stopping else "finished") if code == 0 else f"crashed ({code})"

    @property
    def crashed(self) -> bool:
        return self.process.exitcode not in (None, 0)

    def shut(self, timeout_s: float) -> None:
        """Set the stop event and wait; terminate, then kill, a stage that does not return."""
        self.stopping = self.process.exitcode is None
        self.stop.set()
        self.process.join(timeout_s)
        for escalate in (self.process.terminate, self.process.kill):
            if self.process.exitcode is not None:
                return
            log.warning("stage %s did not stop within %.0f s: %s", self.spec.name, timeout_s, escalate.__name__)
            escalate()
            self.process.join(5.0)

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def _start(ctx: Any, spec: StageSpec, cfg: AppConfig, redis_url: str, options: RunOptions) -> StageProcess:
    log_dir = cfg.path("logs")
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{spec.name}.log"
    stop = ctx.Event()
    process = ctx.Process(
        target=_stage_main,
        args=(spec.name, spec.target, cfg, redis_url, stop, _stage_kwargs(spec, options), str(log_path)),
        name=f"selfreid-{spec.name}",
    )
    process.start()
    return StageProcess(spec, process, stop, log_path)


# --------------------------------------------------------------------------- pool state
def stream_backlog(client: Any, key: str, group: str) -> int:
    """Entries of stream ``key`` that ``group`` has not read yet or not acknowledged (0 = drained).

    Works on Redis 6.2 (no ``lag`` field): pending count + entries after the last delivered id.
    """
    import redis

    try:
        groups = {as_text(g["name"]): g for g in client.xinfo_groups(key)}
    except redis.ResponseError:  # no such stream
        return 0
    info = groups.get(group)
    if info is None:
        return int(client.xlen(key))
    after = client.xrange(key, min=f"({as_text(info['last-delivered-id'])}", max="+", count=1000)
    return int(info["pending"]) + len(after)


def pool_backlog(pool: PoolStore, group: str) -> int:
    """:func:`stream_backlog` summed over the pool's camera streams."""
    return sum(stream_backlog(pool.client, pool.stream_key(camera), group) for camera in pool.cameras())


# --------------------------------------------------------------------------- supervisor
@dataclass
class Supervisor:
    """Starts the stages, watches them, and stops them in order."""

    cfg: AppConfig
    redis_url: str
    options: RunOptions
    specs: list[StageSpec]
    missing: list[str] = field(default_factory=list)
    running: dict[str, StageProcess] = field(default_factory=dict)
    shutdown: threading.Event = field(default_factory=threading.Event)
    reason: str = ""
    first_status: dict[str, dict[str, Any]] = field(default_factory=dict)
    last_status: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:

        from selfreid.pipeline.runtime.pool import open_pool
        from selfreid.pipeline.serving.embedding_store import EmbeddingStore

        self.ctx = mp.get_context("spawn")
        self.client = connect(self.redis_url)
        self.pool = open_pool(self.cfg, self.client)
        self.embeddings_key = EmbeddingStore(self.client, self.cfg.pool.prefix).key

    def start(self, spec: StageSpec) -> None:
        self.running[spec.name] = _start(self.ctx, spec, self.cfg, self.redis_url, self.options)

    def start_all(self) -> None:
        if any(spec.name != "ingest" for spec in self.specs):
            self.start(INIT)
        for spec in reversed(self.specs):
            if not (spec.name == "train" and self.options.train_once and self._has("ingest")):
                self.start(spec)

    def _has(self, name: str) -> bool:
        return any(spec.name == name for spec in self.specs)

    def _finished(self, name: str) -> bool:
        stage = self.running.get(name)
        return stage is not None and stage.process.exitcode == 0

    def backlog(self, spec: StageSpec) -> int:
        """What ``spec`` still has to consume (0 for a stage that drains nothing)."""
        if spec.drains == "pool":
            return pool_backlog(self.pool, DRAIN_GROUPS["pool"])
        if spec.drains == "embeddings":
            return stream_backlog(self.client, self.embeddings_key, DRAIN_GROUPS["embeddings"])
        return 0

    def _drained(self) -> bool:
        return all(self.backlog(spec) == 0 for spec in self.specs)

    def _check(self, started: float) -> str:
        """Why the run should end now ('' = keep going); starts the deferred one-shot trainer."""
        crashed = [s.spec.name for s in self.running.values() if s.crashed]
        if crashed:
            return f"stage {', '.join(crashed)} crashed"
        if self.shutdown.is_set():
            return "interrupted"
        if self.options.duration_s is not None and time.monotonic() - started >= self.options.duration_s:
            return f"--duration {self.options.duration_s:g} s reached"
        ingest_done = not self._has("ingest") or self._finished("ingest")
        if self.options.train_once and self._has("train") and "train" not in self.running and ingest_done:
            if self._drained():
                self.start(next(spec for spec in self.specs if spec.name == "train"))
            return ""
        if self.options.until_idle and ingest_done and self._drained():
            if not self._has("train") or not self.options.train_once or self._finished("train"):
                return "idle: every camera ended and the pool is drained"
        return ""

    def watch(self, render: Callable[[], None]) -> None:
        started = time.monotonic()
        while not (reason := self._check(started)):
            render()
            self.shutdown.wait(1.0)
        self.reason = reason
        render()

    def stop_all(self, render: Callable[[], None]) -> None:
        """Stop in :data:`STAGES` order; a draining stage first empties its stream."""
        for spec in [INIT, *self.specs]:
            stage = self.running.get(spec.name)
            if stage is None:
                continue
            if spec.drains and not any(s.crashed for s in self.running.values()):
                self._wait_drained(spec, render)
            render()
            stage.shut(self.options.stop_timeout_s)
            render()

    def _wait_drained(self, spec: StageSpec, render: Callable[[], None]) -> None:
        import redis

        deadline = time.monotonic() + self.options.drain_timeout_s
        try:
            while (left := self.backlog(spec)) and time.monotonic() < deadline:
                render()
                time.sleep(0.5)
        except (redis.RedisError, OSError) as exc:
            log.warning("cannot check what %s still has to consume (%s); stopping it now", spec.name, exc)
            return
        if left:
            log.warning("stopping %s with %d %s entries not consumed (drain timeout %.0f s)",
                        spec.name, left, spec.drains, self.options.drain_timeout_s)

    def read_status(self) -> dict[str, dict[str, Any]]:
        """The stages' live status reports, also remembered: they expire a minute after a stage ends."""
        from selfreid.pipeline.runtime.status import read_status

        status = read_status(self.client, self.cfg.pool.prefix)
        for name, fields in status.items():
            self.first_status.setdefault(name, fields)
        self.last_status.update(status)
        return status

    def save_last_status(self) -> Path:
        """``{data_dir}/logs/last_run_status.json``: each stage's first and last report of this run (the
        report page's throughput section reads it once the live reports have expired)."""
        path = self.cfg.path("logs") / LAST_RUN_STATUS
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"reason": self.reason, "saved": time.time(), "first_stages": self.first_status,
                                    "stages": self.last_status},
                                   indent=1, default=str))
        return path

    def kill_all(self) -> None:
        for stage in self.running.values():
            if stage.process.exitcode is None:
                stage.process.kill()
                stage.process.join(5.0)

    def close(self) -> None:
        self.client.close()

    def exit_code(self) -> int:
        return 1 if any(stage.crashed for stage in self.running.values()) else 0


STATE_STYLES = {"running": "green", "finished": "blue", "stopped": "blue", "starting": "yellow", "waiting": "dim",
                "reconnecting": "yellow", "connecting": "yellow", "degraded": "yellow", "idle": "cyan"}


def _styled(state: str) -> Any:
    from rich.text import Text

    word = state.split(" ", 1)[0]
    style = STATE_STYLES.get(word, "red" if word in ("crashed", "failed", "error") else "dim" if word == "stale" else "")
    return Text(state, style=style)


def _stage_rows(sup: Supervisor, status: dict[str, dict[str, Any]], now: float) -> list[tuple[str, str, str, str]]:
    """``(stage, state, key numbers, report age)`` per stage instance; a started stage without a report
    says what it is loading, a report of a process that ended or went silent says so, and reports of
    stages this run did not start (a backfill during a promotion) follow."""
    from selfreid.pipeline.runtime.status import stage_numbers, stage_startup, stage_state

    rows: list[tuple[str, str, str, str]] = []
    shown: set[str] = set()
    for spec in [INIT, *sup.specs]:
        stage = sup.running.get(spec.name)
        if spec is INIT and stage is None:
            continue
        process = stage.state if stage else None
        reports = {k: v for k, v in status.items() if k.split(":", 1)[0] == spec.name}
        shown.update(reports)
        if not reports:
            what = stage_startup(spec.name, sup.cfg) if process == "running" else "-"
            rows.append((spec.name, stage_state(spec.name, None, process) if stage else "waiting", what, ""))
        for name, fields in reports.items():
            instance = name.split(":", 1)[1].removeprefix(f"{spec.name}-")
            label = spec.name if len(reports) == 1 else f"{spec.name} {instance}"
            rows.append((label, stage_state(spec.name, fields, process, now), stage_numbers(spec.name, fields),
                         f"{now - float(fields.get('updated', now)):.0f} s ago"))
    for name, fields in status.items():
        if name not in shown:
            other = name.split(":", 1)[0]
            rows.append((name, stage_state(other, fields, None, now), stage_numbers(other, fields),
                         f"{now - float(fields.get('updated', now)):.0f} s ago"))
    return rows


def _camera_table(sup: Supervisor, status: dict[str, dict[str, Any]]) -> Any:
    """One row per camera of the freshest ingest report: state, fps, frames, crops, drops; a camera of an
    ingest process that ended shows that end, never ``running``."""
    from rich.table import Table

    from selfreid.pipeline.runtime.status import camera_rows

    reports = [f for k, f in status.items() if k.split(":", 1)[0] == "ingest"]
    if not reports:
        return None
    latest = max(reports, key=lambda f: float(f.get("updated", 0)))
    ingest = sup.running.get("ingest")
    ended = ingest.state if ingest is not None and ingest.state != "running" else None
    table = Table(box=None, padding=(0, 2, 0, 0), title_justify="left")
    for column in ("camera", "state", "fps", "frames", "crops", "drops (frames/crops)"):
        table.add_column(column, justify="left" if column in ("camera", "state") else "right", no_wrap=True)
    for cam, state, fps, frames, crops, drops in camera_rows(latest):
        state = ended if ended and state not in ("finished", "failed") else state
        table.add_row(cam, _styled(state), fps, frames, crops, drops)
    return table


def _table(sup: Supervisor) -> Any:
    """The live view: a line per stage (state, key numbers, age of its report), then a line per camera."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    problem = None
    try:
        status = sup.read_status()
    except Exception as exc:  # noqa: BLE001 - the view must not end the run
        status, problem = {}, Text(f"status reports unavailable: {exc}", style="yellow")
    now = time.time()
    table = Table(title=f"selfreid run - {sup.reason or 'running (Ctrl-C stops)'}", expand=True, box=None,
                  padding=(0, 2, 0, 0), title_justify="left")
    table.add_column("stage", no_wrap=True)
    table.add_column("state", no_wrap=True)
    table.add_column("key numbers", overflow="fold", ratio=1)
    table.add_column("report", justify="right", no_wrap=True)
    for stage, state, numbers, age in _stage_rows(sup, status, now):
        table.add_row(stage, _styled(state), Text(numbers), age)
    for name in sup.missing:
        table.add_row(name, Text("not installed", style="yellow"), "-", "")
    return Group(*(part for part in (table, _camera_table(sup, status), problem) if part is not None))


def run_local(cfg: AppConfig, options: RunOptions, console: Console) -> int:
    """Run the selected stages until Ctrl-C, ``duration_s`` or idle; return the exit code.

    ``console`` shows the live table and the closing lines (the CLI passes its stderr console).
    """
    from rich.live import Live

    cfg = resolve_sample_data(cfg)
    specs, missing = _select(options)
    if missing:
        console.print(f"[yellow]warning:[/] stage(s) not installed, running without them: {', '.join(missing)}")
    with redis_endpoint(cfg) as url:
        sup = Supervisor(cfg, url, options, specs, missing)
        try:
            with stop_on_signals(sup.shutdown), Live(_table(sup), console=console, auto_refresh=False,
                                                  redirect_stderr=False) as live:
                def render() -> None:
                    live.update(_table(sup), refresh=True)

                sup.start_all()
                try:
                    sup.watch(render)
                finally:
                    try:
                        sup.stop_all(render)
                    except BaseException:  # a second Ctrl-C, or Redis gone: no more waiting
                        sup.kill_all()
                        raise
        finally:
            sup.save_last_status()
            sup.close()
    for stage in sup.running.values():
        if stage.crashed:
            console.print(f"[red]stage {stage.spec.name} {stage.state}[/]; last log lines ({stage.log_path}):")
            console.print(stage.log_tail(), markup=False, highlight=False)
    console.print(f"selfreid run ended: {sup.reason}")
    return sup.exit_code()
