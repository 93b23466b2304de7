"""Which cameras this ingest replica reads, when several replicas share one site.

``docker compose up --scale ingest=N`` starts N identical containers with no ordinal, so the
replicas agree through Redis: each one keeps a heartbeat in the sorted set
``{prefix}:ingest:members`` and takes the cameras that rendezvous hashing (highest random
weight) gives it over the live members. Every replica computes the same split from the same
member list, a camera moves only when its owner joins or leaves, and no lease has to be passed
around. When the member list changes so that this replica's share changes, ``stop`` is set: the
replica finishes its frames and returns, and ``selfreid ingest`` runs ingest again in the same process
with the new share (no camera is ever read twice for long, none is dropped for more than that turn).
A member is ``hostname-pid``, which a restarted container keeps (pid 1), or ``$SELFREID_INGEST_MEMBER``
when set (a host whose supervisor restarts ingest under a new pid); a replica that exits to take a
new share does not leave the set: it keeps beating while it shuts down and then holds its place for
``RESTART_GRACE_S``, so restarts do not ripple through the other replicas, and it comes back without
the start-up settle wait (it is still a live member: the split is already agreed).

A replica that dies without leaving is dropped once its heartbeat is older than the TTL
(``$SELFREID_INGEST_TTL_S``, default 15 s; a beat every third of it): its cameras resume on the
others within about TTL + TTL/3 + one ingest restart (benchmark X1 measures it).

Selected with the environment variable ``SELFREID_INGEST_SHARD``:

* unset or ``all``: every camera (one ingest process, e.g. ``selfreid run``);
* ``auto``: Redis membership as above (docker-compose.yml sets it);
* ``I/N`` (e.g. ``0/3``): static shard I of N by a stable hash of the camera id (for
  orchestrators that give an ordinal, such as a Kubernetes StatefulSet).

Ingest calls it once, around its camera loop::

    with claim_cameras(cfg, client, stop) as cameras:
        run_on(with_cameras(cfg, cameras))  # return soon after stop is set
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import redis

from selfreid.pipeline.config import AppConfig, CameraConfig
from selfreid.pipeline.runtime.signals import StopFlag

__all__ = [
    "ENV_VAR", "MEMBER_ENV", "RESTART_GRACE_S", "TTL_ENV", "Membership", "claim_cameras", "heartbeat_ttl_s",
    "owner", "parse_shard", "replica_instance", "shard_of", "with_cameras",
]

log = logging.getLogger(__name__)

ENV_VAR = "SELFREID_INGEST_SHARD"
MEMBER_ENV = "SELFREID_INGEST_MEMBER"
TTL_ENV = "SELFREID_INGEST_TTL_S"
DEFAULT_TTL_S = 15.0
# A replica that stops to take its new share keeps its place this long (plus the TTL) until it runs
# again (in the same process; a process restart happens only after a crash, when a container runtime
# may also back off): otherwise a slow turn looks like a death, and the others move too, for nothing.
RESTART_GRACE_S = 30.0


def _weight(member: str, camera_id: str) -> int:
    return int.from_bytes(hashlib.blake2b(f"{member}\x00{camera_id}".encode(), digest_size=8).digest(), "big")


def owner(camera_id: str, members: Sequence[str]) -> str:
    """The member that reads ``camera_id``: highest hash weight wins (rendezvous hashing)."""
    return max(members, key=lambda m: _weight(m, camera_id))


def shard_of(camera_id: str, count: int) -> int:
    """Stable shard index of a camera for a static split into ``count`` shards."""
    return _weight("static", camera_id) % count


def parse_shard(value: str | None) -> tuple[int, int] | str:
    """``"all"``, ``"auto"`` or ``(index, count)`` from the environment value; ValueError otherwise."""
    value = (value or "all").strip().lower()
    if value in ("all", "auto"):
        return value
    try:
        index, count = (int(part) for part in value.split("/"))
    except ValueError:
        raise ValueError(f"${ENV_VAR}={value!r}: expected 'all', 'auto' or 'I/N' such as '0/3'") from None
    if not 0 <= index < count:
        raise ValueError(f"${ENV_VAR}={value!r}: need 0 <= I < N")
    return index, count


def heartbeat_ttl_s() -> float:
    """Seconds without a heartbeat after which a replica is dropped (``$SELFREID_INGEST_TTL_S``)."""
    value = os.environ.get(TTL_ENV)
    try:
        ttl = float(value) if value else DEFAULT_TTL_S
    except ValueError:
        raise ValueError(f"${TTL_ENV}={value!r}: expected seconds, e.g. 15") from None
    if ttl <= 0:
        raise ValueError(f"${TTL_ENV}={value!r}: must be > 0")
    return ttl


class Membership:
    """This replica's heartbeat in ``{prefix}:ingest:members`` (score = time of the last beat)."""

    def __init__(
        self, client: redis.Redis, prefix: str, ttl_s: float = DEFAULT_TTL_S, member_id: str | None = None
    ) -> None:
        self.client = client
        self.key = f"{prefix}:ingest:members"
        self.ttl_s = ttl_s
        # Stable across restarts of one container (same hostname, pid 1), so a replica that
        # restarts to take its new share comes back as the same member and moves nothing else.
        self.member_id = member_id or _process_name()

    def is_live(self) -> bool:
        """Whether this member's last heartbeat is younger than the TTL (it exited to take a new share)."""
        score = self.client.zscore(self.key, self.member_id)
        return score is not None and score > time.time() - self.ttl_s

    def beat(self) -> list[str]:
        """Renew this member, drop the stale ones, and return the live members (sorted)."""
        now = time.time()
        pipe = self.client.pipeline()
        pipe.zadd(self.key, {self.member_id: now})
        pipe.zremrangebyscore(self.key, "-inf", now - self.ttl_s)
        pipe.zrange(self.key, 0, -1)
        members = pipe.execute()[-1]
        return sorted(m.decode() for m in members)

    def leave(self) -> None:
        self.client.zrem(self.key, self.member_id)

    def hold_place(self, grace_s: float) -> None:
        """Stay a member for ``grace_s`` more seconds without beating: the heartbeat is dated ahead."""
        self.client.zadd(self.key, {self.member_id: time.time() + grace_s})

    def share(self, cameras: Sequence[CameraConfig], members: Sequence[str]) -> list[CameraConfig]:
        return [cam for cam in cameras if owner(cam.id, members) == self.member_id]


