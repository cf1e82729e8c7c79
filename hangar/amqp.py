"""Events over RabbitMQ: publishing through the generated asyncapi-python bindings, and
consumer queues that feed the bus (hangar.bus) with dedupe by event id.

Publishing goes through `generated.events.app.Application` (one typed producer endpoint
per AsyncAPI send operation) on a wire that fixes what asyncapi-python 0.3.1's AmqpWire
gets wrong for us — each fix is small and has a test in tests/events/test_amqp.py:
- messages are sent non-persistent → ContractProducer sends `delivery_mode=PERSISTENT`,
  with `message_id` = the event id, `type` = the event type, `content_type`;
- exchanges are always declared durable → the channel binding's `durable`/`autoDelete`
  are honoured (and a test run can use its own throw-away exchange);
- publisher confirms: aio-pika's channel default, kept explicit so a nack raises.
(Encoding by alias / without nulls and the strict models are fixed in generated code: see
pipeline/events.py.)

Consuming does not use asyncapi-python's Subscriber: the contract declares only `send`
operations, and its AMQP consumer binds an exclusive auto-delete queue (events published
while a worker is down are lost) and drops undecodable messages. `AmqpConsumers` declares
one durable queue per bus consumer (`<prefix>.<consumer>`), bound by the catalog's routing
keys, dead-letters messages that break the contract (logged at ERROR), and runs the
consumer through `Bus.deliver_to`, so a redelivered or republished event id is handled once.

Both sides run their asyncio code on a private event-loop thread and expose a blocking
API to the (threaded, synchronous) relay and worker.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import Coroutine, Mapping
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import aio_pika
import jsonschema_rs
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractExchange, AbstractIncomingMessage
from asyncapi_python.contrib.wire.amqp import AmqpWire
from asyncapi_python.contrib.wire.amqp.message import AmqpWireMessage
from asyncapi_python.contrib.wire.amqp.producer import AmqpProducer
from asyncapi_python.contrib.wire.amqp.resolver import resolve_amqp_config
from asyncapi_python.kernel.wire import EndpointParams
from asyncapi_python.kernel.wire.typing import Producer
from typing_extensions import Unpack

from generated.events.app import Application
from generated.events.catalog import CATALOG, EventSpec
from hangar.bus import ALL, Bus, Envelope

log = logging.getLogger(__name__)
T = TypeVar("T")

DEFAULT_TIMEOUT = 30.0


class BrokerUnavailableError(Exception):
    """The broker could not be reached (or refused us) at start-up."""


def redact(url: str) -> str:
    """The URL without its password, for logs and error messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


class LoopThread:
    """An asyncio loop on a daemon thread; `run` blocks the caller until a coroutine is done."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = DEFAULT_TIMEOUT) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        if self.loop.is_closed():
            return
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
        self.loop.close()


# ---------------------------------------------------------------------- publishing


class ContractProducer(AmqpProducer):
    """AmqpProducer that declares the exchange as the contract says and sends persistent,
    identified messages. Only the named-exchange case exists in Hangar's contract."""

    def __init__(self, connection: AbstractConnection, *, durable: bool, auto_delete: bool, **kwargs: Any) -> None:
        super().__init__(connection, **kwargs)
        self._durable = durable
        self._auto_delete = auto_delete

    async def start(self) -> None:
        if self._started:
            return
        if not self._exchange_name:
            raise ValueError("Hangar events go to a named exchange; the channel binding names none")
        channel: AbstractChannel = await self._connection.channel(publisher_confirms=True)
        self._channel = channel
        self._target_exchange = await channel.declare_exchange(
            self._exchange_name,
            aio_pika.ExchangeType(self._exchange_type),
            durable=self._durable,
            auto_delete=self._auto_delete,
            arguments=self._arguments or None,
        )
        self._started = True

    async def send_batch(self, messages: list[AmqpWireMessage], *, address_override: str | None = None) -> None:
        exchange: AbstractExchange | None = self._target_exchange
        if not self._started or exchange is None:
            raise RuntimeError("Producer not started")
        routing_key = address_override if address_override is not None else self._routing_key
        for message in messages:
            ident = _identity(message.payload)
            await exchange.publish(
                aio_pika.Message(
                    body=message.payload,
                    headers=message.headers or None,
                    content_type="application/json",
                    delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                    message_id=ident.get("id"),
                    type=ident.get("type"),
                ),
                routing_key=routing_key,
                # Pub/sub: an event type nobody subscribes to is dropped by design, not
                # returned (a return would only be logged, and retrying cannot help).
                mandatory=False,
            )


def _identity(body: bytes) -> dict[str, str]:
    try:
        data = json.loads(body)
    except ValueError:
        return {}
    if not isinstance(data, dict):
        return {}
    return {key: str(data[key]) for key in ("id", "type") if data.get(key) is not None}


