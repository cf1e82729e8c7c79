"""The contract stage: proof that the running server matches generated/openapi.json."""
