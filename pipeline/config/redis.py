"""Where the pool lives: an external Redis (``REDIS_URL``) or the embedded server.

The pool holds images of people, so a Redis reached over the network must require a password:
a ``redis://`` or ``rediss://`` URL without one is a config error. ``REDIS_PASSWORD`` fills in
the password of a URL that has none, so a site file can name the host and keep the secret out.
A ``unix://`` socket needs no password: its file permissions decide who connects (the embedded
server's socket is the owner's only, and it opens no TCP port; see ``redis_conn``).
"""

from __future__ import annotations

from urllib.parse import quote, urlsplit, urlunsplit

from pydantic import Field, field_serializer, field_validator

from selfreid.pipeline.config.base import Section

__all__ = ["RedisConfig", "redact_url", "with_password"]

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
    """``url`` with its password replaced by ``***``, for logs and messages."""
    parts = urlsplit(url)
    if not parts.password:
        return url
    userinfo, hostport = _split_netloc(parts.netloc)
    return urlunsplit(parts._replace(netloc=f"{userinfo.partition(':')[0]}:***@{hostport}"))


class RedisConfig(Section):
    url: str | None = Field(
        None,
        description="redis://:PASSWORD@host:port/db (rediss:// with TLS) or unix:///path/redis.sock; None = the "
        "embedded server. Env REDIS_URL overrides; env REDIS_PASSWORD fills in a missing password.",
    )
    embedded_dir: str = Field("redis", description="Embedded server's data folder, relative to data_dir.")
    appendonly: bool = Field(True, description="Embedded server: AOF persistence so a crash loses at most 1 s.")

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
