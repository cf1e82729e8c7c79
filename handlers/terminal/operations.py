"""Terminal Gateway operation handlers, one per operationId (see docs/architecture.md).

The websocket itself is not an OpenAPI operation: it is gateway.py, mounted beside the
generated routes (hangar.app), with its contract in specs/asyncapi/terminal.yaml.
"""

from __future__ import annotations

import uuid

from generated import models
from handlers.terminal import configuration, services, urls
from handlers.terminal.tables import TerminalSession
from hangar.context import RequestContext


def create_terminal_session(
    ctx: RequestContext, instance_id: uuid.UUID, body: models.TerminalSessionCreate
) -> models.TerminalSessionCreated:
    settings = configuration.current()
    row, ticket = services.create_session(
        ctx, settings, instance_id=instance_id, command=body.command, cols=body.cols, rows=body.rows
    )
    view = _session(row, ctx)
    return models.TerminalSessionCreated(**view.model_dump(), url=urls.stream_url(settings, row.id), ticket=ticket)


def list_terminal_sessions(
    ctx: RequestContext,
    limit: int,
    cursor: str | None,
    instance_id: uuid.UUID | None,
    status: models.TerminalSessionStatus | None,
) -> models.TerminalSessionList:
    page = services.list_sessions(
        ctx, limit=limit, cursor=cursor, instance_id=instance_id, status=status.value if status is not None else None
    )
    return models.TerminalSessionList(data=[_session(row, ctx) for row in page.items], next_cursor=page.next_cursor)


def get_terminal_session(ctx: RequestContext, session_id: uuid.UUID) -> models.TerminalSession:
    return _session(services.get_session(ctx, session_id), ctx)


def delete_terminal_session(ctx: RequestContext, session_id: uuid.UUID) -> None:
    services.close_session(ctx, session_id)


def _session(row: TerminalSession, ctx: RequestContext) -> models.TerminalSession:
    status, ended_at, end_reason = services.effective_status(row, ctx.now)
    return models.TerminalSession(
        id=row.id,
        instance_id=row.instance_id,
        api_key_id=row.api_key_id,
        status=models.TerminalSessionStatus(status),
        command=list(row.command) if row.command else None,
        cols=row.cols,
        rows=row.rows,
        created_at=row.created_at,
        expires_at=row.ticket_expires_at,
        started_at=row.started_at,
        ended_at=ended_at,
        end_reason=end_reason,
        exit_code=row.exit_code,
        bytes_in=row.bytes_in,
        bytes_out=row.bytes_out,
    )
