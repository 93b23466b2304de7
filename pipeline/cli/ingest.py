"""``selfreid ingest``: run the detection stage with a live per-camera status table.

Registered in :mod:`selfreid.pipeline.cli.app`; the work itself is :func:`selfreid.pipeline.ingest.service.run_ingest`.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from selfreid.pipeline.cli.common import console, fail, load_or_fail

if TYPE_CHECKING:
    from rich.console import Group

    from selfreid.pipeline.ingest.service import CameraStats, PoolStats

__all__ = ["ingest_command", "status_table"]

log = logging.getLogger(__name__)


def status_table(stats: dict[str, CameraStats], pool: PoolStats, title: str = "selfreid ingest") -> Group:
    """One row per camera (state, fps, counters), the pool's state, then each camera's last problem."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    styles = {
        "running": "green",
        "finished": "blue",
        "failed": "red",
        "reconnecting": "yellow",
        "connecting": "yellow",
    }
    redis_state = "[green]up[/]" if pool.connected else f"[red]down[/] ({pool.last_error})"
    caption = (
        f"crops = written/accepted, drops = frames/crops. Redis {redis_state}: "
        f"{pool.written} written, {pool.queued} queued, {pool.dropped} dropped"
    )
    table = Table(
        title=title,
        caption=caption,
        box=None,
        caption_justify="left",
        padding=(0, 1, 0, 0),  # one space between columns: 80-column logs fit
    )
    for column in ("camera", "state", "fps", "frames", "people", "crops", "drops", "recon", "errors"):
        table.add_column(column, justify="left" if column in ("camera", "state") else "right", no_wrap=True)
    for cam_id, s in stats.items():
        state = f"[{styles.get(s.state, 'white')}]{s.state}[/]"
        counts = (
            s.frames,
            s.detections,
            f"{s.written}/{s.crops}",
            f"{s.frame_drops}/{s.crop_drops}",
            s.reconnects,
            s.errors,
        )
        table.add_row(cam_id, state, f"{s.fps:.1f}", *map(str, counts))
    problems = [
        Text(f"{cam_id}: {s.last_error}", style="yellow") for cam_id, s in stats.items() if s.last_error
    ]
    return Group(table, *problems)


class _Termination(threading.Event):
    """Set by Ctrl-C / SIGTERM (:func:`~selfreid.pipeline.runtime.signals.stop_on_signals`): it ends the
    command. Each ``run_ingest`` call gets its own stop flag from :meth:`next_run`; a signal sets it too,
    whereas a change of this replica's camera share (``SELFREID_INGEST_SHARD=auto``) sets only that
    one, and the command then runs ingest again on its new share in this process (no process restart:
    under Kubernetes one would cost a back-off)."""

    def __init__(self) -> None:
        super().__init__()
        self._run = threading.Event()

    def next_run(self) -> threading.Event:
        """The stop flag of the next ``run_ingest`` call; already set when the command is ending."""
        self._run = threading.Event()
        if self.is_set():  # a signal came first: that run ends at once
            self._run.set()
        return self._run

    def set(self) -> None:
        super().set()
        self._run.set()


def ingest_command(
    config: Annotated[
        Path, typer.Option("--config", "-c", help="Site YAML with ingest.cameras (see configs/).")
    ],
    max_frames: Annotated[
        int | None,
        typer.Option("--max-frames", min=1, help="Stop each camera after this many processed frames."),
    ] = None,
) -> None:
    """Detect, track and crop people on every configured camera into the Redis pool.

    Shows a live table per camera (fps, detections, crops written, drops, reconnects, state).
    Ctrl-C stops cleanly: buffered crops are written to Redis before exiting. Without
    redis.url (or REDIS_URL), an embedded Redis is started in the data directory. With
    SELFREID_INGEST_SHARD=auto (replicas share the cameras), a new share of the cameras restarts
    ingest inside this process.
    """
    import redis
    from rich.live import Live
    from rich.text import Text

    from selfreid.pipeline.config.redis import redact_url
    from selfreid.pipeline.ingest.service import run_ingest
    from selfreid.pipeline.orchestration.run import resolve_sample_data
    from selfreid.pipeline.runtime.redis_conn import ping, redis_endpoint
    from selfreid.pipeline.runtime.signals import stop_on_signals
    from selfreid.pipeline.runtime.status import stage_startup
    from selfreid.plugins.registry import PluginError

    cfg = resolve_sample_data(load_or_fail(config))
    if not cfg.ingest.cameras:
        fail(f"{config}: no cameras configured (add entries under ingest.cameras)")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    terminated = _Termination()
    written = 0
    with redis_endpoint(cfg) as url, stop_on_signals(terminated):
        if problem := ping(url):
            held = "crops are held in memory (oldest dropped beyond pool.params.max_queue) until it does"
            console.print(
                f"[yellow]warning:[/] Redis at {redact_url(url)} does not answer ({problem}); {held}", highlight=False
            )
        starting = Text(f"starting: {stage_startup('ingest', cfg)} ...", style="yellow")
        with Live(starting, console=console, refresh_per_second=4, transient=False) as live:
            while True:
                run = terminated.next_run()
                try:
                    stats = run_ingest(
                        cfg, url, run, max_frames, on_status=lambda s, p: live.update(status_table(s, p))
                    )
                except (PluginError, redis.AuthenticationError) as exc:
                    fail(str(exc))
                written += sum(s.written for s in stats.values())
                if terminated.is_set() or not run.is_set():
                    break  # a signal, or every camera ended (or --max-frames)
                log.info("ingest: this replica's camera share changed; running ingest again on the new share")
    failed = [f"{cam}: {s.last_error}" for cam, s in stats.items() if s.state == "failed"]
    if failed and len(failed) == len(stats):
        fail("every camera failed: " + "; ".join(failed), code=1)
    console.line()
    console.print(f"[green]done[/]: {written} crops written from {len(stats)} camera(s)", highlight=False)

