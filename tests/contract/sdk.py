"""The generated SDK (`hangar_client`), driven one way for both of its flavours.

`Sdk.call("createApiKey", body=...)` finds the operation's module the way openapi-python-client
lays it out (api/<tag>/<operation_id in snake_case>.py), calls its `sync_detailed` — or, for
the async flavour, awaits its `asyncio_detailed` on a loop of the Sdk's own — checks the
status against the spec, and returns the typed result. The round-trip tests are written once
and run through both flavours.
"""

from __future__ import annotations

import asyncio
import importlib
import uuid
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

from hangar_client import AuthenticatedClient, Client, waiters
from hangar_client.models import Action, Instance
from hangar_client.types import Response

from generated.routing import OPERATIONS
from pipeline.routing import snake_case

# The waiters' pacing for tests: the sim driver takes tens of milliseconds a step.
WAIT_TIMEOUT, WAIT_INTERVAL, WAIT_MAX_INTERVAL = 30.0, 0.02, 0.2


def sdk_module(operation_id: str) -> ModuleType:
    op = OPERATIONS[operation_id]
    package = snake_case(op.tag.replace("-", "_"))
    return importlib.import_module(f"hangar_client.api.{package}.{snake_case(operation_id)}")


@dataclass(frozen=True)
class Target:
    """Where an Sdk sends its requests: a live server's URL, or the app in-process."""

    base_url: str
    httpx_args: dict[str, Any] = field(default_factory=dict)
    # The async flavour's own loop: its httpx.AsyncClient must stay on one loop.
    loop: asyncio.AbstractEventLoop | None = None


class Sdk:
    """One caller (an API key, or none) through one flavour of the SDK."""

    def __init__(self, flavour: str, target: Target, token: str | None = None) -> None:
        assert flavour in ("sync", "async")
        assert flavour == "sync" or target.loop is not None, "the async flavour needs a loop"
        self.flavour = flavour
        self.target = target
        kwargs: dict[str, Any] = {
            "base_url": target.base_url,
            "httpx_args": dict(target.httpx_args),
            # A status the spec does not declare is a contract violation, not a None.
            "raise_on_unexpected_status": True,
        }
        self.client: AuthenticatedClient | Client = (
            Client(**kwargs) if token is None else AuthenticatedClient(token=token, **kwargs)
        )

    def detailed(self, operation_id: str, *args: Any, **kwargs: Any) -> Response[Any]:
        module = sdk_module(operation_id)
        if self.flavour == "sync":
            return module.sync_detailed(*args, client=self.client, **kwargs)
        assert self.target.loop is not None
        return self.target.loop.run_until_complete(module.asyncio_detailed(*args, client=self.client, **kwargs))

    def call(self, operation_id: str, *args: Any, **kwargs: Any) -> Any:
        """The typed result of a call that must succeed with the spec's success status."""
        response = self.detailed(operation_id, *args, **kwargs)
        expected = OPERATIONS[operation_id].success_status
        assert response.status_code == expected, (
            f"{operation_id} ({self.flavour}): {response.status_code}, expected {expected}: {response.content[:500]!r}"
        )
        return response.parsed

    def as_key(self, token: str | None) -> Sdk:
        """The same target and flavour with another key (None: no key)."""
        return Sdk(self.flavour, self.target, token)

    def _authenticated(self) -> AuthenticatedClient:
        assert isinstance(self.client, AuthenticatedClient), "waiting needs a key"
        return self.client

    def wait_for_action(self, action_id: uuid.UUID) -> Action:
        """hangar_client.waiters.wait_for_action[_async]: the action, once it succeeded."""
        client = self._authenticated()
        if self.flavour == "sync":
            return waiters.wait_for_action(
                client, action_id, timeout=WAIT_TIMEOUT, interval=WAIT_INTERVAL, max_interval=WAIT_MAX_INTERVAL
            )
        assert self.target.loop is not None
        return self.target.loop.run_until_complete(
            waiters.wait_for_action_async(
                client, action_id, timeout=WAIT_TIMEOUT, interval=WAIT_INTERVAL, max_interval=WAIT_MAX_INTERVAL
            )
        )

    def wait_for_instance(self, instance_id: uuid.UUID, state: str = "running") -> Instance:
        """hangar_client.waiters.wait_for_instance[_async]: the instance, once in `state`."""
        client = self._authenticated()
        if self.flavour == "sync":
            return waiters.wait_for_instance(
                client,
                instance_id,
                state=state,
                timeout=WAIT_TIMEOUT,
                interval=WAIT_INTERVAL,
                max_interval=WAIT_MAX_INTERVAL,
            )
        assert self.target.loop is not None
        return self.target.loop.run_until_complete(
            waiters.wait_for_instance_async(
                client,
                instance_id,
                state=state,
                timeout=WAIT_TIMEOUT,
                interval=WAIT_INTERVAL,
                max_interval=WAIT_MAX_INTERVAL,
            )
        )
