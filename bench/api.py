"""API benchmark: the generated server against bare Starlette and FastAPI doing the same work.

    .venv/bin/python -m bench.api                       # SQLite, 10 s per scenario, 16 connections
    .venv/bin/python -m bench.api --rounds 3            # interleaved rounds, median reported
    .venv/bin/python -m bench.api --servers all         # also the informational variants
    .venv/bin/python -m bench.api --database-url postgresql+psycopg://postgres@127.0.0.1:5432/postgres

What is compared (see bench/README.md):
- scenarios: `GET /v1/api-keys?limit=50` (authenticated, a page of 50 of the organization's
  60 keys) and `POST /v1/api-keys` (authenticated, body validated, one key + one outbox row
  written and committed per request; no Idempotency-Key);
- servers: `hangar` = hangar.app.create_app (connexion, request validation on, response
  validation off as in production); `starlette` and `fastapi` = bench/baselines/, the
  same auth, handler, queries and JSON through the same code (bench/baselines/common.py).
  Variants with `--servers all`: `hangar-respval` (response validation on, as in tests) and
  `starlette-onloop` (database work on the event loop: the cost of the thread-pool hop);
- every server: one uvicorn process (uvloop + httptools, no access log), its own fresh copy
  of the same seeded database, rate limits raised out of the way, outbox relay off;
- load: wrk (or bench/loadgen.py without wrk), closed loop, same connections and duration,
  after a warm-up; server and load generator pinned to different cores when there are two.

Before measuring, each server's answer to both requests is compared with the first
server's (same JSON apart from timestamps and fresh secrets); a mismatch is reported.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable

LIST_PATH = "/v1/api-keys?limit=50"
CREATE_PATH = "/v1/api-keys"
CREATE_BODY = json.dumps({"name": "bench", "scopes": ["instances:read"]}, separators=(",", ":"))
SEED_KEYS = 60  # the organization's keys, the signup key included: a full page of 50 and more


@dataclass(frozen=True)
class Server:
    name: str
    factory: str
    label: str
    env: dict[str, str] = field(default_factory=dict)
    extra: bool = False  # only with --servers all


SERVERS = [
    Server("hangar", "hangar.app:app_from_env", "generated (connexion)", {"HANGAR_VALIDATE_RESPONSES": "false"}),
    Server("starlette", "bench.baselines.starlette_app:create_app", "bare Starlette"),
    Server("fastapi", "bench.baselines.fastapi_app:create_app", "FastAPI"),
    Server(
        "hangar-respval",
        "hangar.app:app_from_env",
        "generated + resp. valid.",
        {"HANGAR_VALIDATE_RESPONSES": "true"},
        extra=True,
    ),
    Server("starlette-onloop", "bench.baselines.starlette_app:create_app_on_loop", "Starlette, DB on loop", extra=True),
]
BASELINE = "starlette"


@dataclass(frozen=True)
class Scenario:
    name: str
    label: str
    method: str
    path: str
    body: str = ""


SCENARIOS = {
    "get": Scenario("get", "GET /v1/api-keys (page of 50)", "GET", LIST_PATH),
    "post": Scenario("post", "POST /v1/api-keys (validated, 1 write)", "POST", CREATE_PATH, CREATE_BODY),
    # Not asked for, but telling: one key per page leaves little besides the framework.
    "get1": Scenario("get1", "GET /v1/api-keys?limit=1", "GET", "/v1/api-keys?limit=1"),
}


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# -- the database: seeded once, a fresh copy per measured run --------------------------------------


def migrate(url: str) -> None:
    env = {**os.environ, "HANGAR_DATABASE_URL": url}
    done = subprocess.run(
        [PY, "-m", "alembic", "upgrade", "head"], cwd=ROOT, env=env, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise SystemExit(f"bench: alembic upgrade head failed on {url}:\n{done.stderr[-3000:]}")


def seed(url: str, keys: int) -> str:
    """An organization with `keys` API keys; returns the owner's signup key (every scope)."""
    from handlers.identity import services
    from handlers.identity.published import authenticate
    from hangar.context import RequestContext
    from hangar.db import make_engine, make_session_factory, utcnow

    engine = make_engine(url)
    sessions = make_session_factory(engine)
    base = utcnow() - timedelta(hours=1)
    try:
        with sessions() as session:
            ctx = RequestContext(request_id="bench-seed", session=session, client_address="127.0.0.1", now=base)
            signup = services.sign_up(
                ctx, email="bench@example.com", password="bench-password-123", organization_name="Bench", name="Bench"
            )
            session.commit()
            token = signup.secret
            principal = authenticate(session, token, base)
            assert principal is not None
            for i in range(keys - 1):
                at = base + timedelta(seconds=i + 1)
                key_ctx = RequestContext(
                    request_id="bench-seed", session=session, principal=principal, client_address="127.0.0.1", now=at
                )
                services.create_api_key(
                    key_ctx, name=f"bench-{i:03d}", scopes=["api-keys:read", "instances:read"], expires_at=None
                )
            session.commit()
            if url.startswith("sqlite"):
                session.connection().exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        engine.dispose()
    return token


