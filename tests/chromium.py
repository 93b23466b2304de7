"""Headless Chromium (Debian's ``chromium``, installed by scripts/ci_tools.sh) for page tests."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars",
         "--no-first-run", "--virtual-time-budget=5000")


def _browser() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if exe is None:
        pytest.fail("chromium not found: scripts/ci_tools.sh installs Debian's chromium")
    return exe


def render(page: Path, screenshot: Path, size: tuple[int, int] = (1280, 2400)) -> str:
    """The page's DOM after its scripts ran; also writes a PNG screenshot of its top ``size``."""
    exe, uri = _browser(), page.resolve().as_uri()
    dom = subprocess.run([exe, *FLAGS, "--dump-dom", uri], capture_output=True, text=True, timeout=120, check=True)
    subprocess.run([exe, *FLAGS, f"--screenshot={screenshot}", f"--window-size={size[0]},{size[1]}", uri],
                   capture_output=True, timeout=120, check=True)
    return dom.stdout
