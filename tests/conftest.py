"""Shared fixtures: the sample data, a real embedded Redis, and an offline Ultralytics."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from selfreid.pipeline.runtime.redis_conn import EmbeddedRedis

REPO = Path(__file__).resolve().parents[1]
# Shared test helpers (vtest_data, conreid_tracks, serving_fixtures) live beside this file.
sys.path.insert(0, str(Path(__file__).resolve().parent))
pytest_plugins = ["serving_fixtures", "reliability_doc", "pytester"]
# Ultralytics must never touch the network or the user's home during tests.
os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLO_CONFIG_DIR", str(REPO / ".yolo"))
os.environ.setdefault("OMP_NUM_THREADS", "2")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The project's sample data (``../shared/data`` or ``$SELFREID_SHARED_DATA``). Required: a
    missing folder is an error, not a skip, so that no data-driven test silently disappears."""
    from selfreid.plugins.assets import shared_data_dir

    path = shared_data_dir()
    if path is None:
        pytest.fail("sample data not found: put it at ../shared/data or set SELFREID_SHARED_DATA")
    return path


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRedis]:
    """One real embedded redis-server for the whole test session."""
    server = EmbeddedRedis(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture()
def redis_client(redis_server):
    """A client on the session server, with an empty database for each test."""
    import redis

    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    yield client
    client.close()
