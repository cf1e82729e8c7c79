"""Find the hand-written handler for every generated operation, and prove it fits its adapter.

Used twice with the same rules: by the app at start-up (`load_handlers` raises, so a missing
or misfitting handler stops the server with a message naming the operation) and by
`codegen.py check` (`inspect_handlers` collects every problem for the report).

The rules (docs/architecture.md): the handler of an operation is the function
`op.handler_name` in the module `op.handler_module`; every public function *defined* in an
`operations` module is a handler and must have an operation; its signature is `ctx` first,
then exactly the adapter's keywords, annotated with the types the adapter passes, returning
the response model (or None).
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import re
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

HANDLER_PACKAGE = "handlers"


class HandlerRegistryError(RuntimeError):
    """The handlers do not fit the operations; `problems` has one line per problem."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("handlers do not match the API contract:\n  " + "\n  ".join(problems))


@dataclass
class HandlerReport:
    handlers: dict[str, Callable[..., Any]] = field(default_factory=dict)
    missing: dict[str, str] = field(default_factory=dict)  # operationId -> why
    stray: list[str] = field(default_factory=list)  # "module.function"
    bad_signatures: dict[str, list[str]] = field(default_factory=dict)  # operationId -> problems
    broken_modules: dict[str, str] = field(default_factory=dict)  # module -> import error

    def problems(self) -> list[str]:
        lines = [f"cannot import {module}: {error}" for module, error in sorted(self.broken_modules.items())]
        lines += [f"{op_id}: no handler ({why})" for op_id, why in self.missing.items()]
        lines += [
            f"{op_id}: handler signature does not fit: {p}" for op_id, ps in self.bad_signatures.items() for p in ps
        ]
        lines += [
            f"{_camel(name.rsplit('.', 1)[1])}: {name} is a public function in an operations module "
            "but no operation has that operationId (rename it with a leading underscore or move it)"
            for name in self.stray
        ]
        return lines


def _camel(snake: str) -> str:
    head, *rest = snake.split("_")
    return head + "".join(part.title() for part in rest)


