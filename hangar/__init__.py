"""Hangar's runtime: what is not a bounded context.

Low-level modules (config, db, context, problems, pagination, outbox, idempotency,
ratelimit) are used by the handlers; `hangar.app` and `hangar.worker` wire the handlers in
and sit on top. import-linter keeps it that way (see pyproject.toml).
"""
