"""``selfreid embed``, ``match``, ``api``, ``search IMAGE``, ``report`` and ``forget GLOBAL_ID``.

Registered in :mod:`selfreid.pipeline.cli.app`; the work lives in :mod:`~selfreid.pipeline.serving.embed`,
:mod:`~selfreid.pipeline.serving.match`, :mod:`~selfreid.pipeline.serving.api`,
:mod:`~selfreid.pipeline.serving.search` and :mod:`~selfreid.pipeline.serving.privacy`. Without ``redis.url``
(or ``REDIS_URL``) each command starts the embedded Redis in the data directory; Ctrl-C stops a
service cleanly.
"""

from __future__ import annotations

import functools
import json
import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from selfreid.pipeline.cli.common import ConfigOption, console, fail, load_or_fail, output_file

__all__ = ["embed_command", "match_command", "api_command", "search_command", "search_lines", "report_command",
           "forget_command"]


def _serve(config: Path | None, run: Callable[[Any, str, threading.Event], Any], what: str, overrides: dict | None = None):
    """Load the config, open Redis, run one service until Ctrl-C; a plugin/config problem, a taken port
    or a refused Redis password is one line."""
    import redis

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
        except (PluginError, redis.AuthenticationError) as exc:
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
    host: Annotated[str | None, typer.Option(help="Bind address (default: api.host).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default: api.port).", min=1, max=65535)] = None,
) -> None:
    """Serve the search API and the report page (http://HOST:PORT/report).

    Prints where it listens and whether a token is required; a port already in use is an error (exit 2).
    """
    from selfreid.pipeline.serving.api import ApiError, run_api

    overrides = {k: v for k, v in {"host": host, "port": port}.items() if v is not None}
    announce = functools.partial(console.print, highlight=False, markup=False)
    try:
        _serve(config, functools.partial(run_api, announce=announce), "serving the API", overrides)
    except ApiError as exc:
        fail(str(exc))


def search_command(
    image: Annotated[Path, typer.Argument(help="Photo or crop of the person (JPEG/PNG).")],
    config: ConfigOption = None,
    top_k: Annotated[int | None, typer.Option("--top-k", min=1, max=100, help="Identities per person.")] = None,
    min_score: Annotated[float | None, typer.Option(
        min=-1.0, max=1.0, help="Cosine a hit needs (default: api.min_score).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the full JSON result (thumbnails included).")] = False,
) -> None:
    """Where else was this person seen? Cameras and times of every matching identity.

    A photo wider than tall goes through the person detector: every person found is listed with the
    closest identity and its score, matched or not. Plain lines on stdout (never cut to the width).
    """
    import redis

    from selfreid.pipeline.config.redis import redact_url
    from selfreid.pipeline.runtime.redis_conn import connect, redis_endpoint
    from selfreid.pipeline.serving.search import IdentitySearch, SearchError

    if image.is_dir():
        fail(f"{image} is a folder; give one image file")
    if not image.is_file():
        fail(f"image not found: {image}")
    cfg = load_or_fail(config)
    with redis_endpoint(cfg) as url:
        client = connect(url)
        try:
            result = IdentitySearch(cfg, client).search_bytes(image.read_bytes(), top_k, min_score)
        except SearchError as exc:
            fail(f"{image}: {exc}")
        except (redis.RedisError, OSError) as exc:
            fail(f"Redis at {redact_url(url)} is not reachable: {exc}")
        finally:
            client.close()
    typer.echo(json.dumps(result, indent=2) if as_json else "\n".join(search_lines(image.name, result)))


