"""The billing bounded context (see docs/)."""
