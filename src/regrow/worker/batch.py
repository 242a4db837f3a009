"""What a worker takes from the batch system it runs in: today Slurm's environment.

Owns ``worker_defaults(environ)``: inside a Slurm allocation, the defaults of
``regrow worker`` (threads, memory limit, a distinct name per task), so that ``srun
regrow worker ADDRESS`` needs no more flags. Here, not with ``SLURMCluster``
(``regrow.deploy.slurm``): a worker process reads it at every start and must not import
the deploy layer (cluster managers, the client's loop) to do so.

Must not: read anything but the mapping it is given.
"""

from __future__ import annotations

import re
from collections.abc import Mapping


def worker_defaults(environ: Mapping[str, str]) -> dict[str, str]:
    """Defaults for ``regrow worker`` inside a Slurm allocation (``SLURM_JOB_ID`` set),
    from Slurm's environment; ``{}`` outside one. Keys are the worker's option names:

    - ``nthreads``: ``SLURM_CPUS_PER_TASK`` (set when the job asked ``-c``);
    - ``memory_limit`` (bytes): ``SLURM_MEM_PER_CPU`` x the task's CPUs, else
      ``SLURM_MEM_PER_NODE`` shared among the step's tasks on this node (Slurm's MB
      are MiB);
    - ``name``: ``slurm-<SLURM_JOB_ID>-<SLURM_PROCID>``, so each task of
      ``srun -n 4 regrow worker ADDRESS`` registers under its own name.
    """
    job = environ.get("SLURM_JOB_ID", "").strip()
    if not job:
        return {}
    out = {"name": f"slurm-{job}-{environ.get('SLURM_PROCID', '0').strip() or '0'}"}
    cpus = _positive(environ.get("SLURM_CPUS_PER_TASK"))
    if cpus is not None:
        out["nthreads"] = str(cpus)
    per_cpu = _positive(environ.get("SLURM_MEM_PER_CPU"))
    per_node = _positive(environ.get("SLURM_MEM_PER_NODE"))
    if per_cpu is not None:
        out["memory_limit"] = str(per_cpu * (cpus or 1) * 2**20)
    elif per_node is not None:
        tasks = _tasks_on_this_node(environ)
        out["memory_limit"] = str(per_node * 2**20 // tasks)
    return out


def _positive(value: str | None) -> int | None:
    try:
        number = int(str(value).strip())
    except ValueError:
        return None
    return number if number > 0 else None


def _tasks_on_this_node(environ: Mapping[str, str]) -> int:
    """How many tasks of this step share this node: ``SLURM_STEP_TASKS_PER_NODE`` (or
    the job's ``SLURM_TASKS_PER_NODE``), e.g. ``2(x3),1``, at ``SLURM_NODEID``."""
    text = environ.get("SLURM_STEP_TASKS_PER_NODE") or environ.get("SLURM_TASKS_PER_NODE") or ""
    counts: list[int] = []
    for part in text.split(","):
        m = re.fullmatch(r"\s*(\d+)(?:\(x(\d+)\))?\s*", part)
        if m is None:
            return 1
        counts += [int(m.group(1))] * int(m.group(2) or 1)
    node = _positive(environ.get("SLURM_NODEID")) or 0
    if node < len(counts) and counts[node] > 0:
        return counts[node]
    return 1
