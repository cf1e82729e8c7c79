"""The in-process event bus: who consumes which event, and exactly-once effects per consumer.

A consumer is a name plus a handler `handler(session, envelope)`. The name is the identity
its inbox rows (hangar.inbox) are kept under, so renaming a consumer replays history to it:
pick names like "billing.close_account_on_org_deleted" and keep them.

Delivery runs each consumer in its own transaction: the inbox marker and the consumer's
effects commit together, so a redelivered event (the relay retried, the broker redelivered)
is a no-op for every consumer that already handled it, and one failing consumer never
rolls back another. The same subscriptions serve both transports: the relay's
InProcessPublisher calls `deliver`; the AMQP worker calls `deliver_to` per consumer queue.

Contexts register consumers from `handlers/<context>/consumers.py`, a module with
`register(bus: Bus) -> None`; `load_consumers(bus)` imports every such module.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from hangar import inbox
from hangar.discovery import context_modules

log = logging.getLogger(__name__)

Envelope = dict[str, Any]
Handler = Callable[[Session, Envelope], None]
ALL = "*"


@dataclass(frozen=True)
class Subscription:
    event_type: str  # an event type from generated.events.catalog, or "*"
    consumer: str
    handler: Handler


class DeliveryError(Exception):
    """One or more consumers raised; the others committed. Retrying is safe (inbox dedupe)."""

    def __init__(self, event_id: str, failures: dict[str, BaseException]) -> None:
        self.event_id = event_id
        self.failures = failures
        detail = "; ".join(f"{name}: {type(exc).__name__}: {exc}" for name, exc in failures.items())
        super().__init__(f"event {event_id}: {len(failures)} consumer(s) failed: {detail}")


class Bus:
    def __init__(self, session_factory: sessionmaker[Session], known_types: Iterable[str] | None = None) -> None:
        self._session_factory = session_factory
        # When given (the catalog's event types), subscribing to a type that does not exist
        # fails at start-up instead of silently never firing.
        self._known = frozenset(known_types) if known_types is not None else None
        self._subscriptions: list[Subscription] = []

    def subscribe(self, event_type: str, consumer: str, handler: Handler) -> None:
        if self._known is not None and event_type != ALL and event_type not in self._known:
            raise ValueError(f"consumer {consumer!r} subscribes to unknown event type {event_type!r}")
        if any(s.consumer == consumer and s.event_type == event_type for s in self._subscriptions):
            raise ValueError(f"consumer {consumer!r} already subscribes to {event_type!r}")
        if any(s.consumer == consumer and s.handler is not handler for s in self._subscriptions):
            # One inbox identity, one handler: otherwise a dedupe marker of one handler
            # would silently skip the other.
            raise ValueError(f"consumer {consumer!r} is already registered with a different handler")
        self._subscriptions.append(Subscription(event_type, consumer, handler))

    def subscriptions(self) -> tuple[Subscription, ...]:
        return tuple(self._subscriptions)

    def consumers(self) -> dict[str, tuple[str, ...]]:
        """{consumer name: event types it subscribes to}."""
        result: dict[str, list[str]] = {}
        for sub in self._subscriptions:
            result.setdefault(sub.consumer, []).append(sub.event_type)
        return {name: tuple(types) for name, types in result.items()}

    def _handler_for(self, consumer: str, event_type: str) -> Handler | None:
        for sub in self._subscriptions:
            if sub.consumer == consumer and sub.event_type in (event_type, ALL):
                return sub.handler
        return None

    def deliver(self, envelope: Envelope) -> None:
        """Hand the event to every consumer subscribed to its type; raise DeliveryError if any
        consumer failed (after trying all of them)."""
        failures: dict[str, BaseException] = {}
        for consumer in dict.fromkeys(s.consumer for s in self._subscriptions):
            try:
                self.deliver_to(consumer, envelope)
            except Exception as exc:  # one consumer's bug must not starve the others
                log.exception("consumer %s failed on event %s (%s)", consumer, envelope.get("id"), envelope.get("type"))
                failures[consumer] = exc
        if failures:
            raise DeliveryError(str(envelope.get("id")), failures)

    def deliver_to(self, consumer: str, envelope: Envelope) -> bool:
        """Run one consumer on one event in its own transaction. Returns False when the
        consumer does not take this type or already handled this event id."""
        handler = self._handler_for(consumer, str(envelope.get("type")))
        if handler is None:
            return False
        event_id = uuid.UUID(str(envelope["id"]))
        try:
            with self._session_factory() as session, session.begin():
                if inbox.already_processed(session, consumer, event_id):
                    log.debug("consumer %s: event %s already processed", consumer, event_id)
                    return False
                handler(session, envelope)
                inbox.mark_processed(session, consumer, event_id)
        except IntegrityError:
            # A concurrent delivery of the same event committed first (the inbox primary
            # key): its effects stand, ours rolled back. That is the dedupe working.
            with self._session_factory() as session:
                if inbox.already_processed(session, consumer, event_id):
                    log.info("consumer %s: event %s was handled concurrently; skipped", consumer, event_id)
                    return False
            raise
        return True


def load_consumers(bus: Bus, package: str = "handlers") -> list[str]:
    """Import `<package>.<context>.consumers` for every context that has one and call its
    `register(bus)`. Returns the module names, for the start-up log."""
    loaded: list[str] = []
    for name, module in context_modules("consumers", package):
        register = getattr(module, "register", None)
        if not callable(register):
            raise TypeError(f"{name} must define register(bus: hangar.bus.Bus) -> None")
        register(bus)
        loaded.append(name)
    return loaded
