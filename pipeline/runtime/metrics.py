"""Prometheus metrics for the long-running stages, fed from plain counters.

A stage keeps its hot-path counters as plain Python ints and hands a snapshot to
:meth:`StageMetrics.update` every few seconds (with its status report), so no Prometheus
lock is taken per frame or per crop. Counters are advanced by the difference since the
previous snapshot; gauges are set; states become a Prometheus ``Enum``.

Each :class:`StageMetrics` owns its own ``CollectorRegistry`` (several stages, or several runs in
one test process, never clash); :func:`start_metrics_server` serves one or more of them.

Example:
    >>> m = StageMetrics("ingest", counters={"frames": "Frames processed"}, gauges={"fps": "Frames/s"})
    >>> m.update({"frames": 10, "fps": 9.5}, camera="cam1")
    >>> b'selfreid_ingest_frames_total{camera="cam1"} 10.0' in m.exposition()
    True
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping, Sequence
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Enum, Gauge, generate_latest
from prometheus_client.registry import Collector

__all__ = ["StageMetrics", "MetricsServer", "start_metrics_server"]


class StageMetrics:
    """Counters, gauges and states of one stage, all with the same labels (default: ``camera``).

    Names are ``selfreid_{stage}_{name}`` (counters get Prometheus' ``_total`` suffix).
    """

    def __init__(
        self,
        stage: str,
        counters: Mapping[str, str] = {},  # noqa: B006 - read only
        gauges: Mapping[str, str] = {},  # noqa: B006
        states: Mapping[str, tuple[str, Sequence[str]]] = {},  # noqa: B006 - name -> (help, states)
        labels: Sequence[str] = ("camera",),
    ) -> None:
        self.registry = CollectorRegistry()
        self.labels = tuple(labels)

        def name(n: str) -> str:
            return f"selfreid_{stage}_{n}"

        self._counters = {
            n: Counter(name(n), h, self.labels, registry=self.registry) for n, h in counters.items()
        }
        self._gauges = {n: Gauge(name(n), h, self.labels, registry=self.registry) for n, h in gauges.items()}
        self._states = {
            n: Enum(name(n), h, self.labels, states=list(s), registry=self.registry)
            for n, (h, s) in states.items()
        }
        self._last: dict[tuple[str, tuple[str, ...]], float] = {}
        self._lock = threading.Lock()

    def update(self, values: Mapping[str, float | int | str | bool], **labels: str) -> None:
        """Record one snapshot: counter values are cumulative totals; unknown names are ignored."""
        key = tuple(labels[label] for label in self.labels)
        with self._lock:
            for n, value in values.items():
                if n in self._counters:
                    delta = float(value) - self._last.get((n, key), 0.0)
                    if delta > 0:
                        self._metric(self._counters[n], key).inc(delta)
                    self._last[(n, key)] = max(float(value), self._last.get((n, key), 0.0))
                elif n in self._gauges:
                    self._metric(self._gauges[n], key).set(float(value))
                elif n in self._states:
                    self._metric(self._states[n], key).state(str(value))

    @staticmethod
    def _metric(metric, key: tuple[str, ...]):
        return metric.labels(*key) if key else metric

    def exposition(self) -> bytes:
        """The text format Prometheus scrapes."""
        return generate_latest(self.registry)


class _Union(Collector):
    """Several registries served as one."""

    def __init__(self, registries: Iterable[CollectorRegistry]) -> None:
        self.registries = list(registries)

    def collect(self):
        for registry in self.registries:
            yield from registry.collect()


class MetricsServer:
    """A running ``/metrics`` HTTP endpoint; ``port`` is the bound port (useful with port 0)."""

    def __init__(self, server: WSGIServer, thread: threading.Thread) -> None:
        self._server, self._thread = server, thread
        self.port: int = server.server_port

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def start_metrics_server(port: int, *metrics: StageMetrics, addr: str = "0.0.0.0") -> MetricsServer:
    """Serve the given stages' metrics on ``addr:port`` (``port=0``: any free port) in a daemon thread."""
    from prometheus_client import start_http_server

    registry = CollectorRegistry()
    registry.register(_Union(m.registry for m in metrics))
    server, thread = start_http_server(port, addr=addr, registry=registry)
    return MetricsServer(server, thread)
