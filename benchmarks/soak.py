"""S1: soak - 4 looped camera streams through ingest, embedder and matcher: RSS growth, pool size, drops.

The whole local pipeline runs as ``selfreid run`` runs it (:class:`~selfreid.pipeline.orchestration.run.Supervisor`:
one process per stage around an embedded redis-server), on four cameras made from the two sample
videos (PETS S2L1 full frame, its left and right halves through an ROI, the indoor clip), each
``loop``-ed forever and paced at native speed (``realtime``) like live cameras, with a ``stride``.
Every retention is set small so that a run reaches steady state: ``max_len_per_camera`` on the pool,
the embeddings stream and the matcher's events, and the matcher's gallery age (``--match-age-min``).

Every ``--sample-s`` seconds it records the RSS of each stage process and of redis-server
(``/proc/PID/status``, Linux), each camera stream's length, Redis ``used_memory``, the embedder and
matcher backlogs and the stages' cumulative counters (from their status reports). The value is the
total RSS slope (least squares, MB/hour) over the samples after the warm-up (``--warmup-min``, and
at least until every stage has processed something); the goal also
needs every camera stream within ``max_len_per_camera`` (+ one stream node: trimming is approximate)
and no stage crash. The time series goes into the JSON and its plot into ``docs/benchmarks/S1.png``.

    .venv/bin/python -m benchmarks.soak [--minutes 60] [--sample-s 30] [--warmup-min 15] [--stride 4]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from benchmarks._common import limit_threads, sample_data, write_result

REPO = Path(__file__).resolve().parents[1]
BASE_CONFIG = REPO / "configs" / "local.yaml"
PLOT = Path("docs") / "benchmarks" / "S1.png"  # media live under docs/
STAGES = ("ingest", "embedder", "matcher")
GOAL_MB_PER_H = 50.0
MB = 1024 * 1024
# Cumulative counters read from each stage's status report (ingest: per camera, summed).
COUNTERS = {
    "ingest": ("frames", "crops", "written", "crop_drops", "frame_drops", "errors", "reconnects"),
    "embedder": ("embedded", "errors"),
    "matcher": ("embeddings", "assignments", "new_identities", "pruned", "errors"),
}
WORK = {"ingest": "frames", "embedder": "embedded", "matcher": "embeddings"}  # counter > 0: the stage works

Sample = dict[str, Any]


@dataclass(frozen=True)
class SoakOptions:
    """One soak profile; the defaults are the benchmark's (the CI test passes a short one)."""

    duration_s: float = 3600.0
    sample_s: float = 30.0
    warmup_s: float = 900.0
    stride: int = 4
    detector: str = "yolox"
    max_len_per_camera: int = 500
    exact_trim: bool = False  # True: streams never exceed max_len_per_camera (default: up to one node more)
    match_max_age_s: float = 600.0
    stages: tuple[str, ...] = STAGES
    cameras: tuple[dict[str, Any], ...] = ()  # () = the four soak cameras of :func:`cameras`
    detector_params: dict[str, Any] = field(default_factory=dict)
    embedder_params: dict[str, Any] = field(default_factory=dict)
    device: str = "cpu"  # ingest.device (the detector's)
    crops: dict[str, Any] = field(default_factory=dict)  # merged into ingest.crops (the crop policy)


@dataclass
class SoakRun:
    """What a soak saw: the samples, why it ended, and the stages that crashed (with their log tail)."""

    samples: list[Sample]
    reason: str
    crashed: dict[str, str]
    log_errors: dict[str, int]
    node_slack: int  # stream-node-max-entries: how far approximate trimming may overshoot


# --------------------------------------------------------------------------- configuration
def cameras(data: Path, stride: int) -> list[dict[str, Any]]:
    """Four looped cameras from the two sample videos, paced at native speed like live cameras."""
    vtest = str(data / "pets09-s2l1" / "vtest.avi")
    pets = {"loop": True, "fps": 7}  # PETS S2L1 was recorded at ~7 fps (configs/local.yaml)
    views = [
        {"id": "pets-full", "uri": vtest, "params": pets},
        {"id": "pets-left", "uri": vtest, "roi": [0, 0, 384, 576], "params": pets},
        {"id": "pets-right", "uri": vtest, "roi": [384, 0, 768, 576], "params": pets},
        {
            "id": "corridor",
            "uri": str(data / "clips" / "one-by-one-person-detection.mp4"),
            "params": {"loop": True},
        },
    ]
    return [{**view, "source": "file", "stride": stride, "realtime": True} for view in views]


