"""`hangar-worker`: the outbox relay and the event consumers, until SIGTERM/SIGINT.

With HANGAR_BROKER_URL set (the production shape): one durable queue per consumer that the
contexts register (handlers/<context>/consumers.py), fed from RabbitMQ with dedupe by event
id, and a relay publishing the outbox to the broker. Run as many workers as you like on
PostgreSQL: relays share the outbox with SKIP LOCKED, consumers share their queues.

Without a broker, the relay delivers in-process to this process's consumers. That is what
the API process already does by default (HANGAR_RUN_RELAY); run the worker this way only with
HANGAR_RUN_RELAY=0 on the API.

Exit codes: 0 after a signal, 2 when the broker cannot be reached at start-up, 3 when the
broker connection is lost while running (let the supervisor restart us).
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from types import FrameType

from generated.events.catalog import EVENT_TYPES
from hangar.bus import Bus, load_consumers
from hangar.config import Settings
from hangar.db import make_engine, make_session_factory
from hangar.relay import InProcessPublisher, Publisher, Relay

log = logging.getLogger("hangar.worker")


def _say(message: str) -> None:
    print(f"hangar-worker: {message}", flush=True)


def _database_label(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def main(argv: list[str] | None = None) -> int:
    argparse.ArgumentParser(
        prog="hangar-worker", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    ).parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = Settings.from_env()
    engine = make_engine(settings.database_url)
    session_factory = make_session_factory(engine)
    bus = Bus(session_factory, known_types=EVENT_TYPES)
    modules = load_consumers(bus)

    consumers = None
    publisher: Publisher
    if settings.broker_url:
        from hangar.amqp import AmqpConsumers, AmqpPublisher, BrokerUnavailableError, redact

        try:
            consumers = AmqpConsumers(
                settings.broker_url, bus, exchange=settings.amqp_exchange, queue_prefix=settings.amqp_queue_prefix
            )
            consumers.start()
            publisher = AmqpPublisher(settings.broker_url, exchange=settings.amqp_exchange)
        except BrokerUnavailableError as exc:
            if consumers is not None:
                consumers.stop()
            print(f"hangar-worker: {exc}", file=sys.stderr, flush=True)
            print("hangar-worker: is RabbitMQ running? Check HANGAR_BROKER_URL.", file=sys.stderr, flush=True)
            engine.dispose()
            return 2
        transport = f"AMQP {redact(settings.broker_url)}, exchange {consumers.exchange}"
    else:
        publisher = InProcessPublisher(bus)
        transport = "in-process bus (no HANGAR_BROKER_URL)"

    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        _say(f"{signal.Signals(signum).name} received, stopping")
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    from hangar.background import discover

    background = discover()
    background.prepare(settings, session_factory)
    relay = Relay(settings, session_factory, publisher)
    relay.start()
    background.start(settings, session_factory)
    names = ", ".join(bus.consumers()) or "none registered"
    _say(f"started — relay → {transport}; consumers: {names} (from {len(modules)} module(s));")
    _say(f"database {_database_label(settings.database_url)}. Stop with Ctrl-C or SIGTERM.")

    code = 0
    try:
        while not stop.wait(1.0):
            if consumers is not None and consumers.lost.is_set():
                print("hangar-worker: lost the broker connection; exiting", file=sys.stderr, flush=True)
                code = 3
                break
    finally:
        background.stop()
        relay.stop()
        if consumers is not None:
            consumers.stop()
        engine.dispose()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    _say("stopped")
    return code


if __name__ == "__main__":
    sys.exit(main())
