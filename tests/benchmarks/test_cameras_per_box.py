"""C1's bookkeeping (benchmarks/cameras_per_box.py): profile attribution, steady window, hold verdict."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from benchmarks.cameras_per_box import (
    classify,
    held,
    lever_params,
    next_n,
    parse_collapsed,
    stage_shares,
    steady_samples,
)

ROOT = "MainThread;_stage_main (pipeline/orchestration/run.py:172);run_ingest (pipeline/ingest/service.py:481)"


@pytest.mark.parametrize(
    ("leaf", "stage"),
    [
        ("_detect (pipeline/ingest/service.py:1);_detect_batch (plugins/detectors/yolox.py:9)", "detection"),
        ("_detect_batch (plugins/detectors/yolox.py:9);letterbox (plugins/detectors/common.py:4)", "resize"),
        ("_read_frames (pipeline/ingest/service.py:2);_one_pass (plugins/sources/video.py:88)", "decode"),
        ("_track_loop (pipeline/ingest/service.py:3);update (ultralytics/trackers/byte_tracker.py:5)", "tracking"),
        ("select (pipeline/ingest/crop_policy.py:90);encode_jpeg (pipeline/ingest/crop_policy.py:64)", "crop encode"),
        ("flush (plugins/pool/redis_streams.py:7);execute (redis/client.py:1)", "redis"),
        ("_write_loop (pipeline/ingest/service.py:4)", "other"),
    ],
)
def test_a_stack_belongs_to_its_innermost_known_stage(leaf: str, stage: str) -> None:
    assert classify(f"{ROOT};{leaf}".split(";")) == stage


def test_py_spy_raw_output_is_counted_per_native_thread(tmp_path: Path) -> None:
    raw = tmp_path / "ingest.txt"
    raw.write_text(
        f"thread (101): {ROOT};_detect_batch (plugins/detectors/yolox.py:9) 30\n"
        f"thread (101): {ROOT};letterbox (plugins/detectors/common.py:4) 10\n"
        "thread (0x66): read-cam0;_one_pass (plugins/sources/video.py:88) 5\n"
        "not a stack line\n"
    )
    assert parse_collapsed(raw) == {101: Counter(detection=30, resize=10), 102: Counter(decode=5)}
    assert parse_collapsed(tmp_path / "missing.txt") == {}


def test_stage_shares_split_thread_cpu_by_samples_and_count_worker_threads_whole() -> None:
    stacks = {"ingest": {1: Counter(detection=3, resize=1), 2: Counter(decode=1)}, "embedder": {7: Counter(embed=1)}}
    threads = {1: ("python", 4.0), 2: ("python", 1.0), 3: ("python", 2.0), 4: ("av:msmpeg4v3:df", 0.5)}
    out = stage_shares({"embedder": 2.0, "matcher": 0.5, "redis": 0.0}, threads, stacks, window_s=10.0)
    assert out["stage_cpu_s"] == {"detection": 5.0, "embed": 2.0, "decode": 1.5, "resize": 1.0, "match": 0.5, "redis": 0.0}
    assert sum(out["stage_share"].values()) == pytest.approx(1.0, abs=1e-3)
    assert out["process_cores"]["embedder"] == 0.2


def _sample(t: float, frames: int, embedded: int = 1) -> dict:
    return {"t_s": t, "counters": {"ingest": {"frames": frames}, "embedder": {"embedded": embedded}}}


def test_the_steady_window_skips_warm_up_and_the_previous_runs_status() -> None:
    stale = [_sample(0, 500), _sample(10, 500), _sample(20, 3), _sample(30, 40), _sample(40, 80)]
    assert [s["t_s"] for s in steady_samples(stale, warmup_s=25)] == [30, 40]
    idle_embedder = [_sample(30, 40, embedded=0), _sample(40, 80)]
    assert [s["t_s"] for s in steady_samples(idle_embedder, warmup_s=0)] == [40]
    stale_embedder = [_sample(0, 5, embedded=900), _sample(10, 20, embedded=3), _sample(20, 40, embedded=9)]
    assert [s["t_s"] for s in steady_samples(stale_embedder, warmup_s=0)] == [10, 20]


def test_a_hold_needs_the_rate_no_drops_and_a_bounded_backlog() -> None:
    ok = {"fps": 27.8, "drops": {"frame_drops": 0}, "backlog_peak": {"embedder": 30}, "backlog_bound": 100}
    assert held(ok, 4) == (True, "held")
    assert not held(ok | {"fps": 26.0}, 4)[0]
    assert not held(ok | {"drops": {"crop_drops": 2}}, 4)[0]
    assert "backlog" in held(ok | {"backlog_peak": {"embedder": 101}}, 4)[1]


def test_levers_map_to_stage_params_and_unknown_ones_are_refused() -> None:
    assert lever_params(["fit", "det1", "crops7"]) == {
        "detector": {"fit_input": True, "threads": 1},
        "embedder": {},
        "crops": {"every_k_frames": 7},
    }
    with pytest.raises(SystemExit, match="unknown lever"):
        lever_params(["turbo"])


def test_the_hold_search_steps_up_after_a_success_and_stops_below_a_failure() -> None:
    assert next_n([{"cameras": 2, "held": True}]) == 3
    assert next_n([{"cameras": 2, "held": True}, {"cameras": 3, "held": False}]) is None
    assert next_n([{"cameras": 3, "held": False}]) == 2
    assert next_n([{"cameras": 1, "held": False}]) is None
