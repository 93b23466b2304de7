"""Retention and erasure on Redis Streams, shared by the crop pool, the embeddings and the events,
and the hash-tag rule that lets all of them run on a Redis Cluster.

Stream ids are the Redis server's clock (milliseconds) when an entry was added, so "older than
``max_age_s``" is decided on the server's clock, never on a client's.

**Redis Cluster.** A cluster runs a multi-key command (``XREADGROUP`` over every camera stream) or a
transaction (the embedder stores embeddings and acknowledges their crops in one ``MULTI``) only when
all its keys hash to one slot. Every key of a site starts with the site prefix, so a prefix that
holds a hash tag (``{site1}``) puts the whole site - camera streams, their consumer groups, the
embeddings, the gallery - in one slot: every command works unchanged, and a cluster then spreads
sites (and replicas for fail-over) over its masters. :func:`require_hash_tag` refuses an untagged
prefix on a cluster client, before any command fails with ``CROSSSLOT``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import cast

import redis

from selfreid.plugins.codec import as_text

__all__ = ["server_ms", "expire", "erase", "hash_tag", "require_hash_tag"]

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
    # an XRANGE reply (redis' stubs also allow None ids and fields: only XCLAIM replies have them)
    while entries := cast(list[tuple[bytes, Fields]], client.xrange(key, start, "+", count=page)):
        doomed = [entry_id for entry_id, fields in entries if select(entry_id, fields)]
        if doomed:
            removed += int(client.xdel(key, *doomed))
        start = f"({as_text(entries[-1][0])}"
    return removed


def hash_tag(key: str) -> str | None:
    """The part of ``key`` a Redis Cluster hashes when it has one: the text between the first ``{`` and
    the next ``}``, if not empty (``"{site1}:pool:cam1"`` -> ``"site1"``); ``None`` = the whole key."""
    start = key.find("{")
    end = key.find("}", start + 1) if start >= 0 else -1
    return key[start + 1 : end] if end > start + 1 else None


def require_hash_tag(client: redis.Redis, prefix: str) -> None:
    """On a cluster client, ValueError unless every key under ``prefix`` shares one hash tag."""
    if isinstance(client, redis.RedisCluster) and hash_tag(prefix) is None:
        raise ValueError(
            f"on a Redis Cluster a site's keys must share one hash slot: set pool.prefix to a hash tag "
            f"such as '{{{prefix}}}' (got {prefix!r})"
        )
