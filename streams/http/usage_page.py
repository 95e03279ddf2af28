"""``GET /ui/usage/{workspace_id}``: the usage page for people (CONTRACT 7), served by the worker.

The page is plain HTML, CSS and JavaScript from ``static/`` (no build step, nothing from another
host). Its script reads the usage API with relative URLs (``/usage/{id}`` and
``/usage/{id}/daily?metric=…``), so every request reaches a worker, which routes it to the owner.
The page itself is routed to the owner too, which answers 404 for a workspace it does not know.
"""

from __future__ import annotations

import hashlib
import json
from html import escape
from pathlib import Path
from typing import TYPE_CHECKING

from faust.web import Request, Response, View

from ...core.metric_kinds import METRIC_KINDS
from ..codec import decode_workspace

if TYPE_CHECKING:
    from ..app import Meterwatch

STATIC = Path(__file__).with_name("static")
ASSETS = {"usage.js": "text/javascript", "usage.css": "text/css"}

# Also in a <meta> tag of each page, because a request routed to the owner comes back without
# the owner's headers (a <meta> policy cannot say frame-ancestors).
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self' data:; base-uri 'none'; form-action 'none'"
)
PAGE_HEADERS = {
    "Content-Security-Policy": CSP + "; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}

NOT_FOUND = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="Content-Security-Policy" content="{csp}">
<title>Workspace not found · Usage</title>
<link rel="icon" href="data:,">
<link rel="stylesheet" href="../static/usage.css?v={version}">
</head>
<body>
<main class="page">
<h1>Workspace not found</h1>
<p>There is no usage for workspace <code>{workspace}</code>. Check the address.</p>
</main>
</body>
</html>
"""


def register(mw: Meterwatch) -> None:
    app = mw.app
    workspaces = mw.tables.workspaces
    assets = {name: (STATIC / name).read_text(encoding="utf-8") for name in ASSETS}
    version = hashlib.sha256("".join(assets.values()).encode()).hexdigest()[:12]
    template = (STATIC / "usage.html").read_text(encoding="utf-8")
    metrics = json.dumps({name: [kind.title, kind.description] for name, kind in METRIC_KINDS.items()})

    def page(html: str, workspace_id: str) -> str:
        return (
            html.replace("{{csp}}", escape(CSP))
            .replace("{{version}}", version)
            .replace("{{metrics}}", escape(metrics, quote=True))
            .replace("{{workspace}}", escape(workspace_id, quote=True))
        )

    @app.page("/ui/usage/{workspace_id}")
    class UsagePage(View):
        @app.table_route(table=workspaces, match_info="workspace_id")
        async def get(self, request: Request, workspace_id: str) -> Response:
            if decode_workspace(workspaces.get(workspace_id)) is None:
                body = NOT_FOUND.format(csp=escape(CSP), version=version, workspace=escape(workspace_id))
                return self.html(body, status=404, headers=dict(PAGE_HEADERS))
            return self.html(page(template, workspace_id), headers=dict(PAGE_HEADERS))

    @app.page("/ui/static/{name}")
    class Static(View):
        async def get(self, request: Request, name: str) -> Response:
            if name not in assets:
                return self.text("not found\n", status=404)
            # The page asks for ?v=<hash of the assets>, so a new build is never served stale.
            caching = "public, max-age=86400" if request.query.get("v") == version else "no-cache"
            return self.text(
                assets[name],
                content_type=ASSETS[name],
                headers={"Cache-Control": caching, "X-Content-Type-Options": "nosniff"},
            )