def search_lines(name: str, result: dict[str, Any]) -> list[str]:
    """The search result as plain lines: the outcome, then per person where it is, the closest
    identity and every sighting of each match (full ISO times, nothing cut to a width)."""
    lines = [f"{name} (model version {result['model_version']}): {result['message']}"]
    for p, person in enumerate(result["people"], 1):
        if not person["identities"]:
            lines.append(f"person {p} (box {person['box']}): closest identity {person['best_global_id']} scores "
                         f"{person['best_score']:.3f}, below {result['min_score']:.2f}")
            continue
        lines.append(f"person {p} (box {person['box']}): {len(person['identities'])} identity(ies) scoring "
                     f"{result['min_score']:.2f} or more")
        for ident in person["identities"]:
            lines.append(f"  identity {ident['global_id']}, score {ident['score']:.3f}, cameras {', '.join(ident['cameras'])}")
            lines += [f"    camera {s['camera_id']} track {s['track_id']}: {s['start_iso']} to {s['end_iso']}"
                      + (f" (recording {s['recording_from']} to {s['recording_to']})" if s["recording_from"] else "")
                      for s in ident["sightings"]]
    return lines


def report_command(
    out: Annotated[Path, typer.Option("--out", "-o", help="Where to write the HTML page.")] = Path("report.html"),
    config: ConfigOption = None,
) -> None:
    """Write the site report (the API's /report page) to one self-contained HTML file: cameras,
    cross-camera identities with thumbnails, a timeline, the self-training curves and gate decisions,
    before/after metrics (after `selfreid demo`) and each stage's throughput."""
    import redis

    from selfreid.pipeline.report.site import write_report
    from selfreid.pipeline.runtime.redis_conn import connect, redis_endpoint
    from selfreid.pipeline.serving.search import SearchError

    cfg = load_or_fail(config)
    output_file(out, "--out")
    with redis_endpoint(cfg) as url:
        client = connect(url)
        try:
            data = write_report(cfg, client, out)
        except SearchError as exc:
            fail(str(exc))
        except redis.RedisError as exc:
            fail(f"Redis is not reachable: {exc}")
        except OSError as exc:
            fail(f"--out {out} cannot be written: {exc.strerror or exc}")
        finally:
            client.close()
    console.print(f"[green]wrote[/] {out}: model version {data.version}, {len(data.identities)} identities, "
                  f"{data.across} seen by more than one camera")


def forget_command(
    global_id: Annotated[int, typer.Argument(min=1, help="The identity to delete (report page, API or events).")],
    config: ConfigOption = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
) -> None:
    """Delete one person: every crop, embedding, gallery record, thumbnail and event of GLOBAL_ID.

    Run it once the person has left the cameras; a second call reports nothing left (exit 0). An id
    this site never assigned is an error (exit 2): most likely a typo. Models already trained on the
    pool are not changed (see selfreid.pipeline.serving.privacy).
    """
    import redis

    from selfreid.pipeline.runtime.redis_conn import open_redis
    from selfreid.pipeline.serving.privacy import forget_identity, identity_tracklets
    from selfreid.plugins.matchers.gallery_store import GalleryStore

    cfg = load_or_fail(config)
    with open_redis(cfg) as client:
        try:
            store = GalleryStore(client, cfg.pool.prefix)
            spans = identity_tracklets(store, global_id)
            assigned = int(client.get(store.key("next_gid")) or 0)  # ids are 1..assigned, never reused
            if not spans and global_id > assigned:
                fail(f"identity {global_id} was never assigned on this site "
                     f"({f'ids so far: 1 to {assigned}' if assigned else 'no identity yet'}); nothing deleted")
            if spans and not yes:
                cameras = ", ".join(sorted({s.camera_id for s in spans.values()}))
                typer.confirm(f"Delete everything stored about identity {global_id} ({len(spans)} tracklet(s) "
                              f"on {cameras})?", abort=True)
            report = forget_identity(cfg, client, global_id, spans)
        except (redis.RedisError, OSError) as exc:
            fail(f"Redis is not reachable: {exc}")
    if report.total == 0 and not report.tracklets:
        console.print(f"identity {global_id}: nothing stored any more (already forgotten, or expired by the "
                      "retention); nothing deleted", highlight=False)
        return
    console.print(f"[green]forgot[/] identity {global_id}: {report.tracklets} tracklet(s); deleted "
                  f"{report.describe()}", highlight=False)
