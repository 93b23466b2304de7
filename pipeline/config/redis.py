"""Where the pool lives: an external Redis (``REDIS_URL``) or the embedded server.

The pool holds images of people, so a Redis reached over the network must require a password:
a ``redis://`` or ``rediss://`` URL without one is a config error. ``REDIS_PASSWORD`` fills in
the password of a URL that has none, so a site file can name the host and keep the secret out.
A ``unix://`` socket needs no password: its file permissions decide who connects (the embedded
server's socket is the owner's only, and it opens no TCP port; see ``redis_conn``).

A Redis Cluster is chosen with ``cluster: true`` or ``?cluster=true`` at the end of the URL (which names
any one node): the URL that every stage receives then carries ``cluster=true``, and
:func:`selfreid.pipeline.runtime.redis_conn.connect` opens redis-py's ``RedisCluster`` for it. The
site's keys must then share a hash tag (``pool.prefix: "{site1}"``, see :mod:`selfreid.plugins.streams`).
"""

from __future__ import annotations

from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

from pydantic import Field, field_serializer, field_validator, model_validator

from selfreid.pipeline.config.base import Section

__all__ = ["RedisConfig", "cluster_url", "is_cluster_url", "redact_url", "single_node_url", "with_password"]

NETWORK_SCHEMES = ("redis", "rediss")
PASSWORD_HINT = (
    "a network Redis holds people's crops and must require a password: write "
    "redis://:PASSWORD@host:6379/0, or keep redis://host:6379/0 and set REDIS_PASSWORD "
    "(null = the embedded server, which needs none)"
)


def _split_netloc(netloc: str) -> tuple[str, str]:
    """``"user:pw@host:6379"`` -> ``("user:pw", "host:6379")``."""
    userinfo, _, hostport = netloc.rpartition("@")
    return userinfo, hostport


def with_password(url: str, password: str) -> str:
    """``url`` with ``password`` (URL-quoted) when it is a network URL without one; else unchanged."""
    parts = urlsplit(url)
    if parts.scheme not in NETWORK_SCHEMES or parts.password:
        return url
    userinfo, hostport = _split_netloc(parts.netloc)
    user = userinfo.partition(":")[0]
    return urlunsplit(parts._replace(netloc=f"{user}:{quote(password, safe='')}@{hostport}"))


def redact_url(url: str) -> str:
    """``url`` with its password replaced by ``***``, for logs and messages: the one in the user info
    and a ``password=`` query parameter (how redis-py takes one for a ``unix://`` socket)."""
    parts = urlsplit(url)
    if parts.password:
        userinfo, hostport = _split_netloc(parts.netloc)
        url = urlunsplit(parts._replace(netloc=f"{userinfo.partition(':')[0]}:***@{hostport}"))
    if not any(k == "password" for k, _ in _query(url)):
        return url
    base, _, rest = url.partition("?")  # split by hand: urlunsplit would turn unix:///path into unix:/path
    _, hash_mark, fragment = rest.partition("#")
    redacted = urlencode([(k, "***" if k == "password" else v) for k, v in _query(url)], safe="*")
    return f"{base}?{redacted}{hash_mark}{fragment}"


CLUSTER_PARAM = "cluster"


def _query(url: str) -> list[tuple[str, str]]:
    return parse_qsl(urlsplit(url).query, keep_blank_values=True)


def is_cluster_url(url: str) -> bool:
    """``True`` when ``url`` asks for a Redis Cluster (``?cluster=true``, also ``1`` or ``yes``)."""
    return any(k == CLUSTER_PARAM and v.lower() in ("true", "1", "yes") for k, v in _query(url))


def cluster_url(url: str) -> str:
    """``url`` marked as a cluster's (``cluster=true`` in its query), for every stage that receives it."""
    if is_cluster_url(url):
        return url
    return urlunsplit(urlsplit(url)._replace(query=urlencode([*_query(url), (CLUSTER_PARAM, "true")])))


def single_node_url(url: str) -> str:
    """``url`` without the ``cluster`` parameter, as redis-py's ``from_url`` expects it."""
    query = urlencode([(k, v) for k, v in _query(url) if k != CLUSTER_PARAM])
    return urlunsplit(urlsplit(url)._replace(query=query))


class RedisConfig(Section):
    url: str | None = Field(
        None,
        description="redis://:PASSWORD@host:port/db (rediss:// with TLS) or unix:///path/redis.sock; None = the "
        "embedded server. Env REDIS_URL overrides; env REDIS_PASSWORD fills in a missing password.",
    )
    embedded_dir: str = Field("redis", description="Embedded server's data folder, relative to data_dir.")
    appendonly: bool = Field(True, description="Embedded server: AOF persistence so a crash loses at most 1 s.")
    cluster: bool = Field(
        False,
        description="url names a node of a Redis Cluster (redis-py RedisCluster); same as ?cluster=true in the "
        "URL. pool.prefix must then be a hash tag such as '{site1}' so that a site's keys share one slot.",
    )

    @property
    def is_cluster(self) -> bool:
        return self.cluster or (self.url is not None and is_cluster_url(self.url))

    @property
    def client_url(self) -> str | None:
        """The URL handed to the stages: :attr:`url`, marked ``cluster=true`` for a cluster."""
        return cluster_url(self.url) if self.url is not None and self.is_cluster else self.url

    @model_validator(mode="after")
    def _cluster_is_on_the_network(self) -> RedisConfig:
        if self.is_cluster and (self.url is None or urlsplit(self.url).scheme == "unix"):
            raise ValueError("a Redis Cluster (redis.cluster: true) needs redis.url = redis://:PASSWORD@node:6379/0 "
                             "(any one node); the embedded server and unix sockets are single nodes")
        return self

    @field_validator("url")
    @classmethod
    def _network_url_needs_password(cls, url: str | None) -> str | None:
        if url is None:
            return None
        parts = urlsplit(url)
        if parts.scheme == "unix":
            return url
        if parts.scheme not in NETWORK_SCHEMES:
            raise ValueError("expected redis://, rediss:// or unix://")
        if not parts.password:
            raise ValueError(PASSWORD_HINT)
        return url

    @field_serializer("url", when_used="json")
    def _hide_password(self, url: str | None) -> str | None:
        """``selfreid config show`` prints the URL without its password."""
        return redact_url(url) if url else url
