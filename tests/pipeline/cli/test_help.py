"""Every command's --help shows what its author wrote: placeholders survive the markdown renderer."""

from __future__ import annotations

import re

import pytest
import typer
from typer.testing import CliRunner

from selfreid.pipeline.cli import app

# Words the help renderer would swallow (<out>) or that mean a placeholder was lost ("from /last.pt").
SWALLOWED = re.compile(r"<[A-Za-z_]+>")
LOST_PLACEHOLDER = re.compile(r"(?:from|Writes|in|to) /[\w.]")


def command_paths() -> list[tuple[str, ...]]:
    root = typer.main.get_command(app)
    paths: list[tuple[str, ...]] = []

    def walk(command: typer.core.TyperCommand | typer.core.TyperGroup, prefix: tuple[str, ...]) -> None:
        paths.append(prefix)
        if isinstance(command, typer.core.TyperGroup):
            for name, sub in command.commands.items():
                walk(sub, (*prefix, name))

    walk(root, ())
    return paths


@pytest.mark.parametrize("path", command_paths(), ids=lambda p: " ".join(p) or "selfreid")
def test_help_renders_every_placeholder(path: tuple[str, ...]) -> None:
    result = CliRunner().invoke(app, [*path, "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert not LOST_PLACEHOLDER.search(result.output), result.output


def test_no_help_text_uses_angle_bracket_placeholders() -> None:
    """Markdown mode treats <out> as an HTML tag and drops it: placeholders are written OUT, DATA_DIR."""
    root = typer.main.get_command(app)
    texts: list[str] = []

    def walk(command: typer.core.TyperCommand | typer.core.TyperGroup) -> None:
        texts.append(command.help or "")
        texts.extend(getattr(param, "help", None) or "" for param in command.params)
        if isinstance(command, typer.core.TyperGroup):
            for sub in command.commands.values():
                walk(sub)

    walk(root)
    offenders = [text for text in texts if SWALLOWED.search(text)]
    assert not offenders, offenders


def test_config_show_says_whether_the_threshold_is_pinned(tmp_path) -> None:
    site = tmp_path / "site.yaml"
    site.write_text("matcher:\n  matcher:\n    params:\n      threshold: 0.7\n")
    pinned = CliRunner().invoke(app, ["config", "show", "--config", str(site)])
    default = CliRunner().invoke(app, ["config", "show"])
    assert pinned.exit_code == default.exit_code == 0
    assert "pinned by matcher.matcher.params.threshold = 0.7" in pinned.output
    assert "each model version's label-free calibration" in default.output