def write_config(data: Path, data_dir: Path, opts: SoakOptions) -> Path:
    """``configs/local.yaml`` with the soak's cameras, detector and retentions, written to ``data_dir``."""
    raw = yaml.safe_load(BASE_CONFIG.read_text())
    raw["data_dir"] = str(data_dir)
    raw["redis"]["url"] = None
    raw["pool"]["params"] |= {"max_len_per_camera": opts.max_len_per_camera, "exact_trim": opts.exact_trim}
    raw["ingest"] |= {
        "cameras": list(opts.cameras) or cameras(data, opts.stride),
        "detector": {"plugin": opts.detector, "params": dict(opts.detector_params)},
        "device": opts.device,
        "metrics_port": None,
    }
    raw["ingest"]["crops"] = raw["ingest"].get("crops", {}) | opts.crops
    raw["embedder"]["stream_maxlen"] = max(100, 4 * opts.max_len_per_camera)
    raw["embedder"]["params"] = raw["embedder"].get("params", {}) | opts.embedder_params
    raw["matcher"] = {
        "prune_every_s": min(60.0, opts.match_max_age_s / 4),
        "matcher": {"params": {"max_age_s": opts.match_max_age_s, "events_maxlen": 1000}},
    }
    path = data_dir / "soak.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


# --------------------------------------------------------------------------- sampling
def rss_mb(pid: int | None) -> float | None:
    """Resident set size of ``pid`` in MB, None once it has exited (Linux ``/proc``)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError):
        pass
    return None


def cpu_seconds(pid: int | None) -> float | None:
    """User + system CPU seconds ``pid`` has used (all its threads), None once it has exited."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def stage_counters(status: dict[str, dict[str, Any]]) -> dict[str, dict[str, int]]:
    """The :data:`COUNTERS` of every stage's status report, summed over instances (and cameras);
    ``rejected`` maps summed into one number; zeros kept, so a missing drop counter stands out."""
    out: dict[str, Counter[str]] = {stage: Counter() for stage in COUNTERS}
    for name, fields in status.items():
        stage = name.split(":", 1)[0]
        if stage not in COUNTERS:
            continue
        reports = fields.get("cameras", {}).values() if stage == "ingest" else [fields]
        for report in reports:
            out[stage].update({k: int(report[k]) for k in COUNTERS[stage] if k in report})
        if stage == "ingest":
            out[stage].update({"pool_queued": int(fields.get("pool", {}).get("queued", 0))})
        else:
            out[stage].update({"rejected": sum(fields.get("rejected", {}).values())})
    return {stage: dict(c) for stage, c in out.items() if c}


def take_sample(sup: Any, t_s: float, redis_pid: int) -> Sample:
    """One point of the time series (see the module docstring)."""
    from selfreid.pipeline.runtime.status import read_status

    client = sup.client
    pids = {name: stage.process.pid for name, stage in sup.running.items() if name in STAGES}
    pids |= {"redis": redis_pid}
    return {
        "t_s": round(t_s, 1),
        "pids": pids,
        "cpu_s": {name: cpu_seconds(pid) for name, pid in pids.items()},
        "rss_mb": {name: rss_mb(pid) for name, pid in pids.items()},
        "pool_len": {cam: int(client.xlen(sup.pool.stream_key(cam))) for cam in sup.pool.cameras()},
        "redis_used_mb": int(client.info("memory")["used_memory"]) / MB,
        "redis_calls": sum(int(c["calls"]) for c in client.info("commandstats").values()),
        "embeddings_len": int(client.xlen(sup.embeddings_key)),
        "backlog": {spec.name: sup.backlog(spec) for spec in sup.specs if spec.drains},
        "counters": stage_counters(read_status(client, sup.cfg.pool.prefix)),
    }


