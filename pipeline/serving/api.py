"""The HTTP API: search by image, identities, health, and a report page people can read.

Endpoints (``create_app(cfg, redis_url)``):

* ``POST /search?top_k=5&min_score=0.8``: body = the image bytes (JPEG/PNG), e.g.
  ``curl --data-binary @person.jpg -H 'Content-Type: image/jpeg' http://127.0.0.1:8000/search``.
  Returns, per person in the image, the identities above ``min_score`` with every sighting (camera,
  start/end times, base64 JPEG thumbnail). 400 for an undecodable or empty upload, 413 for one over
  ``api.max_upload_mb``, 503 while no production model exists.
* ``GET /identities``: every identity of the served model version's gallery (JSON).
* ``GET /health``: Redis reachable, model version, execution provider (503 when Redis is down).
* ``GET /report`` (and ``/``): the site report (:mod:`selfreid.pipeline.report.site`): cameras,
  cross-camera identities, timeline, self-training curves and gate decisions, before/after metrics,
  throughput; plus an upload form for the search.
"""

from __future__ import annotations

import threading
from typing import Any

import redis
from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse

from selfreid.pipeline.serving.api_auth import require_token, warn_if_exposed
from selfreid.pipeline.config import AppConfig
from selfreid.pipeline.serving.embed import StopFlag
from selfreid.pipeline.serving.search import IdentitySearch, SearchError

__all__ = ["create_app", "render_report", "report_identities", "run_api"]


def report_identities(search: IdentitySearch) -> tuple[str, list, str]:
    """(version, identities, note) for the report: the served version's gallery, or, while that one
    is still empty (a fresh promotion starts a fresh gallery, see the matcher), the newest version
    that has identities, with a note saying so."""
    search.refresh_model()
    served = search.embedder.model_version or ""
    identities = search.identities(served) if served else []
    if identities:
        return served, identities, ""
    for version in reversed(list(search.gallery.versions())):
        if version != served and (older := search.identities(version)):
            note = (f"Model version {served} serves now; its gallery is still empty, so this page shows version {version}'s."
                    if served else f"No model could be loaded; this page shows the gallery of version {version}.")
            return version, older, note
    return served, [], ""


def render_report(search: IdentitySearch) -> str:
    """The site report page (HTML; :mod:`selfreid.pipeline.report.site`)."""
    from selfreid.pipeline.report.site import collect_report, render_html

    return render_html(collect_report(search.cfg, search))


def create_app(cfg: AppConfig, redis_url: str, embedder=None, detector=None) -> FastAPI:
    """The FastAPI application. ``embedder``/``detector`` override the configured plugins (tests, tools)."""
    client = redis.Redis.from_url(redis_url, socket_timeout=5)
    search = IdentitySearch(cfg, client, embedder=embedder, detector=detector)
    lock = threading.Lock()  # the search object (model swap, gallery cache) is used by one request at a time
    app = FastAPI(title="selfreid", description="Where else was this person seen?")
    require_token(app, cfg.api.token)  # every endpoint but /health, when api.token is set

    def locked(fn, *args):
        with lock:
            return fn(*args)

    @app.get("/health")
    def health() -> JSONResponse:
        try:
            client.ping()
            ok = True
        except (redis.RedisError, OSError):
            ok = False
        body = {
            "status": "ok" if ok else "redis unavailable",
            "redis": ok,
            "model_version": search.embedder.model_version or None,
            "provider": getattr(search.embedder, "provider", None),
        }
        return JSONResponse(body, status_code=200 if ok else 503)

    @app.post("/search")
    async def search_endpoint(
        request: Request,
        top_k: int | None = Query(None, ge=1, le=100),
        min_score: float | None = Query(None, ge=-1, le=1),
    ) -> dict[str, Any]:
        data = await _read_upload(request, cfg.api.max_upload_mb)
        if not data:
            raise HTTPException(400, "empty upload: send the image bytes as the request body")
        try:
            return await run_in_threadpool(locked, search.search_bytes, data, top_k, min_score)
        except SearchError as exc:
            raise HTTPException(exc.status, str(exc)) from None

    @app.get("/identities")
    async def identities() -> dict[str, Any]:
        found = await run_in_threadpool(locked, search.identities)
        return {"model_version": search.embedder.model_version or None, "identities": [i.as_dict() for i in found]}

    @app.get("/report", response_class=HTMLResponse)
    async def report() -> str:
        return await run_in_threadpool(locked, render_report, search)

    @app.get("/", include_in_schema=False)
    def root() -> RedirectResponse:
        return RedirectResponse("/report")

    app.state.search = search
    return app


async def _read_upload(request: Request, max_mb: float) -> bytes:
    """The request body; 413 as soon as it is known to be over ``max_mb`` (its Content-Length, or the
    bytes received so far when it is chunked), so an oversized upload is never held in memory whole."""
    limit = max_mb * 1e6
    declared = request.headers.get("content-length", "")
    too_big = HTTPException(413, f"image larger than {max_mb} MB (api.max_upload_mb)")
    if declared.isdigit() and int(declared) > limit:
        raise too_big
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise too_big
    return bytes(body)


def run_api(cfg: AppConfig, redis_url: str, stop: StopFlag) -> None:
    """Serve on ``api.host:api.port`` until ``stop`` is set."""
    import uvicorn

    warn_if_exposed(cfg.api)
    server = uvicorn.Server(uvicorn.Config(create_app(cfg, redis_url), host=cfg.api.host, port=cfg.api.port,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, name="selfreid-api", daemon=True)
    thread.start()
    while not stop.wait(0.5):
        if not thread.is_alive():
            break
    server.should_exit = True
    thread.join(timeout=10)