class HangarAmqpWire(AmqpWire):
    """AmqpWire whose producers are ContractProducers. `exchange` replaces the exchange name
    of every channel (tests use a throw-away one); the flags default to the binding's."""

    def __init__(
        self,
        connection_url: str,
        *,
        exchange: str | None = None,
        exchange_durable: bool | None = None,
        exchange_auto_delete: bool | None = None,
        connection_timeout: float = 10.0,
    ) -> None:
        super().__init__(connection_url, connection_attempts=1, connection_timeout=connection_timeout)
        self._exchange_override = exchange
        self._durable_override = exchange_durable
        self._auto_delete_override = exchange_auto_delete

    async def connect(self) -> AbstractConnection:
        return await self._get_connection()

    async def create_producer(self, **kwargs: Unpack[EndpointParams]) -> Producer[AmqpWireMessage]:
        config = resolve_amqp_config(kwargs, self._generate_operation_name(kwargs), kwargs.get("app_id", self.app_id))
        binding = kwargs["channel"].bindings.amqp if kwargs["channel"].bindings else None
        declared = binding.exchange if binding is not None else None
        durable = getattr(declared, "durable", None)
        auto_delete = getattr(declared, "auto_delete", None)
        if self._exchange_override:
            config.exchange_name = self._exchange_override
        return ContractProducer(
            await self._get_connection(),
            durable=self._durable_override if self._durable_override is not None else durable is not False,
            auto_delete=self._auto_delete_override if self._auto_delete_override is not None else bool(auto_delete),
            **config.to_producer_args(),
        )


