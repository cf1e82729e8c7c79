"""Finding what each bounded context contributes by convention: `handlers/<context>/<module>.py`
(consumers.py for the event bus, background.py for start-up work and services). One place,
so every such hook is found, ordered and reported the same way."""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Iterator
from types import ModuleType


def context_modules(module: str, package: str = "handlers") -> Iterator[tuple[str, ModuleType]]:
    """(dotted name, module) of `<package>.<context>.<module>` for every context package that
    has one, in context-name order. A context without the module is skipped; an import error
    inside one that has it propagates (a broken hook must not pass for a missing one)."""
    try:
        root = importlib.import_module(package)
    except ModuleNotFoundError:
        return
    for info in sorted(pkgutil.iter_modules(getattr(root, "__path__", [])), key=lambda i: i.name):
        if not info.ispkg:
            continue
        name = f"{package}.{info.name}.{module}"
        try:
            found = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:
                continue
            raise
        yield name, found