class Sampler:
    """Called about once a second by ``Supervisor.watch``; takes a sample every ``every_s``."""

    def __init__(self, sup: Any, every_s: float, redis_pid: int, on_sample: Callable[[Sample], None]) -> None:
        self.sup, self.every_s, self.redis_pid, self.on_sample = sup, every_s, redis_pid, on_sample
        self.samples: list[Sample] = []
        self._start = time.monotonic()

    def __call__(self) -> None:
        elapsed = time.monotonic() - self._start
        if self.samples and elapsed < self.samples[-1]["t_s"] + self.every_s:
            return
        self.samples.append(take_sample(self.sup, elapsed, self.redis_pid))
        self.on_sample(self.samples[-1])


# --------------------------------------------------------------------------- the run
def _init_models(sup: Any) -> None:
    """Register model version 1 before the clock starts: its ONNX export dominates start-up on a CPU
    (``start_all`` then finds the registry filled and starts the stages at once)."""
    from selfreid.pipeline.orchestration.run import INIT

    sup.start(INIT)
    init = sup.running[INIT.name]
    init.process.join()
    if init.crashed:
        raise RuntimeError(f"models init failed ({init.log_path}):\n{init.log_tail()}")


def _log_errors(sup: Any) -> dict[str, int]:
    """ERROR lines in each stage's log (problems that did not crash the stage)."""
    return {
        name: sum(" ERROR " in line for line in stage.log_path.read_text(errors="replace").splitlines())
        for name, stage in sup.running.items()
        if stage.log_path.exists()
    }


def run_soak(
    data: Path, data_dir: Path, opts: SoakOptions, on_sample: Callable[[Sample], None] = lambda s: None
) -> SoakRun:
    """Run the pipeline for ``opts.duration_s`` (or until a stage crashes) on a fresh embedded Redis in
    ``data_dir`` (``REDIS_URL`` is not used), sampling it; stop it in order as ``selfreid run`` does."""
    from selfreid.pipeline.config import load_config
    from selfreid.pipeline.orchestration.run import STAGES as SPECS
    from selfreid.pipeline.orchestration.run import RunOptions, Supervisor
    from selfreid.pipeline.runtime.redis_conn import EmbeddedRedis
    from selfreid.pipeline.runtime.signals import stop_on_signals

    data_dir.mkdir(parents=True, exist_ok=True)
    config_path = write_config(data, data_dir, opts)
    cfg = load_config(config_path)
    options = RunOptions(duration_s=opts.duration_s, stages=opts.stages)
    specs = [spec for spec in SPECS if spec.name in opts.stages]
    with EmbeddedRedis(cfg.path(cfg.redis.embedded_dir), cfg.redis.appendonly) as server:
        sup = Supervisor(cfg, server.url, options, specs)
        try:
            redis_pid = int(sup.client.info("server")["process_id"])
            node_slack = int(sup.client.config_get("stream-node-max-entries")["stream-node-max-entries"])
            with stop_on_signals(sup.shutdown):
                if "embedder" in opts.stages:
                    _init_models(sup)
                sampler = Sampler(sup, opts.sample_s, redis_pid, on_sample)
                sup.start_all()
                try:
                    sup.watch(sampler)
                finally:
                    sup.stop_all(lambda: None)
        except BaseException:
            sup.kill_all()
            raise
        finally:
            sup.close()
    crashed = {name: stage.log_tail() for name, stage in sup.running.items() if stage.crashed}
    return SoakRun(sampler.samples, sup.reason, crashed, _log_errors(sup), node_slack)


# --------------------------------------------------------------------------- analysis
def slope_mb_per_h(points: list[tuple[float, float]]) -> float | None:
    """Least-squares slope of ``(t_s, MB)`` points in MB/hour (None with fewer than 3 points)."""
    if len(points) < 3:
        return None
    t, mb = np.array(points).T
    return float(np.polyfit(t / 3600.0, mb, 1)[0])


def rss_series(samples: list[Sample]) -> dict[str, list[tuple[float, float]]]:
    """``(t_s, MB)`` per process, plus ``total`` over the samples where every process was alive."""
    names = sorted({name for s in samples for name in s["rss_mb"]})
    series: dict[str, list[tuple[float, float]]] = {name: [] for name in [*names, "total"]}
    for s in samples:
        alive = {name: mb for name, mb in s["rss_mb"].items() if mb is not None}
        for name, mb in alive.items():
            series[name].append((s["t_s"], mb))
        if len(alive) == len(names):
            series["total"].append((s["t_s"], sum(alive.values())))
    return series


