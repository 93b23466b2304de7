"""``selfreid embed``, ``match``, ``api``, ``search IMAGE``, ``report`` and ``forget GLOBAL_ID``.

Registered in :mod:`selfreid.pipeline.cli.app`; the work lives in :mod:`~selfreid.pipeline.serving.embed`,
:mod:`~selfreid.pipeline.serving.match`, :mod:`~selfreid.pipeline.serving.api`,
:mod:`~selfreid.pipeline.serving.search` and :mod:`~selfreid.pipeline.serving.privacy`. Without ``redis.url``
(or ``REDIS_URL``) each command starts the embedded Redis in the data directory; Ctrl-C stops a
service cleanly.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from selfreid.pipeline.cli.common import ConfigOption, console, fail, load_or_fail

__all__ = ["embed_command", "match_command", "api_command", "search_command", "report_command", "forget_command"]


def _serve(config: Path | None, run: Callable[[Any, str, threading.Event], Any], what: str, overrides: dict | None = None):
    """Load the config, open Redis, run one service until Ctrl-C; a plugin/config problem is one line."""
    from selfreid.pipeline.runtime.redis_conn import redis_endpoint
    from selfreid.pipeline.runtime.signals import stop_on_signals
    from selfreid.plugins.registry import PluginError

    cfg = load_or_fail(config)
    if overrides:
        cfg = cfg.model_copy(update={"api": cfg.api.model_copy(update=overrides)})
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    stop = threading.Event()
    with redis_endpoint(cfg) as url, stop_on_signals(stop), console.status(f"{what} (Ctrl-C stops)"):
        try:
            return run(cfg, url, stop)
        except PluginError as exc:
            fail(str(exc))


def embed_command(config: ConfigOption = None) -> None:
    """Embed pool crops with the production ONNX model (hot-swapped on promotion) for the matcher."""
    from selfreid.pipeline.serving.embed import run_embedder

    stats = _serve(config, run_embedder, "embedding crops")
    console.print(f"[green]stopped[/]: {stats.embedded} embedded, rejected {dict(stats.rejected) or 'none'}, "
                  f"{stats.swaps} model swap(s), {stats.errors} error(s)", highlight=False)


def match_command(config: ConfigOption = None) -> None:
    """Give each person one global identity across cameras from the stored embeddings."""
    from selfreid.pipeline.serving.match import run_matcher

    stats = _serve(config, run_matcher, "matching identities")
    console.print(f"[green]stopped[/]: {stats.embeddings} embeddings, {stats.new_identities} new identities, "
                  f"{stats.errors} error(s)", highlight=False)


def api_command(
    config: ConfigOption = None,
    host: Annotated[Optional[str], typer.Option(help="Bind address (default: api.host).")] = None,
    port: Annotated[Optional[int], typer.Option(help="Port (default: api.port).", min=1, max=65535)] = None,
) -> None:
    """Serve the search API and the report page (http://HOST:PORT/report)."""
    from selfreid.pipeline.serving.api import run_api

    overrides = {k: v for k, v in {"host": host, "port": port}.items() if v is not None}
    _serve(config, run_api, "serving the API", overrides)


def search_command(
    image: Annotated[Path, typer.Argument(help="Photo or crop of the person (JPEG/PNG).")],
    config: ConfigOption = None,
    top_k: Annotated[Optional[int], typer.Option("--top-k", min=1, help="Identities per person.")] = None,
    min_score: Annotated[Optional[float], typer.Option(help="Cosine a hit needs (default: api.min_score).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the full JSON result (thumbnails included).")] = False,
) -> None:
    """Where else was this person seen? Cameras and times of every matching identity."""
    import redis
    from rich.table import Table

    from selfreid.pipeline.config.redis import redact_url
    from selfreid.pipeline.serving.search import IdentitySearch, SearchError
    from selfreid.pipeline.runtime.redis_conn import redis_endpoint

    if not image.is_file():
        fail(f"image not found: {image}")
    cfg = load_or_fail(config)
    with redis_endpoint(cfg) as url:
        client = redis.Redis.from_url(url)
        try:
            result = IdentitySearch(cfg, client).search_bytes(image.read_bytes(), top_k, min_score)
        except SearchError as exc:
            fail(str(exc))
        except (redis.RedisError, OSError) as exc:
            fail(f"Redis at {redact_url(url)} is not reachable: {exc}")
        finally:
            client.close()
    if as_json:
        typer.echo(json.dumps(result, indent=2))
        return
    table = Table(title=f"{image.name}: {result['message']} (model {result['model_version']})")
    for column in ("person", "identity", "score", "camera", "track", "from", "to"):
        table.add_column(column)
    for p, person in enumerate(result["people"], 1):
        for ident in person["identities"]:
            for s in ident["sightings"]:
                table.add_row(str(p), str(ident["global_id"]), f"{ident['score']:.3f}", s["camera_id"], str(s["track_id"]),
                              s["start_iso"], s["end_iso"])
    console.print(table)


def report_command(
    out: Annotated[Path, typer.Option("--out", "-o", help="Where to write the HTML page.")] = Path("report.html"),
    config: ConfigOption = None,
) -> None:
    """Write the site report (the API's /report page) to one self-contained HTML file: cameras,
    cross-camera identities with thumbnails, a timeline, the self-training curves and gate decisions,
    before/after metrics (after `selfreid demo`) and each stage's throughput."""
    import redis

    from selfreid.pipeline.serving.search import SearchError
    from selfreid.pipeline.runtime.redis_conn import redis_endpoint
    from selfreid.pipeline.report.site import write_report

    cfg = load_or_fail(config)
    with redis_endpoint(cfg) as url:
        client = redis.Redis.from_url(url)
        try:
            data = write_report(cfg, client, out)
        except SearchError as exc:
            fail(str(exc))
        finally:
            client.close()
    console.print(f"[green]wrote[/] {out}: model version {data.version}, {len(data.identities)} identities, "
                  f"{data.across} seen by more than one camera")


def forget_command(
    global_id: Annotated[int, typer.Argument(help="The identity to delete (report page, API or events).")],
    config: ConfigOption = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
) -> None:
    """Delete one person: every crop, embedding, gallery record, thumbnail and event of GLOBAL_ID.

    Run it once the person has left the cameras; a second call reports nothing left. Models already
    trained on the pool are not changed (see selfreid.pipeline.serving.privacy).
    """
    import redis

    from selfreid.pipeline.serving.privacy import forget_identity, identity_tracklets
    from selfreid.pipeline.runtime.redis_conn import open_redis
    from selfreid.plugins.matchers.gallery_store import GalleryStore

    cfg = load_or_fail(config)
    with open_redis(cfg) as client:
        try:
            spans = identity_tracklets(GalleryStore(client, cfg.pool.prefix), global_id)
            if spans and not yes:
                cameras = ", ".join(sorted({s.camera_id for s in spans.values()}))
                typer.confirm(f"Delete everything stored about identity {global_id} ({len(spans)} tracklet(s) "
                              f"on {cameras})?", abort=True)
            report = forget_identity(cfg, client, global_id, spans)
        except (redis.RedisError, OSError) as exc:
            fail(f"Redis is not reachable: {exc}")
    if report.total == 0 and not report.tracklets:
        console.print(f"identity {global_id}: nothing stored (no tracklet, crop, embedding or event left)")
        return
    console.print(f"[green]forgot[/] identity {global_id}: {report.tracklets} tracklet(s); deleted "
                  f"{report.describe()}", highlight=False)
