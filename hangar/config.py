"""Settings, read from the environment in this one place."""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    return raw.strip().lower() in ("1", "true", "yes", "on")


def _float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return float(raw)
    except ValueError as exc:
        raise SystemExit(f"{name} must be a number, got {raw!r}") from exc


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
    # The exchange events go to (None: the contract's, hangar.events) and the prefix of the
    # workers' durable queues. A test run or a staging stack sharing a broker sets both.
    amqp_exchange: str | None = None
    amqp_queue_prefix: str = "hangar"
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
    # Host driver: "local" (real sandboxed processes under instances_dir) or "sim" (a simulated
    # fleet, deterministic from sim_seed). See docs/compute.md.
    driver: str = "local"
    instances_dir: Path = field(default_factory=lambda: ROOT / ".hangar" / "instances")
    # sim driver: base duration of a host operation (each instance varies it 0.5×–1.5×) and the
    # share of creates/starts that fail on the host.
    sim_seed: int = 1
    sim_delay_ms: int = 1500
    sim_failure_rate: float = 0.0
    # Provisioning saga: how often the runner looks for due steps, and how many hosts a create
    # tries before the instance fails.
    saga_poll_seconds: float = 0.5
    saga_max_attempts: int = 3
    # Default per-organization quota (operators raise it per organization).
    quota_vcpus: int = 64
    quota_gpus: int = 8
    # --- terminal (Terminal Gateway, docs/terminal.md) ---
    # Seconds a terminal ticket stays valid unused (capped at 60 whatever is configured).
    terminal_ticket_ttl_seconds: int = 30
    # A session with no byte in either direction for this long is closed (4408); one attached
    # for this long is closed (4410) whatever it does.
    terminal_idle_timeout_seconds: float = 900.0
    terminal_max_duration_seconds: float = 8 * 3600.0
    # Sessions an organization may hold at once (active, or created and not yet expired).
    terminal_max_sessions_per_org: int = 10
    # How long the gateway waits for the auth frame after the upgrade (the contract says 10).
    terminal_auth_timeout_seconds: float = 10.0
    # How often an attached session re-reads its row and its instance (close requests and
    # instance stops seen by other processes) and saves its byte counters.
    terminal_recheck_seconds: float = 2.0
    # Websocket pings (uvicorn's, hangar-server only): interval, and how long a pong may take
    # before the peer is declared gone.
    terminal_ping_interval_seconds: float = 20.0
    terminal_ping_timeout_seconds: float = 20.0
    # The websocket base URL put in createTerminalSession's `url` (e.g. wss://api.hangar.dev);
    # None: built from the request's scheme and Host header.
    terminal_public_url: str | None = None
    # --- billing: metering and holds (docs/billing.md "Metering") ---
    # Credit (minor units) a new organization's wallet starts with; 0 for `make run`, high in tests.
    billing_signup_credit: int = 0
    # A launch or start is refused (402) unless the wallet can hold this many seconds of the
    # instance's price (the "minimum run time"); running resources keep a rolling hold this long.
    billing_hold_seconds: int = 600
    # A hold nobody posts or voids lapses after this long (the ledger's expiry sweep).
    billing_hold_timeout_seconds: int = 86_400
    # How often the metering tick charges running resources.
    billing_tick_seconds: float = 60.0
    # billing.balance_low is emitted when an organization's spendable balance falls below this.
    billing_low_balance_threshold: int = 500
    # Volumes: price per GiB per month of 730 hours, integer minor units.
    billing_volume_price_per_gib_month: int = 10

    # --- payments (docs/payments.md) ---
    # Webhook signing secrets of the sandbox provider: the first signs, every one verifies (add
    # the new one first to rotate, drop the old one later). Empty: a random secret generated
    # once per database (payments_provider_secrets) — fine for one deployment, set them for more.
    payments_webhook_secrets: tuple[str, ...] = ()
    # Where the sandbox provider POSTs its signed events (e.g. http://127.0.0.1:8080/v1/payments/
    # webhooks/sandbox); None: delivered in-process through the same verify-and-apply function.
    payments_webhook_url: str | None = None
    # How long after a confirmation the sandbox provider sends its outcome.
    payments_sandbox_delay_ms: int = 1000
    # A signed webhook's timestamp may be this far from now, either way.
    payments_webhook_tolerance_seconds: int = 300
    # --- end payments ---

    # --- storage (docs/storage.md) ---
    # Where `local` volumes and snapshots live; None: a `volumes` directory next to instances_dir.
    storage_dir: Path | None = None
    # sim volume driver: base duration of a volume operation (0.5×–1.5× per action) and the
    # share of creates, attaches and snapshots that fail.
    storage_sim_delay_ms: int = 500
    storage_sim_failure_rate: float = 0.0
    # How often the storage runner looks for due volume and snapshot work.
    storage_poll_seconds: float = 0.5
    # --- end storage ---

    @classmethod
    def from_env(cls, **overrides: object) -> Settings:
        values: dict[str, object] = {
            "broker_url": os.environ.get("HANGAR_BROKER_URL") or None,
            "amqp_exchange": os.environ.get("HANGAR_AMQP_EXCHANGE") or None,
            "amqp_queue_prefix": os.environ.get("HANGAR_AMQP_QUEUE_PREFIX") or "hangar",
            "host": os.environ.get("HANGAR_HOST", "127.0.0.1"),
            "port": _int("HANGAR_PORT", 8080),
            "validate_responses": _bool("HANGAR_VALIDATE_RESPONSES", False),
            "rate_limit_per_minute": _int("HANGAR_RATE_LIMIT_PER_MINUTE", 600),
            "public_rate_limit_per_minute": _int("HANGAR_PUBLIC_RATE_LIMIT_PER_MINUTE", 20),
            "run_relay": _bool("HANGAR_RUN_RELAY", True),
            "log_json": _bool("HANGAR_LOG_JSON", False),
            "driver": os.environ.get("HANGAR_DRIVER", "local") or "local",
            "sim_seed": _int("HANGAR_SIM_SEED", 1),
            "sim_delay_ms": _int("HANGAR_SIM_DELAY_MS", 1500),
            "sim_failure_rate": _float("HANGAR_SIM_FAILURE_RATE", 0.0),
            "saga_poll_seconds": _float("HANGAR_SAGA_POLL_SECONDS", 0.5),
            "saga_max_attempts": _int("HANGAR_SAGA_MAX_ATTEMPTS", 3),
            "quota_vcpus": _int("HANGAR_QUOTA_VCPUS", 64),
            "quota_gpus": _int("HANGAR_QUOTA_GPUS", 8),
            # billing (metering and holds)
            "billing_signup_credit": _int("HANGAR_BILLING_SIGNUP_CREDIT", 0),
            "billing_hold_seconds": _int("HANGAR_BILLING_HOLD_SECONDS", 600),
            "billing_hold_timeout_seconds": _int("HANGAR_BILLING_HOLD_TIMEOUT_SECONDS", 86_400),
            "billing_tick_seconds": _float("HANGAR_BILLING_TICK_SECONDS", 60.0),
            "billing_low_balance_threshold": _int("HANGAR_BILLING_LOW_BALANCE_THRESHOLD", 500),
            "billing_volume_price_per_gib_month": _int("HANGAR_BILLING_VOLUME_PRICE_PER_GIB_MONTH", 10),
            # terminal
            "terminal_ticket_ttl_seconds": _int("HANGAR_TERMINAL_TICKET_TTL_SECONDS", 30),
            "terminal_idle_timeout_seconds": _float("HANGAR_TERMINAL_IDLE_TIMEOUT_SECONDS", 900.0),
            "terminal_max_duration_seconds": _float("HANGAR_TERMINAL_MAX_DURATION_SECONDS", 8 * 3600.0),
            "terminal_max_sessions_per_org": _int("HANGAR_TERMINAL_MAX_SESSIONS_PER_ORG", 10),
            "terminal_auth_timeout_seconds": _float("HANGAR_TERMINAL_AUTH_TIMEOUT_SECONDS", 10.0),
            "terminal_recheck_seconds": _float("HANGAR_TERMINAL_RECHECK_SECONDS", 2.0),
            "terminal_ping_interval_seconds": _float("HANGAR_TERMINAL_PING_INTERVAL_SECONDS", 20.0),
            "terminal_ping_timeout_seconds": _float("HANGAR_TERMINAL_PING_TIMEOUT_SECONDS", 20.0),
            "terminal_public_url": os.environ.get("HANGAR_TERMINAL_PUBLIC_URL") or None,
            # --- payments ---
            "payments_webhook_secrets": tuple(
                s.strip() for s in os.environ.get("HANGAR_PAYMENTS_WEBHOOK_SECRETS", "").split(",") if s.strip()
            ),
            "payments_webhook_url": os.environ.get("HANGAR_PAYMENTS_WEBHOOK_URL") or None,
            "payments_sandbox_delay_ms": _int("HANGAR_PAYMENTS_SANDBOX_DELAY_MS", 1000),
            "payments_webhook_tolerance_seconds": _int("HANGAR_PAYMENTS_WEBHOOK_TOLERANCE_SECONDS", 300),
            # --- end payments ---
            # storage
            "storage_sim_delay_ms": _int("HANGAR_STORAGE_SIM_DELAY_MS", 500),
            "storage_sim_failure_rate": _float("HANGAR_STORAGE_SIM_FAILURE_RATE", 0.0),
            "storage_poll_seconds": _float("HANGAR_STORAGE_POLL_SECONDS", 0.5),
        }
        if os.environ.get("HANGAR_STORAGE_DIR"):
            values["storage_dir"] = Path(os.environ["HANGAR_STORAGE_DIR"])
        if os.environ.get("HANGAR_INSTANCES_DIR"):
            values["instances_dir"] = Path(os.environ["HANGAR_INSTANCES_DIR"])
        if os.environ.get("HANGAR_DATABASE_URL"):
            values["database_url"] = os.environ["HANGAR_DATABASE_URL"]
        values.update(overrides)
        settings = cls(**values)  # type: ignore[arg-type]
        if settings.driver not in ("local", "sim"):
            raise SystemExit(f"HANGAR_DRIVER must be 'local' or 'sim', got {settings.driver!r}")
        if not 0.0 <= settings.storage_sim_failure_rate <= 1.0:
            raise SystemExit(
                f"HANGAR_STORAGE_SIM_FAILURE_RATE must be between 0 and 1, got {settings.storage_sim_failure_rate}"
            )
        if not 0.0 <= settings.sim_failure_rate <= 1.0:
            raise SystemExit(f"HANGAR_SIM_FAILURE_RATE must be between 0 and 1, got {settings.sim_failure_rate}")
        if settings.billing_signup_credit < 0 or settings.billing_low_balance_threshold < 0:
            raise SystemExit("HANGAR_BILLING_SIGNUP_CREDIT and HANGAR_BILLING_LOW_BALANCE_THRESHOLD must be >= 0")
        if settings.billing_hold_seconds < 0 or settings.billing_volume_price_per_gib_month < 0:
            raise SystemExit("HANGAR_BILLING_HOLD_SECONDS and HANGAR_BILLING_VOLUME_PRICE_PER_GIB_MONTH must be >= 0")
        if settings.billing_tick_seconds <= 0 or settings.billing_hold_timeout_seconds <= 0:
            raise SystemExit("HANGAR_BILLING_TICK_SECONDS and HANGAR_BILLING_HOLD_TIMEOUT_SECONDS must be > 0")
        # --- payments ---
        if settings.payments_sandbox_delay_ms < 0 or settings.payments_webhook_tolerance_seconds < 1:
            raise SystemExit(
                "HANGAR_PAYMENTS_SANDBOX_DELAY_MS must be >= 0, HANGAR_PAYMENTS_WEBHOOK_TOLERANCE_SECONDS >= 1"
            )
        if any(len(secret) < 16 for secret in settings.payments_webhook_secrets):
            raise SystemExit("every HANGAR_PAYMENTS_WEBHOOK_SECRETS entry must be at least 16 characters")
        # --- end payments ---
        return settings


class SettingsHolder:
    """The process's Settings, for code that is handed none: a handler's RequestContext and a
    consumer registered with `register(bus)` carry no Settings, so a context keeps one of these.

    The runtime calls each context's `background.prepare(settings, …)` once per app or worker
    before anything is served, and that `configure`s it. Code that runs without a prepare (a
    script, a unit test) gets the environment's settings, which is what a prepare would have
    recorded.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._current: Settings | None = None

    def configure(self, settings: Settings) -> None:
        with self._lock:
            self._current = settings

    def current(self) -> Settings:
        with self._lock:
            if self._current is None:
                self._current = Settings.from_env()
            return self._current
