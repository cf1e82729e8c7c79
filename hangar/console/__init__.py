"""The browser console: `GET /console/instances/{id}/terminal`, a page that opens a terminal.

It is not an API operation and not in the OpenAPI document: it answers HTML and static
files, not JSON, it takes no credentials (the page asks for the user's API key and keeps it
in the tab's sessionStorage at most — never a cookie, never the URL — then calls the API like
any client: POST /v1/instances/{id}/terminal-sessions for a ticket, the websocket with
subprotocol hangar.terminal.v1, the ticket in the first frame), and it has nothing for
schemathesis or the SDK to exercise. Everything the page does that touches data goes through
the documented API.

The page, its script and style are in hangar/console/static/. xterm.js and its fit addon come
from the npm registry at build time (package.json + package-lock.json here, installed by
`npm ci --ignore-scripts` into hangar/console/node_modules/ by `make install`) and are served
from there, by an explicit list (VENDOR): nothing else under node_modules is reachable, and
nothing is ever loaded from a CDN. Without the install the page answers 503 saying what to run.

Every response carries a strict Content-Security-Policy (scripts and styles from this origin
only, connections to this origin only, no framing) and `Referrer-Policy: no-referrer`.
"""

from __future__ import annotations

import html
import re
from pathlib import Path

from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from hangar.errors import render
from hangar.requestid import SCOPE_KEY

HERE = Path(__file__).resolve().parent
STATIC = HERE / "static"
NODE_MODULES = HERE / "node_modules"
PREFIX = "/console"
PAGE = re.compile(r"/console/instances/([0-9a-fA-F-]{36})/terminal/?")
UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
INSTALL = "npm ci --ignore-scripts --prefix hangar/console (part of `make install`)"

# Public name under /console/static/ → file. Our own files, then the npm packages' builds.
OWN = {name: STATIC / name for name in ("terminal.js", "terminal.css")}
VENDOR = {
    "vendor/xterm.js": NODE_MODULES / "@xterm" / "xterm" / "lib" / "xterm.js",
    "vendor/xterm.css": NODE_MODULES / "@xterm" / "xterm" / "css" / "xterm.css",
    "vendor/addon-fit.js": NODE_MODULES / "@xterm" / "addon-fit" / "lib" / "addon-fit.js",
}
TYPES = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8"}

SECURITY_HEADERS = {
    # 'unsafe-inline' for styles only: xterm.js sizes its rows and cursor with a <style> it writes.
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
        "font-src 'self'; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
}


def page(instance_id: str) -> str:
    """The terminal page for one instance (the id is a checked UUID; escaped all the same)."""
    template = (STATIC / "terminal.html").read_text(encoding="utf-8")
    return template.replace("{{instance_id}}", html.escape(instance_id.lower(), quote=True))


def missing_assets() -> list[str]:
    return [name for name, path in VENDOR.items() if not path.is_file()]


class ConsoleMiddleware:
    """Answers GET/HEAD under /console; every other request goes on inward untouched."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or not (path == PREFIX or path.startswith(PREFIX + "/")):
            await self.app(scope, receive, send)
            return
        response = self.respond(scope, path)
        await response(scope, receive, send)

    def respond(self, scope: Scope, path: str) -> Response:
        state = scope.get(SCOPE_KEY)
        request_id = state.request_id if state is not None else "-"
        method = scope["method"]

        def problem(status: int, title: str, detail: str, slug: str, **extra: str) -> Response:
            return render(status, title, detail, request_id, slug=slug, instance=path, headers=extra or None)

        if method not in ("GET", "HEAD"):
            return problem(
                405, "Method Not Allowed", f"{method} is not supported on {path}; use GET.", "method-not-allowed",
                Allow="GET, HEAD",
            )  # fmt: skip
        matched = PAGE.fullmatch(path)
        if matched is not None and UUID.fullmatch(matched.group(1)):
            missing = missing_assets()
            if missing:
                return problem(
                    503, "Console Not Installed",
                    f"The console's xterm.js files are not installed ({', '.join(missing)}). Run {INSTALL}.",
                    "console-not-installed",
                )  # fmt: skip
            headers = {**SECURITY_HEADERS, "Cache-Control": "no-store"}
            return Response(page(matched.group(1)), media_type="text/html; charset=utf-8", headers=headers)
        name = path.removeprefix(PREFIX + "/static/") if path.startswith(PREFIX + "/static/") else None
        target = OWN.get(name or "") or VENDOR.get(name or "")
        if target is not None and target.is_file():
            headers = {**SECURITY_HEADERS, "Cache-Control": "public, max-age=300"}
            return Response(target.read_bytes(), media_type=TYPES[target.suffix], headers=headers)
        return problem(404, "Not Found", f"Nothing is served at {path}.", "not-found")
