"""Provisioning use cases behind the API: the rules, on the tables, inside the caller's unit
of work. operations.py turns the rows returned here into the generated API models.

What happens *after* an answer — placing, building, stopping, destroying — is the saga's
(saga.py); these functions only record the request: an action row, the instance moved to
its transitional state through the state machine, the instance locked by the action, the
saga's first step scheduled. Nothing here commits: the runtime commits on success, so the
state change, its events and the idempotency record land together.

Tenant isolation has one shape: rows are loaded by (id, caller's organization_id) and
anything else is NotFound — another tenant's id looks exactly like a missing one.
Every instance about to change is loaded through locks.lock_instance, which serialises API
calls and saga steps on that instance (row lock on PostgreSQL, write lock on SQLite).
"""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from handlers.inventory import published
from handlers.provisioning import configuration, events, hooks, saga, states
from handlers.provisioning.locks import lock_instance
from handlers.provisioning.runner import kick_after_commit
from handlers.provisioning.tables import Action, Instance
from hangar.context import RequestContext
from hangar.pagination import Page, paginate
from hangar.problems import Conflict, NotFound, Problem


class ResourceLocked(Conflict):
    """409: another action holds the instance."""

    slug = "resource-locked"
    title = "Resource Locked"


class InvalidState(Conflict):
    """409: the instance's state does not allow the action."""

    slug = "invalid-state"
    title = "Invalid State"


class InsufficientCredits(Problem):
    """402: billing will not hold the minimum run time's price (hooks.billing_hold)."""

    status = 402
    slug = "insufficient-credits"
    title = "Insufficient Credits"


# --- instances ----------------------------------------------------------------------------


def list_instances(
    ctx: RequestContext, *, limit: int, cursor: str | None, state: str | None, region: str | None
) -> Page[Instance]:
    query = select(Instance).where(Instance.organization_id == ctx.caller.organization_id)
    if state is not None:
        query = query.where(Instance.state == state)
    if region is not None:
        query = query.where(Instance.region == region)
    return paginate(ctx.session, query, (Instance.created_at, Instance.id), limit=limit, cursor=cursor, descending=True)


def get_instance(ctx: RequestContext, instance_id: uuid.UUID) -> Instance:
    instance = ctx.session.scalar(
        select(Instance).where(Instance.id == instance_id, Instance.organization_id == ctx.caller.organization_id)
    )
    if instance is None:
        raise _instance_not_found(instance_id)
    return instance


def create_instance(
    ctx: RequestContext, *, name: str, region: str, instance_type: str, image: str
) -> tuple[Instance, Action]:
    """Record the launch (instance `pending`, `create` action queued and holding the lock)
    and announce it with `instance.requested`; the saga places and builds it."""
    session, now, organization_id = ctx.session, ctx.now, ctx.caller.organization_id
    launch = published.resolve_launch(session, region=region, instance_type=instance_type, image=image)
    instance = Instance(
        id=uuid.uuid4(),
        organization_id=organization_id,
        name=name,
        region=launch.region,
        zone=None,
        instance_type=launch.instance_type,
        image=launch.image,
        vcpus=launch.vcpus,
        memory_mb=launch.memory_mb,
        disk_gb=launch.disk_gb,
        gpus=launch.gpus,
        gpu_model=launch.gpu_model,
        price_per_hour=launch.price_per_hour,
        currency=launch.currency,
        attempt=1,
        tried_hosts=[],
        step_errors=0,
        fault_retryable=False,
        revision=0,
    )
    states.begin_life(instance, now)
    action = _new_action(instance, "create", ctx)
    instance.action_id = action.id
    saga.schedule(instance, now)
    # Written before the quota is read: on SQLite this first write takes the database's
    # write lock, so no claim can commit between the reads below (see pending_resources).
    session.add(instance)
    session.flush()  # also: the instance before its action (the action's foreign key)
    settings = configuration.current()
    # An early answer; the claim enforces the quota again under inventory's quota lock.
    published.check_quota(
        session,
        organization_id=organization_id,
        launch=launch,
        pending=pending_resources(session, organization_id, excluding=instance.id),
        quota_vcpus=settings.quota_vcpus,
        quota_gpus=settings.quota_gpus,
    )
    session.add(action)
    # The launch's hold, in the request: no credit is a 402 now, not a failed action later
    # (the saga's hold step finds it in place). Rolled back with everything on any refusal.
    _hold(session, instance, action, now)
    events.instance_requested(session, instance, action, now)
    return instance, action


