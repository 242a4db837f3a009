"""SLURMCluster against a real Slurm (slurmctld, slurmd, munged started by the ``slurm``
fixture, once for the module), and ``worker_defaults`` on its own.

No mocks: jobs are submitted with sbatch, cancelled with scancel, watched with squeue;
workers run in the jobs and compute. Bad arguments fail with one line before anything
starts.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from regrow import Client, SLURMCluster
from regrow.protocol.comm import is_loopback, parse_address
from regrow.protocol.reach import outward_host
from regrow.testing import children_of, wait_until
from regrow.worker.batch import worker_defaults

from .slurm_env import SlurmEnv, slurm  # noqa: F401  (the fixture)

LOOPBACK = {"host": "127.0.0.1"}


def slow_inc(x: int, delay: float = 0.05) -> int:
    time.sleep(delay)
    return x + 1


def add(x: int, y: int) -> int:
    return x + y


@pytest.fixture
def make(slurm: SlurmEnv, tmp_path: Path) -> Iterator[Any]:  # noqa: F811
    """``make(**SLURMCluster keywords)``: clusters on loopback (one machine), with their
    private directory under tmp_path; each closed at the end, and then checked to have
    left no job in the queue, no job process and no child process."""
    made: list[SLURMCluster] = []
    before = {p.pid for p in children_of(os.getpid())}

    def make(**kwargs: Any) -> SLURMCluster:
        kwargs.setdefault("cores", 1)
        kwargs.setdefault("memory", "500MB")
        kwargs.setdefault("scheduler_options", LOOPBACK)
        kwargs.setdefault("shared_temp_directory", tmp_path)
        kwargs.setdefault("log_level", "INFO")
        cluster = SLURMCluster(**kwargs)
        made.append(cluster)
        return cluster

    yield make
    for cluster in made:
        cluster.close()
    assert slurm.jobs() == {}
    assert slurm.job_processes() == []
    wait_until(
        lambda: not [p for p in children_of(os.getpid()) if p.pid not in before],
        timeout=15,
        what="the clusters' processes have exited",
    )


def queued(slurm: SlurmEnv, cluster: SLURMCluster) -> dict[str, str]:  # noqa: F811
    """``{job id: state}`` of this cluster's jobs, as Slurm itself lists them."""
    mine = set(cluster.jobs.values())
    return {j: s for j, s in slurm.jobs().items() if j in mine}


def workers(client: Client) -> dict[str, str]:
    """``{worker name: address}`` of the registered workers."""
    return {str(w["name"]): a for a, w in client.scheduler_info()["workers"].items()}


def test_slurm_comes_up(slurm: SlurmEnv) -> None:  # noqa: F811
    """The fixture's Slurm is up, and fast enough to start once per module."""
    assert slurm.startup_seconds < 30, slurm.startup_seconds
    r = slurm.run("sinfo", "-h", "-o", "%P %T")
    assert r.stdout.split() == ["debug*", "idle"]


def test_job_script(make: Any) -> None:
    cluster: SLURMCluster = make(
        queue="debug",
        account="physics",
        walltime="01:00:00",
        job_extra_directives=["--comment=regrow-test"],
        job_script_prologue=["export REGROW_PROLOGUE=1", "cd /tmp"],
        worker_extra_args=["--no-nanny"],
    )
    script = cluster.job_script()
    lines = script.splitlines()
    assert lines[0] == "#!/usr/bin/env bash"
    directives = [line for line in lines if line.startswith("#SBATCH")]
    assert directives == [
        "#SBATCH -J regrow-worker",
        "#SBATCH -p debug",
        "#SBATCH -A physics",
        "#SBATCH -n 1",
        "#SBATCH --cpus-per-task=1",
        "#SBATCH --mem=477M",  # 500 MB in Slurm's MiB, rounded up
        "#SBATCH -t 01:00:00",
        f"#SBATCH -o {cluster.log_directory}/regrow-worker-0-%j.out",
        "#SBATCH --comment=regrow-test",
    ]
    # The prologue, then the worker, exec'd (so scancel's signal reaches the nanny).
    assert lines[-3:-1] == ["export REGROW_PROLOGUE=1", "cd /tmp"]
    command = lines[-1].split()
    assert command[:5] == ["exec", sys.executable, "-m", "regrow.cli", "worker"]
    assert command[5] == cluster.scheduler_address
    flags = dict(zip(command[6:-1:2], command[7::2], strict=False))
    assert flags["--name"] == "regrow-worker-0"
    assert flags["--nthreads"] == "1"
    assert flags["--memory-limit"] == "500000000"
    assert flags["--host"] == "127.0.0.1"
    assert command[-1] == "--no-nanny"
    # The token is in a file only we can read, never in the script.
    assert cluster.token is not None and cluster.token not in script
    token_file = Path(flags["--token-file"])
    assert token_file.read_text() == cluster.token
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    # Showing the script submits nothing and takes no name.
    assert cluster.jobs == {}
    assert cluster.job_script() == script


