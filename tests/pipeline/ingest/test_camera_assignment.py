"""Ingest replicas split the cameras: every camera read exactly once, stable when replicas change."""

from __future__ import annotations

import threading

import pytest

from selfreid.pipeline.config import parse_config
from selfreid.pipeline.ingest.camera_assignment import (
    ENV_VAR,
    Membership,
    claim_cameras,
    owner,
    parse_shard,
    shard_of,
    with_cameras,
)

CAMERA_IDS = [f"cam{i:02d}" for i in range(12)]


def _cfg():
    return parse_config({"ingest": {"cameras": [{"id": c, "uri": f"rtsp://host/{c}"} for c in CAMERA_IDS]}})


def test_parse_shard_modes_and_errors() -> None:
    assert parse_shard(None) == "all" and parse_shard("AUTO") == "auto" and parse_shard("1/3") == (1, 3)
    for bad in ("3/3", "x", "1/0", "-1/2"):
        with pytest.raises(ValueError, match=ENV_VAR):
            parse_shard(bad)


def test_rendezvous_split_covers_every_camera_once_and_moves_little() -> None:
    three = ["a", "b", "c"]
    split = {cam: owner(cam, three) for cam in CAMERA_IDS}
    assert set(split.values()) == set(three)  # 12 cameras over 3 replicas: nobody idle
    four = {cam: owner(cam, three + ["d"]) for cam in CAMERA_IDS}
    moved = [cam for cam in CAMERA_IDS if four[cam] != split[cam]]
    assert moved and all(four[cam] == "d" for cam in moved)  # only the newcomer's cameras move


def test_static_shards_partition_the_cameras(monkeypatch: pytest.MonkeyPatch, redis_client) -> None:
    cfg = _cfg()
    seen: list[str] = []
    for index in range(3):
        monkeypatch.setenv(ENV_VAR, f"{index}/3")
        with claim_cameras(cfg, redis_client, threading.Event()) as cameras:
            seen += [c.id for c in cameras]
    assert sorted(seen) == CAMERA_IDS
    assert {shard_of(c, 3) for c in CAMERA_IDS} == {0, 1, 2}


def test_auto_mode_two_replicas_share_and_a_leaving_replica_triggers_restart(
    monkeypatch: pytest.MonkeyPatch, redis_client
) -> None:
    cfg = _cfg()
    prefix = cfg.pool.prefix
    other = Membership(redis_client, prefix, member_id="other-replica")
    other.beat()
    monkeypatch.setenv(ENV_VAR, "auto")
    stop = threading.Event()
    with claim_cameras(cfg, redis_client, stop, settle_s=0.0) as mine:
        theirs = other.share(cfg.ingest.cameras, other.beat())
        assert sorted(c.id for c in mine + theirs) == CAMERA_IDS and mine and theirs
        assert not stop.is_set()
        other.leave()  # the other replica goes away: this one must restart to take its cameras
        assert stop.wait(10.0), "share changed but stop was not set"
    me = Membership(redis_client, prefix).member_id
    assert redis_client.zrange(f"{prefix}:ingest:members", 0, -1) == [me.encode()]  # keeps its place
    with claim_cameras(cfg, redis_client, threading.Event(), settle_s=0.0) as mine:
        assert [c.id for c in mine] == CAMERA_IDS  # restarted alone: every camera
    assert redis_client.zcard(f"{prefix}:ingest:members") == 0  # a real stop leaves


def test_all_mode_and_with_cameras(monkeypatch: pytest.MonkeyPatch, redis_client) -> None:
    monkeypatch.delenv(ENV_VAR, raising=False)
    cfg = _cfg()
    with claim_cameras(cfg, redis_client, threading.Event()) as cameras:
        assert [c.id for c in cameras] == CAMERA_IDS
    assert [c.id for c in with_cameras(cfg, cameras[:2]).ingest.cameras] == CAMERA_IDS[:2]


def test_replicas_report_status_under_their_own_name(monkeypatch: pytest.MonkeyPatch) -> None:
    import os
    import socket

    from selfreid.pipeline.ingest.camera_assignment import ENV_VAR, replica_instance

    monkeypatch.delenv(ENV_VAR, raising=False)
    assert replica_instance() == "0"
    monkeypatch.setenv(ENV_VAR, "2/3")
    assert replica_instance() == "2"
    monkeypatch.setenv(ENV_VAR, "auto")
    assert replica_instance() == f"{socket.gethostname()}-{os.getpid()}"
