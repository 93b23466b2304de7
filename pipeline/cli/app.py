"""The ``selfreid`` command line: one typer app, one subcommand per job.

Each command group lives in its own module of :mod:`selfreid.pipeline.cli` and is registered here
with one line; the work itself lives in the stage packages, which never import the CLI.
"""

from __future__ import annotations

import typer

from selfreid.pipeline.cli import config, evaluate, ingest, models, run, serving, train

__all__ = ["app", "main"]

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
app.add_typer(config.config_app, name="config")
app.command("plugins")(config.plugins_command)
app.command("doctor")(config.doctor_command)
app.command("demo")(run.demo_command)
app.command("run")(run.run_command)
app.command("health")(run.health_command)
app.command("ingest")(ingest.ingest_command)
app.command("embed")(serving.embed_command)
app.command("match")(serving.match_command)
app.command("api")(serving.api_command)
app.command("search")(serving.search_command)
app.command("report")(serving.report_command)
app.command("forget")(serving.forget_command)
app.command("train")(train.train_command)
app.command("eval")(train.eval_command)
app.command("eval-tracks")(evaluate.eval_tracks_command)
app.command("train-service")(models.train_service_command)
app.add_typer(models.models_app, name="models")


def main() -> None:
    """Console-script entry point."""
    app(prog_name="selfreid")


if __name__ == "__main__":  # pragma: no cover
    main()
