"""``selfreid demo`` and ``selfreid run`` (every stage on one machine), ``selfreid health`` (container healthchecks).

Registered in :mod:`selfreid.pipeline.cli.app`; the work itself lives in
:mod:`selfreid.pipeline.orchestration.run` and :mod:`selfreid.pipeline.runtime.status`.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

import typer

from selfreid.pipeline.cli.common import console, fail, load_or_fail, output_file

__all__ = ["check_health", "demo_command", "health_command", "probe_http", "run_command"]

SiteConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config",
        "-c",
        envvar="SELFREID_CONFIG",
        help="Site YAML (see configs/); env SELFREID_CONFIG. Omitted: the built-in defaults.",
    ),
]


def check_health(
    status: dict[str, dict[str, Any]], stage: str, max_age_s: float, instance: str | None = None,
    now: float | None = None,
) -> tuple[bool, str]:
    """Is ``stage`` alive according to the status entries of :func:`~selfreid.pipeline.runtime.status.read_status`?

    Healthy when at least one instance (or the given ``instance``) reported within ``max_age_s``
    and does not report ``state: error``. Returns ``(healthy, one-line reason)``.
    """
    now = time.time() if now is None else now
    wanted = [
        (name, fields)
        for name, fields in status.items()
        if name.split(":", 1)[0] == stage and (instance is None or name.split(":", 1)[-1] == instance)
    ]
    if not wanted:
        known = sorted({name.split(":", 1)[0] for name in status}) or ["none"]
        who = f"{stage}:{instance}" if instance else stage
        return False, f"{who}: no status in Redis (stages reporting: {', '.join(known)})"
    lines = []
    for name, fields in wanted:
        age = now - float(fields.get("updated", 0.0))
        state = str(fields.get("state", "running"))
        if age <= max_age_s and state != "error":
            return True, f"{name} healthy: {state}, reported {age:.0f} s ago"
        why = f"state {state}: {fields.get('error', '')}".strip(": ") if state == "error" else f"silent for {age:.0f} s"
        lines.append(f"{name} {why}")
    return False, "; ".join(lines)


def probe_http(url: str, timeout_s: float = 5.0) -> tuple[bool, str]:
    """``(True, ...)`` when ``url`` answers 2xx within ``timeout_s``."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:  # noqa: S310 - operator-given URL
            return 200 <= response.status < 300, f"{url} answered {response.status}"
    except urllib.error.HTTPError as exc:
        return False, f"{url} answered {exc.code}"
    except (urllib.error.URLError, OSError, ValueError) as exc:
        return False, f"{url} unreachable: {getattr(exc, 'reason', exc)}"


def health_command(
    stage: Annotated[str, typer.Argument(help="Stage name as it reports its status: ingest, embedder, matcher, train, api.")],
    config: SiteConfigOption = None,
    max_age: Annotated[float, typer.Option("--max-age", min=0.1, help="Seconds; an older status report = unhealthy.")] = 60.0,
    instance: Annotated[
        str | None, typer.Option("--instance", help="Only this instance (default: any instance of the stage).")
    ] = None,
    http: Annotated[
        str | None, typer.Option("--http", help="Probe this URL instead (2xx = healthy), e.g. the API's /health.")
    ] = None,
) -> None:
    """Exit 0 when STAGE reported a fresh status in Redis, 1 otherwise (Docker healthchecks).

    Needs an external Redis (REDIS_URL or redis.url): the embedded server is private to `selfreid run`.
    """
    import redis

    from selfreid.pipeline.runtime.status import read_status

    if http:
        healthy, reason = probe_http(http)
        console.print(f"[{'green' if healthy else 'red'}]{'healthy' if healthy else 'unhealthy'}[/] {stage}: {reason}",
                      highlight=False)
        raise typer.Exit(0 if healthy else 1)
    cfg = load_or_fail(config, data_dir=False)
    if not cfg.redis.url:
        fail("health needs the pool's Redis: set REDIS_URL or redis.url in the config")
    try:
        client = redis.Redis.from_url(cfg.redis.url, socket_connect_timeout=3, socket_timeout=3)
        status = read_status(client, cfg.pool.prefix)
        client.close()
    except (redis.RedisError, OSError) as exc:
        console.print(f"[red]unhealthy[/] redis unreachable: {exc}", highlight=False)
        raise typer.Exit(1) from None
    healthy, reason = check_health(status, stage, max_age, instance)
    console.print(f"[{'green' if healthy else 'red'}]{'healthy' if healthy else 'unhealthy'}[/] {reason}", highlight=False)
    raise typer.Exit(0 if healthy else 1)


