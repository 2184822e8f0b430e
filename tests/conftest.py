"""Shared test set-up lives in fix_cluster.py, loaded as a plugin."""
