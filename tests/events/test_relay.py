"""Outbox → relay → in-process bus: delivered once, deduped, validated, retried."""

from __future__ import annotations

import logging
import threading
import uuid
from datetime import datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from generated.events.catalog import CATALOG, EVENT_TYPES, EventSpec
from hangar import outbox
from hangar.bus import Bus, DeliveryError
from hangar.config import Settings
from hangar.db import utcnow
from hangar.inbox import ProcessedEvent
from hangar.outbox import OutboxEvent
from hangar.relay import InProcessPublisher, Relay, make_publisher

from .helpers import api_key_data, record_event

SETTINGS = Settings(database_url="sqlite://", broker_url=None)


class Clock:
    def __init__(self) -> None:
        self.now = utcnow()

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


class Recorder:
    """A consumer that remembers what it saw and writes an effect in its transaction."""

    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []
        self.fail_times = 0

    def __call__(self, session: Session, envelope: dict[str, Any]) -> None:
        if self.fail_times:
            self.fail_times -= 1
            raise RuntimeError("consumer bug")
        self.seen.append(envelope)


class FlakyPublisher:
    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.published: list[dict[str, Any]] = []

    def publish(self, spec: EventSpec, envelope: dict[str, Any]) -> None:
        if self.failures:
            self.failures -= 1
            raise ConnectionError("broker down")
        self.published.append(envelope)

    def close(self) -> None:
        pass


def _row(session_factory: sessionmaker[Session], event_id: uuid.UUID) -> OutboxEvent:
    with session_factory() as session:
        row = session.get(OutboxEvent, event_id)
        assert row is not None
        return row


def _bus(session_factory: sessionmaker[Session], *consumers: tuple[str, str, Recorder]) -> Bus:
    bus = Bus(session_factory, known_types=EVENT_TYPES)
    for event_type, name, handler in consumers:
        bus.subscribe(event_type, name, handler)
    return bus


def test_outbox_row_is_delivered_once_through_the_bus(session_factory: sessionmaker[Session]) -> None:
    seen = Recorder()
    everything = Recorder()
    bus = _bus(session_factory, ("api_key.created", "test.keys", seen), ("*", "test.audit", everything))
    relay = Relay(SETTINGS, session_factory, InProcessPublisher(bus))
    event_id = record_event(session_factory)

    assert relay.run_once() == 1
    assert relay.run_once() == 0

    assert [e["id"] for e in seen.seen] == [str(event_id)]
    assert [e["id"] for e in everything.seen] == [str(event_id)]
    envelope = seen.seen[0]
    assert set(envelope) == {"id", "type", "occurred_at", "organization_id", "data"}
    row = _row(session_factory, event_id)
    assert row.published_at is not None and row.failed_at is None and row.attempts == 1


def test_relay_publishes_in_seq_order(session_factory: sessionmaker[Session]) -> None:
    publisher = FlakyPublisher(failures=0)
    ids = [record_event(session_factory) for _ in range(5)]
    relay = Relay(SETTINGS, session_factory, publisher, batch_size=2)  # several batches
    assert relay.run_once() == 5
    assert [e["id"] for e in publisher.published] == [str(i) for i in ids]


def test_redelivered_event_is_a_no_op_for_consumers(session_factory: sessionmaker[Session]) -> None:
    seen = Recorder()
    bus = _bus(session_factory, ("api_key.created", "test.keys", seen))
    relay = Relay(SETTINGS, session_factory, InProcessPublisher(bus))
    event_id = record_event(session_factory)
    assert relay.run_once() == 1

    # The relay crashed after publishing but before recording it: the row comes back.
    with session_factory() as session, session.begin():
        session.execute(update(OutboxEvent).values(published_at=None))
    assert relay.run_once() == 1
    bus.deliver(dict(seen.seen[0]))  # and a direct duplicate delivery

    assert len(seen.seen) == 1
    with session_factory() as session:
        markers = session.scalars(select(ProcessedEvent.consumer).where(ProcessedEvent.event_id == event_id)).all()
    assert markers == ["test.keys"]


def test_consumer_effects_and_inbox_marker_commit_together(session_factory: sessionmaker[Session]) -> None:
    def emit_follow_up(session: Session, envelope: dict[str, Any]) -> None:
        # An effect in the consumer's own transaction: a follow-up event in the outbox.
        calls.append(1)
        outbox.record(session, "api_key.revoked", uuid.UUID(envelope["organization_id"]), {"x": 1})
        if len(calls) == 1:
            raise RuntimeError("fails after writing its effect")

    calls: list[int] = []
    bus = Bus(session_factory)
    bus.subscribe("api_key.created", "test.follow_up", emit_follow_up)
    envelope = _row(session_factory, record_event(session_factory)).payload

    with pytest.raises(DeliveryError):
        bus.deliver(envelope)  # rolled back: neither the effect nor the marker stays
    bus.deliver(envelope)
    bus.deliver(envelope)
    with session_factory() as session:
        follow_ups = session.scalar(select(func.count()).where(OutboxEvent.type == "api_key.revoked"))
        markers = session.scalar(select(func.count()).select_from(ProcessedEvent))
    assert (follow_ups, markers, len(calls)) == (1, 1, 2)


