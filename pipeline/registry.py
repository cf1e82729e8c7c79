"""Every generation stage, in the order codegen.py runs them (dependencies via `after`)."""

from __future__ import annotations

from pipeline import bundle_stage, cli, events, models, routing, sdk
from pipeline.stages import Stage, order


def all_stages() -> list[Stage]:
    stages: list[Stage] = [
        bundle_stage.OPENAPI,
        bundle_stage.ASYNCAPI,
        models.STAGE,
        routing.STAGE,
        events.STAGE,
        sdk.STAGE,
        cli.STAGE,
    ]
    return order(stages)
