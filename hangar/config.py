"""Settings, read from the environment in this one place."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    return raw.strip().lower() in ("1", "true", "yes", "on")


def _int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError as exc:
        raise SystemExit(f"{name} must be an integer, got {raw!r}") from exc


@dataclass(frozen=True)
class Settings:
    # SQLite file under .hangar/ by default; PostgreSQL with postgresql+psycopg://...
    database_url: str = field(default_factory=lambda: f"sqlite:///{ROOT / '.hangar' / 'hangar.db'}")
    # None → in-process event delivery; amqp://guest:guest@127.0.0.1:5672/ → RabbitMQ.
    broker_url: str | None = None
    host: str = "127.0.0.1"
    port: int = 8080
    # Response validation costs throughput; on in tests and CI, off by default in `make run`.
    validate_responses: bool = False
    # Requests per minute per API key, and per client address for public operations.
    rate_limit_per_minute: int = 600
    public_rate_limit_per_minute: int = 20
    idempotency_ttl_seconds: int = 24 * 3600
    # Deliver outbox events in-process right after commit (embedded mode) and run the relay loop.
    run_relay: bool = True
    log_json: bool = False

    @classmethod
    def from_env(cls, **overrides: object) -> Settings:
        values: dict[str, object] = {
            "broker_url": os.environ.get("HANGAR_BROKER_URL") or None,
            "host": os.environ.get("HANGAR_HOST", "127.0.0.1"),
            "port": _int("HANGAR_PORT", 8080),
            "validate_responses": _bool("HANGAR_VALIDATE_RESPONSES", False),
            "rate_limit_per_minute": _int("HANGAR_RATE_LIMIT_PER_MINUTE", 600),
            "public_rate_limit_per_minute": _int("HANGAR_PUBLIC_RATE_LIMIT_PER_MINUTE", 20),
            "run_relay": _bool("HANGAR_RUN_RELAY", True),
            "log_json": _bool("HANGAR_LOG_JSON", False),
        }
        if os.environ.get("HANGAR_DATABASE_URL"):
            values["database_url"] = os.environ["HANGAR_DATABASE_URL"]
        values.update(overrides)
        return cls(**values)  # type: ignore[arg-type]
