"""The soak benchmark's short profile (benchmarks/soak.py, S1): the whole local pipeline on four looped
camera streams for about a minute, checked for invariants that hold on any machine (no speed asserts)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # benchmarks/ is not installed; the test runs the benchmark's own harness
    sys.path.insert(0, str(REPO))

from benchmarks.soak import SoakOptions, run_soak, summarize  # noqa: E402 - needs the sys.path entry above

SHORT = SoakOptions(
    duration_s=60.0,
    sample_s=3.0,
    warmup_s=30.0,
    stride=2,
    detector="yolox",
    max_len_per_camera=8,  # small, so that even a slow or loaded machine trims within the minute
    exact_trim=True,
    match_max_age_s=20.0,
)
RSS_GROWTH_BOUND_MB = 300.0  # after warm-up, all processes together: generous, catches a runaway leak only


@pytest.mark.slow
@pytest.mark.reliability(
    "soak",
    case=f"4 looped camera streams through ingest, embedder and matcher for {SHORT.duration_s:g} s "
    f"(max_len_per_camera {SHORT.max_len_per_camera}, exact trim)",
    expected=f"no stage crash; every camera stream stays within max_len_per_camera; drop and error counters "
    f"reported; total RSS grows < {RSS_GROWTH_BOUND_MB:g} MB after the {SHORT.warmup_s:g} s warm-up",
)
def test_soak_short_profile(tmp_path: Path, shared_data: Path, observe) -> None:
    run = run_soak(shared_data, tmp_path / "soak", SHORT)
    report = summarize(run, SHORT)
    ingest = report["counters"]["ingest"]
    pool = report["pool"]
    total = report["rss"]["total"]
    observe(f"{report['minutes']} min, ended: {report['ended']}; crashed: {sorted(run.crashed) or 'none'}")
    observe(
        f"longest stream per camera {pool['longest']} (bound {pool['bound']}) after {ingest['written']} crops written"
    )
    observe(
        f"drops: crops {ingest['crop_drops']}, frames {ingest['frame_drops']}; errors: ingest {ingest['errors']}, "
        f"embedder {report['counters']['embedder']['errors']}, matcher {report['counters']['matcher']['errors']}"
    )
    growth = ", ".join(f"{name} {r['growth_after_warmup_mb']:+.1f}" for name, r in report["rss"].items())
    observe(f"RSS growth (MB) from {report['steady_from_s']:.0f} s to the end: {growth}")

    assert not run.crashed, run.crashed
    assert report["ended"].startswith("--duration"), report["ended"]
    assert pool["bounded"], pool
    assert pool["cameras_at_retention"], f"no camera reached the retention, nothing was trimmed: {pool}"
    assert ingest["written"] > sum(pool["longest"].values())
    for key in ("frames", "crops", "written", "crop_drops", "frame_drops", "errors"):
        assert isinstance(ingest[key], int), (key, ingest)
    assert ingest["frames"] > 0 and report["counters"]["embedder"]["embedded"] > 0
    assert report["counters"]["matcher"]["embeddings"] > 0
    assert (
        total["growth_after_warmup_mb"] is not None and total["growth_after_warmup_mb"] < RSS_GROWTH_BOUND_MB
    )
