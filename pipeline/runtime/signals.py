"""The stop request every long-running service polls, and Ctrl-C / SIGTERM as one."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Protocol

__all__ = ["StopFlag", "stop_on_signals"]


class StopFlag(Protocol):
    """What a service needs of its stop request: ``threading.Event`` (threads, tests) and
    ``multiprocessing.Event`` (``selfreid run``'s stage processes) both fit."""

    def is_set(self) -> bool: ...

    def set(self) -> None: ...

    def wait(self, timeout: float | None = None) -> bool: ...


@contextmanager
def stop_on_signals(event: threading.Event) -> Iterator[None]:
    """While active, Ctrl-C and SIGTERM set ``event`` (a second Ctrl-C still interrupts) so that
    a service can flush and acknowledge before it returns. A no-op outside the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        if event.is_set() and signum == signal.SIGINT:
            raise KeyboardInterrupt
        event.set()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
