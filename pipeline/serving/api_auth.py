"""The HTTP API's optional bearer token, and a warning for an API exposed without one.

With ``api.token`` (or ``SELFREID_API_TOKEN``) set, every request but ``/health`` (container
healthchecks) must carry the token, compared in constant time; otherwise the answer is 401:

* scripts send ``Authorization: Bearer TOKEN``;
* a browser opens ``/report?token=TOKEN`` once: the answer sets an HttpOnly, SameSite=Strict cookie
  and redirects to the same page without the token, so the token leaves the address bar and the
  report's search form (a same-origin ``fetch``) is authenticated by the cookie.

The API binds 127.0.0.1 by default. Binding another address without a token is allowed (a container
must bind 0.0.0.0 behind its published port) but logs a warning naming the fix.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
from typing import TypeGuard
from urllib.parse import urlencode

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse, RedirectResponse
from pydantic import SecretStr

from selfreid.pipeline.config import ApiConfig

__all__ = ["COOKIE", "require_token", "exposure_warning", "warn_if_exposed"]

log = logging.getLogger(__name__)

COOKIE = "selfreid_token"
OPEN_PATHS = frozenset({"/health"})


def require_token(app: FastAPI, token: SecretStr | None) -> None:
    """Make every endpoint of ``app`` but :data:`OPEN_PATHS` require ``token``; no-op when ``None``."""
    if token is None:
        return
    expected = token.get_secret_value().encode()

    def valid(given: str | None) -> TypeGuard[str]:
        return given is not None and hmac.compare_digest(given.encode(), expected)

    @app.middleware("http")
    async def authenticate(request: Request, call_next) -> Response:
        if request.url.path in OPEN_PATHS:
            return await call_next(request)
        from_query = request.query_params.get("token")
        if request.method == "GET" and valid(from_query):
            return _remember(request, from_query)
        if valid(_bearer(request)) or valid(request.cookies.get(COOKIE)):
            return await call_next(request)
        return JSONResponse({"detail": "missing or wrong API token: send 'Authorization: Bearer TOKEN' "
                                       "(a browser: open /report?token=TOKEN once)"},
                            status_code=401, headers={"WWW-Authenticate": "Bearer"})


def _bearer(request: Request) -> str | None:
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    return value.strip() if scheme.lower() == "bearer" else None


def _remember(request: Request, token: str) -> Response:
    """Redirect to the same URL without ``token``, setting the cookie that replaces it."""
    query = urlencode([(k, v) for k, v in request.query_params.multi_items() if k != "token"])
    response = RedirectResponse(request.url.path + (f"?{query}" if query else ""), status_code=303)
    response.set_cookie(COOKIE, token, httponly=True, samesite="strict", secure=request.url.scheme == "https")
    return response


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return False


def exposure_warning(api: ApiConfig) -> str | None:
    """The warning for an API bound beyond loopback without a token, else ``None``."""
    if api.token is not None or _is_loopback(api.host):
        return None
    return (f"the API listens on {api.host}:{api.port} without a token: anyone who reaches this port can "
            "search people and see every identity's thumbnails. Set SELFREID_API_TOKEN (or api.token), "
            "or bind api.host 127.0.0.1")


def warn_if_exposed(api: ApiConfig) -> None:
    if warning := exposure_warning(api):
        log.warning(warning)
