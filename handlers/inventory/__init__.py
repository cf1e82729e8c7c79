"""Inventory & Placement: regions, instance types, images (the catalogue), hosts as resource
providers with inventories and traits, allocations, per-organization quotas, and placement.

Other contexts use only `published` (provisioning: resolve a launch, check quota, claim and
release capacity). The HTTP handlers call `services`; the app's start-up calls
`catalogue.ensure_catalogue`. Decisions behind the design: docs/adr/0007-placement.md.
"""
