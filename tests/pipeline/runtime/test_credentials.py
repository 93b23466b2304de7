"""A password that Redis refuses ends every stage at once with one clear error (no endless retry);
a Redis that is down is not mistaken for one; no message shows a password."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from selfreid.pipeline.config import AppConfig, parse_config
from selfreid.pipeline.config.redis import redact_url
from selfreid.pipeline.ingest.service import run_ingest
from selfreid.pipeline.runtime.redis_conn import EmbeddedRedis, check_credentials, connect
from selfreid.pipeline.serving.api import run_api
from selfreid.pipeline.serving.embed import run_embedder
from selfreid.pipeline.serving.match import run_matcher

RIGHT, WRONG = "right-one", "wrong-one"
GIVE_UP_S = 60.0  # a stage that retries instead of failing is stopped after this long (and the test fails)


@pytest.fixture(scope="module")
def locked_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRedis]:
    """A private embedded server that requires the password ``RIGHT``."""
    server = EmbeddedRedis(tmp_path_factory.mktemp("locked"), appendonly=False).start()
    with connect(server.url) as admin:
        admin.config_set("requirepass", RIGHT)
    yield server
    with connect(f"{server.url}?password={RIGHT}") as admin:
        admin.config_set("requirepass", "")
    server.stop()


def _cfg(tmp_path: Path, shared_data: Path) -> AppConfig:
    clip = shared_data / "pets09-s2l1" / "vtest.avi"
    return parse_config({"data_dir": str(tmp_path), "pool": {"prefix": "cred"},
                         "ingest": {"cameras": [{"id": "a", "uri": str(clip)}], "metrics_port": None}})


STAGES: dict[str, Callable[[AppConfig, str, threading.Event], object]] = {
    "ingest": run_ingest, "embedder": run_embedder, "matcher": run_matcher, "api": run_api,
}


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_a_refused_password_ends_the_stage_at_once(stage, locked_server, tmp_path, shared_data) -> None:
    stop = threading.Event()
    give_up = threading.Timer(GIVE_UP_S, stop.set)  # a stage that retries returns when stopped: no exception
    give_up.start()
    try:
        with pytest.raises(redis.AuthenticationError, match="Redis refused the password of redis.url") as error:
            STAGES[stage](_cfg(tmp_path, shared_data), f"{locked_server.url}?password={WRONG}", stop)
    finally:
        give_up.cancel()
    assert not stop.is_set() and WRONG not in str(error.value)
    with connect(f"{locked_server.url}?password={RIGHT}") as admin:
        assert admin.keys("cred:*") == []  # it stopped before writing anything


def test_the_right_password_or_a_redis_that_is_down_passes(locked_server, tmp_path) -> None:
    with connect(f"{locked_server.url}?password={RIGHT}") as client:
        check_credentials(client)
    with connect(f"unix://{tmp_path}/nothing.sock") as client:
        check_credentials(client)  # an outage: the stages wait it out


@pytest.mark.parametrize(("url", "shown"), [
    ("redis://:s3cret@redis:6379/0", "redis://:***@redis:6379/0"),
    ("rediss://app:s3cret@redis:6380/0?cluster=true", "rediss://app:***@redis:6380/0?cluster=true"),
    ("unix:///run/redis.sock?db=1&password=s3cret%26more", "unix:///run/redis.sock?db=1&password=***"),
    ("redis://:s3cret@redis:6379/0?password=s3cret", "redis://:***@redis:6379/0?password=***"),
    ("unix:///run/redis.sock?db=1", "unix:///run/redis.sock?db=1"),
])
def test_redact_url_hides_every_password(url: str, shown: str) -> None:
    assert redact_url(url) == shown