def test_failing_consumer_is_retried_without_rerunning_the_others(session_factory: sessionmaker[Session]) -> None:
    good, flaky = Recorder(), Recorder()
    flaky.fail_times = 1
    bus = _bus(session_factory, ("api_key.created", "test.good", good), ("api_key.created", "test.flaky", flaky))
    clock = Clock()
    relay = Relay(SETTINGS, session_factory, InProcessPublisher(bus), clock=clock)
    event_id = record_event(session_factory)

    assert relay.run_once() == 0
    row = _row(session_factory, event_id)
    assert row.published_at is None and row.attempts == 1
    assert "test.flaky" in (row.last_error or "")

    clock.advance(relay.backoff(1))
    assert relay.run_once() == 1
    assert (len(good.seen), len(flaky.seen)) == (1, 1)


def test_schema_invalid_payload_is_marked_failed_and_never_published(
    session_factory: sessionmaker[Session], caplog: pytest.LogCaptureFixture
) -> None:
    publisher = FlakyPublisher(failures=0)
    relay = Relay(SETTINGS, session_factory, publisher)
    missing_prefix = api_key_data()
    del missing_prefix["prefix"]
    bad = record_event(session_factory, data=missing_prefix)
    extra = record_event(session_factory, data=api_key_data(secret="hgr_live_…"))  # additionalProperties: false
    bad_format = record_event(
        session_factory, "member.invited", {"member_id": "1", "user_id": "2", "email": "x", "role": "owner"}
    )
    unknown = record_event(session_factory, "api_key.exploded", api_key_data())
    good = record_event(session_factory)

    with caplog.at_level(logging.ERROR, logger="hangar.relay"):
        assert relay.run_once() == 1

    assert [e["id"] for e in publisher.published] == [str(good)]
    for event_id, expected in [
        (bad, "prefix"),
        (extra, "secret"),
        (bad_format, "uuid"),
        (unknown, "unknown event type"),
    ]:
        row = _row(session_factory, event_id)
        assert row.failed_at is not None and row.published_at is None, event_id
        assert expected in (row.last_error or ""), row.last_error
    assert sum("OUTBOX EVENT REJECTED" in r.getMessage() for r in caplog.records) == 4
    assert relay.run_once() == 0  # failed rows are not retried


def test_publish_failure_is_retried_with_backoff(session_factory: sessionmaker[Session]) -> None:
    publisher = FlakyPublisher(failures=2)
    clock = Clock()
    relay = Relay(SETTINGS, session_factory, publisher, clock=clock)
    first = record_event(session_factory)
    second = record_event(session_factory)

    assert relay.run_once() == 0  # the pass stops at the first failure
    row = _row(session_factory, first)
    assert (row.attempts, row.published_at) == (1, None)
    assert "broker down" in (row.last_error or "")
    assert row.next_attempt_at == clock.now + timedelta(seconds=1)
    assert _row(session_factory, second).attempts == 0

    assert relay.run_once() == 0  # `first` waits for its backoff; `second` fails now
    assert _row(session_factory, second).attempts == 1
    clock.advance(1)
    assert relay.run_once() == 2
    assert [e["id"] for e in publisher.published] == [str(first), str(second)]
    assert _row(session_factory, first).last_error is None


def test_backoff_doubles_and_is_capped() -> None:
    relay = Relay(SETTINGS, sessionmaker(), FlakyPublisher(0), base_backoff=1, max_backoff=30)
    assert [relay.backoff(n) for n in (1, 2, 3, 4, 5, 6, 20)] == [1, 2, 4, 8, 16, 30, 30]


def test_background_relay_is_woken_by_a_commit(session_factory: sessionmaker[Session]) -> None:
    delivered = threading.Event()

    def handler(session: Session, envelope: dict[str, Any]) -> None:
        delivered.set()

    bus = Bus(session_factory)
    bus.subscribe("api_key.created", "test.wake", handler)
    # A poll interval far longer than the wait below: only the after_commit wake can deliver.
    relay = Relay(SETTINGS, session_factory, InProcessPublisher(bus), poll_interval=3600)
    relay.start()
    try:
        relay.run_once()  # wait for the first (empty) pass to be over
        record_event(session_factory)
        assert delivered.wait(30), "the commit did not wake the relay"
    finally:
        relay.stop()


def test_make_publisher_is_in_process_without_a_broker(session_factory: sessionmaker[Session]) -> None:
    assert isinstance(make_publisher(SETTINGS, Bus(session_factory)), InProcessPublisher)


def test_bus_rejects_unknown_event_types_and_conflicting_handlers(session_factory: sessionmaker[Session]) -> None:
    bus = Bus(session_factory, known_types=CATALOG)
    with pytest.raises(ValueError, match="unknown event type"):
        bus.subscribe("api_key.exploded", "test.x", Recorder())
    bus.subscribe("api_key.created", "test.x", first := Recorder())
    bus.subscribe("api_key.revoked", "test.x", first)
    with pytest.raises(ValueError, match="different handler"):
        bus.subscribe("member.invited", "test.x", Recorder())
    assert bus.consumers() == {"test.x": ("api_key.created", "api_key.revoked")}


@pytest.mark.postgres
def test_concurrent_relays_on_postgresql_publish_each_row_once(pg_session_factory: sessionmaker[Session]) -> None:
    ids = {record_event(pg_session_factory) for _ in range(120)}
    publishers = [FlakyPublisher(0) for _ in range(3)]
    relays = [Relay(SETTINGS, pg_session_factory, p, batch_size=10) for p in publishers]
    barrier = threading.Barrier(len(relays))

    def run(relay: Relay) -> None:
        barrier.wait()
        relay.run_once()

    threads = [threading.Thread(target=run, args=(r,)) for r in relays]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    published = [e["id"] for p in publishers for e in p.published]
    assert sorted(published) == sorted(str(i) for i in ids)  # every row, none twice
