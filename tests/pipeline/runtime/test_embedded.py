"""The embedded redis-server ends with its owner, even one killed with SIGKILL, and keeps its data;
``selfreid doctor`` reports a server left running without its owner."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis

from selfreid.pipeline.config import parse_config
from selfreid.pipeline.runtime.doctor import run_checks
from selfreid.pipeline.runtime.embedded import running_embedded_server
from selfreid.pipeline.runtime.redis_conn import EmbeddedRedis

# The owner: starts the embedded server on argv[1] (EmbeddedRedis starts its watchdog), writes a key,
# says so, then waits to be killed or, with "exit", kills its watchdog too (as `kill -9` of every
# selfreid process would) and ends at once without any clean-up.
OWNER = """
import os, sys, time
from pathlib import Path
import redis
from selfreid.pipeline.runtime.redis_conn import EmbeddedRedis
server = EmbeddedRedis(Path(sys.argv[1])).start()
client = redis.Redis.from_url(server.url)
client.set("kept", "yes")
client.close()
if sys.argv[2] == "exit":
    server._watch.process.kill()
    server._watch.process.wait()
print("ready", flush=True)
if sys.argv[2] == "exit":
    os._exit(0)
time.sleep(600)
"""


def start_owner(folder: Path, mode: str) -> subprocess.Popen:
    owner = subprocess.Popen([sys.executable, "-c", OWNER, str(folder), mode], stdout=subprocess.PIPE, text=True)
    assert owner.stdout is not None and owner.stdout.readline().strip() == "ready"
    return owner


def wait_for(predicate, timeout_s: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def read_back(folder: Path) -> bytes | None:
    server = EmbeddedRedis(folder).start()
    try:
        client = redis.Redis.from_url(server.url)
        value = client.get("kept")
        client.close()
        return value
    finally:
        server.stop()


@pytest.mark.reliability("fault", case="`kill -9` of the process that started the embedded Redis (e.g. `selfreid run`)",
                         expected="the redis-server saves and exits on its own; the next start finds the data")
def test_embedded_server_ends_with_its_killed_owner(observe, tmp_path) -> None:
    folder = tmp_path / "redis"
    owner = start_owner(folder, "wait")
    server = running_embedded_server(folder)
    assert server is not None
    owner.send_signal(signal.SIGKILL)
    owner.wait()
    ended = wait_for(lambda: running_embedded_server(folder) is None)
    value = read_back(folder)
    observe(f"redis-server pid {server.pid} {'ended' if ended else 'still running'} after its owner's SIGKILL; "
            f"after a restart the key reads {value!r}")
    assert ended and value == b"yes"


@pytest.mark.reliability("fault", case="an embedded redis-server left running by an owner that died without clean-up "
                         "together with its watchdog (e.g. `kill -9` of every selfreid process)",
                         expected="`selfreid doctor` warns, naming the pid and how to stop it; the data is kept")
def test_doctor_reports_a_left_server(observe, tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("REDIS_URL", raising=False)
    cfg = parse_config({"data_dir": str(tmp_path)})
    folder = cfg.path(cfg.redis.embedded_dir)
    start_owner(folder, "exit").wait()
    server = running_embedded_server(folder)
    assert server is not None
    try:
        (check,) = [c for c in run_checks(cfg) if c.name == "embedded redis"]
        observe(f"doctor: {check.status}: {check.detail}")
        assert check.status == "warn" and f"pid {server.pid}" in check.detail and "kill -TERM" in check.detail
    finally:
        with contextlib.suppress(redis.ConnectionError):  # the server closes the connection as it stops
            redis.Redis(unix_socket_path=server.socket_file).shutdown(save=True)
        assert wait_for(lambda: running_embedded_server(folder) is None)
    assert read_back(folder) == b"yes"
