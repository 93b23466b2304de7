"""The Redis-buffered unlabelled pool."""

from __future__ import annotations

from pydantic import Field

from selfreid.pipeline.config.base import PluginChoice

__all__ = ["PoolConfig"]


class PoolConfig(PluginChoice):
    """``plugin`` defaults to the Redis Streams pool; its retention and back-pressure
    settings are the plugin's ``params``."""

    plugin: str = "redis_streams"
    prefix: str = Field("selfreid", description="Key prefix shared by every stage of one site.")
