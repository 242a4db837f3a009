"""Benchmarks comparing regrow with dask.distributed and Ray on the same machine.

Run everything with ``python -m benchmarks.compare`` (from the repository root),
or a single workload module with ``python -m benchmarks.throughput`` (also
``chain``, ``tree``, ``transfer``). See ``benchmarks/README.md``.
"""
