"""Terminal Gateway's background service (discovered by hangar.background): the sweeper,
which writes down sessions whose ticket expired unused and ends active sessions whose
gateway process died (no heartbeat). Safe in many processes at once: its updates are
conditional and the lost sessions are claimed with SKIP LOCKED on PostgreSQL.
"""

from __future__ import annotations

import logging
import threading
from datetime import timedelta

from sqlalchemy.orm import Session, sessionmaker

from handlers.terminal import configuration
from handlers.terminal import services as sessions_service
from hangar.background import Service
from hangar.config import Settings

log = logging.getLogger(__name__)


class Sweeper:
    def __init__(self, settings: Settings, sessions: sessionmaker[Session]) -> None:
        self._sessions = sessions
        self._interval = max(0.5, settings.terminal_recheck_seconds * 5)
        # A live gateway writes a heartbeat every recheck interval; thirty missed ones (and at
        # least two minutes: under heavy load the heartbeats queue for the thread pool and the
        # database) mean its process is gone.
        self._lost_after = timedelta(seconds=max(120.0, settings.terminal_recheck_seconds * 30))
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def run_once(self) -> int:
        return sessions_service.sweep(self._sessions, lost_after=self._lost_after)

    def _loop(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self.run_once()
            except Exception:  # the next pass retries; a sweeper must never die of one error
                log.exception("terminal sweeper pass failed")

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="terminal-sweeper", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)


def prepare(settings: Settings, sessions: sessionmaker[Session]) -> None:
    configuration.configure(settings)


def services(settings: Settings, sessions: sessionmaker[Session]) -> list[Service]:
    return [Sweeper(settings, sessions)]
