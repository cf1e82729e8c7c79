"""The terminal bounded context (see docs/)."""
