"""In-process cost per request: each app called through ASGI directly, no sockets, no server.

    .venv/bin/python -m bench.asgi                         # 2,000 requests per app and scenario
    .venv/bin/python -m bench.asgi --requests 5000 --concurrency 4

The same apps, database and requests as bench/api.py, minus uvicorn and the network: a
loop sends one request after another (or `--concurrency` at a time) and measures wall
time and this process's CPU time (every thread's) per request. It isolates what the
framework layers cost on top of the shared work, and, being CPU time of one process
measured back to back, it is far less disturbed than req/s when other jobs share the
machine. It does not replace bench/api.py: HTTP parsing, the event loop under load and
the database contention of many connections are not in it.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from bench.api import SCENARIOS, SEED_KEYS, SERVERS, Database, Scenario, Server

ASGI = Callable[
    [dict[str, Any], Callable[[], Awaitable[dict[str, Any]]], Callable[[dict[str, Any]], Awaitable[None]]],
    Awaitable[None],
]


def _scope(scenario: Scenario, token: str) -> dict[str, Any]:
    path, _, query = scenario.path.partition("?")
    headers = [(b"host", b"127.0.0.1:8000"), (b"authorization", f"Bearer {token}".encode())]
    if scenario.body:
        headers += [(b"content-type", b"application/json"), (b"content-length", str(len(scenario.body)).encode())]
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1",
        "method": scenario.method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": query.encode(),
        "headers": headers,
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
        "state": {},
        "extensions": {},
    }


async def request(app: ASGI, scope: dict[str, Any], body: bytes) -> int:
    sent = False
    status = 0

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.Event().wait()  # like a client that keeps the connection open
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    await app(dict(scope, state={}, extensions={}), receive, send)
    return status


@asynccontextmanager
async def lifespan(app: ASGI, threads: int | None = None) -> AsyncIterator[None]:
    """Run the app's lifespan startup and shutdown around the measurement; `threads` sets
    this loop's thread-pool size (anyio's default limiter: 40 tokens)."""
    if threads:
        import anyio.to_thread

        anyio.to_thread.current_default_thread_limiter().total_tokens = threads
    queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    started, stopped = asyncio.Event(), asyncio.Event()

    async def send(message: dict[str, Any]) -> None:
        if message["type"].startswith("lifespan.startup"):
            started.set()
        elif message["type"].startswith("lifespan.shutdown"):
            stopped.set()

    await queue.put({"type": "lifespan.startup"})
    task = asyncio.ensure_future(app({"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}, queue.get, send))
    await asyncio.wait_for(started.wait(), 30)
    try:
        yield
    finally:
        await queue.put({"type": "lifespan.shutdown"})
        await asyncio.wait_for(stopped.wait(), 30)
        await task


async def measure(
    app: ASGI, scenario: Scenario, token: str, requests: int, concurrency: int, warmup: int
) -> dict[str, Any]:
    scope = _scope(scenario, token)
    body = scenario.body.encode()
    for _ in range(warmup):
        status = await request(app, scope, body)
        if not 200 <= status < 300:
            raise SystemExit(f"bench: {scenario.method} {scenario.path} answered {status} in warm-up")
    latencies: list[float] = []
    per_worker = requests // concurrency

    async def worker() -> None:
        for _ in range(per_worker):
            started = time.perf_counter()
            await request(app, scope, body)
            latencies.append(time.perf_counter() - started)

    wall, cpu = time.perf_counter(), time.process_time()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    done = per_worker * concurrency
    return {
        "requests": done,
        "wall_us": wall / done * 1e6,
        "cpu_us": cpu / done * 1e6,
        "p50_us": statistics.median(latencies) * 1e6,
    }


def load_app(server: Server, url: str) -> ASGI:
    os.environ.update(server.env)
    os.environ.update(
        {
            "HANGAR_DATABASE_URL": url,
            "HANGAR_RATE_LIMIT_PER_MINUTE": "1000000000",
            "HANGAR_PUBLIC_RATE_LIMIT_PER_MINUTE": "1000000000",
            "HANGAR_RUN_RELAY": "false",
        }
    )
    module, _, attr = server.factory.partition(":")
    app: ASGI = getattr(importlib.import_module(module), attr)()
    return app


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None, help="thread-pool size (default: anyio's 40)")
    parser.add_argument("--servers", default="hangar,starlette,fastapi,hangar-respval,starlette-onloop")
    parser.add_argument("--scenarios", default="get,post,get1")
    args = parser.parse_args(argv)
    import warnings

    warnings.simplefilter("ignore")
    by_name = {s.name: s for s in SERVERS}
    workdir = Path(tempfile.mkdtemp(prefix="hangar-bench-asgi-"))
    database = Database(workdir, None)
    try:
        token = database.seed(SEED_KEYS)
        servers = [by_name[name] for name in args.servers.split(",")]
        scenarios = [SCENARIOS[name] for name in args.scenarios.split(",")]
        rows: list[tuple[Scenario, Server, dict[str, Any]]] = []
        for scenario in scenarios:
            for server in servers:
                app = load_app(server, database.fresh())

                async def run(app: ASGI = app, scenario: Scenario = scenario) -> dict[str, Any]:
                    async with lifespan(app, args.threads):
                        return await measure(app, scenario, token, args.requests, args.concurrency, args.warmup)

                result = asyncio.run(run())
                rows.append((scenario, server, result))
                print(
                    f"  {scenario.name:<4} {server.name:<17} {result['cpu_us']:>6.0f} µs CPU/req",
                    file=sys.stderr,
                    flush=True,
                )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    print()
    threads = args.threads or "40 (anyio default)"
    print(
        f"In-process ASGI cost per request ({args.requests} requests after {args.warmup} warm-up, concurrency {args.concurrency}, thread pool {threads}, SQLite)"
    )
    head = f"{'scenario':<40} {'server':<26} {'CPU µs/req':>10} {'wall µs/req':>11} {'p50 µs':>8} {'CPU vs St.':>10} {'overhead vs St.':>16}"
    print(head)
    print("-" * len(head))
    for scenario in scenarios:
        base = next((r for sc, sv, r in rows if sc is scenario and sv.name == "starlette"), None)
        for sc, server, r in rows:
            if sc is not scenario:
                continue
            ratio = f"{base['cpu_us'] / r['cpu_us']:.0%}" if base else "-"
            extra = f"{r['cpu_us'] - base['cpu_us']:+.0f} µs" if base else "-"
            print(
                f"{scenario.label:<40} {server.label:<26} {r['cpu_us']:>10.0f} {r['wall_us']:>11.0f} {r['p50_us']:>8.0f} {ratio:>10} {extra:>16}"
            )
        print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
