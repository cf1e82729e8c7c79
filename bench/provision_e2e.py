"""End-to-end launch benchmark: create → running through the whole production shape.

    .venv/bin/python -m bench.provision_e2e                      # 500 launches, 2 APIs + 2 workers, vs 1 + 1
    .venv/bin/python -m bench.provision_e2e --instances 1000 --apis 3 --workers 3
    .venv/bin/python -m bench.provision_e2e --broker amqp://guest:guest@127.0.0.1:5672/ \\
        --db postgresql://postgres@127.0.0.1:5432/postgres

What is measured (see bench/README.md):
- the topology: bench.cluster.Cluster — `--apis` hangar-server processes (HANGAR_RUN_RELAY=0)
  and `--workers` hangar-worker processes (relay, consumers, saga runner) on one fresh
  PostgreSQL database (created on `--db`'s server, migrated, dropped afterwards), events
  over a private exchange and queues on the RabbitMQ at `--broker`;
- the hosts: the sim driver (`--sim-delay-ms` per host operation, each instance 0.5×–1.5×
  of it; no failures unless `--failure-rate`), a fleet from `hangar-admin load-sim-fleet
  --hosts N` big enough that capacity is never the limit (checked: a launch that fails for
  lack of room is reported);
- the workload: `--tenants` organizations signed up through the API (quotas and rate limits
  raised out of the way); `--instances` creates (cpu-1 and cpu-2 round robin over fra1,
  ams1, nyc1), `--threads` at a time, spread over every API process, each with an
  Idempotency-Key, as fast as the APIs answer;
- the figures: accepted launches/s (202s ÷ client wall time from the first request to the
  last answer), running/s (instances running ÷ server time from the first `created_at` to
  the last `launched_at`), create → running latency p50/p95/p99 (each running instance's
  `launched_at − created_at`, server clocks), and the client's 202 latency p50/p99;
- the baseline, in the same run and on a fresh database of its own: the same workload on
  1 API + 1 worker, so the figures of `--apis`/`--workers` are read against it.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, select

from bench.cluster import (
    Cluster,
    ServiceUnavailableError,
    fresh_database,
    launch_many,
    require_broker,
    sign_up,
    wait_until_settled,
)

DEFAULT_DB = "postgresql://postgres@127.0.0.1:5432/postgres"
DEFAULT_BROKER = "amqp://guest:guest@127.0.0.1:5672/"
REGIONS = ("fra1", "ams1", "nyc1")
TYPES = ("cpu-1", "cpu-2")


@dataclass(frozen=True)
class Result:
    label: str
    apis: int
    workers: int
    launches: int
    accepted: int
    running: int
    failed: dict[str, int]  # error code → instances
    accept_seconds: float  # client: first request sent → last answer
    running_seconds: float  # server: first created_at → last launched_at
    latencies_ms: list[float]  # created_at → launched_at per running instance
    answer_ms: list[float]  # client: request sent → 202 received
    api_cpu: float  # CPU seconds of the API processes while launching and settling
    worker_cpu: float  # CPU seconds of the workers over the same time
    load: tuple[float, float]  # 1-minute load average before and after

    @property
    def accepted_per_second(self) -> float:
        return self.accepted / self.accept_seconds if self.accept_seconds else 0.0

    @property
    def running_per_second(self) -> float:
        return self.running / self.running_seconds if self.running_seconds else 0.0


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100) of `values`; 0 for none."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, round(p / 100 * len(ordered) + 0.5))
    return ordered[min(rank, len(ordered)) - 1]


def _environment(args: argparse.Namespace) -> dict[str, str]:
    return {
        "HANGAR_DRIVER": "sim",
        "HANGAR_SIM_DELAY_MS": str(args.sim_delay_ms),
        "HANGAR_SIM_FAILURE_RATE": str(args.failure_rate),
        "HANGAR_SAGA_POLL_SECONDS": str(args.poll),
        "HANGAR_QUOTA_VCPUS": "1000000",
        "HANGAR_QUOTA_GPUS": "100000",
        "HANGAR_RATE_LIMIT_PER_MINUTE": "10000000",
        "HANGAR_PUBLIC_RATE_LIMIT_PER_MINUTE": "100000",
        "HANGAR_BILLING_SIGNUP_CREDIT": "1000000000",  # launches need credit (a billing hold each)
        "HANGAR_LOG_JSON": "0",
    }


def _body(index: int) -> dict[str, Any]:
    return {
        "name": f"bench-{index}",
        "region": REGIONS[index % len(REGIONS)],
        "instance_type": TYPES[(index // len(REGIONS)) % len(TYPES)],
        "image": "ubuntu-24.04",
    }


def run_one(label: str, apis: int, workers: int, args: argparse.Namespace, logs: Path) -> Result:
    """One configuration on a fresh database: start, load the fleet, launch, wait, measure."""
    from handlers.provisioning.tables import Action, Instance

    with fresh_database(args.db, prefix="hangar_e2e") as url:
        cluster = Cluster(url, logs / label, apis=apis, workers=workers, broker_url=args.broker, env=_environment(args))
        try:
            cluster.start()
            print(f"  [{label}] {cluster.admin('load-sim-fleet', '--hosts', str(args.hosts)).strip()}", flush=True)
            tenants = [sign_up(cluster.urls[n % apis], f"Bench {n}") for n in range(args.tenants)]
            load_before = os.getloadavg()[0]
            cpu_before = cluster.cpu_seconds()
            launches = launch_many(cluster.urls, tenants, args.instances, _body, threads=args.threads)
            accepted = [launch for launch in launches if launch.status == 202]
            refused = [launch for launch in launches if launch.status != 202]
            if refused:
                print(
                    f"  [{label}] {len(refused)} launches refused, e.g. {refused[0].status} {refused[0].detail[:200]}"
                )
            counts = wait_until_settled(url, len(accepted), args.timeout)
            cpu = {name: used - cpu_before.get(name, 0.0) for name, used in cluster.cpu_seconds().items()}
            load_after = os.getloadavg()[0]
            engine = create_engine(url)
            try:
                with engine.connect() as conn:
                    rows = conn.execute(select(Instance.created_at, Instance.launched_at, Instance.state)).all()
                    failures = conn.execute(
                        select(Action.error_code).where(Action.type == "create", Action.status == "failed")
                    ).all()
            finally:
                engine.dispose()
        except BaseException:
            for name in ("worker-0", "api-0"):
                print(f"----- {name} (last 2000 characters)\n{cluster.output(name)[-2000:]}", file=sys.stderr)
            raise
        finally:
            cluster.stop()
    running = [(created, launched) for created, launched, state in rows if state == "running" and launched]
    failed: dict[str, int] = {}
    for (code,) in failures:
        failed[str(code)] = failed.get(str(code), 0) + 1
    first_created: datetime = min(created for created, _, _ in rows)
    last_launched: datetime = max((launched for _, launched in running), default=first_created)
    print(f"  [{label}] settled: {counts}", flush=True)
    return Result(
        label=label,
        apis=apis,
        workers=workers,
        launches=len(launches),
        accepted=len(accepted),
        running=len(running),
        failed=failed,
        accept_seconds=max(launch.answered for launch in launches) - min(launch.sent for launch in launches),
        running_seconds=(last_launched - first_created).total_seconds(),
        latencies_ms=[(launched - created).total_seconds() * 1000 for created, launched in running],
        answer_ms=[(launch.answered - launch.sent) * 1000 for launch in accepted],
        api_cpu=sum(used for name, used in cpu.items() if name.startswith("api-")),
        worker_cpu=sum(used for name, used in cpu.items() if name.startswith("worker-")),
        load=(load_before, load_after),
    )


def _median(results: list[Result], value: Any) -> float:
    return statistics.median(value(r) for r in results)


def report(results: list[Result], args: argparse.Namespace) -> None:
    """One row per run, then (with several rounds) the medians, then the ratio of the
    measured configuration to the baseline."""
    print()
    print(
        f"{args.instances} launches per run, sim driver {args.sim_delay_ms} ms/operation (0.5×–1.5×), "
        f"failure rate {args.failure_rate}, saga poll {args.poll} s, {args.threads} client threads, "
        f"{args.tenants} tenants, {args.hosts} sim hosts, {os.cpu_count()} CPUs"
    )
    header = (
        "| run | accepted/s | running/s | create→running p50 | p95 | p99 | 202 p50 | 202 p99 "
        "| API CPU/create | worker CPU/launch | running | failed | load avg |"
    )
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    for r in results:
        failed = ", ".join(f"{code} {n}" for code, n in sorted(r.failed.items())) or "0"
        print(
            f"| {r.label} | {r.accepted_per_second:.1f} | {r.running_per_second:.1f} "
            f"| {percentile(r.latencies_ms, 50):,.0f} ms | {percentile(r.latencies_ms, 95):,.0f} ms "
            f"| {percentile(r.latencies_ms, 99):,.0f} ms "
            f"| {percentile(r.answer_ms, 50):,.0f} ms | {percentile(r.answer_ms, 99):,.0f} ms "
            f"| {1000 * r.api_cpu / max(r.accepted, 1):.1f} ms | {1000 * r.worker_cpu / max(r.running, 1):.1f} ms "
            f"| {r.running}/{r.launches} | {failed} | {r.load[0]:.1f} → {r.load[1]:.1f} |"
        )
    labels = list(dict.fromkeys(r.label.split(" #")[0] for r in results))
    groups = {label: [r for r in results if r.label.split(" #")[0] == label] for label in labels}
    if any(len(group) > 1 for group in groups.values()):
        print("\nmedians over rounds:")
        for label, group in groups.items():
            print(
                f"  {label}: accepted/s {_median(group, lambda r: r.accepted_per_second):.1f}, "
                f"running/s {_median(group, lambda r: r.running_per_second):.1f}, "
                f"p50 {_median(group, lambda r: percentile(r.latencies_ms, 50)):,.0f} ms, "
                f"p99 {_median(group, lambda r: percentile(r.latencies_ms, 99)):,.0f} ms"
            )
    if len(groups) == 2:
        base, scaled = groups.values()
        base_label, scaled_label = groups
        ratio = {
            name: _median(scaled, value) / max(_median(base, value), 1e-9)
            for name, value in (
                ("accepted/s", lambda r: r.accepted_per_second),
                ("running/s", lambda r: r.running_per_second),
                ("p50 latency", lambda r: percentile(r.latencies_ms, 50)),
            )
        }
        print(f"\n{scaled_label} vs {base_label}: " + ", ".join(f"{k} ×{v:.2f}" for k, v in ratio.items()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--instances", type=int, default=500, help="launches per configuration (default 500)")
    parser.add_argument("--apis", type=int, default=2, help="API processes of the measured configuration (default 2)")
    parser.add_argument("--workers", type=int, default=2, help="workers of the measured configuration (default 2)")
    parser.add_argument("--broker", default=DEFAULT_BROKER, help=f"RabbitMQ URL (default {DEFAULT_BROKER})")
    parser.add_argument("--db", default=DEFAULT_DB, help=f"PostgreSQL server to create the databases on ({DEFAULT_DB})")
    parser.add_argument("--sim-delay-ms", type=int, default=200, help="sim host operation time (default 200)")
    parser.add_argument("--failure-rate", type=float, default=0.0, help="sim host failure rate (default 0)")
    parser.add_argument("--poll", type=float, default=0.1, help="HANGAR_SAGA_POLL_SECONDS (default 0.1)")
    parser.add_argument("--threads", type=int, default=32, help="concurrent client requests (default 32)")
    parser.add_argument("--tenants", type=int, default=10, help="organizations launching (default 10)")
    parser.add_argument("--hosts", type=int, default=60, help="sim hosts to load (default 60: 20 per region)")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for the launches to settle")
    parser.add_argument("--no-baseline", action="store_true", help="skip the 1 API + 1 worker baseline")
    parser.add_argument(
        "--rounds", type=int, default=1, help="rounds, the order alternating; medians reported (default 1)"
    )
    args = parser.parse_args(argv)
    if min(args.instances, args.apis, args.workers, args.rounds) < 1:
        parser.error("--instances, --apis, --workers and --rounds must be at least 1")
    try:
        require_broker(args.broker)
    except ServiceUnavailableError as exc:
        print(f"bench.provision_e2e: {exc}. Start it with scripts/services.sh.", file=sys.stderr)
        return 2
    configurations = [] if args.no_baseline else [("1 API + 1 worker", 1, 1)]
    configurations.append((f"{args.apis} APIs + {args.workers} workers", args.apis, args.workers))
    logs = Path(tempfile.mkdtemp(prefix="hangar-bench-e2e-"))
    print(f"logs in {logs}", flush=True)
    results = []
    started = time.monotonic()
    try:
        for round_ in range(args.rounds):
            order = configurations if round_ % 2 == 0 else configurations[::-1]
            for label, apis, workers in order:
                name = f"{label} #{round_ + 1}" if args.rounds > 1 else label
                print(f"{name}: {apis} API process(es) + {workers} worker(s)", flush=True)
                results.append(run_one(name, apis, workers, args, logs))
    except ServiceUnavailableError as exc:
        print(f"bench.provision_e2e: {exc}. Start it with scripts/services.sh.", file=sys.stderr)
        return 2
    report(results, args)
    print(f"\n(wall time {time.monotonic() - started:.0f} s)")
    lost = [r.label for r in results if r.running + sum(r.failed.values()) != r.accepted]
    if lost:
        print(f"bench.provision_e2e: instances neither running nor failed in {lost}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
