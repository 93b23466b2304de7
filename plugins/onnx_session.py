"""onnxruntime session options shared by the plugins that run ONNX models on the CPU (detector, embedder).

Two defaults differ from onnxruntime's own, for a box where every pipeline stage shares the cores:
idle worker threads do not spin-wait (spinning burns the cores that decoding, the embedder and the
matcher need; docs/scaling.md measured it), and the intra-op threads are the cores this process may
run on (its CPU affinity, e.g. a container's cpuset), not the machine's count.
"""

from __future__ import annotations

import os
from typing import Any

__all__ = ["THREADS_HELP", "session_options", "usable_cores"]

THREADS_HELP = ("onnxruntime intra-op threads; None = the cores this process may run on (its CPU affinity, e.g. a "
                "container's cpuset), not the machine's count.")
"""The description of a plugin's ``threads`` setting, the same for every plugin that uses :func:`session_options`."""


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def session_options(threads: int | None, spin: bool = False) -> Any:
    """``onnxruntime.SessionOptions`` with ``threads`` intra-op threads (None: :func:`usable_cores`), one
    inter-op thread, and idle-thread spinning on or off."""
    import onnxruntime as ort  # imported here: the plugins' extras may be missing where this module is not used

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or usable_cores()
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    return options