def test_scale_compute_and_preemption(slurm: SlurmEnv, make: Any) -> None:  # noqa: F811
    cluster: SLURMCluster = make()
    cluster.scale(jobs=2)
    assert len(cluster.jobs) == 2
    wait_until(lambda: len(queued(slurm, cluster)) == 2, timeout=10, what="2 jobs in squeue")
    cluster.wait_for_workers(2, timeout=60)
    with Client(cluster, set_as_default=False) as client:
        assert set(workers(client)) == set(cluster.jobs) == {"regrow-worker-0", "regrow-worker-1"}
        xs = client.map(slow_inc, range(20), delay=0.0)
        total = client.submit(sum, xs)
        assert total.result(timeout=30) == sum(range(1, 21))

        # Slurm takes a job away mid-computation (as preemption would): scancel by id.
        futures = client.map(slow_inc, range(100, 140), delay=0.05)
        chained = [client.submit(add, f, 1) for f in futures]
        wait_until(lambda: sum(f.done() for f in futures) >= 5, timeout=30, what="work under way")
        victim, victim_id = "regrow-worker-0", cluster.jobs["regrow-worker-0"]
        slurm.cancel(victim_id)
        assert client.gather(chained) == [x + 2 for x in range(100, 140)]
        wait_until(lambda: victim not in workers(client), timeout=30, what="worker removed")
        wait_until(lambda: victim_id not in slurm.jobs(), timeout=30, what="job gone")
        # The cluster forgets the job, so scaling replaces it.
        wait_until(lambda: victim not in cluster.jobs, timeout=10, what="job forgotten")
        assert list(cluster.jobs) == ["regrow-worker-1"]
        cluster.scale(jobs=2)
        assert set(cluster.jobs) == {"regrow-worker-1", "regrow-worker-2"}
        cluster.wait_for_workers(2, timeout=60)
        assert set(workers(client)) == {"regrow-worker-1", "regrow-worker-2"}
    logs = cluster.get_logs()
    assert "regrow-worker-0" in logs and "registered" in logs["regrow-worker-2"]
    assert "scheduler at" in logs["scheduler"]
    cluster.close()
    assert slurm.jobs() == {}


def test_adapt_grows_then_shrinks_to_zero(slurm: SlurmEnv, make: Any) -> None:  # noqa: F811
    cluster: SLURMCluster = make()
    cluster.adapt(minimum=0, maximum=2, interval=0.2, wait_count=2)
    with Client(cluster, set_as_default=False) as client:
        futures = client.map(slow_inc, range(40), delay=0.1)
        wait_until(lambda: len(queued(slurm, cluster)) == 2, timeout=20, what="grew to 2 jobs")
        assert client.gather(futures) == list(range(1, 41))
        assert len(cluster.jobs) <= 2  # never beyond maximum
        del futures
        wait_until(
            # Not even COMPLETING: squeue lists nothing.
            lambda: not slurm.jobs() and not cluster.jobs and not workers(client),
            timeout=30,
            what="adapted down to no job and no worker",
        )
    assert slurm.jobs() == {}


