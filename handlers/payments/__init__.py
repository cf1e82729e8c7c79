"""The payments bounded context (see docs/)."""
