"""Cluster managers: one module per way of starting processes, behind one interface."""

from regrow.config import parse_bytes
from regrow.deploy.local import LocalCluster, stop_processes
from regrow.deploy.slurm import SLURMCluster
from regrow.deploy.ssh import SSHCluster

__all__ = ["LocalCluster", "SLURMCluster", "SSHCluster", "parse_bytes", "stop_processes"]
