"""Who may call what over HTTP: a bearer token on every request but ``GET /health``.

- ``/usage/{id}…``, ``/limits/{id}`` and ``/ui/usage/{id}``: a token naming the workspace (or a
  service token); a token limited to some metrics reads only those (``usage_api.py`` leaves the
  others out);
- ``/metrics`` and ``/internal/…`` (what workers ask each other): a service token only;
- anything else (the page's assets): any valid token.

The token comes from ``Authorization: Bearer …``; the usage page also takes it once as
``?token=…``, answering with a redirect to the same page without it and the token in an
HttpOnly, SameSite=Strict cookie, which the page's own requests then carry. Every worker checks
the request itself, the worker a request is forwarded to included (it gets the same headers),
so forwarding never widens what a caller may see.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime
from html import escape
from typing import TYPE_CHECKING, Any

from aiohttp import web

from ...tokens import Grant, Keys, TokenError

if TYPE_CHECKING:
    from ..app import Meterwatch

log = logging.getLogger(__name__)

COOKIE = "meterwatch_token"
GRANT = "meterwatch.grant"  # the request's verified Grant, for the views
PUBLIC = frozenset({"/health"})
SERVICE_ONLY = ("/metrics", "/internal/")
PAGE = "/ui/usage/"


def register(mw: Meterwatch) -> None:
    keys = mw.keys
    if keys is None:
        log.warning(
            "HTTP authentication is off (METERWATCH_AUTH=off): anyone who reaches port %d reads every "
            "workspace's usage",
            mw.settings.web_port,
        )
        return
    mw.app.web.web_app.middlewares.append(_checking(keys))


def grant_of(request: Any) -> Grant | None:
    """The request's verified grant; None when authentication is off."""
    return request.get(GRANT)


def _checking(keys: Keys) -> Any:
    @web.middleware
    async def check(request: web.Request, handler: Any) -> web.StreamResponse:
        path = request.path
        if path in PUBLIC:
            return await handler(request)
        token, from_link = _token_of(request)
        if token is None:
            return _refused(request, 401, "a bearer token is required")
        try:
            grant = keys.verify(token, datetime.now(UTC))
        except TokenError as error:
            return _refused(request, 401, str(error))
        reason = _forbidden(request, grant)
        if reason is not None:
            return _refused(request, 403, reason)
        if from_link:
            return _keep_in_cookie(request, token, grant)
        request[GRANT] = grant
        return await handler(request)

    return check


def _token_of(request: web.Request) -> tuple[str | None, bool]:
    """The request's token, and whether it came in the page's address."""
    scheme, _, credentials = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer" and credentials.strip():
        return credentials.strip(), False
    if request.path.startswith(PAGE) and request.query.get("token"):
        return request.query["token"], True
    return request.cookies.get(COOKIE) or None, False


def _forbidden(request: web.Request, grant: Grant) -> str | None:
    if request.path.startswith(SERVICE_ONLY) and not grant.service:
        return "this route needs a service token"
    workspace_id = request.match_info.get("workspace_id")
    if workspace_id is not None and not grant.may_read(workspace_id):
        return "the token does not grant this workspace"
    metric = request.query.get("metric")
    if metric is not None and not grant.may_read_metric(metric):
        return "the token does not grant this metric"
    return None


def _keep_in_cookie(request: web.Request, token: str, grant: Grant) -> web.StreamResponse:
    """Move a token from the page's address into a cookie: it stays out of history and logs."""
    query = [(k, v) for k, v in request.query.items() if k != "token"]
    response = web.HTTPSeeOther(location=str(request.rel_url.with_query(query)))
    response.set_cookie(
        COOKIE,
        token,
        max_age=max(0, grant.expires - int(time.time())),
        path="/",
        httponly=True,
        samesite="Strict",
        secure=request.secure or request.headers.get("X-Forwarded-Proto") == "https",
    )
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["Cache-Control"] = "no-store"
    return response


_REFUSED_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title} · Usage</title></head>
<body><h1>{title}</h1><p>{reason}. Open the usage page with the link you were given.</p></body></html>
"""


def _refused(request: web.Request, status: int, reason: str) -> web.StreamResponse:
    error = "unauthenticated" if status == 401 else "forbidden"
    headers = {"Cache-Control": "no-store"}
    if status == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="meterwatch"'
    if request.path.startswith(PAGE):
        title = "Sign-in needed" if status == 401 else "Not allowed"
        body = _REFUSED_PAGE.format(title=title, reason=escape(reason.capitalize()))
        return web.Response(text=body, status=status, content_type="text/html", headers=headers)
    return web.json_response({"error": error, "reason": reason}, status=status, headers=headers)
