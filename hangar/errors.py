"""Every error the server can produce, as one `application/problem+json` response.

Handlers raise `hangar.problems.Problem`; the layers around them raise connexion's
`ProblemException`, Starlette's `HTTPException` (404 unknown path, 405), the generated
adapters' `RequestModelError`, or anything else by accident. `problem_for_exception` maps
each of these to the same RFC 9457 shape with a stable `type`, and never lets an
unexpected exception's text reach the client.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import quote

from connexion.exceptions import NonConformingResponse, ProblemException
from starlette.exceptions import HTTPException
from starlette.responses import Response

from hangar import problems
from hangar.problems import MethodNotAllowed, PayloadTooLarge, Problem, UnsupportedMediaType, problem_body

log = logging.getLogger("hangar.errors")

PROBLEM_JSON = "application/problem+json"

# The Problem schema's limits (specs/openapi/common.yaml): a response that broke them would
# itself fail response validation, so long values are cut here.
_MAX_DETAIL, _MAX_INSTANCE, _MAX_ERRORS, _MAX_LOCATION, _MAX_MESSAGE = 2000, 500, 100, 300, 1000

# Problem kinds by status for errors that do not come from a hangar Problem.
_KINDS: dict[int, tuple[str, str]] = {
    400: (problems.BadRequest.slug, problems.BadRequest.title),
    401: (problems.Unauthorized.slug, problems.Unauthorized.title),
    403: (problems.Forbidden.slug, problems.Forbidden.title),
    404: (problems.NotFound.slug, problems.NotFound.title),
    405: (MethodNotAllowed.slug, MethodNotAllowed.title),
    406: ("not-acceptable", "Not Acceptable"),
    409: (problems.Conflict.slug, problems.Conflict.title),
    413: (PayloadTooLarge.slug, PayloadTooLarge.title),
    415: (UnsupportedMediaType.slug, UnsupportedMediaType.title),
    422: (problems.Unprocessable.slug, problems.Unprocessable.title),
    429: (problems.TooManyRequests.slug, problems.TooManyRequests.title),
    500: (Problem.slug, Problem.title),
}

INTERNAL_DETAIL = "An unexpected error occurred. Quote the request id when you report it."


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_CONTROL_BUT_BREAKS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def _cut(text: str, limit: int, control: re.Pattern[str] = _CONTROL) -> str:
    # Messages may quote what the client sent: no control characters (the schema forbids
    # them, and they have no business in anyone's terminal or log).
    text = control.sub("?", text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def instance_of(path: str) -> str:
    """The request path as a URI reference (the scope's path is percent-decoded)."""
    quoted = quote(path, safe="/!$&'()*+,;=:@-._~")[:_MAX_INSTANCE]
    return re.sub(r"%[0-9A-F]?$", "", quoted)  # never end in half an escape


def render(
    status: int,
    title: str,
    detail: str,
    request_id: str,
    *,
    slug: str,
    instance: str | None = None,
    errors: Iterable[Mapping[str, str]] | None = None,
    headers: Mapping[str, str] | None = None,
) -> Response:
    """The problem+json response; the content type is always set explicitly (connexion
    500s on a response whose operation declares two content types and sets none)."""
    cut_errors = None
    if errors:
        cut_errors = [
            {"location": _cut(str(e["location"]), _MAX_LOCATION), "message": _cut(str(e["message"]), _MAX_MESSAGE)}
            for e in list(errors)[:_MAX_ERRORS]
        ]
    body = problem_body(
        status,
        _cut(title, 200),
        _cut(detail, _MAX_DETAIL, _CONTROL_BUT_BREAKS),
        request_id,
        slug=slug,
        instance=instance_of(instance) if instance else None,
        errors=cut_errors,
    )
    return Response(
        json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode(),
        status_code=status,
        media_type=PROBLEM_JSON,
        headers=dict(headers) if headers else None,
    )


def render_problem(problem: Problem, request_id: str, instance: str | None = None) -> Response:
    return render(
        problem.status,
        problem.title,
        problem.detail,
        request_id,
        slug=problem.slug,
        instance=instance,
        errors=problem.errors,
        headers=problem.headers,
    )


def _kind(status: int) -> tuple[str, str]:
    if status in _KINDS:
        return _KINDS[status]
    return _KINDS[500] if status >= 500 else _KINDS[400]


class AllowedMethods:
    """Which methods each spec path supports, for the `Allow` header of a 405.

    Starlette's router answers a 405 with the methods of the first route whose path matched,
    and connexion registers one route per method, so its `Allow` lists one method. The
    spec knows them all."""

    def __init__(self, paths: Mapping[str, Iterable[str]]) -> None:
        self._table = [
            (
                re.compile("^" + re.sub(r"\\\{[^/]+?\\\}", "[^/]+", re.escape(path)) + "$"),
                ", ".join(sorted(m.upper() for m in methods)),
            )
            for path, methods in paths.items()
        ]

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any]) -> AllowedMethods:
        verbs = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}
        return cls({path: [m for m in item if m in verbs] for path, item in spec.get("paths", {}).items()})

    def for_path(self, path: str) -> str | None:
        for pattern, allow in self._table:
            if pattern.match(path):
                return allow
        return None


