"""Grafana dashboards and the command that pushes them."""
