"""Payments' start-up work and the sandbox provider's webhook deliverer (hangar.background).

`prepare` records the settings (configuration.py) and makes sure the database has a webhook
secret when none is configured (signing.py). `services` is the `WebhookDeliverer`: it plays
the provider's side of the webhook. Each due event of `sandbox_webhook_outbox` is signed
with the first secret at the moment it is sent and delivered

- by HTTP POST to settings.payments_webhook_url when it is set (as a real PSP would), or
- in-process, through webhooks.receive — the very function receiveSandboxWebhook calls, with
  the signed raw payload, so the signature check runs on every event either way.

A delivery that is answered 200, or 409 `webhook-event-replayed` (it was applied already),
is done; anything else is retried with a backoff (1 s doubling to 5 min) and its reason kept
in `last_error`. Deliverers in several processes share the work: each claims an event by a
conditional UPDATE that moves its `due_at` a lease ahead (a crashed deliverer's claim lapses),
so an event is normally sent once — and receiving it twice changes nothing anyway.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import datetime, timedelta

import httpx
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from handlers.payments import configuration, signing, webhooks
from handlers.payments.services import WebhookReplayed
from handlers.payments.tables import SandboxWebhook
from hangar.background import Service
from hangar.config import Settings
from hangar.db import utcnow
from hangar.problems import Problem

log = logging.getLogger(__name__)

LEASE = timedelta(seconds=30)
MAX_BACKOFF = timedelta(minutes=5)
REPLAYED_TYPE = "https://docs.hangar.dev/problems/" + WebhookReplayed.slug


def prepare(settings: Settings, sessions: sessionmaker[Session]) -> None:
    configuration.configure(settings)
    if not settings.payments_webhook_secrets:
        signing.ensure_database_secret(sessions, utcnow())


def services(settings: Settings, sessions: sessionmaker[Session]) -> list[Service]:
    return [WebhookDeliverer(settings, sessions)]


class WebhookDeliverer:
    def __init__(
        self,
        settings: Settings,
        sessions: sessionmaker[Session],
        *,
        clock: Callable[[], datetime] = utcnow,
        batch_size: int = 20,
    ) -> None:
        self.settings = settings
        self._sessions = sessions
        self._clock = clock
        self._batch = batch_size
        self._poll = min(0.25, max(settings.payments_sandbox_delay_ms / 4000, 0.02))
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stopping.clear()
        self._thread = threading.Thread(target=self._loop, name="hangar-payments-webhooks", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _loop(self) -> None:
        while not self._stopping.is_set():
            try:
                self.run_once()
            except Exception:  # the loop never dies; the next pass tries again
                log.exception("payments: webhook delivery pass failed")
            self._stopping.wait(self._poll)

    def run_once(self) -> int:
        """Deliver every due event this process can claim; returns how many were delivered."""
        now = self._clock()
        with self._sessions() as session:
            due = session.execute(
                select(SandboxWebhook.id, SandboxWebhook.attempts)
                .where(SandboxWebhook.delivered_at.is_(None), SandboxWebhook.due_at <= now)
                .order_by(SandboxWebhook.due_at)
                .limit(self._batch)
            ).all()
        delivered = 0
        for event_id, attempts in due:
            if self._claim(event_id, attempts, now):
                delivered += self._deliver(event_id)
        return delivered

    def _claim(self, event_id: str, attempts: int, now: datetime) -> bool:
        with self._sessions() as session:
            claimed = session.execute(
                update(SandboxWebhook)
                .where(
                    SandboxWebhook.id == event_id,
                    SandboxWebhook.attempts == attempts,
                    SandboxWebhook.delivered_at.is_(None),
                )
                .values(attempts=attempts + 1, due_at=now + LEASE)
            )
            session.commit()
            return getattr(claimed, "rowcount", 0) == 1

    def _deliver(self, event_id: str) -> int:
        with self._sessions() as session:
            row = session.get(SandboxWebhook, event_id)
            if row is None:
                return 0
            payload, attempts = row.payload.encode(), row.attempts
            now = self._clock()
            secret = signing.signing_secrets(session, self.settings, now=now)[0]
            session.commit()
        header = signing.sign(payload, secret, int(now.timestamp()))
        error = (
            self._send_http(payload, header)
            if self.settings.payments_webhook_url
            else self._send_local(payload, header)
        )
        with self._sessions() as session:
            done = self._clock()
            if error is None:
                values: dict[str, object] = {"delivered_at": done, "last_error": None}
            else:
                backoff = min(timedelta(seconds=2 ** min(attempts - 1, 20)), MAX_BACKOFF)
                values = {"due_at": done + backoff, "last_error": error[:500]}
                log.warning("payments: webhook %s not delivered (attempt %d): %s", event_id, attempts, error)
            session.execute(update(SandboxWebhook).where(SandboxWebhook.id == event_id).values(**values))
            session.commit()
        return 1 if error is None else 0

    def _send_local(self, payload: bytes, header: str) -> str | None:
        """Through webhooks.receive in a transaction of its own; None when done."""
        with self._sessions() as session:
            try:
                webhooks.receive(session, header=header, raw_body=payload, settings=self.settings, now=self._clock())
                session.commit()
            except WebhookReplayed:
                session.rollback()
            except Problem as problem:
                session.rollback()
                return f"{problem.status} {problem.slug}: {problem.detail}"
            except Exception as exc:  # a bug or a database error: retried, and logged in full
                session.rollback()
                log.exception("payments: applying a sandbox webhook failed")
                return f"{type(exc).__name__}: {exc}"
        return None

    def _send_http(self, payload: bytes, header: str) -> str | None:
        url = str(self.settings.payments_webhook_url)
        try:
            response = httpx.post(
                url,
                content=payload,
                headers={signing.HEADER: header, "Content-Type": "application/json"},
                timeout=10.0,
            )
        except httpx.HTTPError as exc:
            return f"POST {url} failed: {exc}"
        if response.status_code == 200:
            return None
        if response.status_code == 409 and _problem_type(response) == REPLAYED_TYPE:
            return None
        return f"POST {url} answered {response.status_code}: {response.text[:300]}"


def _problem_type(response: httpx.Response) -> str | None:
    try:
        body = response.json()
    except ValueError:
        return None
    return body.get("type") if isinstance(body, dict) else None
