"""Retention and erasure on Redis Streams, shared by the crop pool, the embeddings and the events.

Stream ids are the Redis server's clock (milliseconds) when an entry was added, so "older than
``max_age_s``" is decided on the server's clock, never on a client's.
"""

from __future__ import annotations

from collections.abc import Callable

import redis

from selfreid.plugins.codec import as_text

__all__ = ["server_ms", "expire", "erase"]

Fields = dict[bytes, bytes]


def server_ms(client: redis.Redis) -> int:
    """The Redis server's clock in milliseconds since the epoch."""
    sec, usec = client.time()
    return int(sec) * 1000 + int(usec) // 1000


def expire(client: redis.Redis, key: str, max_age_s: float, now_ms: int | None = None) -> int:
    """Delete the entries of stream ``key`` added more than ``max_age_s`` ago (exact ``XTRIM MINID``)."""
    now_ms = server_ms(client) if now_ms is None else now_ms
    return int(client.xtrim(key, minid=str(max(now_ms - int(max_age_s * 1000), 0)), approximate=False))


def erase(client: redis.Redis, key: str, select: Callable[[bytes, Fields], bool], page: int = 500) -> int:
    """Delete every entry of stream ``key`` for which ``select(entry_id, fields)`` is true; returns how many.

    Reads the whole stream, ``page`` entries per round trip: erasure is a rare, explicit request.
    """
    removed, start = 0, "-"
    while entries := client.xrange(key, start, "+", count=page):
        doomed = [entry_id for entry_id, fields in entries if select(entry_id, fields)]
        if doomed:
            removed += int(client.xdel(key, *doomed))
        start = f"({as_text(entries[-1][0])}"
    return removed
