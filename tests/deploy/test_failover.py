"""The pieces of multi-host ingest fail-over (benchmark X1 measures the whole): a stable member id and
heartbeat TTL from the environment, and no start-up settle wait for a replica that is still a member."""

from __future__ import annotations

import threading
import time

import pytest

from selfreid.pipeline.config import parse_config
from selfreid.pipeline.ingest.camera_assignment import (
    ENV_VAR,
    MEMBER_ENV,
    RESTART_GRACE_S,
    TTL_ENV,
    Membership,
    claim_cameras,
    heartbeat_ttl_s,
    replica_instance,
)

PREFIX = "fo"


class RecordingStop(threading.Event):
    """A stop event that records each timed wait and returns at once (no test waits for real)."""

    def __init__(self) -> None:
        super().__init__()
        self.waits: list[float | None] = []

    def wait(self, timeout: float | None = None) -> bool:
        self.waits.append(timeout)
        return self.is_set()


def _cfg():
    cams = [{"id": f"cam{i}", "uri": f"/dev/null/{i}"} for i in range(4)]
    return parse_config({"pool": {"prefix": PREFIX}, "ingest": {"cameras": cams}})


def test_member_id_and_heartbeat_ttl_come_from_the_environment(monkeypatch: pytest.MonkeyPatch, redis_client):
    monkeypatch.setenv(ENV_VAR, "auto")
    monkeypatch.setenv(MEMBER_ENV, "host-a")
    assert Membership(redis_client, PREFIX).member_id == "host-a" and replica_instance() == "host-a"
    monkeypatch.delenv(TTL_ENV, raising=False)
    assert heartbeat_ttl_s() == 15.0
    monkeypatch.setenv(TTL_ENV, "4.5")
    assert heartbeat_ttl_s() == 4.5
    for bad in ("soon", "0", "-1"):
        monkeypatch.setenv(TTL_ENV, bad)
        with pytest.raises(ValueError, match=TTL_ENV):
            heartbeat_ttl_s()


@pytest.mark.parametrize(("last_beat_s_ago", "settles"), [(None, True), (1.0, False), (120.0, True)])
def test_only_a_replica_that_is_not_a_live_member_waits_to_settle(
    monkeypatch: pytest.MonkeyPatch, redis_client, last_beat_s_ago, settles
):
    """A live member restarted to take its new share (the split is agreed): it starts at once. A new
    replica, or one whose heartbeat expired (it died), waits one TTL for the others to see it."""
    monkeypatch.setenv(ENV_VAR, "auto")
    monkeypatch.setenv(MEMBER_ENV, "host-a")
    monkeypatch.setenv(TTL_ENV, "30")
    if last_beat_s_ago is not None:
        redis_client.zadd(f"{PREFIX}:ingest:members", {"host-a": time.time() - last_beat_s_ago})
    stop = RecordingStop()
    with claim_cameras(_cfg(), redis_client, stop) as mine:
        assert len(mine) == 4  # alone: every camera
        stop.set()
    assert stop.waits == ([30.0] if settles else [])


def test_a_replica_restarting_for_its_share_keeps_beating_then_holds_its_place(
    monkeypatch: pytest.MonkeyPatch, redis_client
):
    """A slow shutdown or restart must not look like a death, or every other replica restarts too."""
    monkeypatch.setenv(ENV_VAR, "auto")
    monkeypatch.setenv(MEMBER_ENV, "host-a")
    monkeypatch.setenv(TTL_ENV, "0.3")
    key = f"{PREFIX}:ingest:members"
    other, dead = Membership(redis_client, PREFIX, ttl_s=0.3, member_id="host-c"), threading.Event()
    other.beat()

    def keep_beating() -> None:  # host-c alive until `dead`
        while not dead.wait(0.05):
            other.beat()

    beating = threading.Thread(target=keep_beating)
    beating.start()
    stop = threading.Event()
    try:
        with claim_cameras(_cfg(), redis_client, stop, settle_s=0.0) as mine:
            assert [c.id for c in mine] == ["cam3"]  # rendezvous over host-a and host-c
            dead.set()
            assert stop.wait(10)  # host-c expired: host-a's share grows, it stops to restart
            first = redis_client.zscore(key, "host-a")
            deadline = time.monotonic() + 10
            while redis_client.zscore(key, "host-a") == first and time.monotonic() < deadline:
                time.sleep(0.05)  # still shutting down: the heartbeat goes on
            assert redis_client.zscore(key, "host-a") > first
    finally:
        dead.set()
        beating.join()
    assert redis_client.zscore(key, "host-a") > time.time() + RESTART_GRACE_S - 5  # dated ahead
    assert Membership(redis_client, PREFIX, ttl_s=0.3, member_id="host-a").is_live()