class Database:
    """SQLite: a seeded file copied per run. PostgreSQL: a seeded database used as the
    template of a fresh database per run."""

    def __init__(self, workdir: Path, base_url: str | None) -> None:
        self.workdir = workdir
        self.base_url = base_url
        self._seed_name = f"hangar_bench_seed_{os.getpid()}"
        self._run_name = f"hangar_bench_run_{os.getpid()}"
        self._runs = 0

    @property
    def kind(self) -> str:
        return "PostgreSQL" if self.base_url else "SQLite (WAL, one file)"

    def _pg_url(self, name: str) -> str:
        from sqlalchemy.engine import make_url

        assert self.base_url is not None
        return make_url(self.base_url).set(database=name).render_as_string(hide_password=False)

    def _pg_admin(self, *statements: str) -> None:
        from sqlalchemy import create_engine

        engine = create_engine(self._pg_url("postgres"), isolation_level="AUTOCOMMIT")
        try:
            with engine.connect() as conn:
                for statement in statements:
                    conn.exec_driver_sql(statement)
        finally:
            engine.dispose()

    def seed(self, keys: int) -> str:
        if self.base_url is None:
            url = f"sqlite:///{self.workdir / 'seed.db'}"
        else:
            self._pg_admin(f'DROP DATABASE IF EXISTS "{self._seed_name}"', f'CREATE DATABASE "{self._seed_name}"')
            url = self._pg_url(self._seed_name)
        migrate(url)
        return seed(url, keys)

    def fresh(self) -> str:
        self._runs += 1
        if self.base_url is None:
            target = self.workdir / f"run-{self._runs}.db"
            shutil.copyfile(self.workdir / "seed.db", target)
            for old in self.workdir.glob(f"run-{self._runs - 1}.db*"):
                old.unlink()
            return f"sqlite:///{target}"
        self._pg_admin(
            f'DROP DATABASE IF EXISTS "{self._run_name}" WITH (FORCE)',
            f'CREATE DATABASE "{self._run_name}" TEMPLATE "{self._seed_name}"',
        )
        return self._pg_url(self._run_name)

    def cleanup(self) -> None:
        if self.base_url is not None:
            self._pg_admin(
                f'DROP DATABASE IF EXISTS "{self._run_name}" WITH (FORCE)',
                f'DROP DATABASE IF EXISTS "{self._seed_name}" WITH (FORCE)',
            )


# -- servers --------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def pinning() -> tuple[list[str], list[str]]:
    """taskset prefixes for the server and the load generator (different cores)."""
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    if len(cpus) < 2 or shutil.which("taskset") is None:
        return [], []
    return ["taskset", "-c", str(cpus[0])], ["taskset", "-c", str(cpus[1])]


@contextmanager
def running(
    server: Server, database_url: str, port: int, pin: list[str], logfile: Path, token: str
) -> Iterator[subprocess.Popen[bytes]]:
    env = {
        **os.environ,
        **server.env,
        "HANGAR_DATABASE_URL": database_url,
        "HANGAR_RATE_LIMIT_PER_MINUTE": "1000000000",
        "HANGAR_PUBLIC_RATE_LIMIT_PER_MINUTE": "1000000000",
        "HANGAR_RUN_RELAY": "false",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        "PYTHONWARNINGS": "ignore",
    }
    cmd = [
        *pin,
        PY,
        "-m",
        "uvicorn",
        "--factory",
        server.factory,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--loop",
        "uvloop",
        "--http",
        "httptools",
        "--no-access-log",
        "--log-level",
        "warning",
    ]
    with open(logfile, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_ready(proc, port, token, logfile)
        yield proc
    finally:
        stop(proc)


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process, all its threads (Linux /proc; None elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)  # the group this script started for the server
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=5)


