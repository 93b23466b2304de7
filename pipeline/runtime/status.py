"""Live status of every stage, kept in Redis so that one view covers threads, processes and containers.

Each running stage instance calls :func:`publish_status` every few seconds; ``selfreid run`` and the
health checks read them back with :func:`read_status`. Keys: ``{prefix}:status:{stage}:{instance}``
(a hash of strings, with ``updated`` = Unix time of the last report).
"""

from __future__ import annotations

import json
import time
from typing import Any

import redis

__all__ = ["publish_status", "read_status", "status_key"]

STATUS_TTL_S = 60


def status_key(prefix: str, stage: str, instance: str = "0") -> str:
    return f"{prefix}:status:{stage}:{instance}"


def publish_status(client: redis.Redis, prefix: str, stage: str, fields: dict[str, Any], instance: str = "0") -> None:
    """Store ``fields`` (JSON-encoded values) for this stage instance; expires if the stage dies."""
    key = status_key(prefix, stage, instance)
    mapping = {k: json.dumps(v, default=str) for k, v in fields.items()}
    mapping["updated"] = json.dumps(time.time())
    pipe = client.pipeline(transaction=False)
    pipe.hset(key, mapping=mapping)
    pipe.expire(key, STATUS_TTL_S)
    pipe.execute()


def read_status(client: redis.Redis, prefix: str) -> dict[str, dict[str, Any]]:
    """``{"stage:instance": {field: value}}`` for every stage that reported in the last minute."""
    out: dict[str, dict[str, Any]] = {}
    for key in client.scan_iter(match=f"{prefix}:status:*", count=100):
        name = key.decode().removeprefix(f"{prefix}:status:")
        out[name] = {k.decode(): json.loads(v) for k, v in client.hgetall(key).items()}
    return dict(sorted(out.items()))
