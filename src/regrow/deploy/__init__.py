"""Cluster managers: one module per way of starting processes, behind one interface."""

from regrow.deploy.local import LocalCluster, parse_bytes, stop_processes
from regrow.deploy.slurm import SLURMCluster

__all__ = ["LocalCluster", "SLURMCluster", "parse_bytes", "stop_processes"]
