"""The outbox relay: publishes committed outbox rows (hangar.outbox), oldest first.

Integration (hangar.app's lifespan; the server helper owns that file)::

    from generated.events.catalog import EVENT_TYPES
    from hangar.bus import Bus, load_consumers
    from hangar.relay import Relay, make_publisher

    bus = Bus(session_factory, known_types=EVENT_TYPES)
    load_consumers(bus)                      # handlers/<context>/consumers.py register(bus)
    relay = Relay(settings, session_factory, make_publisher(settings, bus))
    if settings.run_relay:
        relay.start()                        # background thread; woken after every commit
    try:                                     # that wrote outbox rows through session_factory
        yield
    finally:
        relay.stop()                         # joins the thread, closes the publisher

`make_publisher` gives the in-process bus when `settings.broker_url` is None, else an
AmqpPublisher (hangar.amqp) that connects at once and raises BrokerUnavailableError if it cannot.

What one pass (`run_once`) does, per batch of unpublished rows in `seq` order:
- validate the envelope against the event's AsyncAPI schema (generated.events.catalog)
  BEFORE publishing: an invalid one is marked `failed_at` + `last_error`, logged at ERROR,
  and never published (a consumer must never see a payload the contract does not allow);
- publish it; on success set `published_at`; on failure count `attempts`, keep
  `last_error`, set `next_attempt_at` (exponential backoff) and end the pass, so a broker
  outage costs one failed publish per pass, not one per row.

Delivery is at least once (a crash between publish and commit republishes); consumers
deduplicate by event id. On PostgreSQL each batch is claimed with SELECT … FOR UPDATE SKIP
LOCKED, so any number of relays (API processes, workers) share the outbox without
publishing a row twice concurrently. SQLite has one writer: there the relay holds no
transaction while publishing (in-process consumers write in their own transactions).
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

import jsonschema_rs
from sqlalchemy import Row, event, or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from generated.events.catalog import CATALOG, EventSpec
from hangar.bus import Bus, Envelope
from hangar.config import Settings
from hangar.db import utcnow
from hangar.outbox import OutboxEvent

log = logging.getLogger(__name__)

_DIRTY = "hangar.relay.outbox_written"


class Publisher(Protocol):
    """Where the relay hands a validated envelope. Raising means "not delivered, retry"."""

    def publish(self, spec: EventSpec, envelope: Envelope) -> None: ...

    def close(self) -> None: ...


class InProcessPublisher:
    """Embedded mode: delivery is the bus running every subscribed consumer."""

    def __init__(self, bus: Bus) -> None:
        self.bus = bus

    def publish(self, spec: EventSpec, envelope: Envelope) -> None:
        self.bus.deliver(envelope)

    def close(self) -> None:
        pass


def make_publisher(settings: Settings, bus: Bus) -> Publisher:
    if not settings.broker_url:
        return InProcessPublisher(bus)
    from hangar.amqp import AmqpPublisher  # aio-pika and its event loop only when needed

    return AmqpPublisher(settings.broker_url, exchange=settings.amqp_exchange)


@dataclass(frozen=True)
class _Outcome:
    values: dict[str, Any]
    published: bool
    stop_pass: bool


class Relay:
    def __init__(
        self,
        settings: Settings,
        session_factory: sessionmaker[Session],
        publisher: Publisher,
        *,
        batch_size: int = 100,
        poll_interval: float = 0.5,
        base_backoff: float = 1.0,
        max_backoff: float = 60.0,
        catalog: Mapping[str, EventSpec] = CATALOG,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.settings = settings
        self.publisher = publisher
        self.batch_size = batch_size
        self.poll_interval = poll_interval
        self.base_backoff = base_backoff
        self.max_backoff = max_backoff
        self._session_factory = session_factory
        self._catalog = catalog
        self._clock = clock
        self._validators: dict[str, jsonschema_rs.Validator] = {}
        self._pass_lock = threading.Lock()  # one pass at a time per relay (thread + wake + tests)
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ one pass

    def run_once(self) -> int:
        """Publish what is due, batch after batch; return how many rows were published."""
        published = 0
        with self._pass_lock:
            while not self._stopping.is_set():
                count, claimed, stopped = self._run_batch()
                published += count
                if stopped or claimed < self.batch_size:
                    break
        return published

    def _run_batch(self) -> tuple[int, int, bool]:
        now = self._clock()
        with self._session_factory() as session:
            locking = session.get_bind().dialect.name == "postgresql"
            query = (
                select(OutboxEvent.id, OutboxEvent.type, OutboxEvent.payload, OutboxEvent.attempts)
                .where(
                    OutboxEvent.published_at.is_(None),
                    OutboxEvent.failed_at.is_(None),
                    or_(OutboxEvent.next_attempt_at.is_(None), OutboxEvent.next_attempt_at <= now),
                )
                .order_by(OutboxEvent.seq)
                .limit(self.batch_size)
            )
            if locking:
                query = query.with_for_update(skip_locked=True)
            rows = session.execute(query).all()
            if not locking:
                session.rollback()  # hold no SQLite lock while consumers write
            published = 0
            for row in rows:
                outcome = self._handle(row, self._clock())
                session.execute(update(OutboxEvent).where(OutboxEvent.id == row.id).values(**outcome.values))
                if not locking:
                    session.commit()
                published += outcome.published
                if outcome.stop_pass:
                    session.commit()
                    return published, len(rows), True
            session.commit()
            return published, len(rows), False

    def _handle(self, row: Row[Any], now: datetime) -> _Outcome:
        envelope: Envelope = row.payload
        spec = self._catalog.get(row.type)
        problems = self._problems(row, spec, envelope)
        if spec is None or problems:
            message = f"not published: {'; '.join(problems)}"
            log.error(
                "OUTBOX EVENT REJECTED: %s %s breaks the AsyncAPI contract and will never be published: %s",
                row.type,
                row.id,
                "; ".join(problems),
            )
            return _Outcome({"failed_at": now, "last_error": message[:4000]}, published=False, stop_pass=False)
        attempts = row.attempts + 1
        try:
            self.publisher.publish(spec, envelope)
        except Exception as exc:
            delay = self.backoff(attempts)
            log.warning(
                "publishing %s %s failed (attempt %d), retrying in %.0fs: %s", row.type, row.id, attempts, delay, exc
            )
            return _Outcome(
                {
                    "attempts": attempts,
                    "last_error": f"{type(exc).__name__}: {exc}"[:4000],
                    "next_attempt_at": now + timedelta(seconds=delay),
                },
                published=False,
                stop_pass=True,
            )
        return _Outcome(
            {"attempts": attempts, "published_at": now, "last_error": None, "next_attempt_at": None},
            published=True,
            stop_pass=False,
        )

    def _problems(self, row: Row[Any], spec: EventSpec | None, envelope: Any) -> list[str]:
        if spec is None:
            return [f"unknown event type {row.type!r} (not in specs/asyncapi)"]
        if not isinstance(envelope, dict):
            return ["the payload is not a JSON object"]
        problems = []
        if envelope.get("type") != row.type or str(envelope.get("id")) != str(row.id):
            problems.append("the envelope's id/type do not match the outbox row")
        validator = self._validators.get(spec.type)
        if validator is None:
            validator = jsonschema_rs.validator_for(dict(spec.json_schema), validate_formats=True)
            self._validators[spec.type] = validator
        for error in validator.iter_errors(envelope):
            path = "/".join(str(part) for part in error.instance_path) or "(root)"
            problems.append(f"{path}: {error.message}")
        return problems

    def backoff(self, attempts: int) -> float:
        """Seconds to wait after the `attempts`-th failed publish: 1, 2, 4 … capped."""
        return float(min(self.max_backoff, self.base_backoff * 2 ** max(0, attempts - 1)))

    # ------------------------------------------------------------------ background thread

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stopping.clear()
        event.listen(self._session_factory, "after_flush", _note_outbox_rows)
        event.listen(self._session_factory, "after_commit", self._after_commit)
        self._thread = threading.Thread(target=self._loop, name="hangar-relay", daemon=True)
        self._thread.start()
        log.info("outbox relay started (%s)", type(self.publisher).__name__)

    def wake(self) -> None:
        """Run a pass now instead of at the next poll (called after commits with outbox rows)."""
        self._wake.set()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the thread (finishing the row in hand) and close the publisher."""
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning("outbox relay did not stop within %.0fs", timeout)
            self._thread = None
        for name, fn in (("after_flush", _note_outbox_rows), ("after_commit", self._after_commit)):
            with contextlib.suppress(Exception):  # not listening (start() never ran)
                event.remove(self._session_factory, name, fn)
        self.publisher.close()

    def _loop(self) -> None:
        while not self._stopping.is_set():
            self._wake.clear()
            try:
                self.run_once()
            except Exception:  # the database is down, …: log and try again at the next poll
                log.exception("outbox relay pass failed; retrying in %.1fs", self.poll_interval)
            self._wake.wait(self.poll_interval)

    def _after_commit(self, session: Session) -> None:
        if session.info.pop(_DIRTY, False):
            self.wake()


def _note_outbox_rows(session: Session, _flush_context: Any) -> None:
    # after_flush still sees the flushed objects in session.new: remember that this
    # transaction wrote events, so only such commits wake the relay.
    if any(isinstance(obj, OutboxEvent) for obj in session.new):
        session.info[_DIRTY] = True
