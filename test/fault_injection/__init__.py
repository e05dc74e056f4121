"""Fault-injection suite (a package so its conftest never shadows ``test/conftest.py``)."""
