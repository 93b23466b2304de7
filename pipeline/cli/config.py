"""``selfreid config show|check``, ``selfreid plugins`` and ``selfreid doctor``: what is configured,
installed and runnable here."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from selfreid.pipeline.cli.common import ConfigOption, console, fail, load_or_fail

__all__ = ["config_app", "doctor_command", "plugins_command"]

config_app = typer.Typer(help="Inspect and check configuration files.", no_args_is_help=True)


@config_app.command("show")
def config_show(config: ConfigOption = None) -> None:
    """Print the fully resolved configuration (defaults filled in, env overrides applied) as YAML."""
    import yaml

    cfg = load_or_fail(config, data_dir=False)
    typer.echo(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    pinned = cfg.matcher.matcher.params.get("threshold")
    association = (f"pinned by matcher.matcher.params.threshold = {pinned}: it wins over every model version's "
                   "calibration" if pinned is not None else
                   "each model version's label-free calibration (selfreid models list shows it)")
    typer.echo(f"# cross-camera association threshold: {association}")


@config_app.command("check")
def config_check(config: Annotated[Path, typer.Argument(help="Site YAML to validate.")]) -> None:
    """Validate a config file, including every selected plugin's params (imports the plugins)."""
    from selfreid.plugins import registry

    cfg = load_or_fail(config, data_dir=False)
    choices = {
        "pool": ("pools", cfg.pool),
        "ingest.detector": ("detectors", cfg.ingest.detector),
        "ingest.tracker": ("trackers", cfg.ingest.tracker),
        "embedder": ("embedders", cfg.embedder),
        "matcher.index": ("indexes", cfg.matcher.index),
        "matcher.matcher": ("matchers", cfg.matcher.matcher),
    }
    checks = [(where, kind, choice.plugin, choice.params) for where, (kind, choice) in choices.items()]
    checks += [(f"ingest.cameras[{i}]", "sources", cam.source, cam.params) for i, cam in enumerate(cfg.ingest.cameras)]
    for where, kind, name, params in checks:
        place = f"{config}: {where}"
        try:
            registry.validate_params(registry.load(kind, name, place), params, f"{place}.params")
        except registry.PluginError as exc:
            fail(str(exc))
    console.print(f"[green]ok[/] {config}: {len(cfg.ingest.cameras)} camera(s), every plugin found and configured")


def plugins_command() -> None:
    """List installed plugins by stage (entry points; nothing is imported)."""
    from selfreid.plugins import registry

    table = Table(title="selfreid plugins")
    for column in ("stage", "name", "implementation", "package"):
        table.add_column(column)
    for info in registry.available():
        table.add_row(info.kind, info.name, info.target, info.distribution)
    Console().print(table)


def doctor_command(config: ConfigOption = None) -> None:
    """Report what this machine can run: torch/CUDA, onnxruntime providers, FAISS, Redis,
    GStreamer and which weights are available offline."""
    from selfreid.pipeline.runtime.doctor import run_checks

    cfg = load_or_fail(config, data_dir=False)
    table = Table(title="selfreid doctor")
    for column in ("check", "status", "detail"):
        table.add_column(column)
    worst = 0
    for check in run_checks(cfg):
        style = {"ok": "green", "warn": "yellow", "fail": "red"}[check.status]
        table.add_row(check.name, f"[{style}]{check.status}[/]", check.detail)
        worst = max(worst, {"ok": 0, "warn": 0, "fail": 1}[check.status])
    Console().print(table)
    raise typer.Exit(worst)
