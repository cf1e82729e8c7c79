"""A small API of widgets to test the runtime with, independent of any bounded context.

Imported by this directory's conftest and tests as `runtime_widgets`.

The spec is built here; the operations are generated.routing's dataclasses filled in by
hand; the handlers record their side effect as an outbox event in the request's
transaction, so "how many times did it run" is a count of rows that only a committed unit
of work leaves behind. `authenticate` is a table of tokens.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from generated.routing import Operation, Param
from hangar.context import Principal, RequestContext
from hangar.outbox import OutboxEvent
from hangar.pagination import paginate
from hangar.problems import Conflict, NotFound

ORG_A = uuid.UUID("0b9f3a52-6c5e-4d8e-9a0e-0d3c8e2f7a11")
ORG_B = uuid.UUID("1c8e2b63-7d6f-4e9f-8b1f-1e4d9f3a8b22")
TOKENS = {
    "tok-full": Principal(ORG_A, uuid.uuid4(), uuid.uuid4(), "owner", frozenset({"widgets:read", "widgets:write"})),
    "tok-full-2": Principal(ORG_A, uuid.uuid4(), uuid.uuid4(), "owner", frozenset({"widgets:read", "widgets:write"})),
    "tok-read": Principal(ORG_A, uuid.uuid4(), uuid.uuid4(), "viewer", frozenset({"widgets:read"})),
    "tok-other": Principal(ORG_B, uuid.uuid4(), uuid.uuid4(), "owner", frozenset({"widgets:read", "widgets:write"})),
}
DUP_ID = uuid.UUID("2d9f3c74-8e7a-4fa0-9c2a-2f5eaf4b9c33")
FULL = {"Authorization": "Bearer tok-full"}
READ = {"Authorization": "Bearer tok-read"}

PROBLEM = {"$ref": "#/components/responses/Problem"}
ERRORS = {code: PROBLEM for code in ("400", "401", "403", "404", "409", "415", "422", "429", "500")}


def _schema_ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


SPEC: dict[str, Any] = {
    "openapi": "3.0.3",
    "info": {"title": "widgets", "version": "1.0.0"},
    "servers": [{"url": "https://api.example.test"}],
    "security": [{"bearer": []}],
    "paths": {
        "/v1/widgets": {
            "get": {
                "operationId": "listWidgets",
                "security": [{"bearer": ["widgets:read"]}],
                "parameters": [
                    {
                        "name": "limit",
                        "in": "query",
                        "schema": {"type": "integer", "minimum": 1, "maximum": 200, "default": 50},
                    },
                    {
                        "name": "cursor",
                        "in": "query",
                        "schema": {"type": "string", "maxLength": 512, "pattern": "^[A-Za-z0-9_-]+$"},
                    },
                ],
                "responses": {
                    "200": {
                        "description": "ok",
                        "content": {"application/json": {"schema": _schema_ref("WidgetList")}},
                    },
                    **ERRORS,
                },
            },
            "post": {
                "operationId": "createWidget",
                "x-idempotency": True,
                "security": [{"bearer": ["widgets:write"]}],
                "parameters": [
                    {
                        "name": "Idempotency-Key",
                        "in": "header",
                        "schema": {"type": "string", "minLength": 1, "maxLength": 255, "pattern": "^[\\x21-\\x7E]+$"},
                    }
                ],
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": _schema_ref("WidgetCreate")}},
                },
                "responses": {
                    "201": {"description": "ok", "content": {"application/json": {"schema": _schema_ref("Widget")}}},
                    **ERRORS,
                },
            },
        },
        "/v1/widgets/{widgetId}": {
            "parameters": [
                {"name": "widgetId", "in": "path", "required": True, "schema": {"type": "string", "format": "uuid"}}
            ],
            "get": {
                "operationId": "getWidget",
                "security": [{"bearer": ["widgets:read"]}],
                "responses": {
                    "200": {"description": "ok", "content": {"application/json": {"schema": _schema_ref("Widget")}}},
                    **ERRORS,
                },
            },
            "delete": {
                "operationId": "deleteWidget",
                "security": [{"bearer": ["widgets:write"]}],
                "responses": {"204": {"description": "gone"}, **ERRORS},
            },
        },
        "/v1/echo": {
            "post": {
                "operationId": "echo",
                "x-idempotency": True,
                "security": [],
                "parameters": [
                    {"name": "Idempotency-Key", "in": "header", "schema": {"type": "string", "maxLength": 255}}
                ],
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "additionalProperties": False,
                                "required": ["message"],
                                "properties": {"message": {"type": "string", "maxLength": 100}},
                            }
                        }
                    },
                },
                "responses": {
                    "200": {
                        "description": "ok",
                        "content": {
                            "application/json": {
                                "schema": {"type": "object", "properties": {"message": {"type": "string"}}}
                            }
                        },
                    },
                    **ERRORS,
                },
            }
        },
        "/v1/fail": {
            "get": {
                "operationId": "fail",
                "security": [{"bearer": []}],
                "parameters": [
                    {
                        "name": "mode",
                        "in": "query",
                        "required": True,
                        "schema": {"type": "string", "enum": ["crash", "bad-response"]},
                    }
                ],
                "responses": {
                    "200": {"description": "ok", "content": {"application/json": {"schema": _schema_ref("Widget")}}},
                    **ERRORS,
                },
            }
        },
    },
    "components": {
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        "schemas": {
            "WidgetCreate": {
                "type": "object",
                "additionalProperties": False,
                "required": ["name", "size"],
                "properties": {
                    "name": {"type": "string", "minLength": 1, "maxLength": 50},
                    "size": {"type": "integer", "minimum": 0, "maximum": 10000},
                    "email": {"type": "string", "format": "email"},
                    "due": {"type": "string", "format": "date-time"},
                    "secret": {"type": "string", "format": "password", "minLength": 8},
                    "note": {"type": "string", "nullable": True},
                },
            },
            "Widget": {
                "type": "object",
                "additionalProperties": False,
                "required": ["id", "name", "size"],
                "properties": {
                    "id": {"type": "string", "format": "uuid"},
                    "name": {"type": "string"},
                    "size": {"type": "integer"},
                    "email": {"type": "string", "format": "email"},
                    "due": {"type": "string", "format": "date-time"},
                },
            },
            "WidgetList": {
                "type": "object",
                "additionalProperties": False,
                "required": ["data", "next_cursor"],
                "properties": {
                    "data": {"type": "array", "items": _schema_ref("Widget")},
                    "next_cursor": {"type": "string", "nullable": True},
                },
            },
            "Problem": {
                "type": "object",
                "additionalProperties": False,
                "required": ["type", "title", "status", "detail", "request_id"],
                "properties": {
                    "type": {"type": "string", "format": "uri-reference"},
                    "title": {"type": "string"},
                    "status": {"type": "integer", "minimum": 400, "maximum": 599},
                    "detail": {"type": "string"},
                    "instance": {"type": "string", "format": "uri-reference", "maxLength": 500},
                    "request_id": {"type": "string", "pattern": "^[A-Za-z0-9_-]+$", "maxLength": 64},
                    "errors": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "required": ["location", "message"],
                            "properties": {"location": {"type": "string"}, "message": {"type": "string"}},
                        },
                    },
                },
            },
        },
        "responses": {
            "Problem": {
                "description": "a problem",
                "content": {"application/problem+json": {"schema": _schema_ref("Problem")}},
            }
        },
    },
}


class Body(BaseModel):
    """Stands in for a generated request model (dispatch only checks there is one)."""


def _op(
    operation_id: str,
    method: str,
    path: str,
    *,
    scopes: tuple[str, ...] = (),
    public: bool = False,
    idempotent: bool = False,
    status: int = 200,
    body: bool = False,
    params: tuple[Param, ...] = (),
) -> Operation:
    return Operation(
        operation_id=operation_id,
        handler_module="tests.widgets",
        handler_name=operation_id,
        context="widgets",
        method=method,
        path=path,
        tag="widgets",
        public=public,
        scopes=scopes,
        idempotent=idempotent,
        success_status=status,
        request_model=Body if body else None,
        response_model=None,
        params=params,
        emits=(),
        cli={},
    )


OPERATIONS = {
    "listWidgets": _op(
        "listWidgets",
        "GET",
        "/v1/widgets",
        scopes=("widgets:read",),
        params=(Param("limit", "limit", "query", False, int), Param("cursor", "cursor", "query", False, str | None)),
    ),
    "createWidget": _op(
        "createWidget", "POST", "/v1/widgets", scopes=("widgets:write",), idempotent=True, status=201, body=True
    ),
    "getWidget": _op(
        "getWidget",
        "GET",
        "/v1/widgets/{widgetId}",
        scopes=("widgets:read",),
        params=(Param("widgetId", "widget_id", "path", True, str),),
    ),
    "deleteWidget": _op(
        "deleteWidget",
        "DELETE",
        "/v1/widgets/{widgetId}",
        scopes=("widgets:write",),
        status=204,
        params=(Param("widgetId", "widget_id", "path", True, str),),
    ),
    "echo": _op("echo", "POST", "/v1/echo", public=True, idempotent=True, body=True),
    "fail": _op("fail", "GET", "/v1/fail", params=(Param("mode", "mode", "query", True, str),)),
}


@dataclass
class Handlers:
    """The widget handlers, with hooks the tests use to steer them."""

    calls: dict[str, int] = field(default_factory=dict)
    # createWidget with name "block" waits here (concurrency tests).
    release: threading.Event = field(default_factory=threading.Event)
    entered: threading.Event = field(default_factory=threading.Event)

    def _count(self, name: str) -> None:
        self.calls[name] = self.calls.get(name, 0) + 1

    def create_widget(self, ctx: RequestContext, body: dict[str, Any]) -> dict[str, Any]:
        self._count("createWidget")
        if body["name"] == "conflict":
            raise Conflict("That widget conflicts with another.")
        if body["name"] == "crash":
            raise RuntimeError("the widget database password is hunter2")
        if body["name"] == "dup":  # a fixed primary key: the second commit hits the constraint
            ctx.session.add(
                OutboxEvent(
                    id=DUP_ID,
                    type="widget.dup",
                    organization_id=None,
                    payload={},
                    created_at=ctx.now,
                    seq=0,
                    attempts=0,
                )
            )
        widget = {"id": str(uuid.uuid4()), **{k: v for k, v in body.items() if k in ("name", "size", "email", "due")}}
        ctx.emit("widget.created", ctx.caller.organization_id, widget)
        if body["name"] == "block":
            self.entered.set()
            assert self.release.wait(30), "the test never released the blocked handler"
        return widget

    def list_widgets(self, ctx: RequestContext, limit: int, cursor: str | None) -> dict[str, Any]:
        stmt = select(OutboxEvent).where(OutboxEvent.organization_id == ctx.caller.organization_id)
        page = paginate(ctx.session, stmt, (OutboxEvent.created_at, OutboxEvent.id), limit=limit, cursor=cursor)
        return {"data": [e.payload["data"] for e in page.items], "next_cursor": page.next_cursor}

    def get_widget(self, ctx: RequestContext, widget_id: str) -> dict[str, Any]:
        for event in ctx.session.scalars(
            select(OutboxEvent).where(OutboxEvent.organization_id == ctx.caller.organization_id)
        ):
            if event.payload["data"]["id"] == widget_id:
                return dict(event.payload["data"])
        raise NotFound(f"No widget {widget_id}.")

    def delete_widget(self, ctx: RequestContext, widget_id: str) -> None:
        self._count("deleteWidget")

    def echo(self, ctx: RequestContext, body: dict[str, Any]) -> dict[str, Any]:
        self._count("echo")
        ctx.emit("echo.said", None, {"message": body["message"]})
        return {"message": body["message"]}

    def fail(self, ctx: RequestContext, mode: str) -> dict[str, Any]:
        if mode == "crash":
            raise RuntimeError("connection to db.internal:5432 refused (password hunter2)")
        return {"id": "not-a-uuid", "surprise": True}

    def bind(self, invoke: Callable[..., Any]) -> dict[str, Callable[..., Any]]:
        """What generated.routing.bind does, for these operations."""
        table = {
            "listWidgets": lambda ctx, limit=50, cursor=None, **_: self.list_widgets(ctx, limit, cursor),
            "createWidget": lambda ctx, body, **_: self.create_widget(ctx, body),
            "getWidget": lambda ctx, widget_id, **_: self.get_widget(ctx, widget_id),
            "deleteWidget": lambda ctx, widget_id, **_: self.delete_widget(ctx, widget_id),
            "echo": lambda ctx, body, **_: self.echo(ctx, body),
            "fail": lambda ctx, mode, **_: self.fail(ctx, mode),
        }

        def endpoint(op: Operation, handler: Callable[..., Any]) -> Callable[..., Any]:
            def run(**kwargs: Any) -> Any:
                return invoke(op, lambda ctx: handler(ctx, **kwargs), kwargs.get("body"))

            return run

        return {op_id: endpoint(OPERATIONS[op_id], handler) for op_id, handler in table.items()}


def authenticate(session: Session, token: str, now: Any) -> Principal | None:
    assert isinstance(session, Session)
    return TOKENS.get(token)


def side_effects(client: Any, event_type: str = "widget.created") -> int:
    """How many committed handler runs left an event of this type."""
    with client.app.runtime.sessions() as session:
        return int(
            session.scalar(select(func.count()).select_from(OutboxEvent).where(OutboxEvent.type == event_type)) or 0
        )


def assert_problem(response: Any, status: int, slug: str | None = None) -> dict[str, Any]:
    """The response is an RFC 9457 problem of this status, with our required members."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json", response.headers
    body = response.json()
    assert {"type", "title", "status", "detail", "request_id"} <= body.keys(), body
    assert body["status"] == status
    assert body["type"].startswith("https://docs.hangar.dev/problems/")
    if slug is not None:
        assert body["type"].endswith("/" + slug), body["type"]
    if response.headers.get("idempotent-replayed") != "true":  # a replay keeps the first id
        assert body["request_id"] == response.headers["x-request-id"]
    return body