def problem_for_exception(
    exc: BaseException, request_id: str, method: str, path: str, allowed: AllowedMethods
) -> Response:
    """Map any exception to its problem response, logging what the client is not told."""
    if isinstance(exc, Problem):
        if exc.status >= 500:
            log.error("request %s: %s problem: %s", request_id, exc.status, exc.detail, exc_info=exc)
        return render_problem(exc, request_id, path)

    # Imported lazily: generated code may not exist yet in a fresh checkout's first run of
    # codegen, and the runtime must still be importable to report that.
    request_model_error = _request_model_error()
    if request_model_error is not None and isinstance(exc, request_model_error):
        errors = getattr(exc, "errors", None) or [{"location": "body", "message": str(exc)}]
        return render(
            400,
            problems.BadRequest.title,
            "The request is not valid.",
            request_id,
            slug=problems.BadRequest.slug,
            instance=path,
            errors=errors,
        )

    if isinstance(exc, NonConformingResponse):
        # A handler broke the contract: our bug, not the client's. Log the why, say nothing.
        log.error("request %s: response does not match the spec: %s", request_id, exc.detail)
        return render(500, Problem.title, INTERNAL_DETAIL, request_id, slug=Problem.slug, instance=path)

    if isinstance(exc, ProblemException):
        slug, title = _kind(exc.status)
        if exc.status >= 500:
            log.error("request %s: %s %s", request_id, exc.status, exc.detail)
            return render(exc.status, title, INTERNAL_DETAIL, request_id, slug=slug, instance=path)
        return render(
            exc.status, title, str(exc.detail or title), request_id, slug=slug, instance=path, headers=exc.headers
        )

    if isinstance(exc, HTTPException):
        status = exc.status_code
        slug, title = _kind(status)
        headers = dict(exc.headers or {})
        if status == 404:
            detail = f"Nothing is served at {path}."
        elif status == 405:
            allow = allowed.for_path(path) or headers.get("Allow", "")
            headers["Allow"] = allow
            detail = f"{method} is not supported on {path}; use {allow}."
        elif status >= 500:
            log.error("request %s: HTTP %s: %s", request_id, status, exc.detail)
            detail = INTERNAL_DETAIL
        else:
            detail = str(exc.detail or title)
        return render(status, title, detail, request_id, slug=slug, instance=path, headers=headers)

    log.error("request %s: unhandled %s", request_id, type(exc).__name__, exc_info=exc)
    return render(500, Problem.title, INTERNAL_DETAIL, request_id, slug=Problem.slug, instance=path)


def _request_model_error() -> type[Exception] | None:
    try:
        from generated.routing import RequestModelError
    except ImportError:
        return None
    return RequestModelError
