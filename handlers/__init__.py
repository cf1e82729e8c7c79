"""Hand-written code: one package per bounded context (see docs/architecture.md)."""
