"""Metrics and logs: the ground floor every capability may use."""
