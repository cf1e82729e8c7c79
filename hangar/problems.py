"""RFC 9457 problems. Handlers raise these; the app turns them into
`application/problem+json` with `type`, `title`, `status`, `detail`, `request_id`.

`type` is a stable URI per problem kind: https://docs.hangar.dev/problems/<slug>.
"""

from __future__ import annotations

from typing import Any

PROBLEM_BASE = "https://docs.hangar.dev/problems/"


class Problem(Exception):  # noqa: N818 - named for RFC 9457, not as a Python error type
    status: int = 500
    slug: str = "internal-error"
    title: str = "Internal Server Error"

    def __init__(
        self,
        detail: str,
        *,
        slug: str | None = None,
        title: str | None = None,
        errors: list[dict[str, str]] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        if slug:
            self.slug = slug
        if title:
            self.title = title
        self.errors = errors
        self.headers = headers or {}


def problem_body(
    status: int,
    title: str,
    detail: str,
    request_id: str,
    *,
    slug: str,
    instance: str | None = None,
    errors: list[dict[str, str]] | None = None,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "type": PROBLEM_BASE + slug,
        "title": title,
        "status": status,
        "detail": detail,
        "request_id": request_id,
    }
    if instance:
        body["instance"] = instance
    if errors:
        body["errors"] = errors
    return body


class BadRequest(Problem):
    status, slug, title = 400, "validation-error", "Bad Request"


class Unauthorized(Problem):
    status, slug, title = 401, "unauthorized", "Unauthorized"


class Forbidden(Problem):
    status, slug, title = 403, "forbidden", "Forbidden"


class NotFound(Problem):
    status, slug, title = 404, "not-found", "Not Found"


class MethodNotAllowed(Problem):
    status, slug, title = 405, "method-not-allowed", "Method Not Allowed"


class Conflict(Problem):
    status, slug, title = 409, "conflict", "Conflict"


class Unprocessable(Problem):
    status, slug, title = 422, "unprocessable", "Unprocessable Entity"


class PayloadTooLarge(Problem):
    status, slug, title = 413, "payload-too-large", "Payload Too Large"


class UnsupportedMediaType(Problem):
    status, slug, title = 415, "unsupported-media-type", "Unsupported Media Type"


class TooManyRequests(Problem):
    status, slug, title = 429, "rate-limited", "Too Many Requests"
