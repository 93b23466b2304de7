"""``selfreid train-service`` and ``selfreid models list|init|export|promote|rollback``.

Registered in :mod:`selfreid.pipeline.cli.app`; the work lives in :mod:`~selfreid.pipeline.training.service`
and :mod:`~selfreid.pipeline.training.registry`. Without ``redis.url`` (or ``REDIS_URL``) each command
starts the embedded Redis in the data directory, so the registry's Redis mirror and the promotion
message reach every stage of the site.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from selfreid.pipeline.cli.common import ConfigOption, console, fail, load_or_fail

if TYPE_CHECKING:
    import numpy as np

    from selfreid.pipeline.config import AppConfig
    from selfreid.pipeline.training.registry import ModelRegistry, ModelVersion
    from selfreid.reid_model.calibration import AssociationCalibration

__all__ = ["models_app", "train_service_command"]

PIPE_WIDTH = 200  # `models list` into a pipe or file: wide enough that no number is folded

models_app = typer.Typer(
    help="The model registry: what serves now, every trained version, promotion and rollback.",
    no_args_is_help=True,
)


def train_service_command(
    config: ConfigOption = None,
    once: Annotated[bool, typer.Option("--once", help="Run one cycle now (or finish an interrupted one) and exit.")] = False,
) -> None:
    """Adapt the model to this site: snapshot the pool, fine-tune, export, gate, promote; on a schedule,
    when the pool grew, or when the cameras drift. A killed cycle resumes where it stopped."""
    from selfreid.pipeline.runtime.redis_conn import redis_endpoint
    from selfreid.pipeline.runtime.signals import stop_on_signals
    from selfreid.pipeline.training.service import run_train_service
    from selfreid.plugins.registry import PluginError

    cfg = load_or_fail(config, data_dir=True)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    stop = threading.Event()
    with redis_endpoint(cfg) as url, stop_on_signals(stop):
        try:
            reports = run_train_service(cfg, url, stop, once=once)
        except PluginError as exc:
            fail(str(exc))
    for r in reports:
        style = {"promoted": "green", "rejected": "yellow", "skipped": "yellow"}.get(r.outcome, "red")
        console.print(f"cycle {r.cycle_id} ({r.reason}): [{style}]{r.outcome}[/] {r.detail}", highlight=False)


@contextmanager
def _registry(config: Path | None) -> Iterator[tuple[AppConfig, ModelRegistry]]:
    """``(cfg, registry)`` on the site's Redis (embedded when no URL); registry errors are one line.
    The registry writes under ``data_dir`` even with an external Redis, so it is made sure of."""
    from selfreid.pipeline.runtime.redis_conn import connect, redis_endpoint
    from selfreid.pipeline.training.registry import RegistryError, open_registry
    from selfreid.reid_model.checkpoint import CheckpointError
    from selfreid.reid_model.export import ExportError
    from selfreid.reid_model.weights import WeightsError

    cfg = load_or_fail(config, data_dir=True)
    with redis_endpoint(cfg) as url:
        client = connect(url)
        try:
            yield cfg, open_registry(cfg, client)
        except (RegistryError, CheckpointError, ExportError, WeightsError) as exc:
            fail(str(exc))
        finally:
            client.close()


def _announce(version: ModelVersion, action: str) -> None:
    console.print(f"[green]{action}[/] version {version.version} ({version.onnx})", highlight=False)


@models_app.command("list")
def list_command(config: ConfigOption = None) -> None:
    """Every registered version with its status, parent, parity, association calibration (the match
    threshold fitted label-free on the pool, and d', how well it separates same-tracklet halves from
    co-occurring tracklets) and gate verdict, after one sentence on which version serves and how
    complete its gallery is (the report header says the same)."""
    from rich.console import Console
    from rich.table import Table

    from selfreid.pipeline.serving.backfill import serving_statement

    with _registry(config) as (cfg, registry):
        versions = registry.versions()
        prod = registry.production()
        if registry.client is not None:
            console.print(serving_statement(registry.client, cfg.pool.prefix, prod.version if prod else None),
                          highlight=False)
    if not versions:
        console.print(f"no model in {registry.root} yet: `selfreid models init` serves the pretrained backbone as version 1")
        return
    table = Table(title=f"models in {registry.root}")
    for column in ("version", "status", "parent", "created", "dim", "parity", "threshold", "separation"):
        table.add_column(column, no_wrap=True)
    table.add_column("gate", overflow="fold")
    for v in versions:
        parity = (v.manifest.get("metrics") or {}).get("parity", {}).get("model.onnx")
        created = time.strftime("%Y-%m-%d %H:%M", time.localtime(v.manifest["created"]))
        cal = v.calibration
        table.add_row(v.version, v.status, v.parent or "-", created, str(v.embedding_dim),
                      f"{parity:.6f}" if parity is not None else "-",
                      _threshold_text(cal), f"{cal.separation:.2f}" if cal else "-",
                      v.gate.get("reason", "-"))
    out = Console()
    (out if out.is_terminal else Console(width=PIPE_WIDTH)).print(table)


def _threshold_text(cal: AssociationCalibration | None) -> str:
    """The threshold column: the version's own, or why the matcher's default applies."""
    if cal is None:
        return "- (default)"
    return f"{cal.threshold:.3f}" if cal.informative else f"{cal.threshold:.3f} (uninformative, AUC {cal.auc:.2f}: default)"


@models_app.command("promote")
def promote_command(
    version: Annotated[str, typer.Argument(help="Version to serve, e.g. 3 or v3.")],
    config: ConfigOption = None,
    force: Annotated[bool, typer.Option("--force", help="Promote even a version the gate rejected.")] = False,
) -> None:
    """Serve VERSION now: the embedders swap to it on the promotion message."""
    with _registry(config) as (_, registry):
        _announce(registry.promote(version, force=force), "promoted")


@models_app.command("rollback")
def rollback_command(config: ConfigOption = None) -> None:
    """Serve the previous production version again."""
    with _registry(config) as (_, registry):
        _announce(registry.rollback(), "rolled back to")


def _parity_crops(cfg: AppConfig, registry: ModelRegistry, folder: Path | None, count: int) -> list[np.ndarray]:
    """Images for the parity check (see :func:`~selfreid.pipeline.training.bootstrap.parity_images`)."""
    from selfreid.pipeline.training.bootstrap import parity_images

    try:
        return parity_images(cfg, registry.client, folder, count)
    except FileNotFoundError as exc:
        fail(f"--crops: {exc}")


CropsOpt = Annotated[Path | None, typer.Option("--crops", help="Person crops for the parity check (default: the pool).")]


@models_app.command("export")
def export_command(
    config: ConfigOption = None,
    checkpoint: Annotated[Path | None, typer.Option("--checkpoint", help="Trained .pt (default: production's).")] = None,
    crops: CropsOpt = None,
    promote: Annotated[bool, typer.Option("--promote", help="Serve it right away (no gate).")] = False,
) -> None:
    """Export a checkpoint to ONNX (parity-checked) as a new registry version."""
    from selfreid.pipeline.training.bootstrap import pool_calibrator
    from selfreid.pipeline.training.registry import register_checkpoint

    with _registry(config) as (cfg, registry):
        production = registry.production()
        source = checkpoint or (production.checkpoint if production else None)
        if source is None:
            fail("no --checkpoint given and no production model with a checkpoint")
        images = _parity_crops(cfg, registry, crops, cfg.export.parity_crops)
        version = register_checkpoint(registry, source, cfg.export, images,
                                      parent=production.version if production else None,
                                      calibrate=pool_calibrator(cfg, registry.client))
        _announce(version, "registered")
        if promote:
            _announce(registry.promote(version.version), "promoted")


@models_app.command("init")
def init_command(
    config: ConfigOption = None,
    crops: CropsOpt = None,
    if_empty: Annotated[bool, typer.Option("--if-empty", help="Do nothing (exit 0) when versions exist already.")] = False,
) -> None:
    """Register and promote version 1 = the configured pretrained backbone (train.model), so a new
    site serves embeddings before its first adaptation cycle (and before any camera wrote a crop)."""
    from selfreid.pipeline.training.bootstrap import initialise_registry

    with _registry(config) as (cfg, registry):
        if registry.versions():
            if if_empty:
                return
            fail(f"the registry {registry.root} already has versions; use `selfreid models list`")
        images = _parity_crops(cfg, registry, crops, cfg.export.parity_crops)
        _announce(initialise_registry(cfg, registry, images), "initialised; serving")