def test_default_address_reaches_the_jobs(slurm: SlurmEnv, make: Any) -> None:  # noqa: F811
    """By default the scheduler listens on this host's outward address (as for jobs on
    other nodes), and the workers register an address the scheduler can reach."""
    cluster: SLURMCluster = make(scheduler_options=None)
    host = parse_address(cluster.scheduler_address)[0]
    assert host == outward_host()
    cluster.scale(1)
    cluster.wait_for_workers(1, timeout=60)
    with Client(cluster, set_as_default=False) as client:
        [address] = client.scheduler_info()["workers"]
        if not is_loopback(host):
            assert "--host 0.0.0.0" in cluster.job_script()
            assert parse_address(address)[0] == host
        assert client.submit(add, 2, 3).result(timeout=30) == 5


def test_tls(slurm: SlurmEnv, make: Any) -> None:  # noqa: F811
    """security=True: every connection over TLS; the workers' certificate and key reach
    the jobs as files only this user can read, never as text in the script."""
    cluster: SLURMCluster = make(security=True)
    script = cluster.job_script()
    assert "BEGIN" not in script
    assert cluster.scheduler_address.startswith("tls://")
    command = script.splitlines()[-1].split()
    for flag in ("--tls-ca-file", "--tls-cert", "--tls-key"):
        path = Path(command[command.index(flag) + 1])
        assert path.read_text().startswith("-----BEGIN")
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    cluster.scale(jobs=1)
    cluster.wait_for_workers(1, timeout=60)
    with Client(cluster, set_as_default=False) as client:
        [address] = client.scheduler_info()["workers"]
        assert address.startswith("tls://")
        assert client.submit(add, 20, 22).result(timeout=30) == 42


def test_sbatch_failure_is_one_line(make: Any) -> None:
    cluster: SLURMCluster = make(queue="no-such-partition")
    with pytest.raises(RuntimeError) as info:
        cluster.scale(jobs=1)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("SLURMCluster: sbatch failed (exit code 1): sbatch: error:")
    assert "invalid partition" in message.lower()
    assert cluster.jobs == {}


