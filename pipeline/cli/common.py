"""What every ``selfreid`` command shares: the console, the one-line error and the config option.

Command modules import from here, never from :mod:`selfreid.pipeline.cli.app`, so the command
groups have no import cycle with the app that registers them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, NoReturn

import typer
from rich.console import Console
from rich.text import Text

from selfreid.pipeline.config import AppConfig, ConfigError, load_config

__all__ = ["ConfigOption", "console", "ensure_data_dir", "fail", "load_or_fail", "output_file"]

# soft_wrap: lines are never hard-wrapped at the console width, so an error naming a long path stays
# one copyable line in a log or a pipe (a terminal still wraps it visually); tables keep their layout.
console = Console(stderr=True, soft_wrap=True)

ConfigOption = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="Site YAML (see configs/). Omitted: the built-in defaults (seed method)."),
]


def fail(message: str, code: int = 2) -> NoReturn:
    """Print a one-line error and exit: the user's mistake never ends in a traceback. A message
    carrying a library's multi-line text (torch, pydantic) is joined into that one line."""
    line = " ".join(part.strip() for part in message.splitlines() if part.strip())
    console.print(Text.assemble(("error:", "bold red"), " ", line))  # the message is plain text, never markup
    raise typer.Exit(code)


def load_or_fail(path: Path | None, data_dir: bool | None = None) -> AppConfig:
    """The site configuration, or a one-line error naming the file and the key.

    ``data_dir``: make sure ``data_dir`` exists (a one-line error when it cannot be created) always
    (``True``), never (``False``, commands that only read the config), or only when the embedded Redis
    will keep its files there (``None``: no ``redis.url``).
    """
    try:
        cfg = load_config(path)
    except ConfigError as exc:
        fail(str(exc))
    if data_dir or (data_dir is None and not cfg.redis.url):
        ensure_data_dir(cfg)
    return cfg


def ensure_data_dir(cfg: AppConfig) -> Path:
    """``cfg.data_dir``, created if missing; a one-line error when it cannot be, or is not writable."""
    path = Path(cfg.data_dir)
    fix = "set data_dir in the config or $SELFREID_DATA_DIR"
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        fail(f"data_dir {path} is a file, not a folder; {fix}")
    except OSError as exc:
        fail(f"data_dir {path} cannot be created: {exc.strerror or exc}; {fix}")
    if not os.access(path, os.W_OK | os.X_OK):
        fail(f"data_dir {path} is not writable by this user; {fix}")
    return path


def output_file(path: Path, option: str) -> Path:
    """``path`` ready to be written (its folder created); a one-line error naming ``option`` when it
    is a folder, or its folder cannot be created or written."""
    if path.is_dir():
        fail(f"{option} {path} is a folder; give a file name, e.g. {path / 'report.html'}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        fail(f"{option} {path}: its folder cannot be created: {exc.strerror or exc}")
    if not os.access(path.parent, os.W_OK | os.X_OK) or (path.exists() and not os.access(path, os.W_OK)):
        fail(f"{option} {path} is not writable by this user")
    return path
