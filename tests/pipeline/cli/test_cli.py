"""The CLI: help that teaches, doctor and plugins run, config errors are one line."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from selfreid.pipeline.cli.app import app

runner = CliRunner()


def test_help_lists_only_real_commands() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0, result.output
    assert "doctor" in result.output and "plugins" in result.output and "config" in result.output
    for command in app.registered_commands:
        name = command.name or command.callback.__name__.replace("_command", "").replace("_", "-")
        sub = runner.invoke(app, [name, "--help"])
        assert sub.exit_code == 0, (name, sub.output)


def test_doctor_reports_every_area() -> None:
    result = runner.invoke(app, ["doctor"])
    for area in ("torch", "onnxruntime", "faiss", "redis", "gstreamer", "detector weights", "reid weights"):
        assert area in result.output, result.output


def test_plugins_lists_builtins() -> None:
    result = runner.invoke(app, ["plugins"])
    assert result.exit_code == 0
    for name in ("redis_streams", "bytetrack", "yolox", "faiss", "onnx"):
        assert name in result.output


def test_config_show_and_errors(tmp_path: Path) -> None:
    shown = runner.invoke(app, ["config", "show"])
    assert shown.exit_code == 0 and "negatives: 500" in shown.output
    bad = tmp_path / "bad.yaml"
    bad.write_text("ingest:\n  detectr: {plugin: yolo}\n")
    result = runner.invoke(app, ["config", "show", "--config", str(bad)])
    assert result.exit_code == 2
    assert "unknown key 'ingest.detectr'" in result.output and "Traceback" not in result.output


@pytest.mark.parametrize("params,message", [({"nope": 1}, "unknown key 'nope'")])
def test_config_check_validates_plugin_params(tmp_path: Path, params: dict, message: str) -> None:
    cfg = tmp_path / "site.yaml"
    cfg.write_text(f"ingest:\n  detector: {{plugin: hog, params: {params}}}\n")
    result = runner.invoke(app, ["config", "check", str(cfg)])
    assert result.exit_code == 2 and message in result.output, result.output
