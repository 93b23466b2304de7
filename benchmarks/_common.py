"""Writing benchmark results: ``benchmarks/results/<ID>.json`` plus one line in RESULTS.md."""

from __future__ import annotations

import json
import os
import platform
import shlex
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).resolve().parent / "results"
RESULTS_MD = Path(__file__).resolve().parent / "RESULTS.md"
HEADER = "| id | value | goal | unit | met | date | machine | command |\n|---|---|---|---|---|---|---|---|\n"


def limit_threads(threads: int) -> None:
    """Pin torch, OpenCV and OpenMP to ``threads`` so that the compared paths share one budget
    (and Ultralytics stays offline)."""
    os.environ.setdefault("YOLO_OFFLINE", "1")
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    import cv2
    import torch

    torch.set_num_threads(threads)
    cv2.setNumThreads(threads)


def sample_data() -> Path:
    """The sample-data folder, or exit with how to provide it."""
    from selfreid.plugins.assets import shared_data_dir

    data = shared_data_dir()
    if data is None:
        raise SystemExit("sample data not found: put it at ../shared/data or set SELFREID_SHARED_DATA")
    return data


def machine() -> str:
    """A short description of where the numbers were measured."""
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{platform.node() or 'host'}: {os.cpu_count()} CPU cores ({platform.processor() or platform.machine()}), {gpu}"


def reproduce_command() -> str:
    """How to rerun this benchmark from the repository root (``python -m benchmarks.<name> ...``)."""
    module = f"benchmarks.{Path(sys.argv[0]).stem}"
    return " ".join(shlex.quote(a) for a in [".venv/bin/python", "-m", module, *sys.argv[1:]])


def _is_result_row(line: str) -> bool:
    return line.startswith("| ") and not line.startswith("| id |")


def write_result(bench_id: str, value: float, goal: str, unit: str, details: dict[str, Any], met: bool | None = None) -> Path:
    """Write the JSON result and replace this id's line in RESULTS.md."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    record = {
        "id": bench_id,
        "value": value,
        "goal": goal,
        "unit": unit,
        "met": met,
        "command": reproduce_command(),
        "machine": machine(),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **details,
    }
    path = RESULTS_DIR / f"{bench_id}.json"
    path.write_text(json.dumps(record, indent=2, default=str) + "\n")
    lines = RESULTS_MD.read_text().splitlines(keepends=True) if RESULTS_MD.exists() else []
    body = [line for line in lines if _is_result_row(line) and not line.startswith(f"| {bench_id} |")]
    row = (
        f"| {bench_id} | {value:.4g} | {goal} | {unit} | {'yes' if met else 'no' if met is not None else '-'} "
        f"| {record['date'][:10]} | {record['machine']} | `{record['command']}` |\n"
    )
    body = sorted([*body, row])
    RESULTS_MD.write_text("# Benchmark results\n\n" + HEADER + "".join(body))
    return path