def steady_from(samples: list[Sample], warmup_s: float, stages: tuple[str, ...]) -> float:
    """When the warm-up ends: after ``warmup_s`` and once every stage has processed something
    (on a loaded machine, the model export and loading can outlast a short fixed warm-up)."""
    working = (
        s["t_s"]
        for s in samples
        if all(s["counters"].get(stage, {}).get(WORK[stage], 0) > 0 for stage in stages)
    )
    return max(warmup_s, next(working, float("inf")))


def rss_growth(points: list[tuple[float, float]], steady_s: float) -> dict[str, float | None]:
    """Slope after the warm-up, and first -> last growth over the whole run and after the warm-up."""
    steady = [p for p in points if p[0] >= steady_s]
    return {
        "slope_mb_per_h": slope_mb_per_h(steady),
        "first_mb": points[0][1] if points else None,
        "last_mb": points[-1][1] if points else None,
        "growth_mb": points[-1][1] - points[0][1] if points else None,
        "growth_after_warmup_mb": steady[-1][1] - steady[0][1] if steady else None,
        "peak_mb": max(mb for _, mb in points) if points else None,
    }


def summarize(run: SoakRun, opts: SoakOptions) -> dict[str, Any]:
    """The report: RSS growth per process, pool bounds, final counters (drops, errors), crashes."""
    samples = run.samples
    steady_s = steady_from(samples, opts.warmup_s, opts.stages)
    rss = {name: rss_growth(points, steady_s) for name, points in rss_series(samples).items()}
    longest = {
        cam: max(s["pool_len"].get(cam, 0) for s in samples)
        for cam in (samples[-1]["pool_len"] if samples else {})
    }
    bound = opts.max_len_per_camera + (0 if opts.exact_trim else run.node_slack)
    final = samples[-1]["counters"] if samples else {}
    return {
        "minutes": round(samples[-1]["t_s"] / 60, 2) if samples else 0.0,
        "ended": run.reason,
        "steady_from_s": steady_s,
        "crashed": run.crashed,
        "log_errors": run.log_errors,
        "rss": rss,
        "pool": {
            "max_len_per_camera": opts.max_len_per_camera,
            "bound": bound,
            "longest": longest,
            "bounded": all(n <= bound for n in longest.values()),
            "cameras_at_retention": sorted(cam for cam, n in longest.items() if n >= opts.max_len_per_camera),
            "redis_used_mb_peak": max((s["redis_used_mb"] for s in samples), default=None),
            "redis_used_mb_last": samples[-1]["redis_used_mb"] if samples else None,
            "embeddings_len_peak": max((s["embeddings_len"] for s in samples), default=None),
        },
        "backlog_peak": {
            name: max(s["backlog"].get(name, 0) for s in samples)
            for name in (samples[-1]["backlog"] if samples else {})
        },
        "counters": final,
    }


def compact_series(samples: list[Sample]) -> dict[str, Any]:
    """The time series as columns (what the JSON keeps and the plot draws)."""
    names = sorted({name for s in samples for name in s["rss_mb"]})
    return {
        "t_s": [s["t_s"] for s in samples],
        "rss_mb": {name: [_round(s["rss_mb"].get(name)) for s in samples] for name in names},
        "pool_len_total": [sum(s["pool_len"].values()) for s in samples],
        "redis_used_mb": [_round(s["redis_used_mb"]) for s in samples],
        "embeddings_len": [s["embeddings_len"] for s in samples],
        "backlog": {
            name: [s["backlog"].get(name, 0) for s in samples]
            for name in (samples[-1]["backlog"] if samples else {})
        },
        "ingest_frames": [s["counters"].get("ingest", {}).get("frames", 0) for s in samples],
        "crop_drops": [s["counters"].get("ingest", {}).get("crop_drops", 0) for s in samples],
    }


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 1)


