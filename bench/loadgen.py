"""A small closed-loop HTTP/1.1 load generator, for machines without `wrk`.

N keep-alive connections, each sending one request and reading its response before the
next, for a fixed time; prints one JSON line: requests, non-2xx count, requests/s and
latency percentiles in microseconds. Run it in its own process (bench/api.py does), so it
does not share an interpreter with the server it measures. It costs more CPU per request
than wrk, so on a small machine absolute figures are lower than wrk's; ratios between
servers measured with the same generator stay comparable.

    python -m bench.loadgen --port 8000 --path /v1/api-keys -H 'Authorization: Bearer …' --duration 10
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from typing import Any


def percentile(sorted_values: list[float], pct: float) -> float:
    if not sorted_values:
        return 0.0
    index = min(len(sorted_values) - 1, max(0, round(pct / 100 * len(sorted_values)) - 1))
    return sorted_values[index]


def build_request(method: str, host: str, port: int, path: str, headers: list[tuple[str, str]], body: bytes) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}:{port}"]
    lines += [f"{name}: {value}" for name, value in headers]
    if body or method in ("POST", "PUT", "PATCH"):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bool]:
    """(status, connection must close)."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    length, chunked, close = 0, False, False
    for line in lines[1:]:
        name, _, value = line.partition(":")
        name = name.strip().lower()
        value = value.strip().lower()
        if name == "content-length":
            length = int(value)
        elif name == "transfer-encoding" and "chunked" in value:
            chunked = True
        elif name == "connection" and value == "close":
            close = True
    if chunked:
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    elif length:
        await reader.readexactly(length)
    return status, close


async def _connection(
    host: str, port: int, request: bytes, deadline: float, latencies: list[float], counts: dict[str, int]
) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        while True:
            started = time.perf_counter()
            if started >= deadline:
                return
            writer.write(request)
            try:
                status, close = await _read_response(reader)
            except (asyncio.IncompleteReadError, ConnectionError):
                counts["errors"] += 1
                writer.close()
                reader, writer = await asyncio.open_connection(host, port)
                continue
            latencies.append(time.perf_counter() - started)
            counts["requests"] += 1
            if not 200 <= status < 400:
                counts["non2xx"] += 1
            if close:
                writer.close()
                reader, writer = await asyncio.open_connection(host, port)
    finally:
        writer.close()


async def run(host: str, port: int, request: bytes, connections: int, duration: float) -> dict[str, Any]:
    latencies: list[float] = []
    counts = {"requests": 0, "non2xx": 0, "errors": 0}
    started = time.perf_counter()
    deadline = started + duration
    await asyncio.gather(*(_connection(host, port, request, deadline, latencies, counts) for _ in range(connections)))
    elapsed = time.perf_counter() - started
    latencies.sort()
    return {
        "tool": "python",
        "requests": counts["requests"],
        "non2xx": counts["non2xx"],
        "socket_errors": counts["errors"],
        "seconds": elapsed,
        "rps": counts["requests"] / elapsed if elapsed else 0.0,
        "p50_us": percentile(latencies, 50) * 1e6,
        "p90_us": percentile(latencies, 90) * 1e6,
        "p99_us": percentile(latencies, 99) * 1e6,
        "max_us": (latencies[-1] if latencies else 0.0) * 1e6,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--method", default="GET")
    parser.add_argument("--path", default="/")
    parser.add_argument("-H", "--header", action="append", default=[], help="'Name: value' (repeatable)")
    parser.add_argument("--body", default="", help="request body (sent as is)")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--duration", type=float, default=10.0)
    args = parser.parse_args(argv)
    headers = [(name.strip(), value.strip()) for name, _, value in (h.partition(":") for h in args.header)]
    request = build_request(args.method, args.host, args.port, args.path, headers, args.body.encode())
    try:
        import uvloop

        runner: Any = uvloop.run
    except ImportError:
        runner = asyncio.run
    result = runner(run(args.host, args.port, request, args.connections, args.duration))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
