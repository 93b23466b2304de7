"""The embedded Redis is a real server whose data survives a restart of the process that owns it."""

from __future__ import annotations

from pathlib import Path

import redis

from selfreid.pipeline.config import parse_config
from selfreid.pipeline.runtime.pool import open_pool
from selfreid.pipeline.runtime.redis_conn import EmbeddedRedis, open_redis, ping
from selfreid.plugins.contracts import Crop


def make_crops(n: int) -> list[Crop]:
    return [
        Crop(
            camera_id=f"cam{i % 2}",
            timestamp=1_700_000_000.0 + i,
            frame_index=i,
            box=(1.0, 2.0, 41.0, 122.0),
            track_id=i // 3,
            confidence=0.9,
            jpeg=bytes([0xFF, 0xD8]) + i.to_bytes(4, "big") + bytes([0xFF, 0xD9]),
        )
        for i in range(n)
    ]


def test_crops_round_trip_through_a_restart(tmp_path: Path) -> None:
    cfg = parse_config({"data_dir": str(tmp_path)})
    crops = make_crops(10)
    with EmbeddedRedis(tmp_path / "redis") as server:
        client = redis.Redis.from_url(server.url)
        ids = open_pool(cfg, client).add(crops)
        assert len(ids) == 10
        client.close()
    assert ping(f"unix://{tmp_path}/gone.sock") is not None  # nothing answers where nothing runs
    with EmbeddedRedis(tmp_path / "redis") as server:
        client = redis.Redis.from_url(server.url)
        pool = open_pool(cfg, client)
        assert pool.count() == 10
        got = pool.read("trainer", "t1", count=100)
        client.close()
    key = lambda c: (c.camera_id, c.frame_index)  # noqa: E731
    assert sorted((key(c), c.jpeg, c.track_id, c.box) for c in got) == sorted((key(c), c.jpeg, c.track_id, c.box) for c in crops)
    assert all(c.crop_id for c in got)


def test_open_redis_uses_the_embedded_server_without_url(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("REDIS_URL", raising=False)
    cfg = parse_config({"data_dir": str(tmp_path)})
    with open_redis(cfg) as client:
        client.set("k", b"v")
    with open_redis(cfg) as client:
        assert client.get("k") == b"v"
    assert (tmp_path / "redis" / "pool.rdb").exists() or (tmp_path / "redis" / "appendonly.aof").exists()