def wait_ready(proc: subprocess.Popen[bytes], port: int, token: str, logfile: Path, timeout: float = 90.0) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(
                f"bench: the server exited with {proc.returncode} while starting:\n{logfile.read_text()[-3000:]}"
            )
        try:
            response = httpx.get(
                f"http://127.0.0.1:{port}{LIST_PATH}", headers={"Authorization": f"Bearer {token}"}, timeout=5
            )
        except httpx.HTTPError:
            time.sleep(0.2)
            continue
        if response.status_code == 200:
            return
        raise SystemExit(
            f"bench: the server answered {response.status_code} when ready:\n{response.text[:2000]}\n{logfile.read_text()[-2000:]}"
        )
    raise SystemExit(f"bench: the server did not answer within {timeout:.0f} s:\n{logfile.read_text()[-3000:]}")


# -- same answers? ---------------------------------------------------------------------------------

_VOLATILE = {"last_used_at", "secret", "id", "prefix", "created_at"}


def _mask(value: Any, volatile: set[str]) -> Any:
    if isinstance(value, dict):
        return {k: ("<varies>" if k in volatile else _mask(v, volatile)) for k, v in value.items()}
    if isinstance(value, list):
        return [_mask(v, volatile) for v in value]
    return value


def sample(port: int, token: str) -> dict[str, Any]:
    """Each request once: status, the headers that matter, the JSON with volatile values
    masked. Two invalid requests too (a limit out of range, an unknown scope): every server
    must validate and answer 400 problem+json (only the status and problem type compared:
    the field messages are each validator's own)."""
    import httpx

    auth = {"Authorization": f"Bearer {token}"}
    post = {**auth, "Content-Type": "application/json"}
    bad_body = json.dumps({"name": "bench", "scopes": ["no-such-scope"]})
    out: dict[str, Any] = {}
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
        for name, response, volatile in (
            ("get", client.get(LIST_PATH, headers=auth), {"last_used_at"}),
            ("post", client.post(CREATE_PATH, headers=post, content=CREATE_BODY), _VOLATILE),
            ("get-invalid", client.get("/v1/api-keys?limit=0", headers=auth), None),
            ("post-invalid", client.post(CREATE_PATH, headers=post, content=bad_body), None),
        ):
            headers = sorted(
                h for h in response.headers if h in ("content-type", "x-request-id") or h.startswith("ratelimit-")
            )
            document = response.json()
            if volatile is None:  # a problem: its kind, not its wording
                document = {k: document.get(k) for k in ("type", "status")}
                headers = [h for h in headers if h in ("content-type", "x-request-id")]
            else:
                document = _mask(document, volatile)
            out[name] = {"status": response.status_code, "headers": headers, "json": document}
    return out


def differences(reference: dict[str, Any], other: dict[str, Any]) -> list[str]:
    found = []
    for name in reference:
        for part in ("status", "headers", "json"):
            if reference[name][part] != other[name][part]:
                found.append(
                    f"{name} {part}: {json.dumps(other[name][part])[:300]} != {json.dumps(reference[name][part])[:300]}"
                )
    return found


# -- load ------------------------------------------------------------------------------------------


def wrk_script(scenario: Scenario, token: str) -> str:
    lines = [
        f'wrk.method = "{scenario.method}"',
        f'wrk.headers["Authorization"] = "Bearer {token}"',
    ]
    if scenario.body:
        lines += [f"wrk.body = {json.dumps(scenario.body)}", 'wrk.headers["Content-Type"] = "application/json"']
    lines.append(
        "done = function(summary, latency, requests)\n"
        '  io.write(string.format("BENCH {\\"requests\\":%d,\\"seconds\\":%f,\\"non2xx\\":%d,\\"socket_errors\\":%d,'
        '\\"p50_us\\":%d,\\"p90_us\\":%d,\\"p99_us\\":%d,\\"max_us\\":%d}\\n",\n'
        "    summary.requests, summary.duration / 1e6, summary.errors.status,\n"
        "    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,\n"
        "    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))\n"
        "end"
    )
    return "\n".join(lines) + "\n"


