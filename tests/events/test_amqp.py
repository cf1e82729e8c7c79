"""Events over the RabbitMQ on 127.0.0.1:5672: the relay publishes through the generated
asyncapi-python bindings; consumers deduplicate by event id; the wire fixes hold.

Each test uses its own exchange and queue names (the `amqp_names` fixture deletes them).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import uuid
from typing import Any

import aio_pika
import jsonschema_rs
import pytest
from aio_pika.abc import AbstractIncomingMessage, AbstractQueue
from aiormq.exceptions import ChannelPreconditionFailed
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from generated.events.catalog import CATALOG, EVENT_TYPES
from hangar.amqp import AmqpConsumers, AmqpPublisher, BrokerUnavailableError, LoopThread
from hangar.bus import Bus
from hangar.config import Settings
from hangar.inbox import ProcessedEvent
from hangar.outbox import OutboxEvent
from hangar.relay import Relay

from .conftest import AmqpNames
from .helpers import record_event, sample_data

SETTINGS = Settings(database_url="sqlite://", broker_url="amqp://set-by-test")


class Probe:
    """A queue bound to the test exchange, read from a loop thread of its own."""

    def __init__(self, url: str, exchange: str, routing_key: str = "#") -> None:
        self._loop = LoopThread("probe")
        self._url, self._exchange, self._key = url, exchange, routing_key
        self._loop.run(self._open())

    async def _open(self) -> None:
        self._connection = await aio_pika.connect(self._url)
        channel = await self._connection.channel()
        exchange = await channel.get_exchange(self._exchange)  # the publisher declared it
        self._queue: AbstractQueue = await channel.declare_queue("", exclusive=True)
        await self._queue.bind(exchange, routing_key=self._key)

    def take(self, count: int) -> list[AbstractIncomingMessage]:
        async def take() -> list[AbstractIncomingMessage]:
            messages = []
            async with self._queue.iterator() as it:
                async for message in it:
                    await message.ack()
                    messages.append(message)
                    if len(messages) == count:
                        break
            return messages

        return self._loop.run(take())

    def close(self) -> None:
        self._loop.run(self._connection.close())
        self._loop.close()


def _publish_raw(url: str, exchange: str, routing_key: str, bodies: list[bytes]) -> None:
    async def publish() -> None:
        connection = await aio_pika.connect(url)
        async with connection:
            channel = await connection.channel()
            target = await channel.get_exchange(exchange)
            for body in bodies:
                await target.publish(aio_pika.Message(body), routing_key=routing_key)

    asyncio.run(publish())


@pytest.mark.rabbitmq
def test_relay_publishes_every_event_with_the_contracts_names(
    broker_url: str, amqp_names: AmqpNames, session_factory: sessionmaker[Session]
) -> None:
    publisher = AmqpPublisher(broker_url, exchange=amqp_names.exchange)
    probe = Probe(broker_url, amqp_names.exchange)
    try:
        ids = {record_event(session_factory, t, sample_data(t)): t for t in sorted(EVENT_TYPES)}
        ids[record_event(session_factory)] = "api_key.created"  # without the optional expires_at
        relay = Relay(SETTINGS, session_factory, publisher)
        assert relay.run_once() == len(ids)
        messages = probe.take(len(ids))
    finally:
        probe.close()
        publisher.close()

    with session_factory() as session:
        outbox_payloads = {str(row.id): row.payload for row in session.scalars(select(OutboxEvent))}
    assert {m.message_id for m in messages} == {str(i) for i in ids}
    for message in messages:
        body = json.loads(message.body)
        spec = CATALOG[body["type"]]
        # Byte-level contract: the outbox envelope exactly (names, no nulls for absent
        # optionals, no extra keys), valid against the AsyncAPI schema, routed by address.
        assert body == outbox_payloads[message.message_id]
        assert jsonschema_rs.validator_for(dict(spec.json_schema), validate_formats=True).is_valid(body)
        assert message.routing_key == spec.address
        assert message.type == spec.type
        assert message.content_type == "application/json"
        assert message.delivery_mode == aio_pika.DeliveryMode.PERSISTENT  # upstream sends transient
    created = sorted("expires_at" in json.loads(m.body)["data"] for m in messages if m.type == "api_key.created")
    assert created == [False, True]  # absent stays absent (no null); present is kept


@pytest.mark.rabbitmq
def test_exchange_is_declared_as_the_binding_says(broker_url: str, amqp_names: AmqpNames) -> None:
    """asyncapi-python 0.3.1 declares every exchange durable whatever the binding says."""

    async def redeclare(durable: bool) -> None:
        connection = await aio_pika.connect(broker_url)
        async with connection:
            channel = await connection.channel()
            await channel.declare_exchange(amqp_names.exchange, aio_pika.ExchangeType.TOPIC, durable=durable)

    # The contract's binding: durable, not auto-delete.
    assert CATALOG["api_key.created"].exchange_durable is True
    AmqpPublisher(broker_url, exchange=amqp_names.exchange).close()
    asyncio.run(redeclare(durable=True))
    with pytest.raises(ChannelPreconditionFailed):
        asyncio.run(redeclare(durable=False))
    asyncio.run(_delete_exchange(broker_url, amqp_names.exchange))

    # A binding that says non-durable gets a non-durable exchange.
    AmqpPublisher(broker_url, exchange=amqp_names.exchange, exchange_durable=False).close()
    asyncio.run(redeclare(durable=False))
    with pytest.raises(ChannelPreconditionFailed):
        asyncio.run(redeclare(durable=True))


async def _delete_exchange(url: str, name: str) -> None:
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel()
        await channel.exchange_delete(name)


class Seen:
    def __init__(self, until: str) -> None:
        self.ids: list[str] = []
        self.until = until
        self.done = threading.Event()

    def __call__(self, session: Session, envelope: dict[str, Any]) -> None:
        self.ids.append(envelope["id"])
        if envelope["id"] == self.until:
            self.done.set()


def _consumers(
    broker_url: str, names: AmqpNames, session_factory: sessionmaker[Session], seen: Seen
) -> tuple[Bus, AmqpConsumers]:
    bus = Bus(session_factory, known_types=EVENT_TYPES)
    bus.subscribe("api_key.created", "test.keys", seen)
    # prefetch=1: the queue is handled in order, so "the last event arrived" means the
    # ones before it were handled (or deduplicated, or dead-lettered) already.
    consumers = AmqpConsumers(broker_url, bus, exchange=names.exchange, queue_prefix=names.prefix, prefetch=1)
    names.queues += [consumers.queue_name("test.keys"), consumers.dead_letter_queue]
    consumers.start()
    return bus, consumers


@pytest.mark.rabbitmq
def test_the_same_event_published_twice_is_handled_once(
    broker_url: str, amqp_names: AmqpNames, session_factory: sessionmaker[Session]
) -> None:
    first = record_event(session_factory)
    last = record_event(session_factory)
    with session_factory() as session:
        envelopes = {row.id: row.payload for row in session.scalars(select(OutboxEvent))}
    seen = Seen(until=str(last))
    _, consumers = _consumers(broker_url, amqp_names, session_factory, seen)
    publisher = AmqpPublisher(broker_url, exchange=amqp_names.exchange)
    try:
        spec = CATALOG["api_key.created"]
        for event_id in (first, first, last):  # `first` twice: a relay that retried
            publisher.publish(spec, envelopes[event_id])
        assert seen.done.wait(30), "the consumer never received the last event"
    finally:
        publisher.close()
        consumers.stop()

    assert seen.ids == [str(first), str(last)]
    with session_factory() as session:
        assert session.scalar(select(func.count()).select_from(ProcessedEvent)) == 2


@pytest.mark.rabbitmq
def test_malformed_messages_are_dead_lettered_loudly(
    broker_url: str, amqp_names: AmqpNames, session_factory: sessionmaker[Session], caplog: pytest.LogCaptureFixture
) -> None:
    """asyncapi-python drops undecodable messages silently; ours are logged and kept."""
    good = record_event(session_factory)
    with session_factory() as session:
        envelope = session.get(OutboxEvent, good).payload  # type: ignore[union-attr]
    invalid = {**envelope, "id": str(uuid.uuid4()), "data": {**envelope["data"], "secret": "x"}}
    seen = Seen(until=str(good))
    _, consumers = _consumers(broker_url, amqp_names, session_factory, seen)
    dead = Probe(broker_url, f"{amqp_names.exchange}.dead-letter")
    try:
        with caplog.at_level(logging.ERROR, logger="hangar.amqp"):
            _publish_raw(
                broker_url,
                amqp_names.exchange,
                CATALOG["api_key.created"].address,
                [b"not json", json.dumps(invalid).encode(), json.dumps(envelope).encode()],
            )
            assert seen.done.wait(30), "the consumer never received the valid event"
        dead_letters = dead.take(2)
    finally:
        dead.close()
        consumers.stop()

    assert seen.ids == [str(good)]
    assert sorted(m.body for m in dead_letters) == sorted([b"not json", json.dumps(invalid).encode()])
    assert sum("MALFORMED EVENT" in r.getMessage() for r in caplog.records) == 2


@pytest.mark.rabbitmq
def test_publisher_reconnects_after_losing_the_connection(broker_url: str, amqp_names: AmqpNames) -> None:
    publisher = AmqpPublisher(broker_url, exchange=amqp_names.exchange)
    probe = Probe(broker_url, amqp_names.exchange)
    spec = CATALOG["member.removed"]
    envelope = {
        "id": str(uuid.uuid4()),
        "type": spec.type,
        "occurred_at": "2026-01-01T00:00:00Z",
        "organization_id": str(uuid.uuid4()),
        "data": sample_data(spec.type),
    }
    try:
        wire = publisher._wire
        assert wire is not None
        publisher._loop.run(wire.close())  # the broker went away under us
        with contextlib.suppress(Exception):  # this publish may fail: the relay would retry
            publisher.publish(spec, envelope)
        publisher.publish(spec, envelope)
        (message,) = probe.take(1)
    finally:
        probe.close()
        publisher.close()
    assert json.loads(message.body) == envelope


def test_unreachable_broker_is_a_clear_error_without_the_password() -> None:
    url = "amqp://guest:s3cret@127.0.0.1:1/"
    with pytest.raises(BrokerUnavailableError) as info:
        AmqpPublisher(url)
    assert "127.0.0.1:1" in str(info.value) and "s3cret" not in str(info.value)
    consumers = AmqpConsumers(url, Bus(sessionmaker()))
    with pytest.raises(BrokerUnavailableError):
        consumers.start()