def operation_modules(package: str = HANDLER_PACKAGE) -> list[str]:
    """Every `<package>.<context>.operations` module on disk, imported or not. Scans the
    directories (not pkgutil) so namespace packages without __init__.py count too."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return []
    return sorted(
        {
            f"{package}.{path.parent.name}.operations"
            for location in spec.submodule_search_locations
            for path in Path(location).glob("*/operations.py")
            if path.parent.name.isidentifier()
        }
    )


def _import(module: str, report: HandlerReport) -> ModuleType | None:
    if module in report.broken_modules:
        return None
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        # Only "this module does not exist yet" means missing handlers; a module that exists
        # but fails to import is a broken module and is reported as such.
        if exc.name is not None and (module == exc.name or module.startswith(exc.name + ".")):
            return None
        report.broken_modules[module] = f"{type(exc).__name__}: {exc}"
    except Exception as exc:  # any import-time failure must reach the report, not crash it
        report.broken_modules[module] = f"{type(exc).__name__}: {exc}"
    return None


def public_functions(module: ModuleType) -> dict[str, Callable[..., Any]]:
    """Public functions defined in (not imported into) the module."""
    return {
        name: fn
        for name, fn in vars(module).items()
        if inspect.isfunction(fn) and not name.startswith("_") and fn.__module__ == module.__name__
    }


def inspect_handlers(operations: Mapping[str, Any], extra_modules: Iterable[str] = ()) -> HandlerReport:
    """Find the handler of every operation; collect every problem instead of stopping.

    `extra_modules` are operations modules to scan for strays even if no operation names
    them (a context whose operations were all removed from the spec)."""
    report = HandlerReport()
    claimed: dict[str, set[str]] = {}
    for op_id, op in operations.items():
        claimed.setdefault(op.handler_module, set()).add(op.handler_name)
        module = _import(op.handler_module, report)
        if module is None:
            if op.handler_module not in report.broken_modules:
                report.missing[op_id] = f"module {op.handler_module} does not exist"
            continue
        fn = public_functions(module).get(op.handler_name)
        if fn is None:
            report.missing[op_id] = f"{op.handler_module} defines no function {op.handler_name}"
            continue
        problems = signature_problems(op, fn)
        if problems:
            report.bad_signatures[op_id] = problems
        report.handlers[op_id] = fn
    for module_name in sorted(set(claimed) | set(extra_modules)):
        module = _import(module_name, report)
        if module is not None:
            names = claimed.get(module_name, set())
            report.stray += [f"{module_name}.{n}" for n in sorted(public_functions(module)) if n not in names]
    return report


def load_handlers(
    operations: Mapping[str, Any], extra_modules: Iterable[str] | None = None
) -> dict[str, Callable[..., Any]]:
    """{operationId: handler} for generated.routing.bind; raises HandlerRegistryError listing
    every missing handler, stray public function and misfitting signature."""
    if extra_modules is None:
        extra_modules = operation_modules()
    report = inspect_handlers(operations, extra_modules)
    problems = report.problems()
    if problems:
        raise HandlerRegistryError(problems)
    return report.handlers


def _show(annotation: Any) -> str:
    if annotation is type(None):
        return "None"
    if isinstance(annotation, type):
        module = annotation.__module__
        prefix = "models." if module.endswith(".models") else ("" if module == "builtins" else f"{module}.")
        return prefix + annotation.__qualname__
    return re.sub(r"\b[\w.]*models\.", "models.", str(annotation).replace("NoneType", "None"))


def _same(actual: Any, expected: Any) -> bool:
    # `Optional[str]`, `Union[str, None]` and `str | None` compare equal; a string
    # annotation that get_type_hints could not resolve never does.
    return bool(actual == expected)


def signature_problems(op: Any, fn: Callable[..., Any]) -> list[str]:
    """Why `fn` cannot be the handler of `op` (an empty list when it fits)."""
    where = f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__name__', '?')}"
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError) as exc:
        return [f"{where}: no inspectable signature ({exc})"]
    try:
        hints = typing.get_type_hints(fn)
    except Exception as exc:  # a NameError in a string annotation, for one
        return [f"{where}: annotations cannot be resolved ({type(exc).__name__}: {exc})"]

    problems: list[str] = []
    if not params or params[0].name != "ctx":
        problems.append(f"{where}: the first parameter must be `ctx` (the RequestContext)")
    else:
        params = params[1:]

    expected: dict[str, Any] = {p.arg: p.annotation for p in op.params}
    if op.request_model is not None:
        expected["body"] = op.request_model
    wanted = ", ".join(f"{arg}: {_show(t)}" for arg, t in expected.items()) or "nothing else"
    for param in params:
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            problems.append(f"{where}: *{param.name}/**{param.name} hides the adapter's keywords; declare {wanted}")
        elif param.kind is param.POSITIONAL_ONLY:
            problems.append(f"{where}: `{param.name}` is positional-only; the adapter passes keywords")
        elif param.name not in expected:
            problems.append(f"{where}: unexpected parameter `{param.name}`; the adapter passes ctx, {wanted}")
        elif param.name not in hints:
            problems.append(f"{where}: `{param.name}` has no annotation; expected {_show(expected[param.name])}")
        elif not _same(hints[param.name], expected[param.name]):
            problems.append(
                f"{where}: `{param.name}` is annotated {_show(hints[param.name])}, "
                f"the adapter passes {_show(expected[param.name])}"
            )
    declared = {p.name for p in params}
    for arg, annotation in expected.items():
        if arg not in declared:
            problems.append(f"{where}: missing parameter `{arg}: {_show(annotation)}`")

    returns = op.response_model if op.response_model is not None else type(None)
    if "return" not in hints:
        problems.append(f"{where}: no return annotation; expected -> {_show(returns)}")
    elif not _same(hints["return"], returns):
        problems.append(f"{where}: returns {_show(hints['return'])}, the adapter expects {_show(returns)}")
    return problems