def plot(series: dict[str, Any], steady_s: float, path: Path) -> None:
    """RSS per process (left) and the pool (right) over time, the warm-up shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    minutes = np.array(series["t_s"]) / 60
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6), dpi=80)
    for name, values in series["rss_mb"].items():
        left.plot(minutes, [np.nan if v is None else v for v in values], label=name)
    right.plot(minutes, series["pool_len_total"], label="pool entries (4 streams)")
    right.plot(minutes, series["embeddings_len"], label="embeddings stream")
    for ax, ylabel in ((left, "RSS (MB)"), (right, "entries")):
        ax.axvspan(0, min(steady_s, series["t_s"][-1]) / 60, color="0.9")
        ax.set_xlabel("minutes")
        ax.set_ylabel(ylabel)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


# --------------------------------------------------------------------------- command line
def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=60.0, help="Soak duration.")
    p.add_argument("--sample-s", type=float, default=30.0, help="Seconds between samples.")
    p.add_argument("--warmup-min", type=float, default=15.0, help="Minutes left out of the RSS slope.")
    p.add_argument("--stride", type=int, default=4, help="Each camera processes every n-th frame.")
    p.add_argument("--detector", default="yolox", choices=["yolox", "hog", "yolo"])
    p.add_argument("--max-len", type=int, default=500, help="Pool retention: crops kept per camera.")
    p.add_argument("--match-age-min", type=float, default=10.0, help="Matcher gallery retention (minutes).")
    p.add_argument(
        "--stages", default=",".join(STAGES), help="Comma-separated subset of ingest,embedder,matcher."
    )
    p.add_argument(
        "--data-dir", type=Path, default=None, help="Pool, models and stage logs (default: a new temp dir)."
    )
    p.add_argument(
        "--threads", type=int, default=1, help="torch / OpenCV threads of this (sampling) process."
    )
    return p.parse_args()


def _print(sample: Sample) -> None:
    rss = " ".join(f"{k}={v:.0f}" for k, v in sample["rss_mb"].items() if v is not None)
    ingest = sample["counters"].get("ingest", {})
    print(
        f"{sample['t_s'] / 60:6.1f} min  RSS MB {rss}  pool {sum(sample['pool_len'].values())}  "
        f"redis {sample['redis_used_mb']:.1f} MB  frames {ingest.get('frames', 0)}  "
        f"drops {ingest.get('crop_drops', 0)}/{ingest.get('frame_drops', 0)}  backlog {sample['backlog']}",
        flush=True,
    )


def main() -> None:
    args = parse_args()
    limit_threads(args.threads)
    opts = SoakOptions(
        duration_s=args.minutes * 60,
        sample_s=args.sample_s,
        warmup_s=args.warmup_min * 60,
        stride=args.stride,
        detector=args.detector,
        max_len_per_camera=args.max_len,
        match_max_age_s=args.match_age_min * 60,
        stages=tuple(args.stages.split(",")),
    )
    data_dir = args.data_dir or Path(tempfile.mkdtemp(prefix="selfreid-soak-"))
    print(f"soak: {args.minutes:g} min, data and stage logs in {data_dir}", flush=True)
    run = run_soak(sample_data(), data_dir, opts, on_sample=_print)
    summary = summarize(run, opts)
    series = compact_series(run.samples)
    (REPO / PLOT).parent.mkdir(parents=True, exist_ok=True)
    plot(series, summary["steady_from_s"], REPO / PLOT)
    slope = summary["rss"]["total"]["slope_mb_per_h"]
    met = slope is not None and slope < GOAL_MB_PER_H and summary["pool"]["bounded"] and not run.crashed
    write_result(
        "S1",
        slope if slope is not None else float("nan"),
        goal=f"total RSS growth < {GOAL_MB_PER_H:g} MB/hour after warm-up, pool bounded by retention, no stage crash "
        f"({summary['minutes']:g} min measured)",
        unit="MB/hour",
        details={
            "options": vars(args) | {"data_dir": str(data_dir)},
            **summary,
            "series": series,
            "plot": str(PLOT),
        },
        met=met,
    )
    print(
        f"S1: {summary['minutes']:g} min, total RSS slope {slope} MB/h, pool {summary['pool']}, ended: {run.reason}"
    )


if __name__ == "__main__":
    main()