def test_srun_workers_in_one_allocation(slurm: SlurmEnv, make: Any) -> None:  # noqa: F811
    """``srun regrow worker ADDRESS`` in a 2-task job: two workers, each named after
    its task and sized from Slurm's environment, with no --name, --nthreads or
    --memory-limit (``worker_defaults``, wired into ``regrow worker`` by the CLI)."""
    cluster: SLURMCluster = make()
    worker = [sys.executable, "-m", "regrow.cli", "worker", cluster.scheduler_address]
    worker += ["--token-file", cluster.token_file, "--log-level", "INFO"]
    log = str(Path(cluster.log_directory) / "srun-%j.out")
    r = subprocess.run(
        [
            "sbatch",
            "--parsable",
            "-n",
            "2",
            "-c",
            "1",
            "--mem-per-cpu=300M",
            "-J",
            "srun-test",
            "-o",
            log,
            "--wrap",
            "srun " + subprocess.list2cmdline(worker),
        ],
        env=cluster._job_env(),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 0, r.stderr
    job = r.stdout.strip().split(";")[0]
    try:
        with Client(cluster, set_as_default=False) as client:
            cluster.wait_for_workers(2, timeout=60)
            info = client.scheduler_info()["workers"]
            assert sorted(w["name"] for w in info.values()) == [f"slurm-{job}-0", f"slurm-{job}-1"]
            assert [w["nthreads"] for w in info.values()] == [1, 1]
            assert [w["memory_limit"] for w in info.values()] == [300 * 2**20] * 2
            assert client.submit(add, 1, 2).result(timeout=30) == 3
    finally:
        slurm.cancel(job)
        wait_until(lambda: job not in slurm.jobs(), timeout=30, what="the srun job is gone")


# ---------------------------------------------------------------- without Slurm
@pytest.mark.parametrize(
    ("kwargs", "says"),
    [
        ({"memory": "lots"}, "SLURMCluster: memory='lots': cannot read 'lots' as a size"),
        ({"memory": "0GB"}, "SLURMCluster: memory must be more than 0 bytes"),
        ({"walltime": "soon"}, "SLURMCluster: cannot read walltime='soon'"),
        ({"walltime": "1:2:3:4"}, "SLURMCluster: cannot read walltime='1:2:3:4'"),
        ({"processes": 2}, "SLURMCluster: processes=2: one worker per job for now"),
        ({"cores": 0}, "SLURMCluster: cores must be an integer >= 1"),
        ({"job_name": "two words"}, "SLURMCluster: job_name must be"),
        ({"job_extra_directives": ["a\nb"]}, "SLURMCluster: job_extra_directives must be one"),
        ({"scheduler_options": {"hots": "x"}}, "SLURMCluster: unknown scheduler_options"),
        ({"scheduler_options": {"port": -1}}, "SLURMCluster: scheduler_options['port'] must"),
        ({"n_workers": -1}, "SLURMCluster: n_workers must be an integer >= 0"),
        ({"log_level": "LOUD"}, "SLURMCluster: log_level must be one of"),
        ({"shared_temp_directory": "/no/such/dir"}, "SLURMCluster: cannot make a directory"),
    ],
)
def test_bad_arguments_are_one_line(kwargs: dict[str, Any], says: str, tmp_path: Path) -> None:
    before = {p.pid for p in children_of(os.getpid())}
    kwargs.setdefault("shared_temp_directory", tmp_path)
    with pytest.raises(ValueError) as info:
        SLURMCluster(**kwargs)
    assert str(info.value).startswith(says), str(info.value)
    assert "\n" not in str(info.value)
    # Nothing was started, and nothing left behind.
    assert {p.pid for p in children_of(os.getpid())} <= before
    assert list(tmp_path.iterdir()) == []


def test_sbatch_not_on_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(RuntimeError) as info:
        SLURMCluster(shared_temp_directory=tmp_path)
    assert str(info.value) == (
        "SLURMCluster: sbatch not found on PATH (run this on a Slurm login node, "
        "or load Slurm's module)"
    )
    assert list(tmp_path.iterdir()) == []


def test_worker_defaults_outside_slurm() -> None:
    assert worker_defaults({}) == {}
    assert worker_defaults({"SLURM_CPUS_PER_TASK": "4"}) == {}


def test_worker_defaults_from_slurm_environment() -> None:
    # sbatch -c 4 --mem-per-cpu=1000M; srun -n 2: task 1.
    env = {
        "SLURM_JOB_ID": "812",
        "SLURM_PROCID": "1",
        "SLURM_CPUS_PER_TASK": "4",
        "SLURM_MEM_PER_CPU": "1000",
    }
    assert worker_defaults(env) == {
        "name": "slurm-812-1",
        "nthreads": "4",
        "memory_limit": str(4 * 1000 * 2**20),
    }
    # sbatch -n 4 --mem=8G on one node: the node's memory shared by its 4 tasks.
    env = {
        "SLURM_JOB_ID": "9",
        "SLURM_PROCID": "3",
        "SLURM_MEM_PER_NODE": "8192",
        "SLURM_STEP_TASKS_PER_NODE": "4",
        "SLURM_NODEID": "0",
    }
    assert worker_defaults(env) == {"name": "slurm-9-3", "memory_limit": str(2 * 2**30)}
    # Two nodes, 3 tasks then 1: the second node's task has its node to itself.
    env = {
        "SLURM_JOB_ID": "9",
        "SLURM_PROCID": "3",
        "SLURM_MEM_PER_NODE": "1024",
        "SLURM_STEP_TASKS_PER_NODE": "3,1",
        "SLURM_NODEID": "1",
    }
    assert worker_defaults(env)["memory_limit"] == str(2**30)
    env["SLURM_STEP_TASKS_PER_NODE"] = "2(x2)"
    assert worker_defaults(env)["memory_limit"] == str(2**29)
    # The batch script itself (no srun): task 0, the CLI's own defaults for the rest.
    assert worker_defaults({"SLURM_JOB_ID": "5"}) == {"name": "slurm-5-0"}
    # Nonsense is ignored, not an error.
    assert worker_defaults({"SLURM_JOB_ID": "5", "SLURM_CPUS_PER_TASK": "many"}) == {
        "name": "slurm-5-0"
    }
