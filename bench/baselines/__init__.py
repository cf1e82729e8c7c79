"""Comparison apps for bench/api.py: the same work as the generated server, in bare
Starlette and in FastAPI. Only the framework layer differs (see common.py)."""
