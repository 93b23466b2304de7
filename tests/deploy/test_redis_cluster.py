"""The crop pool on a real 3-master Redis Cluster: every command on one hash tag, and a master restart
in the middle of the work that loses nothing Redis acknowledged."""

from __future__ import annotations

import threading

import pytest
import redis
from cluster_nodes import wait_until

from selfreid.pipeline.config import ConfigError, parse_config
from selfreid.pipeline.config.redis import cluster_url, is_cluster_url, single_node_url
from selfreid.pipeline.ingest.service import run_ingest
from selfreid.pipeline.runtime.redis_conn import connect, ping
from selfreid.pipeline.serving.embed import run_embedder
from selfreid.pipeline.serving.embedding_store import EmbeddingStore
from selfreid.pipeline.serving.match import run_matcher
from selfreid.plugins.contracts import Crop
from selfreid.plugins.pool.redis_streams import RedisStreamPool, parse_crop_id

PREFIX = "{site1}"


def make_crops(camera: str, n: int, start: int = 0) -> list[Crop]:
    return [
        Crop(camera, 1_700_000_000.0 + i, i, (1.0, 2.0, 41.0, 122.0), i % 4, 0.9, b"\xff\xd8" + i.to_bytes(4, "big"))
        for i in range(start, start + n)
    ]


def drain(pool: RedisStreamPool, group: str, consumer: str) -> list[Crop]:
    """Everything the pool delivers to ``consumer`` (a read returns at most ``count``, keeping the rest)."""
    out: list[Crop] = []
    while got := pool.read(group, consumer, count=100):
        out += got
    return out


def cluster_client(cluster) -> redis.RedisCluster:
    cfg = parse_config({"redis": {"url": cluster.url, "cluster": True}, "pool": {"prefix": PREFIX}})
    client = connect(cfg.redis.client_url, socket_timeout=5)
    assert isinstance(client, redis.RedisCluster)
    return client


def test_the_pool_works_on_a_cluster_with_one_hash_tag_per_site(redis_cluster):
    client = cluster_client(redis_cluster)
    pool = RedisStreamPool(RedisStreamPool.Settings(max_age_hours=1), client=client, prefix=PREFIX)
    ids = pool.add(make_crops("cam1", 6) + make_crops("cam2", 6) + make_crops("cam3", 6))
    assert len(ids) == 18 and pool.count_by_camera() == {"cam1": 6, "cam2": 6, "cam3": 6}
    first = pool.read("embedder", "w1", count=10)  # one XREADGROUP over the three camera streams
    rest = pool.read("embedder", "w1", count=100)
    assert sorted(c.crop_id for c in first + rest) == sorted(ids)
    assert pool.pending("embedder") == 18
    assert pool.ack("embedder", [c.crop_id for c in first + rest]) == 18 and pool.pending("embedder") == 0
    assert len(pool.read("trainer", "t1", count=100)) == 18  # groups progress independently
    assert len(pool.snapshot(9)) == 9 and pool.expire() == 0
    assert pool.erase("cam2", lambda crop: crop.frame_index < 2) == 2
    # every key of the site lives on one master: multi-key commands and transactions work
    keys = [pool.stream_key(c) for c in pool.cameras()] + [pool.cameras_key, f"{PREFIX}:embeddings"]
    assert len({redis_cluster.node_for(k).port for k in keys}) == 1
    with client.pipeline(transaction=True) as tx:  # the embedder's store-and-ack transaction
        tx.xadd(f"{PREFIX}:embeddings", {"crop": ids[0]})
        pool.ack("trainer", [ids[0]], pipe=tx)
        tx.execute()


def test_an_untagged_prefix_is_refused_on_a_cluster(redis_cluster):
    with pytest.raises(ValueError, match=r"pool.prefix .*'\{site\}'"):
        RedisStreamPool(client=cluster_client(redis_cluster), prefix="site")


def test_a_master_restart_loses_no_acknowledged_write_or_ack(redis_cluster):
    client = cluster_client(redis_cluster)
    settings = RedisStreamPool.Settings(retry_s=0.05, claim_idle_ms=600_000)
    pool = RedisStreamPool(settings, client=client, prefix=PREFIX)
    before = pool.add(make_crops("cam1", 30) + make_crops("cam2", 30))
    assert len(before) == 60
    done = pool.read("embedder", "w1", count=25)
    pool.ack("embedder", [c.crop_id for c in done])

    master = redis_cluster.node_for(pool.stream_key("cam1"))
    master.kill()
    assert pool.add(make_crops("cam1", 10, start=30)) == []  # held locally, nothing raised
    assert pool.stats.queued == 10 and not pool.stats.connected
    master.start()
    redis_cluster.wait_ok()

    written = pool.flush(timeout_s=20)
    assert len(written) == 10 and pool.stats.queued == 0 and pool.stats.dropped == 0
    stored = {f"{cam}/{sid.decode()}" for cam in ("cam1", "cam2") for sid, _ in client.xrange(pool.stream_key(cam))}
    assert set(before) <= stored  # every write Redis acknowledged before the kill survived it
    rest = {c.crop_id for c in drain(pool, "embedder", "w1")}
    assert not rest & {c.crop_id for c in done}  # acknowledged crops are never delivered again
    assert rest == (set(before) - {c.crop_id for c in done}) | {cid for _, cid in written}
    assert {parse_crop_id(c)[0] for c in rest} == {"cam1", "cam2"}


