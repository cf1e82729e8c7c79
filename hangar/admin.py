"""`hangar-admin`: operator tasks that must not travel through the public API.

    hangar-admin create-operator --email ops@example.com [--organization "Hangar Operations"]
        Creates the platform operator's organization and prints its first API key (once). Its
        owners and admins hold the admin:read / admin:write scopes the operator API needs.
    hangar-admin load-sim-fleet --hosts 1000 [--seed 1] [--regions fra1,ams1,nyc1]
        Inserts a deterministic simulated fleet of hosts (for HANGAR_DRIVER=sim).

It talks to the database directly (HANGAR_DATABASE_URL, default .hangar/hangar.db), so only
someone with access to the database can run it. Exit 0 on success, 1 on a refused request
(e.g. the e-mail is taken), 2 on bad usage.
"""

from __future__ import annotations

import argparse
import sys

from hangar.config import Settings
from hangar.db import make_engine, make_session_factory, utcnow
from hangar.problems import Problem


def _create_operator(settings: Settings, args: argparse.Namespace) -> int:
    from handlers.identity.published import create_operator

    sessions = make_session_factory(make_engine(settings.database_url))
    with sessions() as session, session.begin():
        org_id, email, secret = create_operator(
            session, email=args.email, organization_name=args.organization, now=utcnow()
        )
    print(f"operator organization {org_id} created; owner {email}")
    print("API key (shown once, store it now):")
    print(secret)
    return 0


def _load_sim_fleet(settings: Settings, args: argparse.Namespace) -> int:
    from handlers.inventory.published import load_sim_fleet
    from hangar.drivers.sim import sim_fleet

    regions = [r.strip() for r in args.regions.split(",") if r.strip()]
    sessions = make_session_factory(make_engine(settings.database_url))
    with sessions() as session, session.begin():
        count = load_sim_fleet(session, sim_fleet(args.hosts, regions, args.seed), now=utcnow())
    print(f"{count} simulated host(s) added in {', '.join(regions)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="hangar-admin", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    op = commands.add_parser("create-operator", help="create the operator organization and print its first key")
    op.add_argument("--email", required=True, help="the operator owner's e-mail address")
    op.add_argument("--organization", default="Hangar Operations", help="the organization's name")
    fleet = commands.add_parser("load-sim-fleet", help="insert a simulated fleet of hosts (HANGAR_DRIVER=sim)")
    fleet.add_argument("--hosts", type=int, required=True, help="how many hosts")
    fleet.add_argument("--seed", type=int, default=1, help="the fleet's seed (same seed, same fleet)")
    fleet.add_argument("--regions", default="fra1,ams1,nyc1", help="comma-separated region slugs")
    args = parser.parse_args(argv)
    settings = Settings.from_env()
    try:
        if args.command == "create-operator":
            return _create_operator(settings, args)
        if args.hosts < 1:
            parser.error("--hosts must be at least 1")
        return _load_sim_fleet(settings, args)
    except Problem as exc:
        print(f"hangar-admin: {exc.detail}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
