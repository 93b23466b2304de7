"""The demo from a bare clone: only ``vtest.avi`` (what scripts/fetch_sample_data.sh provisions), no
Con-ReID crops, no YOLOX model. Version 1 must register before any camera wrote a crop (its ONNX
parity check falls back to generated images), and crops must flow through ingest and the embedder.

The video comes from the sample data as a cached copy, so the test stays offline."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import redis
from rich.console import Console

from selfreid.pipeline.config import load_config
from selfreid.pipeline.orchestration.demo import fit_to_available_data
from selfreid.pipeline.orchestration.run import RunOptions, resolve_sample_data, run_local
from selfreid.pipeline.runtime.pool import open_pool
from selfreid.pipeline.runtime.redis_conn import EmbeddedRedis
from selfreid.pipeline.serving.embedding_store import EmbeddingStore
from selfreid.pipeline.training.registry import open_registry

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture
def bare_sample_data(tmp_path: Path, shared_data: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "sample-data"
    (folder / "pets09-s2l1").mkdir(parents=True)
    shutil.copy(shared_data / "pets09-s2l1" / "vtest.avi", folder / "pets09-s2l1" / "vtest.avi")
    monkeypatch.setenv("SELFREID_SHARED_DATA", str(folder))
    return folder


@pytest.mark.slow
def test_demo_setup_registers_version_1_and_crops_flow_without_shared_data(
    bare_sample_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data_dir = tmp_path / "demo"
    monkeypatch.setenv("SELFREID_DATA_DIR", str(data_dir))
    monkeypatch.delenv("REDIS_URL", raising=False)
    console = Console(stderr=True, soft_wrap=True)
    cfg = fit_to_available_data(resolve_sample_data(load_config(REPO / "configs" / "demo.yaml")), console)
    assert [c.id for c in cfg.ingest.cameras] == ["pets-left", "pets-right"]  # the corridor clip is absent
    assert cfg.ingest.detector.plugin == "yolo"  # no YOLOX model: the offline weights

    code = run_local(cfg, RunOptions(until_idle=True, max_frames=6, stages=("ingest", "embedder")), console)
    assert code == 0

    with EmbeddedRedis(data_dir / "redis") as server:
        client = redis.Redis.from_url(server.url)
        production = open_registry(cfg, client).production()
        assert production is not None and production.version == "1"
        assert open_pool(cfg, client).count() > 0
        assert client.xlen(EmbeddingStore(client, cfg.pool.prefix).key) > 0
