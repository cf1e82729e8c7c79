"""The API server: `create_app(settings)` wires the runtime, the generated routing and the
handlers into a connexion AsyncApp; `main()` is the `hangar-server` console script.

The request path, outermost first (each layer's module says why it exists):

    Edge                hangar.edge        request id + state, bundled specs, every error → problem+json
    Docs                connexion          Swagger UI at /docs (other paths skip it)
    Routing             connexion          path + method → operationId (404/405 raised here)
    SecurityGate        hangar.security    per-address limits (public), 401 without a token
    RequestValidation   hangar.validators  compiled validators; coerced params + parsed body
    ResponseValidation  connexion          only with settings.validate_responses
    Lifespan            connexion          start/stop the outbox relay, dispose the engine
    endpoints           hangar.dispatch    generated adapter → hangar.invoke → handler

Nothing happens at import time; everything is built here, from `settings`.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from connexion.middleware.lifespan import LifespanMiddleware
from connexion.middleware.response_validation import ResponseValidationMiddleware
from connexion.middleware.routing import RoutingMiddleware
from connexion.middleware.swagger_ui import SwaggerUIMiddleware
from connexion.options import SwaggerUIOptions
from connexion.resolver import Resolver
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker
from starlette.types import Receive, Scope, Send

from hangar.config import ROOT, Settings
from hangar.console import ConsoleMiddleware
from hangar.db import make_engine, make_session_factory
from hangar.dispatch import HangarApp
from hangar.edge import Edge
from hangar.errors import AllowedMethods
from hangar.idempotency import IdempotencyStore
from hangar.invoke import Invoker
from hangar.ratelimit import RateLimiter
from hangar.security import Authenticate, Gatekeeper, SecurityGate
from hangar.validators import VALIDATOR_MAP, RequestValidationMiddleware

log = logging.getLogger("hangar.app")

GENERATED = ROOT / "generated"


class DocsMiddleware(SwaggerUIMiddleware):
    """connexion's Swagger UI, consulted only for paths under /docs: the API's requests skip
    its router (and the scope copy it makes) entirely."""

    PREFIX = "/docs"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not scope["path"].startswith(self.PREFIX):
            await self.app(scope, receive, send)
            return
        await super().__call__(scope, receive, send)


class StartupError(RuntimeError):
    """The server cannot start; the message says why and what to do."""


@dataclass(frozen=True)
class Wiring:
    """What the server is built from. `default_wiring()` is the real thing; tests pass
    their own spec, operations and handlers."""

    openapi: Path
    asyncapi: Path | None
    operations: Mapping[str, Any]  # {operationId: generated.routing.Operation}
    # bind(invoke) -> {operationId: endpoint}; raises naming missing/misfitting handlers.
    bind: Callable[[Invoker], Mapping[str, Callable[..., Any]]]
    authenticate: Authenticate
    # relay(settings, session_factory) -> an object with start()/stop(), or None.
    relay: Callable[[Settings, sessionmaker[Session]], Any] | None = None
    # The contexts' start-up work and background services (hangar.background), or None.
    background: Callable[[], Any] | None = None
    # Routes outside the OpenAPI document (the terminal websocket): middleware(settings,
    # sessions) → a middleware factory put first in the stack, or None.
    websockets: Callable[[Settings, sessionmaker[Session]], Any] | None = None


def default_wiring() -> Wiring:
    try:
        from generated import routing
    except ImportError as exc:  # a fresh clone before its first `make generate`
        raise StartupError(f"hangar-server cannot start: {exc}. Run `make generate` first.") from exc
    from handlers.identity.published import authenticate
    from hangar.handlers_registry import load_handlers

    def bind(invoke: Invoker) -> Mapping[str, Callable[..., Any]]:
        return routing.bind(load_handlers(routing.OPERATIONS), invoke)

    return Wiring(
        openapi=GENERATED / "openapi.json",
        asyncapi=GENERATED / "asyncapi.json",
        operations=routing.OPERATIONS,
        bind=bind,
        authenticate=authenticate,
        relay=_make_relay,
        background=_discover_background,
        websockets=_terminal_routes,
    )


def _terminal_routes(settings: Settings, sessions: sessionmaker[Session]) -> Any:
    from handlers.terminal.gateway import middleware

    return middleware(settings, sessions)


def _discover_background() -> Any:
    from hangar.background import discover

    return discover()


def _make_relay(settings: Settings, sessions: sessionmaker[Session]) -> Any:
    from generated.events.catalog import EVENT_TYPES
    from hangar.bus import Bus, load_consumers
    from hangar.relay import Relay, make_publisher

    bus = Bus(sessions, known_types=EVENT_TYPES)
    load_consumers(bus)
    return Relay(settings, sessions, make_publisher(settings, bus))


@dataclass
class Runtime:
    """The objects one app owns (tests reach them through `app.runtime`)."""

    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    gatekeeper: Gatekeeper
    idempotency: IdempotencyStore
    invoker: Invoker
    limiters: dict[str, RateLimiter]


def _endpoints(wiring: Wiring, invoker: Invoker, spec: Mapping[str, Any]) -> Mapping[str, Callable[..., Any]]:
    try:
        endpoints = wiring.bind(invoker)
    except (LookupError, RuntimeError) as exc:  # MissingHandlersError, HandlerRegistryError
        raise StartupError(f"hangar-server cannot start: {exc}") from exc
    spec_ids = [
        op["operationId"]
        for item in spec.get("paths", {}).values()
        for method, op in item.items()
        if isinstance(op, dict) and "operationId" in op
    ]
    problems = [f"{op_id}: in the spec but no endpoint was bound" for op_id in spec_ids if op_id not in endpoints]
    # An operation missing from the registry would pass the security gate unguarded.
    problems += [
        f"{op_id}: in the spec but not in the operation registry"
        for op_id in spec_ids
        if op_id not in wiring.operations
    ]
    if problems:
        raise StartupError(
            "hangar-server cannot start: the routing does not match the spec:\n  " + "\n  ".join(problems)
        )
    return endpoints


def create_app(settings: Settings, wiring: Wiring | None = None) -> HangarApp:
    wiring = wiring or default_wiring()
    engine = make_engine(settings.database_url)
    sessions = make_session_factory(engine)
    limiters = {
        "per_key": RateLimiter(settings.rate_limit_per_minute),
        "per_address": RateLimiter(settings.public_rate_limit_per_minute),
        "unauthenticated": RateLimiter(settings.rate_limit_per_minute),
    }
    gatekeeper = Gatekeeper(wiring.authenticate, sessions, **limiters)
    idempotency = IdempotencyStore(sessions, settings.idempotency_ttl_seconds)
    invoker = Invoker(sessions, gatekeeper, idempotency)

    openapi_bytes = wiring.openapi.read_bytes()
    spec = json.loads(openapi_bytes)
    endpoints = _endpoints(wiring, invoker, spec)
    documents = {"/v1/openapi.json": openapi_bytes}
    if wiring.asyncapi is not None:
        documents["/v1/asyncapi.json"] = wiring.asyncapi.read_bytes()

    @asynccontextmanager
    async def lifespan(_app: Any) -> AsyncIterator[None]:
        background = wiring.background() if wiring.background else None
        if background is not None:
            background.prepare(settings, sessions)  # e.g. seed the catalogue; always, even without workers
        relay = wiring.relay(settings, sessions) if (settings.run_relay and wiring.relay) else None
        if relay is not None:
            relay.start()
        try:
            if background is not None and settings.run_relay:
                background.start(settings, sessions)  # e.g. the provisioning saga runner
            yield
        finally:
            if background is not None:
                background.stop()
            if relay is not None:
                relay.stop()
            engine.dispose()

    middlewares: list[Any] = [
        partial(Edge, documents=documents, allowed=AllowedMethods.from_spec(spec)),
        # terminal (browser console): GET /console/instances/{id}/terminal and its static files;
        # HTML, outside the OpenAPI document (hangar/console/__init__.py says why).
        ConsoleMiddleware,
        DocsMiddleware,
        RoutingMiddleware,
        partial(SecurityGate, operations=wiring.operations, gatekeeper=gatekeeper),
        RequestValidationMiddleware,
    ]
    if wiring.websockets is not None:  # outermost: websocket scopes never enter connexion
        middlewares.insert(0, wiring.websockets(settings, sessions))
    if settings.validate_responses:
        middlewares.append(ResponseValidationMiddleware)
    middlewares.append(LifespanMiddleware)

    app = HangarApp(
        __name__,
        operations=wiring.operations,
        lifespan=lifespan,
        middlewares=middlewares,
        pythonic_params=True,
        validate_responses=settings.validate_responses,
        validator_map=VALIDATOR_MAP,
        # The exact bundle is at /v1/openapi.json; the UI reads connexion's copy, whose
        # `servers` point at this server so "Try it out" works.
        swagger_ui_options=SwaggerUIOptions(
            swagger_ui_path=DocsMiddleware.PREFIX, spec_path=DocsMiddleware.PREFIX + "/openapi.json"
        ),
    )
    app.add_api(spec, resolver=Resolver(function_resolver=lambda op_id: endpoints[op_id]))
    app.runtime = Runtime(settings, engine, sessions, gatekeeper, idempotency, invoker, limiters)
    return app


# -- hangar-server ------------------------------------------------------------------------------


def _database_label(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def migration_problem(database_url: str, alembic_ini: Path = ROOT / "alembic.ini") -> str | None:
    """Why the database is not ready to serve (None when it is at alembic head)."""
    from alembic.config import Config
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory
    from sqlalchemy.exc import SQLAlchemyError

    heads = set(ScriptDirectory.from_config(Config(str(alembic_ini))).get_heads())
    engine = make_engine(database_url)
    try:
        with engine.connect() as connection:
            current = set(MigrationContext.configure(connection).get_current_heads())
    except SQLAlchemyError as exc:
        return f"cannot reach the database at {_database_label(database_url)}: {exc}"
    finally:
        engine.dispose()
    if current != heads:
        at = f"it is at {', '.join(sorted(current))}" if current else "it has no migrations applied"
        return (
            f"the database at {_database_label(database_url)} is not migrated to the latest schema "
            f"({at}; head is {', '.join(sorted(heads))}). Run `make migrate` (alembic upgrade head) first."
        )
    return None


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc = {
            "time": self.formatTime(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return json.dumps(doc)


def _configure_logging(settings: Settings) -> None:
    handler = logging.StreamHandler()
    if settings.log_json:
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.INFO, handlers=[handler], force=True)
    # Their INFO lines describe plumbing (the migration check, connexion's routes), not service.
    for noisy in ("alembic", "connexion"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def app_from_env() -> HangarApp:
    """For `uvicorn --factory hangar.app:app_from_env` (several workers, benchmarks)."""
    return create_app(Settings.from_env())


def main() -> None:
    settings = Settings.from_env()
    _configure_logging(settings)
    problem = migration_problem(settings.database_url)
    if problem is not None:
        print(f"hangar-server: {problem}", file=sys.stderr)
        raise SystemExit(2)
    try:
        app = create_app(settings)
    except StartupError as exc:
        print(str(exc), file=sys.stderr)
        raise SystemExit(2) from None

    import uvicorn

    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,
        # Dead terminal peers are found by websocket pings (docs/terminal.md).
        ws_ping_interval=settings.terminal_ping_interval_seconds,
        ws_ping_timeout=settings.terminal_ping_timeout_seconds,
        # Terminal frames are small and latency-bound: compressing each one costs CPU on both
        # ends for little gain (bench/terminal.py).
        ws_per_message_deflate=False,
    )


if __name__ == "__main__":
    main()
