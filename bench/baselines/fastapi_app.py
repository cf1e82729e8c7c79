"""FastAPI doing the generated server's work for `GET` and `POST /v1/api-keys`.

FastAPI's own validation (query bounds from the spec; the body validated into the
generated pydantic model), sync endpoints (FastAPI runs them in its thread pool, as the
generated server runs its handlers), then `Work.handle` (common.py) in that same thread.
Endpoints return a ready Response, so the output bytes are exactly the other apps'.

    uvicorn --factory bench.baselines.fastapi_app:create_app
"""

# No `from __future__ import annotations`: FastAPI reads these annotations at runtime.

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated

from fastapi import FastAPI, Header, Query, Request
from fastapi.exceptions import RequestValidationError
from starlette.responses import Response

from bench.baselines.common import Work, problem_outcome, request_id_of, token_of
from generated import models
from handlers.identity import operations
from hangar.config import Settings
from hangar.problems import BadRequest

READ = frozenset({"api-keys:read"})
WRITE = frozenset({"api-keys:write"})


def create_app() -> FastAPI:
    work = Work(Settings.from_env())

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        try:
            yield
        finally:
            work.close()

    app = FastAPI(lifespan=lifespan, openapi_url=None, docs_url=None, redoc_url=None)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> Response:
        request_id = request_id_of(request.headers.get("x-request-id"))
        errors = [{"location": ".".join(map(str, e["loc"])), "message": e["msg"]} for e in exc.errors()]
        problem = BadRequest("The request is not valid.", errors=errors)
        return problem_outcome(problem, request_id, request.url.path).response(request_id)

    @app.get("/v1/api-keys")
    def list_api_keys(
        request: Request,
        limit: Annotated[int, Query(ge=1, le=200)] = 50,
        cursor: Annotated[str | None, Query(max_length=512, pattern=r"^[A-Za-z0-9_-]+$")] = None,
        authorization: Annotated[str | None, Header()] = None,
        x_request_id: Annotated[str | None, Header()] = None,
    ) -> Response:
        request_id = request_id_of(x_request_id)
        outcome = work.handle(
            scopes=READ,
            success=200,
            token=token_of(authorization),
            request_id=request_id,
            path=request.url.path,
            client=request.client.host if request.client else "unknown",
            call=lambda ctx: operations.list_api_keys(ctx, limit=limit, cursor=cursor),
        )
        return outcome.response(request_id)

    @app.post("/v1/api-keys", status_code=201)
    def create_api_key(
        request: Request,
        body: models.ApiKeyCreate,
        authorization: Annotated[str | None, Header()] = None,
        x_request_id: Annotated[str | None, Header()] = None,
    ) -> Response:
        request_id = request_id_of(x_request_id)
        outcome = work.handle(
            scopes=WRITE,
            success=201,
            token=token_of(authorization),
            request_id=request_id,
            path=request.url.path,
            client=request.client.host if request.client else "unknown",
            call=lambda ctx: operations.create_api_key(ctx, body=body),
        )
        return outcome.response(request_id)

    return app