def run_command(
    config: SiteConfigOption = None,
    duration: Annotated[
        float | None, typer.Option("--duration", min=0.1, help="Stop after this many seconds.")
    ] = None,
    until_idle: Annotated[
        bool,
        typer.Option("--until-idle", help="Stop once every camera has ended and the embedder drained the pool (files)."),
    ] = False,
    train_once: Annotated[
        bool,
        typer.Option("--train-once", help="Run one self-training cycle after ingest ends, instead of the schedule."),
    ] = False,
    max_frames: Annotated[
        int | None, typer.Option("--max-frames", min=1, help="Ingest at most this many frames per camera.")
    ] = None,
    stages: Annotated[
        str | None, typer.Option("--stages", help="Comma-separated subset, e.g. ingest,embedder (default: all).")
    ] = None,
) -> None:
    """Run every stage on this machine with the embedded Redis (or REDIS_URL), with a live status view.

    Ctrl-C (or SIGTERM) stops the stages in order: ingest, embedder (drains the pool), matcher,
    trainer, api. Exits non-zero when a stage crashed.
    """
    from selfreid.pipeline.orchestration.run import RunOptions, StageError, run_local

    cfg = load_or_fail(config, data_dir=True)  # stage logs live there even with an external Redis
    options = RunOptions(
        duration_s=duration,
        until_idle=until_idle,
        train_once=train_once,
        max_frames=max_frames,
        stages=tuple(s.strip() for s in stages.split(",")) if stages else None,
    )
    try:
        code = run_local(cfg, options, console)
    except StageError as exc:
        fail(str(exc))
    raise typer.Exit(code)


def demo_command(
    config: Annotated[
        Path, typer.Option("--config", "-c", help="Site YAML of the demo (three sample cameras, a short CPU cycle).")
    ] = Path("configs/demo.yaml"),
    report: Annotated[
        Path | None, typer.Option("--report", "-o", help="Where to write the HTML report (default: DATA_DIR/report.html).")
    ] = None,
    keep: Annotated[
        bool, typer.Option("--keep", help="Keep the previous run's pool and models (default: start from empty ones).")
    ] = False,
    max_frames: Annotated[
        int | None, typer.Option("--max-frames", min=1, help="Ingest at most this many frames per camera (quicker).")
    ] = None,
    evaluate: Annotated[
        bool, typer.Option("--evaluate/--no-evaluate", help="Measure before/after adaptation on labelled data.")
    ] = True,
) -> None:
    """The whole product on the bundled real data, ending in a report page.

    Ingests the sample videos as cameras into the embedded Redis, embeds and matches them into global
    identities, runs one self-training cycle on the unlabelled pool (train, export, gate, promote),
    measures the trained version against its parent on labelled data (Con-ReID held-out ids, IDF1 on
    the vtest virtual cameras) and writes one self-contained HTML page: cameras, cross-camera
    identities, timeline, training curves, the gate's decision, before/after, throughput.
    About 5 minutes on 2 CPU cores. `selfreid api` serves the same page at /report.
    """
    from selfreid.pipeline.orchestration.demo import DemoError, DemoOptions, run_demo
    from selfreid.pipeline.orchestration.run import StageError

    cfg = load_or_fail(config, data_dir=True)
    if report is not None:
        output_file(report, "--report")
    options = DemoOptions(report=report, fresh=not keep, max_frames=max_frames, evaluate=evaluate)
    try:
        run_demo(cfg, options, console)
    except (DemoError, StageError) as exc:
        fail(str(exc), code=1)
