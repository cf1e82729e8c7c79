"""The build pipeline behind codegen.py: bundle → lint → generate → check.

Each generator is a `Stage` (see stages.py) with declared inputs, so a stage whose inputs
did not change is skipped. Nothing here is imported by the running service.
"""
