"""Where the pool lives: an external Redis (``REDIS_URL``) or the embedded server."""

from __future__ import annotations

from pydantic import Field

from selfreid.pipeline.config.base import Section

__all__ = ["RedisConfig"]


class RedisConfig(Section):
    url: str | None = Field(
        None, description="redis://[:password@]host:port/db; None = embedded server. Env REDIS_URL overrides."
    )
    embedded_dir: str = Field("redis", description="Embedded server's data folder, relative to data_dir.")
    appendonly: bool = Field(True, description="Embedded server: AOF persistence so a crash loses at most 1 s.")