def pending_resources(
    session: Session, organization_id: uuid.UUID, *, excluding: uuid.UUID | None = None
) -> published.Resources:
    """What the organization's accepted-but-unplaced instances will claim: inventory counts
    only allocations, so without these a burst of creates could all pass the quota check.

    The count and inventory's usage are two reads, and a claim committing between them
    would be counted twice (pending here, in use there): a spurious 409. The pending rows
    are therefore read FOR UPDATE: on PostgreSQL that waits for a claim step holding one of
    them and then re-reads it (no longer pending), so the usage read that follows includes
    that claim exactly once; on SQLite the caller's earlier write already holds the lock.
    Locked in id order, so two creates never deadlock on each other's rows."""
    rows = session.execute(
        select(Instance.vcpus, Instance.memory_mb, Instance.disk_gb, Instance.gpus)
        .where(
            Instance.organization_id == organization_id,
            Instance.state == states.PENDING,
            *([Instance.id != excluding] if excluding is not None else []),
        )
        .order_by(Instance.id)
        .with_for_update()
    ).all()
    return published.Resources(
        vcpus=sum(r.vcpus for r in rows),
        memory_mb=sum(r.memory_mb for r in rows),
        disk_gb=sum(r.disk_gb for r in rows),
        gpus=sum(r.gpus for r in rows),
    )


def start_action(ctx: RequestContext, instance_id: uuid.UUID, action_type: str, *, reason: str | None = None) -> Action:
    """Start a stop, start, reboot or terminate: 409 `resource-locked` while another action
    runs, 409 `invalid-state` when the state does not allow it, 402 `insufficient-credits`
    when billing will not hold a start's minimum run time. `reason` (the platform's stops,
    e.g. "balance_depleted") stays on the instance as its state_reason once stopped."""
    instance = _lock(ctx, instance_id)
    _refuse_if_locked(ctx, instance, action_type)
    target = states.ACTIONS[action_type].get(instance.state)
    if target is None:
        accepted = states.actions_allowed(instance.state)
        needs = " or ".join(states.ACTIONS[action_type])
        raise InvalidState(
            f"Instance {instance.id} is {instance.state}; `{action_type}` needs it {needs}. "
            + (
                f"In state {instance.state} it accepts: {', '.join(accepted)}."
                if accepted
                else f"In state {instance.state} it accepts no action."
            )
        )
    action = _new_action(instance, action_type, ctx)
    ctx.session.add(action)
    ctx.session.flush()
    if action_type == "start":
        _hold(ctx.session, instance, action, ctx.now)
    states.transition(ctx.session, instance, target, now=ctx.now, action_id=action.id, reason=reason)
    instance.action_id = action.id
    saga.schedule(instance, ctx.now)
    kick_after_commit(ctx.session)  # this process's runner starts it right after the commit
    return action


def terminate_instance(ctx: RequestContext, instance_id: uuid.UUID) -> Action:
    """Idempotent: an instance already terminating or terminated answers with the action
    that is terminating (or terminated) it."""
    instance = _lock(ctx, instance_id)
    if instance.state in (states.TERMINATING, states.TERMINATED):
        existing = ctx.session.scalar(
            select(Action)
            .where(Action.instance_id == instance.id, Action.type == "terminate")
            .order_by(Action.created_at.desc(), Action.id.desc())
            .limit(1)
        )
        if existing is not None:
            return existing
    return start_action(ctx, instance_id, "terminate")


# --- actions ------------------------------------------------------------------------------


def list_instance_actions(
    ctx: RequestContext, instance_id: uuid.UUID, *, limit: int, cursor: str | None
) -> Page[Action]:
    instance = get_instance(ctx, instance_id)
    query = select(Action).where(Action.instance_id == instance.id)
    return paginate(ctx.session, query, (Action.created_at, Action.id), limit=limit, cursor=cursor, descending=True)


def get_action(ctx: RequestContext, action_id: uuid.UUID) -> Action:
    action = ctx.session.scalar(
        select(Action).where(Action.id == action_id, Action.organization_id == ctx.caller.organization_id)
    )
    if action is None:
        raise NotFound(f"There is no action {action_id}.")
    return action


# --- helpers ------------------------------------------------------------------------------


def _instance_not_found(instance_id: uuid.UUID) -> NotFound:
    return NotFound(f"There is no instance {instance_id}.")


def _lock(ctx: RequestContext, instance_id: uuid.UUID) -> Instance:
    instance = lock_instance(ctx.session, instance_id, organization_id=ctx.caller.organization_id)
    if instance is None:
        raise _instance_not_found(instance_id)
    return instance


def _refuse_if_locked(ctx: RequestContext, instance: Instance, action_type: str) -> None:
    if instance.action_id is None:
        return
    running = ctx.session.get(Action, instance.action_id)
    what = f"its {running.type} action {running.id} is {running.status}" if running else "an action runs"
    raise ResourceLocked(
        f"Instance {instance.id} is locked: {what}. Wait for that action to finish before `{action_type}`."
    )


def _hold(session: Session, instance: Instance, action: Action, now: datetime) -> None:
    request = hooks.HoldRequest(
        organization_id=instance.organization_id,
        instance_id=instance.id,
        action_id=action.id,
        instance_type=instance.instance_type,
        price_per_hour=instance.price_per_hour,
        currency=instance.currency,
    )
    try:
        hooks.billing_hold(session, request, now=now)
    except hooks.HoldRefused as refusal:
        raise InsufficientCredits(refusal.message) from None


def _new_action(instance: Instance, action_type: str, ctx: RequestContext) -> Action:
    return Action(
        id=uuid.uuid4(),
        organization_id=instance.organization_id,
        instance_id=instance.id,
        type=action_type,
        status="queued",
        progress=0,
        created_at=ctx.now,
    )
