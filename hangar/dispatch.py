"""Calling the generated endpoints: connexion's AsyncApp with a leaner last step.

connexion's own last step re-decorates the endpoint on every request (signature inspection,
a URI parser, parameter coercion, a second JSON parse of the body, content negotiation).
Our validators have already coerced the parameters and parsed the body into the request
state, and `invoke` always returns a complete Starlette response, so the endpoint is
called directly: path/query parameters by their pythonic names (`pythonic_params`), the
body as `body`, in the thread pool when the endpoint is sync.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from connexion.apps.asynchronous import AsyncApi, AsyncApp, AsyncASGIApp
from connexion.decorators.parameter import pythonic
from connexion.operations import AbstractOperation
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from hangar.requestid import RequestState, current_state, state_of


class Dispatchable(Protocol):
    @property
    def operation_id(self) -> str: ...
    @property
    def params(self) -> tuple[Any, ...]: ...
    @property
    def request_model(self) -> Any: ...


class EndpointOperation:
    """One operation's endpoint, with its argument plan worked out at start-up."""

    def __init__(self, endpoint: Callable[..., Any], op: Dispatchable | None, operation: AbstractOperation) -> None:
        self._endpoint = endpoint
        self._async = inspect.iscoroutinefunction(endpoint)
        accepted = inspect.signature(endpoint).parameters
        if op is not None:
            plan = [(p.name, p.arg) for p in op.params]
            wants_body = op.request_model is not None
        else:  # an operation outside the registry: connexion's naming rules
            plan = [(p["name"], pythonic(p["name"])) for p in operation.parameters if p["in"] in ("path", "query")]
            wants_body = bool(operation.request_body)
        # Only what the endpoint declares (everything if it takes **kwargs); it supplies
        # its own defaults for absent optionals.
        takes_all = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in accepted.values())
        self._plan = [(name, arg) for name, arg in plan if takes_all or arg in accepted]
        self._body = wants_body and (takes_all or "body" in accepted)

    def _kwargs(self, state: RequestState) -> dict[str, Any]:
        params = state.params
        kwargs = {arg: params[name] for name, arg in self._plan if name in params}
        if self._body:
            kwargs["body"] = state.body
        return kwargs

    def _run(self, state: RequestState, kwargs: dict[str, Any]) -> Any:
        token = current_state.set(state)
        try:
            return self._endpoint(**kwargs)
        finally:
            current_state.reset(token)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        state = state_of(scope)
        kwargs = self._kwargs(state)
        if self._async:
            token = current_state.set(state)
            try:
                response = await self._endpoint(**kwargs)
            finally:
                current_state.reset(token)
        else:
            response = await run_in_threadpool(self._run, state, kwargs)
        if not isinstance(response, Response):
            raise TypeError(
                f"{type(self._endpoint).__name__} returned {type(response).__name__}; invoke must return a Response"
            )
        await response(scope, receive, send)


class _EndpointApi(AsyncApi):
    def __init__(self, *args: Any, hangar_operations: Mapping[str, Dispatchable], **kwargs: Any) -> None:
        self._hangar_operations = hangar_operations  # before super(): it builds the operations
        super().__init__(*args, **kwargs)

    def make_operation(self, operation: AbstractOperation) -> Any:
        return EndpointOperation(operation.function, self._hangar_operations.get(operation.operation_id), operation)


class _EndpointASGIApp(AsyncASGIApp):
    api_cls = _EndpointApi

    def __init__(self, operations: Mapping[str, Dispatchable]) -> None:
        super().__init__()
        self._hangar_operations = operations

    def add_api(self, *args: Any, **kwargs: Any) -> Any:
        return super().add_api(*args, hangar_operations=self._hangar_operations, **kwargs)


class HangarApp(AsyncApp):
    """connexion's AsyncApp whose innermost application calls endpoints directly."""

    runtime: Any = None  # hangar.app.Runtime, set by create_app

    def __init__(self, import_name: str, *, operations: Mapping[str, Dispatchable], **kwargs: Any) -> None:
        super().__init__(import_name, **kwargs)
        # AsyncApp builds its inner app in __init__; the middleware stack is assembled
        # lazily on the first ASGI call, so swapping it here is complete.
        self._middleware_app = _EndpointASGIApp(operations)
        self.middleware.app = self._middleware_app