class AmqpPublisher:
    """The relay's publisher over RabbitMQ (hangar.relay.Publisher).

    Connects in the constructor (BrokerUnavailableError if it cannot). A failed publish drops the
    connection; the next publish reconnects, so the relay's retries recover from a broker
    restart without restarting the process."""

    def __init__(
        self,
        url: str,
        *,
        exchange: str | None = None,
        exchange_durable: bool | None = None,
        exchange_auto_delete: bool | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        self.url = url
        self._wire_options: dict[str, Any] = {
            "exchange": exchange,
            "exchange_durable": exchange_durable,
            "exchange_auto_delete": exchange_auto_delete,
        }
        self._timeout = timeout
        self._loop = LoopThread("hangar-amqp-publisher")
        self._wire: HangarAmqpWire | None = None
        self._app: Application | None = None
        try:
            self._loop.run(self._connect(), timeout)
        except BaseException:
            self._loop.close()
            raise

    async def _connect(self) -> None:
        wire = HangarAmqpWire(self.url, **self._wire_options)
        try:
            await wire.connect()
            app = Application(wire)
            await app.start()
        except Exception as exc:
            await wire.close()
            raise BrokerUnavailableError(f"cannot reach the broker at {redact(self.url)}: {exc}") from exc
        self._wire, self._app = wire, app

    async def _disconnect(self) -> None:
        app, wire = self._app, self._wire
        self._app, self._wire = None, None
        if app is not None:
            try:
                await app.stop()
            except Exception:  # the connection is already gone; nothing left to clean
                log.debug("closing producers after a failure", exc_info=True)
        if wire is not None:
            await wire.close()

    async def _publish(self, spec: EventSpec, envelope: Envelope) -> None:
        if self._app is None:
            await self._connect()
        assert self._app is not None
        endpoint = getattr(self._app.producer, spec.producer)
        try:
            await endpoint(spec.model.model_validate(envelope))
        except Exception:
            await self._disconnect()
            raise

    def publish(self, spec: EventSpec, envelope: Envelope) -> None:
        self._loop.run(self._publish(spec, envelope), self._timeout)

    def close(self) -> None:
        if self._loop.loop.is_closed():
            return
        try:
            self._loop.run(self._disconnect(), self._timeout)
        finally:
            self._loop.close()


# ---------------------------------------------------------------------- consuming


class AmqpConsumers:
    """One durable queue per bus consumer, bound to the routing keys of its event types."""

    def __init__(
        self,
        url: str,
        bus: Bus,
        *,
        exchange: str | None = None,
        queue_prefix: str = "hangar",
        prefetch: int = 16,
        catalog: Mapping[str, EventSpec] = CATALOG,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        self.url = url
        self.bus = bus
        self.queue_prefix = queue_prefix
        self.dead_letter_queue = f"{queue_prefix}.dead-letter"
        self._catalog = catalog
        exchanges = {spec.exchange for spec in catalog.values()}
        if exchange is None and len(exchanges) != 1:
            raise ValueError(f"expected one events exchange in the catalog, found {sorted(exchanges)}")
        self.exchange = exchange or exchanges.pop()
        self.dead_letter_exchange = f"{self.exchange}.dead-letter"
        self._prefetch = prefetch
        self._timeout = timeout
        self._validators: dict[str, jsonschema_rs.Validator] = {}
        self._loop: LoopThread | None = None
        self._connection: AbstractConnection | None = None
        self._closing = False
        self.lost = threading.Event()  # set if the broker connection dies under us

    def queue_name(self, consumer: str) -> str:
        return f"{self.queue_prefix}.{consumer}"

    def routing_keys(self, event_types: tuple[str, ...]) -> list[str]:
        if ALL in event_types:
            return ["#"]
        return sorted({self._catalog[t].address for t in event_types})

    def start(self) -> None:
        self._loop = LoopThread("hangar-amqp-consumers")
        try:
            self._loop.run(self._start(), self._timeout)
        except BaseException:
            self.stop()
            raise

    async def _start(self) -> None:
        try:
            connection = await aio_pika.connect(self.url, timeout=10)
        except Exception as exc:
            raise BrokerUnavailableError(f"cannot reach the broker at {redact(self.url)}: {exc}") from exc
        self._connection = connection
        connection.close_callbacks.add(self._on_close)
        channel = await connection.channel()
        await channel.set_qos(prefetch_count=self._prefetch)
        durable = all(spec.exchange_durable for spec in self._catalog.values())
        exchange = await channel.declare_exchange(self.exchange, aio_pika.ExchangeType.TOPIC, durable=durable)
        dead_exchange = await channel.declare_exchange(
            self.dead_letter_exchange, aio_pika.ExchangeType.FANOUT, durable=True
        )
        dead_queue = await channel.declare_queue(self.dead_letter_queue, durable=True)
        await dead_queue.bind(dead_exchange)
        for consumer, types in sorted(self.bus.consumers().items()):
            queue = await channel.declare_queue(
                self.queue_name(consumer),
                durable=True,
                arguments={"x-dead-letter-exchange": self.dead_letter_exchange},
            )
            for key in self.routing_keys(types):
                await queue.bind(exchange, routing_key=key)
            await queue.consume(self._callback_for(consumer))
            log.info("consuming %s from queue %s (%s)", ", ".join(types), queue.name, self.exchange)

    def _on_close(self, _sender: Any, exc: BaseException | None = None) -> None:
        if not self._closing:
            log.error("broker connection lost: %s", exc)
            self.lost.set()

    def _callback_for(self, consumer: str) -> Any:
        async def on_message(message: AbstractIncomingMessage) -> None:
            await self._handle(consumer, message)

        return on_message

    def _problems(self, body: bytes) -> tuple[Envelope | None, list[str]]:
        try:
            envelope = json.loads(body)
        except (ValueError, UnicodeDecodeError) as exc:
            return None, [f"not JSON: {exc}"]
        if not isinstance(envelope, dict):
            return None, ["not a JSON object"]
        spec = self._catalog.get(str(envelope.get("type")))
        if spec is None:
            return envelope, [f"unknown event type {envelope.get('type')!r}"]
        validator = self._validators.get(spec.type)
        if validator is None:
            validator = jsonschema_rs.validator_for(dict(spec.json_schema), validate_formats=True)
            self._validators[spec.type] = validator
        problems = [
            f"{'/'.join(map(str, e.instance_path)) or '(root)'}: {e.message}" for e in validator.iter_errors(envelope)
        ]
        return envelope, problems

    async def _handle(self, consumer: str, message: AbstractIncomingMessage) -> None:
        envelope, problems = self._problems(message.body)
        if envelope is None or problems:
            log.error(
                "MALFORMED EVENT dead-lettered from %s (message_id=%s): %s; body starts %r",
                self.queue_name(consumer),
                message.message_id,
                "; ".join(problems),
                message.body[:200],
            )
            await message.reject(requeue=False)
            return
        try:
            await asyncio.to_thread(self.bus.deliver_to, consumer, envelope)
        except Exception:
            if message.redelivered:
                log.exception("consumer %s failed twice on event %s; dead-lettered", consumer, envelope.get("id"))
                await message.reject(requeue=False)
            else:
                log.exception("consumer %s failed on event %s; requeued once", consumer, envelope.get("id"))
                await message.nack(requeue=True)
            return
        await message.ack()

    def stop(self) -> None:
        self._closing = True
        if self._loop is None:
            return
        connection = self._connection
        if connection is not None and not connection.is_closed:
            try:
                self._loop.run(connection.close(), self._timeout)
            except Exception:
                log.debug("closing the consumer connection", exc_info=True)
        self._connection = None
        self._loop.close()
        self._loop = None
