"""Provisioning operation handlers, one per operationId (see docs/architecture.md).

Each calls a service and returns the generated response model; the rows → models
translation is in the `_`-prefixed helpers (public functions here are handlers by
definition). Long-running work is never done here: the answer is the action to poll.
"""

from __future__ import annotations

import uuid

from generated import models
from handlers.provisioning import services
from handlers.provisioning.tables import Action, Instance
from hangar.context import RequestContext


def list_instances(
    ctx: RequestContext, limit: int, cursor: str | None, state: models.InstanceState | None, region: str | None
) -> models.InstanceList:
    page = services.list_instances(
        ctx, limit=limit, cursor=cursor, state=state.value if state is not None else None, region=region
    )
    return models.InstanceList(data=[_instance(i) for i in page.items], next_cursor=page.next_cursor)


def create_instance(ctx: RequestContext, body: models.InstanceCreate) -> models.InstanceLaunch:
    instance, action = services.create_instance(
        ctx, name=body.name, region=body.region, instance_type=body.instance_type, image=body.image
    )
    return models.InstanceLaunch(instance=_instance(instance), action=_action(action))


def get_instance(ctx: RequestContext, instance_id: uuid.UUID) -> models.Instance:
    return _instance(services.get_instance(ctx, instance_id))


def terminate_instance(ctx: RequestContext, instance_id: uuid.UUID) -> models.Action:
    return _action(services.terminate_instance(ctx, instance_id))


def list_instance_actions(
    ctx: RequestContext, instance_id: uuid.UUID, limit: int, cursor: str | None
) -> models.ActionList:
    page = services.list_instance_actions(ctx, instance_id, limit=limit, cursor=cursor)
    return models.ActionList(data=[_action(a) for a in page.items], next_cursor=page.next_cursor)


def create_instance_action(
    ctx: RequestContext, instance_id: uuid.UUID, body: models.InstanceActionRequest
) -> models.Action:
    return _action(services.start_action(ctx, instance_id, body.type.value))


def get_action(ctx: RequestContext, action_id: uuid.UUID) -> models.Action:
    return _action(services.get_action(ctx, action_id))


# --- rows → API models (explicit fields: the saga's bookkeeping never leaks) ---------------


def _instance(instance: Instance) -> models.Instance:
    return models.Instance(
        id=instance.id,
        name=instance.name,
        state=models.InstanceState(instance.state),
        state_reason=instance.state_reason,
        region=instance.region,
        zone=instance.zone,
        instance_type=instance.instance_type,
        image=instance.image,
        vcpus=instance.vcpus,
        memory_mb=instance.memory_mb,
        disk_gb=instance.disk_gb,
        gpus=instance.gpus,
        gpu_model=instance.gpu_model,
        price_per_hour=instance.price_per_hour,
        currency=instance.currency,
        locked=instance.action_id is not None,
        created_at=instance.created_at,
        updated_at=instance.updated_at,
        launched_at=instance.launched_at,
        terminated_at=instance.terminated_at,
    )


def _action(action: Action) -> models.Action:
    error = (
        models.ActionError(code=action.error_code, message=action.error_message or action.error_code)
        if action.error_code
        else None
    )
    return models.Action(
        id=action.id,
        instance_id=action.instance_id,
        type=models.ActionType(action.type),
        status=models.ActionStatus(action.status),
        progress=action.progress,
        error=error,
        created_at=action.created_at,
        started_at=action.started_at,
        completed_at=action.completed_at,
    )
