"""Bare Starlette doing the generated server's work for `GET` and `POST /v1/api-keys`.

Hand-written routing and validation (what a careful bare app would write: query
parameters checked against the spec's bounds, the body parsed and validated into the
generated pydantic model), then `Work.handle` (common.py) in one worker thread.

    uvicorn --factory bench.baselines.starlette_app:create_app          # DB work in the thread pool
    uvicorn --factory bench.baselines.starlette_app:create_app_on_loop  # DB work on the event loop

The second blocks the event loop for the whole database round trip; it is not a design
anyone should ship, only a measure of what the thread-pool hop costs.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from bench.baselines.common import Outcome, Work, problem_outcome, request_id_of, token_of
from generated import models
from handlers.identity import operations
from hangar.config import Settings
from hangar.problems import BadRequest

READ = frozenset({"api-keys:read"})
WRITE = frozenset({"api-keys:write"})
_CURSOR = re.compile(r"[A-Za-z0-9_-]{1,512}")
_INTEGER = re.compile(r"-?\d+")


def _query(request: Request) -> tuple[int, str | None]:
    errors = []
    limit = 50
    raw_limit = request.query_params.get("limit")
    if raw_limit is not None:
        if _INTEGER.fullmatch(raw_limit) and 1 <= int(raw_limit) <= 200:
            limit = int(raw_limit)
        else:
            errors.append({"location": "query.limit", "message": "must be an integer from 1 to 200"})
    cursor = request.query_params.get("cursor")
    if cursor is not None and not _CURSOR.fullmatch(cursor):
        errors.append({"location": "query.cursor", "message": "is not a cursor"})
    if errors:
        raise BadRequest("The request's parameters are not valid.", errors=errors)
    return limit, cursor


def _body(raw: bytes) -> models.ApiKeyCreate:
    try:
        document = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise BadRequest(
            "The body is not valid JSON.", errors=[{"location": "body", "message": str(exc)[:200]}]
        ) from None
    try:
        return models.ApiKeyCreate.model_validate(document)
    except ValidationError as exc:
        errors = [
            {"location": ".".join(["body", *map(str, e["loc"])]), "message": e["msg"]}
            for e in exc.errors(include_url=False)
        ]
        raise BadRequest("The body does not match the operation's schema.", errors=errors) from None


def _build(on_loop: bool) -> Starlette:
    settings = Settings.from_env()
    work = Work(settings)

    async def run(request: Request, request_id: str, **kwargs: Any) -> Response:
        handle: Callable[..., Outcome] = work.handle
        client = request.client.host if request.client else "unknown"
        token = token_of(request.headers.get("authorization"))
        args = {"token": token, "request_id": request_id, "path": request.url.path, "client": client, **kwargs}
        outcome = handle(**args) if on_loop else await run_in_threadpool(handle, **args)
        return outcome.response(request_id)

    async def list_api_keys(request: Request) -> Response:
        request_id = request_id_of(request.headers.get("x-request-id"))
        try:
            limit, cursor = _query(request)
        except BadRequest as problem:
            return problem_outcome(problem, request_id, request.url.path).response(request_id)
        return await run(
            request,
            request_id,
            scopes=READ,
            success=200,
            call=lambda ctx: operations.list_api_keys(ctx, limit=limit, cursor=cursor),
        )

    async def create_api_key(request: Request) -> Response:
        request_id = request_id_of(request.headers.get("x-request-id"))
        try:
            body = _body(await request.body())
        except BadRequest as problem:
            return problem_outcome(problem, request_id, request.url.path).response(request_id)
        return await run(
            request,
            request_id,
            scopes=WRITE,
            success=201,
            call=lambda ctx: operations.create_api_key(ctx, body=body),
        )

    @asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            work.close()

    return Starlette(
        routes=[
            Route("/v1/api-keys", list_api_keys, methods=["GET"]),
            Route("/v1/api-keys", create_api_key, methods=["POST"]),
        ],
        lifespan=lifespan,
    )


def create_app() -> Starlette:
    return _build(on_loop=False)


def create_app_on_loop() -> Starlette:
    return _build(on_loop=True)
