"""Open the configured crop pool (a :class:`~selfreid.plugins.contracts.PoolStore` plugin)."""

from __future__ import annotations

import redis

from selfreid.pipeline.config import AppConfig
from selfreid.plugins import registry
from selfreid.plugins.contracts import PoolStore

__all__ = ["open_pool"]


def open_pool(cfg: AppConfig, client: redis.Redis) -> PoolStore:
    """Build the pool plugin named in ``cfg.pool`` on an open Redis client."""
    pool: PoolStore = registry.create("pools", cfg.pool.plugin, cfg.pool.params, where="pool", client=client,
                                      prefix=cfg.pool.prefix)
    return pool
