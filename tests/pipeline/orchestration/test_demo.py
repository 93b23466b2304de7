"""``selfreid demo`` end to end on the real sample data, its report rendered by headless Chromium,
and the API serving the same page. Real processes, the embedded Redis, real video."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import redis
import yaml

from chromium import render
from selfreid.pipeline.config import AppConfig, load_config
from selfreid.pipeline.orchestration.demo import DemoError, fit_to_available_data, fit_to_device
from selfreid.pipeline.runtime.redis_conn import EmbeddedRedis

REPO = Path(__file__).resolve().parents[3]
DEMO = REPO / "configs" / "demo.yaml"
SECTIONS = ("cameras", "identities", "timeline", "training", "evaluation", "throughput")


def _quick_demo_config(tmp_path: Path) -> Path:
    """configs/demo.yaml on the two PETS virtual cameras, with a crop every frame and a one-epoch cycle."""
    raw = yaml.safe_load(DEMO.read_text())
    raw["ingest"]["cameras"] = [c for c in raw["ingest"]["cameras"] if c["id"].startswith("pets")]
    raw["ingest"]["crops"]["every_k_frames"] = 1
    raw["service"].update(min_crops=16, snapshot_crops=240, epochs=1, max_minutes=2.0)
    path = tmp_path / "demo_quick.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory, shared_data: Path) -> tuple[Path, Path, str]:
    """(config, data dir, console output) of one quick demo run."""
    tmp = tmp_path_factory.mktemp("demo")
    config = _quick_demo_config(tmp)
    env = {**os.environ, "SELFREID_DATA_DIR": str(tmp / "data"), "SELFREID_SHARED_DATA": str(shared_data),
           "COLUMNS": "160"}
    env.pop("REDIS_URL", None)
    done = subprocess.run([sys.executable, "-m", "selfreid.pipeline.cli", "demo", "--config", str(config),
                           "--max-frames", "150"], cwd=tmp, env=env, capture_output=True, text=True, timeout=600)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-4000:]
    return config, tmp / "data", out


@pytest.mark.slow
def test_demo_measures_before_and_after_and_reports_in_a_browser(demo_run, tmp_path: Path) -> None:
    config, data, out = demo_run
    report = data / "report.html"
    assert f"Report: {report}" in out.replace("\n", "")
    evaluation = json.loads((data / "evaluation.json").read_text())
    assert (evaluation["before_version"], evaluation["after_version"]) == ("1", "2")
    conreid, vtest = evaluation["conreid"], evaluation["vtest"]
    for scores in (conreid["before"], conreid["after"], vtest["before"], vtest["after"]):
        assert all(0.0 <= v <= 1.0 for k, v in scores.items() if k in ("mAP", "rank1", "idf1"))
    assert conreid["heldout_ids"] == 20 and conreid["query"] > 20 and vtest["crops"] > 100

    dom = render(report, tmp_path / "report.png")  # the PNG stays in the test's temp dir (CI artefact)
    for section in SECTIONS:
        assert f'<section id="{section}">' in dom, section
    assert 'class="identity multi"' in dom, "no cross-camera identity gallery on the page"
    assert dom.count('<div class="cam camera">') == 2 and '<svg class="timeline"' in dom
    assert '<svg class="curve"' in dom and "Validation gate:" in dom
    # one statement of which version serves, with how complete its gallery is (backfilled at promotion)
    header = " ".join(re.search(r'<div class="meta" id="serving">(.*?)</div>', dom, re.S).group(1).split())
    assert dom.count(" serves") == 1 and re.match(r"Model version \d+ serves; ", header), header
    if evaluation["after_status"] == "production":
        assert header.startswith("Model version 2 serves; ") and "earlier tracklets carried over" in header, header
    # the numbers on the page are the measured ones
    assert f"{conreid['before']['mAP']:.3f}" in dom and f"{vtest['after']['idf1']:.3f}" in dom
    assert (tmp_path / "report.png").stat().st_size > 20_000


@pytest.mark.slow
def test_the_api_serves_the_same_report(demo_run) -> None:
    from fastapi.testclient import TestClient

    from selfreid.pipeline.serving.api import create_app

    config, data, _ = demo_run
    cfg = load_config(config).model_copy(update={"data_dir": str(data)})
    with EmbeddedRedis(cfg.path(cfg.redis.embedded_dir)) as server:  # the demo's pool persisted (AOF)
        page = TestClient(create_app(cfg, server.url)).get("/report")
        redis.Redis.from_url(server.url).close()
    assert page.status_code == 200
    written = (data / "report.html").read_text()
    for section in SECTIONS:
        assert f'<section id="{section}">' in page.text
    evaluation = json.loads((data / "evaluation.json").read_text())
    assert f"{evaluation['vtest']['before']['idf1']:.3f}" in page.text
    assert page.text.count('class="identity multi"') == written.count('class="identity multi"') >= 1


def test_missing_videos_leave_cameras_out_or_say_how_to_get_them(tmp_path: Path) -> None:
    from rich.console import Console

    cfg = load_config(DEMO)
    cameras = cfg.ingest.cameras
    video = tmp_path / "vtest.avi"
    video.write_bytes(b"not checked here")
    partial = cfg.model_copy(update={"ingest": cfg.ingest.model_copy(update={"cameras": [
        cameras[0].model_copy(update={"uri": str(video)}), cameras[2].model_copy(update={"uri": str(tmp_path / "no.mp4")})]})})
    console = Console(record=True, width=200)
    kept = fit_to_available_data(partial, console)
    assert [c.id for c in kept.ingest.cameras] == [cameras[0].id]
    assert "camera(s) left out: corridor" in console.export_text()

    missing = cameras[2].model_copy(update={"uri": str(tmp_path / "no.mp4")}).model_dump()
    nothing = AppConfig.model_validate({**partial.model_dump(), "ingest": {
        **partial.ingest.model_dump(), "cameras": [missing]}})
    with pytest.raises(DemoError, match="fetch_sample_data.sh"):
        fit_to_available_data(nothing, console)


def test_a_gpu_gets_a_bigger_training_cycle(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch
    from rich.console import Console

    cfg = load_config(DEMO)
    console = Console(record=True, width=200)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert fit_to_device(cfg, console) == cfg
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    bigger = fit_to_device(cfg, console).service
    assert (bigger.epochs, bigger.snapshot_crops) == (cfg.service.epochs * 5, cfg.service.snapshot_crops * 3)
    assert bigger.max_minutes == cfg.service.max_minutes * 2 and "CUDA found" in console.export_text()
    on_cpu = cfg.model_copy(update={"train": cfg.train.model_copy(update={"device": "cpu"})})
    assert fit_to_device(on_cpu, console) == on_cpu
