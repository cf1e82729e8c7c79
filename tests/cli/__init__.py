"""CLI tests: the real `hangar` command as a subprocess (see helpers.py)."""
