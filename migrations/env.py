"""Alembic environment: one history for every bounded context.

The target metadata is hangar.db.Base's, after importing every module that declares tables
on it: the runtime's own (outbox, inbox, idempotency) and each context's
`handlers/<context>/tables.py`, discovered so a new context needs no edit here.

The URL comes from, in order: a connection handed in by a caller
(`config.attributes["connection"]`, used by tests), `sqlalchemy.url` set on the Config, then
HANGAR_DATABASE_URL / the Settings default (the SQLite file under .hangar/) — the same place
the app reads it.
"""

from __future__ import annotations

import importlib
import importlib.util
import pkgutil
from typing import Any

from alembic import context
from sqlalchemy.engine import Connection

from hangar.config import Settings
from hangar.db import Base, UTCDateTime, make_engine

RUNTIME_TABLE_MODULES = ("hangar.outbox", "hangar.inbox", "hangar.idempotency")


def import_table_modules() -> None:
    for name in RUNTIME_TABLE_MODULES:
        importlib.import_module(name)
    import handlers

    for module in pkgutil.iter_modules(handlers.__path__):
        tables = f"handlers.{module.name}.tables"
        if module.ispkg and importlib.util.find_spec(tables) is not None:
            importlib.import_module(tables)


def render_item(type_: str, obj: Any, autogen_context: Any) -> str | bool:
    # Keep migrations free of application imports: UTCDateTime is DateTime(timezone=True)
    # in the database; the UTC conversion is the model's business, not the schema's.
    if type_ == "type" and isinstance(obj, UTCDateTime):
        return "sa.DateTime(timezone=True)"
    return False


def database_url() -> str:
    return context.config.get_main_option("sqlalchemy.url") or Settings.from_env().database_url


def configure(connection: Connection | None = None, url: str | None = None) -> None:
    dialect = connection.dialect.name if connection is not None else (url or "").split(":", 1)[0].split("+")[0]
    context.configure(
        connection=connection,
        url=url,
        target_metadata=Base.metadata,
        compare_type=True,
        # SQLite cannot ALTER most things; batch mode rebuilds the table (needs the naming
        # convention on Base so constraints have names).
        render_as_batch=dialect == "sqlite",
        render_item=render_item,
        literal_binds=connection is None,
    )


def run_offline() -> None:
    configure(url=database_url())
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    given = context.config.attributes.get("connection")
    if given is not None:
        configure(connection=given)
        with context.begin_transaction():
            context.run_migrations()
        return
    engine = make_engine(database_url())
    try:
        with engine.connect() as connection:
            configure(connection=connection)
            with context.begin_transaction():
                context.run_migrations()
    finally:
        engine.dispose()


import_table_modules()
if context.is_offline_mode():
    run_offline()
else:
    run_online()
