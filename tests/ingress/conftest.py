"""The ingress tests use the shared fixtures of ``tests/conftest.py`` (recorded chain data)."""