def test_cluster_urls_and_config():
    url = "redis://:pw@node-0.redis:6379/0"
    assert not is_cluster_url(url) and is_cluster_url(cluster_url(url)) and cluster_url(cluster_url(url)) == cluster_url(url)
    assert single_node_url(cluster_url(url + "?ssl_cert_reqs=none")) == url + "?ssl_cert_reqs=none"
    site = {"prefix": "{site1}"}  # on a cluster a site's keys share one slot
    assert parse_config({"redis": {"url": url, "cluster": True}, "pool": site}).redis.client_url == f"{url}?cluster=true"
    assert parse_config({"redis": {"url": f"{url}?cluster=1"}, "pool": site}).redis.is_cluster
    with pytest.raises(ConfigError, match="pool.prefix"):
        parse_config({"redis": {"url": url, "cluster": True}})
    assert parse_config({"redis": {"url": url}}).redis.client_url == url
    with pytest.raises(ConfigError, match="redis.cluster"):
        parse_config({"redis": {"cluster": True}})  # the embedded server is one node
    assert type(connect("redis://:pw@127.0.0.1:1/0")) is redis.Redis  # no connection is made yet
    assert ping("redis://:pw@127.0.0.1:1/0?cluster=true")  # an unreachable cluster is an error text


def test_ingest_embedder_and_matcher_run_through_a_cluster_across_a_master_restart(
    redis_cluster, shared_data, onnx_model, tmp_path
):
    cfg = parse_config({
        "data_dir": str(tmp_path),
        "redis": {"url": redis_cluster.url, "cluster": True},
        "pool": {"prefix": PREFIX, "params": {"claim_idle_ms": 1000}},
        "ingest": {"cameras": [{"id": "pets", "uri": str(shared_data / "pets09-s2l1" / "vtest.avi"), "stride": 3}],
                   "detector": {"plugin": "yolox"}, "device": "cpu", "metrics_port": None,
                   "crops": {"min_height": 48, "min_width": 16, "min_confidence": 0.3, "every_k_frames": 2}},
        "embedder": {"batch_size": 4, "max_wait_ms": 0, "params": {"model": str(onnx_model)}},
    })
    url = cfg.redis.client_url
    written = run_ingest(cfg, url, threading.Event(), max_frames=12)["pets"].written
    assert written > 10
    client = cluster_client(redis_cluster)
    store = EmbeddingStore(client, PREFIX)
    stop = threading.Event()
    result: dict = {}
    embedder = threading.Thread(target=lambda: result.setdefault("e", run_embedder(cfg, url, stop)), daemon=True)
    matcher = threading.Thread(target=lambda: result.setdefault("m", run_matcher(cfg, url, stop)), daemon=True)
    embedder.start()
    matcher.start()
    try:
        wait_until(lambda: len(store) > 0, what="the first embeddings", timeout_s=60)
        redis_cluster.restart(redis_cluster.node_for(store.key))  # SIGKILL the site's master, start it again
        wait_until(lambda: len(store) == written, what="every crop to be embedded", timeout_s=60)
        wait_until(lambda: _consumed(client, store.key, "matcher"), what="the matcher to consume them", timeout_s=60)
    finally:
        stop.set()
        embedder.join(30)
        matcher.join(30)
    pool = RedisStreamPool(client=client, prefix=PREFIX)
    assert pool.pending("embedder") == 0 and drain(pool, "embedder", "check") == []  # every crop acknowledged
    crops = [i.embedding.crop_id for i in store.read("check", "c", 1000)]
    assert len(crops) == len(set(crops)) == written  # each crop embedded exactly once
    assert result["m"].embeddings == written and result["m"].assignments > 0


def _consumed(client: redis.RedisCluster, key: str, group: str) -> bool:
    """The group has read every entry of ``key`` and acknowledged them all."""
    info = next((g for g in client.xinfo_groups(key) if g["name"] == group.encode()), None)
    if info is None or info["pending"]:
        return False
    return not client.xrange(key, f"({info['last-delivered-id'].decode()}", "+", count=1)
