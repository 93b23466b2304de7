"""One holder at a time: a Redis lock for the stages that must run exactly once per site (the matcher).

The lock is one key, ``SET key holder NX PX ttl``: whoever set it holds it while it keeps renewing it
(every third of the TTL, from a background thread). A second process waits, retrying, while the holder
is alive; when the holder stops it deletes the key, and when it dies the key expires after ``ttl_s``,
so a standby takes over within one TTL. Renewal and release only touch the key while it still names
this holder (a short Lua script), so a holder that stalled past its TTL never removes its successor's
lock: it finds it lost, and :attr:`Leadership.held` turns false so that its loop ends.

It is one key, so it works the same on a single Redis and on a Redis Cluster. A Kubernetes Lease
would do the same job; Redis is used because every stage already needs it, in Compose too.

Example::

    with hold_leadership(client, f"{prefix}:matcher:leader", stop) as lead:
        while lead.held and not stop.is_set():
            step()
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import redis

from selfreid.pipeline.runtime.signals import StopFlag

__all__ = ["Leadership", "hold_leadership"]

log = logging.getLogger(__name__)

# Both only act while the key still names this holder.
_RENEW = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) end return 0"
_RELEASE = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"


class Leadership:
    """The lock as held by this process: :attr:`held` is false once it was lost (or never taken)."""

    def __init__(self, client: redis.Redis, key: str, ttl_s: float, holder: str) -> None:
        self.client, self.key, self.holder = client, key, holder
        self.ttl_ms = max(int(ttl_s * 1000), 1)
        self.acquired = False
        self.lost = threading.Event()

    @property
    def held(self) -> bool:
        return self.acquired and not self.lost.is_set()

    def try_acquire(self) -> bool:
        self.acquired = bool(self.client.set(self.key, self.holder, nx=True, px=self.ttl_ms))
        return self.acquired

    def renew(self) -> bool:
        return bool(self.client.eval(_RENEW, 1, self.key, self.holder, self.ttl_ms))

    def release(self) -> None:
        self.client.eval(_RELEASE, 1, self.key, self.holder)


def _keep_renewing(lead: Leadership, done: threading.Event) -> None:
    """Renew every third of the TTL; mark the lock lost when another holder has it, or when Redis
    stayed unreachable for longer than the TTL (the lock has expired by then)."""
    period = lead.ttl_ms / 3000
    failures = 0
    while not done.wait(period):
        try:
            if not lead.renew():
                log.error("lost the lock %s to another holder; stopping", lead.key)
                lead.lost.set()
                return
            failures = 0
        except (redis.RedisError, OSError) as exc:
            failures += 1
            log.warning("cannot renew the lock %s (%s)", lead.key, exc)
            if failures >= 3:
                lead.lost.set()
                return


@contextmanager
def hold_leadership(
    client: redis.Redis, key: str, stop: StopFlag, ttl_s: float = 15.0, holder: str | None = None
) -> Iterator[Leadership]:
    """Wait until this process holds the lock ``key`` (or ``stop`` is set), keep it while inside.

    Yields a :class:`Leadership`; its ``held`` is false when ``stop`` ended the wait, or later when
    the lock was lost. Redis errors while waiting are retried. On exit the lock is released.
    """
    lead = Leadership(client, key, ttl_s, holder or f"{socket.gethostname()}-{os.getpid()}")
    waited = False
    while not stop.is_set():
        try:
            if lead.try_acquire():
                break
        except (redis.RedisError, OSError) as exc:
            log.warning("cannot reach Redis for the lock %s (%s); retrying", key, exc)
        if not waited:
            log.info("%s is held by another process; waiting to take over", key)
            waited = True
        stop.wait(min(1.0, ttl_s / 3))
    if not lead.acquired:
        yield lead
        return
    log.info("holding %s as %s", key, lead.holder)
    done = threading.Event()
    renewer = threading.Thread(target=_keep_renewing, args=(lead, done), name="leader-renew", daemon=True)
    renewer.start()
    try:
        yield lead
    finally:
        done.set()
        renewer.join()
        try:
            lead.release()
        except (redis.RedisError, OSError):
            pass  # unreachable: the key expires after its TTL
