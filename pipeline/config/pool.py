"""The Redis-buffered unlabelled pool."""

from __future__ import annotations

from pydantic import Field

from selfreid.pipeline.config.base import PluginChoice

__all__ = ["PoolConfig"]


class PoolConfig(PluginChoice):
    """``plugin`` defaults to the Redis Streams pool; its retention and back-pressure
    settings are the plugin's ``params`` (validated by ``RedisStreamPool.Settings``):
    ``max_len_per_camera``, ``max_age_hours``, ``exact_trim``, ``batch_size``, ``max_queue``,
    ``retry_s``, ``claim_idle_ms`` (see ``selfreid config check`` and configs/*.yaml)."""

    plugin: str = Field("redis_streams", description="PoolStore plugin (entry point in selfreid.pools).")
    prefix: str = Field("selfreid", description="Key prefix shared by every stage of one site.")
