"""The ``selfreid`` command line: one typer app, one subcommand per job.

Each stage keeps its command next to its code and is registered here with one line.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from selfreid.pipeline import deploy_cli
from selfreid.pipeline import ingest_cli
from selfreid.pipeline import serving_cli
from selfreid.pipeline import train_cli
from selfreid.pipeline import service_cli
from selfreid.pipeline.config import ConfigError, load_config

__all__ = ["app", "main", "ConfigOption", "console", "fail"]

app = typer.Typer(
    name="selfreid",
    help=(
        "Self-adapting person re-identification: cameras -> Redis crop pool -> unsupervised "
        "Selective Contrastive Learning -> ONNX embedder -> one identity per person across cameras.\n\n"
        "Start with `selfreid doctor` to see what this machine can run, and `selfreid config show` "
        "to see every setting with its default."
    ),
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",
)
config_app = typer.Typer(help="Inspect and check configuration files.", no_args_is_help=True)
app.add_typer(config_app, name="config")

console = Console(stderr=True)

ConfigOption = Annotated[
    Optional[Path],
    typer.Option("--config", "-c", help="Site YAML (see configs/). Omitted: the built-in defaults (seed method)."),
]


def fail(message: str, code: int = 2) -> None:
    """Print a one-line error and exit: the user's mistake never ends in a traceback."""
    console.print(f"[bold red]error:[/] {message}", highlight=False)
    raise typer.Exit(code)


def load_or_fail(path: Path | None):
    try:
        return load_config(path)
    except ConfigError as exc:
        fail(str(exc))


@config_app.command("show")
def config_show(config: ConfigOption = None) -> None:
    """Print the fully resolved configuration (defaults filled in, env overrides applied) as YAML."""
    import yaml

    cfg = load_or_fail(config)
    typer.echo(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))


@config_app.command("check")
def config_check(config: Annotated[Path, typer.Argument(help="Site YAML to validate.")]) -> None:
    """Validate a config file, including every selected plugin's params (imports the plugins)."""
    from selfreid.plugins import registry

    cfg = load_or_fail(config)
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


@app.command("plugins")
def plugins_command() -> None:
    """List installed plugins by stage (entry points; nothing is imported)."""
    from selfreid.plugins import registry

    table = Table(title="selfreid plugins")
    for column in ("stage", "name", "implementation", "package"):
        table.add_column(column)
    for info in registry.available():
        table.add_row(info.kind, info.name, info.target, info.distribution)
    Console().print(table)


@app.command("doctor")
def doctor_command(config: ConfigOption = None) -> None:
    """Report what this machine can run: torch/CUDA, onnxruntime providers, FAISS, Redis,
    GStreamer and which weights are available offline."""
    from selfreid.pipeline.doctor import run_checks

    cfg = load_or_fail(config)
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


app.command("demo")(deploy_cli.demo_command)
app.command("run")(deploy_cli.run_command)
app.command("health")(deploy_cli.health_command)
app.command("ingest")(ingest_cli.ingest_command)
app.command("embed")(serving_cli.embed_command)
app.command("match")(serving_cli.match_command)
app.command("api")(serving_cli.api_command)
app.command("search")(serving_cli.search_command)
app.command("report")(serving_cli.report_command)
app.command("forget")(serving_cli.forget_command)
app.command("train")(train_cli.train_command)
app.command("eval")(train_cli.eval_command)
app.command("train-service")(service_cli.train_service_command)
app.add_typer(service_cli.models_app, name="models")


def main() -> None:
    """Console-script entry point."""
    app(prog_name="selfreid")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
