"""``selfreid demo``: the whole product on the bundled real data, ending in a report page.

1. **Data**: the sample videos (``../shared/data`` or ``$SELFREID_SHARED_DATA``; without them,
   ``scripts/fetch_sample_data.sh`` provisions ``vtest.avi`` from Debian's ``opencv-doc`` package).
2. **Run** (:func:`selfreid.pipeline.orchestration.run.run_local`): ingest of every camera into the embedded
   Redis, the embedder serving version 1 (ImageNet), the matcher assigning global identities, then one
   self-training cycle on the unlabelled pool (a few CPU minutes; :data:`GPU_BUDGET` times more on a
   GPU): train, export to ONNX with parity, gate, register, and promote when the gate passes.
3. **Before / after** (:mod:`selfreid.pipeline.evaluation.adaptation`): the trained version against its
   parent on the benchmarks' labelled protocols, written to ``{data_dir}/evaluation.json``; vtest IDF1
   at product settings (each version at its own stored calibration), the oracle beside it.
4. **Report** (:mod:`selfreid.pipeline.report.site`): one self-contained HTML page.

Each step shows progress; the last line names the report.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from selfreid.pipeline.config import AppConfig
from selfreid.pipeline.report.site import EVALUATION_FILE

if TYPE_CHECKING:
    from selfreid.pipeline.training.registry import ModelVersion

__all__ = ["DEMO_STAGES", "GPU_BUDGET", "DemoError", "DemoOptions", "fit_to_available_data", "fit_to_device", "run_demo"]

DEMO_STAGES = ("ingest", "embedder", "matcher", "train")


class DemoError(RuntimeError):
    """The demo cannot run or did not complete; the message says why and what to do."""


@dataclass(frozen=True)
class DemoOptions:
    report: Path | None = None  # default: {data_dir}/report.html
    fresh: bool = True
    max_frames: int | None = None
    evaluate: bool = True


def _state_paths(cfg: AppConfig) -> list[Path]:
    """What a previous run left in ``data_dir`` (only selfreid's own folders and files)."""
    return [cfg.path(cfg.redis.embedded_dir), cfg.path(cfg.registry.directory), cfg.path(cfg.service.state_dir),
            cfg.path("logs"), cfg.path(EVALUATION_FILE)]


def reset_state(cfg: AppConfig) -> None:
    """Start from an empty pool, registry and log folder (nothing else in ``data_dir`` is touched)."""
    for path in _state_paths(cfg):
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def fit_to_available_data(cfg: AppConfig, console) -> AppConfig:
    """The demo config, minus what this machine lacks: file cameras whose video is missing are left
    out, and the YOLOX detector falls back to the offline ``yolo`` weights when the sample YOLOX model
    is absent (e.g. when ``scripts/fetch_sample_data.sh`` provisioned only ``vtest.avi``). Each change
    is printed; without any video a :class:`DemoError` says how to get the sample data."""
    from selfreid.plugins.assets import yolox_nano_weights

    cameras = [c for c in cfg.ingest.cameras if c.source != "file" or Path(c.uri).is_file()]
    left_out = [c.id for c in cfg.ingest.cameras if c not in cameras]
    if not cameras:
        raise DemoError(f"no sample video found ({', '.join(c.uri for c in cfg.ingest.cameras)}). Put the sample data "
                        "at ../shared/data (or set SELFREID_SHARED_DATA), or run scripts/fetch_sample_data.sh, "
                        "which provisions vtest.avi from Debian's opencv-doc package.")
    if left_out:
        console.print(f"[yellow]video missing, camera(s) left out:[/] {', '.join(left_out)}")
    ingest = cfg.ingest.model_copy(update={"cameras": cameras})
    detector = cfg.ingest.detector
    if detector.plugin == "yolox" and not detector.params.get("weights") and yolox_nano_weights() is None:
        console.print("[yellow]the sample YOLOX-nano model is missing: detecting with the offline yolo weights[/]")
        ingest = ingest.model_copy(update={"detector": detector.model_copy(update={"plugin": "yolo", "params": {}})})
    return cfg.model_copy(update={"ingest": ingest})


GPU_BUDGET = {"epochs": 5, "snapshot_crops": 3, "max_minutes": 2}  # multipliers of the CPU cycle on a GPU


def fit_to_device(cfg: AppConfig, console) -> AppConfig:
    """A bigger training cycle when training will run on CUDA (the demo configs are sized for a CPU
    budget of a few minutes): :data:`GPU_BUDGET` times the epochs, snapshot and wall-time budget."""
    import torch

    on_cuda = cfg.train.device == "auto" or cfg.train.device.startswith("cuda")
    if not (on_cuda and torch.cuda.is_available()):
        return cfg
    service = cfg.service
    bigger = {"epochs": service.epochs * GPU_BUDGET["epochs"],
              "snapshot_crops": service.snapshot_crops * GPU_BUDGET["snapshot_crops"],
              "max_minutes": service.max_minutes * GPU_BUDGET["max_minutes"] if service.max_minutes else None}
    console.print(f"CUDA found: a bigger training cycle ({bigger['epochs']} epochs, up to {bigger['snapshot_crops']} crops)")
    return cfg.model_copy(update={"service": service.model_copy(update=bigger)})


def trained_pair(cfg: AppConfig, client) -> tuple[ModelVersion, ModelVersion] | None:
    """(parent, newest trained version) of the registry, or None when no cycle registered a version."""
    from selfreid.pipeline.training.registry import ModelRegistry

    registry = ModelRegistry(cfg.path(cfg.registry.directory), client, cfg.pool.prefix)
    versions = {v.version: v for v in registry.versions()}
    pairs = [(versions[parent], v) for v in versions.values() if (parent := v.parent) is not None and parent in versions]
    return pairs[-1] if pairs else None


def evaluate_adaptation(cfg: AppConfig, client, console) -> dict[str, Any] | None:
    """Before/after numbers of the newest trained version, saved to ``{data_dir}/evaluation.json``."""
    from selfreid.pipeline.evaluation.adaptation import compare_versions
    from selfreid.pipeline.runtime.progress import step_progress
    from selfreid.plugins.assets import shared_data_dir

    pair = trained_pair(cfg, client)
    data = shared_data_dir()
    if pair is None or data is None:
        why = "no trained version in the registry" if pair is None else "sample data not found"
        console.print(f"[yellow]before/after evaluation skipped:[/] {why}")
        return None
    before, after = pair
    started = time.monotonic()
    with step_progress(console, transient=False) as advance:
        scores = compare_versions(before.onnx, after.onnx, data, advance,
                                  calibrations={"before": before.calibration, "after": after.calibration})
    result = {"before_version": before.version, "after_version": after.version, "after_status": after.status,
              "calibrations": {label: v.calibration.to_dict() if v.calibration else None
                               for label, v in (("before", before), ("after", after))},
              "seconds": round(time.monotonic() - started, 1), **scores}
    cfg.path(EVALUATION_FILE).write_text(json.dumps(result, indent=1))
    return result


def _change(evaluation: dict[str, Any], section: str, key: str, label: str) -> str | None:
    part = evaluation.get(section) or {}
    if "before" in part and "after" in part and part["before"].get(key) is not None:
        return f"{label} {part['before'][key]:.3f} -> {part['after'][key]:.3f}"
    return None


def summary(data, evaluation: dict[str, Any] | None, minutes: float, out: Path) -> str:
    """The final line: what ran, what the gate decided, what adaptation changed, where the page is."""
    parts = [f"demo done in {minutes:.1f} min", f"{len(data.cameras)} cameras",
             f"{len(data.identities)} identities ({data.across} across cameras)"]
    trained = next((c for c in data.cycles if c.parent), None)
    if trained is not None:
        verdict = "promoted" if trained.status == "production" else trained.status
        parts.append(f"model v{trained.version} {verdict} by the gate")
    if evaluation:
        parts += filter(None, [_change(evaluation, "conreid", "mAP", "Con-ReID mAP"),
                               _change(evaluation, "vtest", "product_idf1", "vtest IDF1 (product settings)"),
                               _change(evaluation, "vtest", "oracle_idf1", "oracle")])
    return "; ".join(parts) + f". Report: {out}"


def run_demo(cfg: AppConfig, options: DemoOptions, console) -> Path:
    """Run every step; returns the report's path. Raises :class:`DemoError` when a step fails."""

    from selfreid.pipeline.orchestration.run import RunOptions, resolve_sample_data, run_local
    from selfreid.pipeline.report.site import write_report
    from selfreid.pipeline.runtime.redis_conn import connect, redis_endpoint

    started = time.monotonic()
    cfg = fit_to_device(fit_to_available_data(resolve_sample_data(cfg), console), console)
    if options.fresh:
        reset_state(cfg)
    console.rule("1/3 ingest, embed, match, then one self-training cycle")
    code = run_local(cfg, RunOptions(until_idle=True, train_once=True, max_frames=options.max_frames,
                                     stages=DEMO_STAGES), console)
    if code != 0:
        raise DemoError(f"a stage failed (exit code {code}); see its log in {cfg.path('logs')}")
    out = options.report or cfg.path("report.html")
    with redis_endpoint(cfg) as url:
        client = connect(url)
        try:
            console.rule("2/3 before / after adaptation, on labelled data")
            evaluation = evaluate_adaptation(cfg, client, console) if options.evaluate else None
            console.rule("3/3 report")
            data = write_report(cfg, client, out)
        finally:
            client.close()
    console.print(summary(data, evaluation, (time.monotonic() - started) / 60, out))
    return out
