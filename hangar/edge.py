"""The outermost layer: every HTTP request enters and every response leaves through here.

It gives the request its id and state, serves the bundled specs, adds `X-Request-Id` and
the request's `RateLimit-*` headers to whatever response goes out, and turns any exception
that escapes the inner layers — connexion's 404/405, validation problems, handler bugs —
into a problem+json response (hangar.errors). It replaces connexion's ServerErrorMiddleware
and ExceptionMiddleware: one layer, one try, and a 500 that never re-raises into the
server's log with our internals.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from hangar.errors import AllowedMethods, problem_for_exception, render
from hangar.requestid import SCOPE_KEY, RequestState, accept_or_generate

log = logging.getLogger("hangar.edge")

_REQUEST_ID = b"x-request-id"
_AUTHORIZATION = b"authorization"
_PREFLIGHT = b"access-control-request-method"

# CORS: the API authenticates with a bearer header, never cookies, so any origin may read
# responses (the spec declares Access-Control-Allow-Origin on every response), and browser
# clients may read the headers that matter to them.
_CORS = [
    (b"access-control-allow-origin", b"*"),
    (
        b"access-control-expose-headers",
        b"X-Request-Id, RateLimit-Limit, RateLimit-Remaining, RateLimit-Reset, Retry-After, Idempotent-Replayed",
    ),
]
_PREFLIGHT_HEADERS = "Authorization, Content-Type, Idempotency-Key, X-Request-Id"


class Edge:
    def __init__(self, app: ASGIApp, *, documents: Mapping[str, bytes], allowed: AllowedMethods) -> None:
        self.app = app
        # Served as stored, byte for byte: /v1/openapi.json and /v1/asyncapi.json.
        self._documents = dict(documents)
        self._allowed = allowed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        supplied = authorization = None
        preflight = False
        for name, value in scope["headers"]:
            if name == _REQUEST_ID:
                supplied = value.decode("latin-1")
            elif name == _AUTHORIZATION:
                authorization = value.decode("latin-1")
            elif name == _PREFLIGHT:
                preflight = True
        client = scope.get("client")
        state = RequestState(
            request_id=accept_or_generate(supplied),
            client_address=client[0] if client else "unknown",
            method=scope["method"],
            path=scope["path"],
            authorization=authorization,
        )
        scope[SCOPE_KEY] = state
        request_id = state.request_id.encode("latin-1")
        started = False

        async def send_with_headers(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                headers = list(message.get("headers", ()))
                headers.append((_REQUEST_ID, request_id))
                headers.extend(_CORS)
                headers.extend(state.response_headers)
                message = {**message, "headers": headers}
            await send(message)

        document = self._documents.get(state.path)
        if document is not None:
            await self._serve(document, scope, receive, send_with_headers, state)
            return
        if preflight and state.method == "OPTIONS":
            allow = self._allowed.for_path(state.path)
            if allow is not None:
                await self._preflight(allow, scope, receive, send_with_headers)
                return
        try:
            await self.app(scope, receive, send_with_headers)
        except Exception as exc:
            if started:  # too late for a problem document; the client sees a cut response
                log.error("request %s failed after its response started", state.request_id, exc_info=exc)
                return
            response = problem_for_exception(exc, state.request_id, state.method, state.path, self._allowed)
            await response(scope, receive, send_with_headers)

    @staticmethod
    async def _preflight(allow: str, scope: Scope, receive: Receive, send: Send) -> None:
        headers = {
            "Allow": allow,
            "Access-Control-Allow-Methods": allow,
            "Access-Control-Allow-Headers": _PREFLIGHT_HEADERS,
            "Access-Control-Max-Age": "600",
        }
        await Response(status_code=204, headers=headers)(scope, receive, send)

    @staticmethod
    async def _serve(document: bytes, scope: Scope, receive: Receive, send: Send, state: RequestState) -> None:
        if state.method not in ("GET", "HEAD"):
            response = render(
                405,
                "Method Not Allowed",
                f"{state.method} is not supported on {state.path}; use GET.",
                state.request_id,
                slug="method-not-allowed",
                instance=state.path,
                headers={"Allow": "GET"},
            )
        else:
            response = Response(document, media_type="application/json")
        await response(scope, receive, send)