def _watch(
    membership: Membership,
    cameras: Sequence[CameraConfig],
    mine: list[str],
    stop: StopFlag,
    done: threading.Event,
    changed: threading.Event,
) -> None:
    """Heartbeat until ingest is done, through its shutdown (a replica that is slow to stop is not taken
    for dead); set ``changed`` and ``stop`` when this replica's share changes."""
    while not done.wait(membership.ttl_s / 3):
        try:
            members = membership.beat()
        except redis.RedisError as exc:
            log.warning("camera assignment heartbeat failed: %s", exc)
            continue
        now_mine = [cam.id for cam in membership.share(cameras, members)]
        if now_mine != mine and not stop.is_set():
            log.info("ingest replicas changed (%d live): my cameras %s -> %s, restarting", len(members), mine, now_mine)
            changed.set()
            stop.set()


def with_cameras(cfg: AppConfig, cameras: Sequence[CameraConfig]) -> AppConfig:
    """``cfg`` with ``ingest.cameras`` replaced by this replica's share."""
    return cfg.model_copy(update={"ingest": cfg.ingest.model_copy(update={"cameras": list(cameras)})})


def replica_instance() -> str:
    """This ingest replica's name in the stage status (:mod:`selfreid.pipeline.runtime.status`): ``0`` when
    one process reads every camera, the shard index for a fixed split, the member id in ``auto``
    mode, so that scaled replicas do not overwrite each other's status."""
    mode = parse_shard(os.environ.get(ENV_VAR))
    if mode == "all":
        return "0"
    if isinstance(mode, tuple):
        return str(mode[0])
    return _process_name()


def _process_name() -> str:
    return os.environ.get(MEMBER_ENV) or f"{socket.gethostname()}-{os.getpid()}"


@contextmanager
def claim_cameras(
    cfg: AppConfig, client: redis.Redis, stop: StopFlag, settle_s: float | None = None
) -> Iterator[list[CameraConfig]]:
    """Yield the cameras this replica reads (see the module docstring for the modes).

    In ``auto`` mode a new replica first waits ``settle_s`` (default: one heartbeat TTL) so that
    replicas started together see each other before splitting the cameras; a replica that is still a
    live member (it restarted for a new share) starts at once.
    """
    cameras = list(cfg.ingest.cameras)
    mode = parse_shard(os.environ.get(ENV_VAR))
    if mode == "all":
        yield cameras
        return
    if isinstance(mode, tuple):
        index, count = mode
        yield [cam for cam in cameras if shard_of(cam.id, count) == index]
        return
    membership = Membership(client, cfg.pool.prefix, heartbeat_ttl_s())
    settled = membership.is_live()
    members = membership.beat()
    if not settled:
        stop.wait(membership.ttl_s if settle_s is None else settle_s)
        members = membership.beat()
    mine = membership.share(cameras, members)
    log.info("ingest replica %s of %d: cameras %s", membership.member_id, len(members), [c.id for c in mine])
    done, changed = threading.Event(), threading.Event()
    watcher = threading.Thread(
        target=_watch,
        args=(membership, cameras, [c.id for c in mine], stop, done, changed),
        name="camera-assignment",
        daemon=True,
    )
    watcher.start()
    try:
        if not mine:  # more replicas than cameras: stand by until the share changes or stop
            stop.wait()
        yield mine
    finally:
        done.set()
        watcher.join()
        if changed.is_set():  # restarting for its new share: keep its place while the process restarts
            membership.hold_place(RESTART_GRACE_S)
        else:  # a real stop
            membership.leave()
