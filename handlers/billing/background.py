"""Billing's start-up work and background services (discovered by hangar.background).

`prepare` records the settings for the consumers (metering.configure). `services` is the
metering ticker: every billing_tick_seconds it runs one metering tick (metering.tick) and
the ledger's hold-expiry sweep (published.expire_pending). Every API process (embedded
mode) and every worker runs one; they share the work through the organizations' locks
(metering.lock_org), so two tickers never charge one organization twice.
"""

from __future__ import annotations

import logging
import threading

from sqlalchemy.orm import Session, sessionmaker

from handlers.billing import metering, published
from hangar.background import Service
from hangar.config import Settings
from hangar.db import utcnow

log = logging.getLogger(__name__)


def prepare(settings: Settings, sessions: sessionmaker[Session]) -> None:
    metering.configure(settings)


def services(settings: Settings, sessions: sessionmaker[Session]) -> list[Service]:
    return [MeteringTicker(settings, sessions)]


class MeteringTicker:
    """A thread: tick, sweep expired holds, sleep billing_tick_seconds; `kick()` ticks now."""

    def __init__(self, settings: Settings, sessions: sessionmaker[Session]) -> None:
        self.settings = settings
        self._sessions = sessions
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self.ticks = 0
        self.last: metering.TickReport | None = None

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stopping.clear()
        self._thread = threading.Thread(target=self._loop, name="hangar-metering", daemon=True)
        self._thread.start()
        log.info("metering ticker started (every %.1fs)", self.settings.billing_tick_seconds)

    def stop(self, timeout: float = 10.0) -> None:
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning("metering ticker did not stop within %.0fs", timeout)
            self._thread = None

    def kick(self) -> None:
        self._wake.set()

    def _loop(self) -> None:
        # The first tick waits one interval: a process that starts and stops at once
        # (a test, a CLI) never charges anything by surprise.
        while not self._stopping.is_set():
            self._wake.wait(self.settings.billing_tick_seconds)
            self._wake.clear()
            if self._stopping.is_set():
                break
            self.run_once()

    def run_once(self) -> metering.TickReport | None:
        report = None
        try:
            report = metering.tick(self._sessions, self.settings, stop=self._stopping)
            self.ticks += 1
            self.last = report
            if report.organizations:
                log.info(
                    "metering tick: %d organizations (%d charged, %d skipped, %d failed), %d meters, "
                    "%d charged, %d uncollected, in %.3fs",
                    report.organizations,
                    report.charged_organizations,
                    report.skipped,
                    report.failed,
                    report.meters,
                    report.charged,
                    report.uncollected,
                    report.seconds,
                )
        except Exception:  # the database is down, …: log and try again next interval
            log.exception("metering tick failed; retrying in %.1fs", self.settings.billing_tick_seconds)
        try:
            with self._sessions() as session, session.begin():
                expired = published.expire_pending(session, now=utcnow())
            if expired:
                log.info("ledger: %d expired holds released", expired)
        except Exception:
            log.exception("hold expiry sweep failed")
        return report
