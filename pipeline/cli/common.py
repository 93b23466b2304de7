"""What every ``selfreid`` command shares: the console, the one-line error and the config option.

Command modules import from here, never from :mod:`selfreid.pipeline.cli.app`, so the command
groups have no import cycle with the app that registers them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, NoReturn, Optional

import typer
from rich.console import Console

from selfreid.pipeline.config import AppConfig, ConfigError, load_config

__all__ = ["ConfigOption", "console", "fail", "load_or_fail"]

# soft_wrap: lines are never hard-wrapped at the console width, so an error naming a long path stays
# one copyable line in a log or a pipe (a terminal still wraps it visually); tables keep their layout.
console = Console(stderr=True, soft_wrap=True)

ConfigOption = Annotated[
    Optional[Path],
    typer.Option("--config", "-c", help="Site YAML (see configs/). Omitted: the built-in defaults (seed method)."),
]


def fail(message: str, code: int = 2) -> NoReturn:
    """Print a one-line error and exit: the user's mistake never ends in a traceback."""
    console.print(f"[bold red]error:[/] {message}", highlight=False)
    raise typer.Exit(code)


def load_or_fail(path: Path | None) -> AppConfig:
    """The site configuration, or a one-line error naming the file and the key."""
    try:
        return load_config(path)
    except ConfigError as exc:
        fail(str(exc))