def load(
    tool: str, scenario: Scenario, port: int, token: str, seconds: int, connections: int, pin: list[str], workdir: Path
) -> dict[str, Any]:
    if tool == "wrk":
        script = workdir / f"{scenario.name}.lua"
        script.write_text(wrk_script(scenario, token))
        path = scenario.path
        cmd = [
            *pin,
            "wrk",
            "-t1",
            f"-c{connections}",
            f"-d{seconds}s",
            "--timeout",
            "10s",
            "-s",
            str(script),
            f"http://127.0.0.1:{port}{path}",
        ]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60, check=False)
        line = next((ln for ln in done.stdout.splitlines() if ln.startswith("BENCH ")), None)
        if done.returncode != 0 or line is None:
            raise SystemExit(f"bench: wrk failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
        result: dict[str, Any] = {"tool": "wrk", **json.loads(line[6:])}
        result["rps"] = result["requests"] / result["seconds"]
        return result
    cmd = [*pin, PY, "-m", "bench.loadgen", "--port", str(port), "--method", scenario.method, "--path", scenario.path]
    cmd += ["-H", f"Authorization: Bearer {token}", "--connections", str(connections), "--duration", str(seconds)]
    if scenario.body:
        cmd += ["-H", "Content-Type: application/json", "--body", scenario.body]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=seconds + 60, check=False)
    if done.returncode != 0:
        raise SystemExit(f"bench: the load generator failed:\n{done.stderr[-3000:]}")
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def choose_tool(requested: str) -> str:
    if requested == "python":
        return "python"
    if shutil.which("wrk"):
        return "wrk"
    if requested == "wrk":
        raise SystemExit("bench: wrk is not installed (Debian: `apt-get install -y wrk`); or use --tool python")
    log("bench: wrk not found (Debian: `apt-get install -y wrk`); using the Python load generator (bench/loadgen.py)")
    return "python"


# -- the run ---------------------------------------------------------------------------------------


def _median(runs: list[dict[str, Any]], key: str) -> float | None:
    values = [r[key] for r in runs if key in r]
    return statistics.median(values) if values else None


