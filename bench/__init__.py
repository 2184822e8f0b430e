"""Benchmarks of pgagent-watch, each beside its baseline: ``python -m bench``."""
