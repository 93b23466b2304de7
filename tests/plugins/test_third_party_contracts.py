"""A third-party plugin of every stage, installed as a distribution with entry points and written only
against the contracts, runs through the whole pipeline: ingest, embed, match, `selfreid forget` and the
privacy retention (tests/plugins/thirdparty/selfreid_tp_plugins.py)."""

from __future__ import annotations

import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from selfreid.pipeline.cli.app import app
from selfreid.pipeline.config import AppConfig, parse_config
from selfreid.pipeline.ingest.service import run_ingest
from selfreid.pipeline.orchestration.run import pool_backlog, stream_backlog
from selfreid.pipeline.runtime.pool import open_pool
from selfreid.pipeline.serving.embed import run_embedder
from selfreid.pipeline.serving.embedding_store import EmbeddingStore
from selfreid.pipeline.serving.match import build_matcher, run_matcher
from selfreid.pipeline.serving.privacy import enforce_retention
from selfreid.plugins import registry
from selfreid.plugins.matchers.gallery_store import GalleryStore

THIRD_PARTY = Path(__file__).parent / "thirdparty"
PLUGINS = {
    "sources": "tp_source",
    "detectors": "tp_detector",
    "trackers": "tp_tracker",
    "pools": "tp_pool",
    "embedders": "tp_embedder",
    "indexes": "tp_index",
    "matchers": "tp_matcher",
}
PREFIX = "tp"


@pytest.fixture()
def third_party(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    monkeypatch.syspath_prepend(str(THIRD_PARTY))
    import selfreid_tp_plugins

    yield selfreid_tp_plugins
    sys.modules.pop("selfreid_tp_plugins", None)


def site_config(tmp_path: Path, **pool: Any) -> AppConfig:
    cameras = [
        {"id": cam, "source": "tp_source", "uri": "synthetic", "params": {"mirrored": cam == "c2"}}
        for cam in ("c1", "c2")
    ]
    return parse_config(
        {
            "data_dir": str(tmp_path),
            "pool": {"plugin": "tp_pool", "prefix": PREFIX, "params": pool},
            "ingest": {
                "cameras": cameras,
                "detector": {"plugin": "tp_detector"},
                "tracker": {"plugin": "tp_tracker"},
                "crops": {"min_sharpness": 0, "every_k_frames": 3},
                "metrics_port": None,
            },
            "embedder": {"plugin": "tp_embedder", "max_wait_ms": 10},
            "matcher": {"index": {"plugin": "tp_index"}, "matcher": {"plugin": "tp_matcher"}},
        }
    )


def serve_until(service: Callable[..., Any], cfg: AppConfig, url: str, done: Callable[[], bool]) -> Any:
    """Run ``service`` in a thread until ``done()`` (checked for up to a minute), then stop it."""
    stop, result = threading.Event(), {}
    thread = threading.Thread(target=lambda: result.setdefault("stats", service(cfg, url, stop)), daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while not done() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert done(), f"{service.__name__} did not finish its work"
    finally:
        stop.set()
        thread.join(timeout=30)
    assert not thread.is_alive()
    return result["stats"]


def test_every_third_party_plugin_is_found_in_its_distribution(third_party: Any) -> None:
    for kind, name in PLUGINS.items():
        assert any(
            p.name == name and p.distribution == "selfreid-tp-plugins" for p in registry.available(kind)
        ), kind


def test_third_party_plugins_run_the_pipeline_forget_and_retention(
    third_party: Any, tmp_path: Path, redis_server: Any, redis_client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = site_config(tmp_path)
    cameras = run_ingest(cfg, redis_server.url, threading.Event())
    pool = open_pool(cfg, redis_client)
    assert isinstance(pool, third_party.ContractOnlyPool)
    crops = pool.count()
    assert crops == 40 and {c: s.written for c, s in cameras.items()} == {"c1": 20, "c2": 20}

    store = EmbeddingStore(redis_client, PREFIX)
    embedded = serve_until(run_embedder, cfg, redis_server.url, lambda: pool_backlog(pool, "embedder") == 0)
    assert embedded.embedded == crops and len(store) == crops

    matched = serve_until(
        run_matcher, cfg, redis_server.url, lambda: stream_backlog(redis_client, store.key, "matcher") == 0
    )
    assert matched.embeddings == crops and matched.errors == 0 and matched.new_identities == 2
    gallery = GalleryStore(redis_client, PREFIX)
    ids = gallery.global_ids()
    people: dict[int, set[str]] = defaultdict(set)
    for key, gid in ids.items():
        people[gid].add(key.split("|")[0])
    assert len(ids) == 4 and dict(people) == {1: {"c1", "c2"}, 2: {"c1", "c2"}}  # each person on both cameras
    assert len(gallery.thumbnails(sorted(ids))) == 4  # through the matcher's tracklet_of

    site = tmp_path / "site.yaml"
    site.write_text(
        f"data_dir: {tmp_path}\npool:\n  plugin: tp_pool\n  prefix: {PREFIX}\n"
        "matcher:\n  index: {plugin: tp_index}\n  matcher: {plugin: tp_matcher}\n"
    )
    monkeypatch.setenv("REDIS_URL", redis_server.url)
    forgot = CliRunner().invoke(app, ["forget", "1", "-c", str(site), "--yes"])
    assert forgot.exit_code == 0, forgot.output
    assert (
        pool.count() == crops // 2 and len(store) == crops // 2
    )  # person 1's crops and embeddings, both cameras
    assert set(gallery.global_ids().values()) == {2} and len(gallery.thumbnails(sorted(ids))) == 2
    assert {e["global_id"] for e in gallery.read_events()} == {"2"}

    time.sleep(1.1)  # retention of one second: everything left is older than that on the server clock
    short = site_config(tmp_path, max_age_hours=1 / 3600)
    matcher = build_matcher(short, redis_client)
    report = enforce_retention(short, redis_client, matcher)
    assert (report.crops, report.embeddings, report.tracklets_pruned, report.events) == (20, 20, 2, 2)
    assert matcher.pruned == [(pytest.approx(time.time(), abs=60), 1.0)]  # the retention, on the server clock
    assert (
        pool.count() == 0
        and len(store) == 0
        and gallery.global_ids() == {}
        and gallery.tracklet_keys() == set()
    )