def report(
    results: dict[tuple[str, str], list[dict[str, Any]]], servers: list[Server], scenarios: list[Scenario]
) -> str:
    """One row per scenario and server: medians over the rounds. Two ratios against bare
    Starlette: throughput (req/s), and CPU efficiency (Starlette's server CPU time per
    request / this server's) — the second barely moves when other processes share the
    machine, the first does."""
    rounds = max(len(v) for v in results.values())
    head = (
        f"{'scenario':<40} {'server':<26} {'req/s':>7} {'p50 ms':>7} {'p99 ms':>7} {'CPU µs/req':>10} "
        f"{'non-2xx':>7} {'req/s vs St.':>12} {'CPU vs St.':>10}"
    )
    if rounds > 1:
        head += f"  {'req/s min..max':>15}"
    lines = [head, "-" * len(head)]
    for scenario in scenarios:
        base_runs = results.get((scenario.name, BASELINE))
        base_rps = _median(base_runs, "rps") if base_runs else None
        base_cpu = _median(base_runs, "cpu_us_per_request") if base_runs else None
        for server in servers:
            runs = results[(scenario.name, server.name)]
            rps = _median(runs, "rps") or 0.0
            p50 = (_median(runs, "p50_us") or 0.0) / 1000
            p99 = (_median(runs, "p99_us") or 0.0) / 1000
            cpu = _median(runs, "cpu_us_per_request")
            bad = sum(r["non2xx"] + r["socket_errors"] for r in runs)
            rps_ratio = f"{rps / base_rps:.0%}" if base_rps else "-"
            cpu_ratio = f"{base_cpu / cpu:.0%}" if base_cpu and cpu else "-"
            cpu_text = f"{cpu:.0f}" if cpu else "-"
            line = (
                f"{scenario.label:<40} {server.label:<26} {rps:>7.0f} {p50:>7.1f} {p99:>7.1f} {cpu_text:>10} "
                f"{bad:>7} {rps_ratio:>12} {cpu_ratio:>10}"
            )
            if rounds > 1:
                line += f"  {min(r['rps'] for r in runs):>7.0f}..{max(r['rps'] for r in runs):<7.0f}"
            lines.append(line)
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--duration", type=int, default=10, help="measured seconds per server and scenario (default 10)"
    )
    parser.add_argument("--warmup", type=int, default=3, help="unmeasured seconds before each measurement (default 3)")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=1, help="interleaved rounds; the table shows medians")
    parser.add_argument(
        "--servers",
        default="default",
        help="comma list of " + ", ".join(s.name for s in SERVERS) + "; 'default' or 'all'",
    )
    parser.add_argument("--scenarios", default="get,post", help="comma list of get, post, get1 (default get,post)")
    parser.add_argument(
        "--database-url", default=None, help="a PostgreSQL URL (any database; bench creates its own); default SQLite"
    )
    parser.add_argument("--tool", choices=["auto", "wrk", "python"], default="auto")
    parser.add_argument(
        "--no-pin", action="store_true", help="do not pin the server and the load generator to different cores"
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the raw results here")
    args = parser.parse_args(argv)

    if args.servers == "default":
        servers = [s for s in SERVERS if not s.extra]
    elif args.servers == "all":
        servers = list(SERVERS)
    else:
        wanted = args.servers.split(",")
        unknown = set(wanted) - {s.name for s in SERVERS}
        if unknown:
            parser.error(f"unknown servers: {', '.join(sorted(unknown))}")
        servers = [s for s in SERVERS if s.name in wanted]
    scenarios = [SCENARIOS[name] for name in args.scenarios.split(",")]
    tool = choose_tool(args.tool)
    server_pin, load_pin = ([], []) if args.no_pin else pinning()

    workdir = Path(tempfile.mkdtemp(prefix="hangar-bench-"))
    database = Database(workdir, args.database_url)
    try:
        log(f"bench: seeding {database.kind} with one organization and {SEED_KEYS} API keys …")
        token = database.seed(SEED_KEYS)
        results: dict[tuple[str, str], list[dict[str, Any]]] = {
            (sc.name, s.name): [] for sc in scenarios for s in servers
        }
        reference: dict[str, Any] | None = None
        mismatches: dict[str, list[str]] = {}
        started = time.monotonic()
        load_before = os.getloadavg()
        for round_no in range(1, args.rounds + 1):
            for scenario in scenarios:
                # Rotate the order each round, so no server always runs first or last.
                shift = (round_no - 1) % len(servers)
                for server in servers[shift:] + servers[:shift]:
                    port = free_port()
                    url = database.fresh()
                    logfile = workdir / f"{server.name}-{scenario.name}-{round_no}.log"
                    with running(server, url, port, server_pin, logfile, token) as proc:
                        if round_no == 1 and scenario is scenarios[0]:
                            answers = sample(port, token)
                            if reference is None:
                                reference = answers
                            else:
                                mismatches[server.name] = differences(reference, answers)
                        if args.warmup:
                            load(tool, scenario, port, token, args.warmup, args.connections, load_pin, workdir)
                        cpu_before = cpu_seconds(proc.pid)
                        result = load(tool, scenario, port, token, args.duration, args.connections, load_pin, workdir)
                        cpu_after = cpu_seconds(proc.pid)
                    if cpu_before is not None and cpu_after is not None and result["requests"]:
                        result["cpu_us_per_request"] = (cpu_after - cpu_before) / result["requests"] * 1e6
                    results[(scenario.name, server.name)].append(result)
                    log(
                        f"  round {round_no} {scenario.name:<4} {server.name:<17} {result['rps']:>7.0f} req/s  "
                        f"p99 {result['p99_us'] / 1000:.1f} ms  CPU {result.get('cpu_us_per_request', 0):.0f} µs/req  non-2xx {result['non2xx']}"
                    )
        elapsed = time.monotonic() - started
    finally:
        database.cleanup()
        shutil.rmtree(workdir, ignore_errors=True)

    print()
    print(
        f"API benchmark: {tool}, {args.connections} connections, {args.warmup} s warm-up + {args.duration} s per run, "
        f"{args.rounds} round(s), {database.kind}, 1 uvicorn process per server (uvloop, httptools)"
    )
    pin_note = f"server on CPU {server_pin[-1]}, load generator on CPU {load_pin[-1]}" if server_pin else "not pinned"
    print(
        f"machine: {os.cpu_count()} CPUs ({pin_note}); load average {load_before[0]:.2f} before, {os.getloadavg()[0]:.2f} after; {elapsed:.0f} s"
    )
    print()
    print(report(results, servers, scenarios))
    for name, found in mismatches.items():
        if found:
            print(f"WARNING: {name} does not answer like {servers[0].name}:")
            for line in found:
                print(f"  {line}")
    if not any(mismatches.values()):
        print(
            f"responses: every server answered the four sample requests (2 valid, 2 invalid) with the same status, headers and JSON as {servers[0].name} (timestamps and fresh ids masked)"
        )
    if args.json:
        args.json.write_text(json.dumps({f"{sc}/{sv}": runs for (sc, sv), runs in results.items()}, indent=2))
    return 1 if any(mismatches.values()) else 0


if __name__ == "__main__":
    raise SystemExit(main())
