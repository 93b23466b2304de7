"""The HTTP API: search by image, identities, health, and a report page people can read.

Endpoints (``create_app(cfg, redis_url)``):

* ``POST /search?top_k=5&min_score=0.8``: body = the image bytes (JPEG/PNG), e.g.
  ``curl --data-binary @person.jpg -H 'Content-Type: image/jpeg' http://127.0.0.1:8000/search``.
  Returns, per person in the image (its ``box``, closest identity ``best_global_id`` and
  ``best_score``), the identities above ``min_score`` with every sighting (camera, start/end times,
  base64 JPEG thumbnail). 400 for an undecodable or empty upload, 413 for one over
  ``api.max_upload_mb`` or declaring more than ``api.max_image_pixels``, 503 while no production model exists.
* ``GET /identities``: every identity of the served model version's gallery (JSON).
* ``GET /health``: Redis reachable, model version, execution provider (503 when Redis is down).
* ``GET /report`` (and ``/``): the site report (:mod:`selfreid.pipeline.report.site`): cameras,
  cross-camera identities, timeline, self-training curves and gate decisions, before/after metrics,
  throughput; plus an upload form for the search.

``run_api`` fails at once when Redis refuses the password or (:class:`ApiError`) when the port is
taken; once it serves it announces the URL and whether a token is needed.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable
from typing import Any

import redis
from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse

from selfreid.pipeline.config import ApiConfig, AppConfig
from selfreid.pipeline.runtime.redis_conn import check_credentials, connect
from selfreid.pipeline.runtime.signals import StopFlag
from selfreid.pipeline.serving.api_auth import require_token, warn_if_exposed
from selfreid.pipeline.serving.search import IdentitySearch, SearchError

__all__ = ["ApiError", "create_app", "listen_socket", "render_report", "report_identities", "run_api", "startup_message"]

log = logging.getLogger(__name__)


class ApiError(RuntimeError):
    """The API cannot start: its address is taken or invalid."""


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
    client = connect(redis_url, socket_timeout=5)
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
            "provider": search.embedder.provider or None,
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


def startup_message(api: ApiConfig) -> str:
    """Where the API listens and whether it wants a token (printed once it listens)."""
    host = f"[{api.host}]" if ":" in api.host else api.host
    url = f"http://{host}:{api.port}"
    where = " (every interface)" if api.host in ("0.0.0.0", "::") else ""
    token = ("a token is required: send 'Authorization: Bearer TOKEN' (a browser: open /report?token=TOKEN once)"
             if api.token is not None else "no token is required (api.token / SELFREID_API_TOKEN not set)")
    return f"API listening on {url}{where}, report page {url}/report; {token}"


def listen_socket(host: str, port: int) -> socket.socket:
    """A socket bound to ``host:port``, or :class:`ApiError` saying why not (port taken, unknown host).

    Bound here, before the server starts, so that a taken port ends the command with an error instead
    of a server thread that logs it and quietly returns."""
    sock = None
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                             flags=socket.AI_PASSIVE)[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a restart reuses a port in TIME_WAIT
        sock.bind(address)
    except OSError as exc:
        if sock is not None:
            sock.close()
        raise ApiError(f"cannot listen on {host}:{port}: {exc.strerror or exc}; another program may use the "
                       "port: choose another with api.port or --port") from None
    return sock


def run_api(cfg: AppConfig, redis_url: str, stop: StopFlag, announce: Callable[[str], None] | None = None) -> None:
    """Serve on ``api.host:api.port`` until ``stop`` is set; ``announce`` (default: the log) gets
    :func:`startup_message` once the server accepts requests.

    Raises :class:`ApiError` when the port cannot be bound, ``redis.AuthenticationError`` when Redis refuses
    the password (an outage is answered by ``/health`` with 503 while the API waits).
    """
    with connect(redis_url, socket_connect_timeout=3, socket_timeout=3) as client:
        check_credentials(client)
    sock = listen_socket(cfg.api.host, cfg.api.port)
    try:
        warn_if_exposed(cfg.api)
        _serve_on(sock, create_app(cfg, redis_url), cfg.api, stop, announce or log.info)
    finally:
        sock.close()


def _serve_on(sock: socket.socket, app: FastAPI, api: ApiConfig, stop: StopFlag, announce: Callable[[str], None]) -> None:
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host=api.host, port=api.port, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="selfreid-api", daemon=True)
    thread.start()
    try:
        while not server.started and thread.is_alive() and not stop.wait(0.05):
            pass
        if server.started:
            announce(startup_message(api))
        while not stop.wait(0.5):
            if not thread.is_alive():
                raise ApiError("the API server stopped on its own; see the log above")
    finally:
        server.should_exit = True
        thread.join(timeout=10)
