"""The storage bounded context (see docs/)."""
