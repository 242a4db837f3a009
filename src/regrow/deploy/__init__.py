"""Cluster managers: one module per way of starting processes, behind one interface."""

from regrow.deploy.local import LocalCluster, parse_bytes, stop_processes

__all__ = ["LocalCluster", "parse_bytes", "stop_processes"]
