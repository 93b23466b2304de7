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


def test_data_dir_is_created_only_where_it_is_needed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With the embedded Redis (no redis.url) the data directory is made at load; with an external
    Redis only commands that write there ask for it, so a read-only container still runs ingest."""
    import typer

    from selfreid.pipeline.cli.common import load_or_fail

    monkeypatch.delenv("REDIS_URL", raising=False)
    fresh = tmp_path / "site.yaml"
    fresh.write_text(f"data_dir: {tmp_path / 'new' / 'data'}\n")
    assert load_or_fail(fresh).data_dir == str(tmp_path / "new" / "data") and (tmp_path / "new" / "data").is_dir()

    (tmp_path / "file").write_text("")
    blocked = tmp_path / "blocked.yaml"
    blocked.write_text(f"data_dir: {tmp_path / 'file' / 'data'}\n")
    with pytest.raises(typer.Exit) as exited:
        load_or_fail(blocked)
    assert exited.value.exit_code == 2
    assert load_or_fail(blocked, data_dir=False).data_dir.endswith("data")  # config show / check / doctor
    monkeypatch.setenv("REDIS_URL", "redis://:secret@127.0.0.1:1/0")
    assert load_or_fail(blocked).redis.url  # external Redis: nothing to create here
    with pytest.raises(typer.Exit):
        load_or_fail(blocked, data_dir=True)  # run, demo, train: logs and checkpoints live there


def test_output_file_makes_its_folder(tmp_path: Path) -> None:
    from selfreid.pipeline.cli.common import output_file

    target = tmp_path / "reports" / "today" / "site.html"
    assert output_file(target, "--out") == target and target.parent.is_dir() and not target.exists()
