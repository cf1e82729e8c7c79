"""Provisioning Orchestration: instances, the actions that change them, and the create saga.

Other code uses only `operations` (through generated routing), `consumers` and `background`
(discovered by the runtime). Capacity comes from inventory through
`handlers.inventory.published`, hosts through `hangar.drivers` (docs/compute.md).
"""
