"""The container image (``Dockerfile``), built for real with buildah where it can be.

Builds the image from this source tree, then runs it: ``regrow`` is the entry point, it
runs as the unprivileged user the Kubernetes manifests expect, and a scheduler inside
serves GET /health. Then runs the manifests' pods from it as a kubelet would (see "the
pods, simulated" below): the closest to a cluster this machine has.

Skipped, with the reason, where no build can run: buildah missing, not root (the build
runs with chroot isolation, no user namespaces needed), or no base image. The base is
``python:3.11-slim`` when it can be pulled; where no registry of images is reachable, a
stand-in made once with debootstrap (Debian 12, whose Python is 3.11 too) and kept in
buildah's storage as ``localhost/regrow-test-python:3.11``. ``REGROW_TEST_PYTHON_IMAGE``
names another base.
"""

from __future__ import annotations

import json
import math
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from regrow.testing import child_env, stop, wait_until

ROOT = Path(__file__).resolve().parents[2]
BASE = "docker.io/library/python:3.11-slim"
STAND_IN = "localhost/regrow-test-python:3.11"
CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"

# Making the stand-in base takes a minute or two, once; a build about half a minute.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


def _buildah(*args: str, timeout: float = 600, check: bool = True) -> str:
    out = subprocess.run(["buildah", *args], capture_output=True, text=True, timeout=timeout)
    if check and out.returncode != 0:
        raise AssertionError(f"buildah {' '.join(args)} failed:\n{out.stdout}\n{out.stderr}")
    return out.stdout.strip()


def _have(image: str) -> bool:
    return bool(_buildah("images", "--quiet", image, check=False))


def _stand_in_base() -> str:
    """A Debian 12 image with Python 3.11 as ``python`` and its venv module."""
    if _have(STAND_IN):
        return STAND_IN
    if shutil.which("debootstrap") is None:
        pytest.skip(f"cannot pull {BASE} (no image registry) and no debootstrap to make a base")
    with tempfile.TemporaryDirectory(prefix="regrow-rootfs-") as rootfs:
        packages = "python3,python3-venv,python-is-python3,ca-certificates"
        made = subprocess.run(
            ["debootstrap", "--variant=minbase", f"--include={packages}", "bookworm", rootfs],
            capture_output=True,
            text=True,
            timeout=900,
        )
        if made.returncode != 0:
            pytest.skip(f"cannot pull {BASE}, and debootstrap failed: {made.stderr[-500:]}")
        for cache in ("var/cache/apt/archives", "var/lib/apt/lists"):
            shutil.rmtree(Path(rootfs, cache))
        container = _buildah("from", "scratch")
        try:
            mount = _buildah("mount", container)
            subprocess.run(["cp", "-a", f"{rootfs}/.", f"{mount}/"], check=True)
            _buildah("umount", container)
            _buildah("commit", "--quiet", container, STAND_IN)
        finally:
            _buildah("rm", container, check=False)
    return STAND_IN


def _base() -> str:
    chosen = os.environ.get("REGROW_TEST_PYTHON_IMAGE")
    if chosen:
        return chosen
    if (
        _have(BASE)
        or subprocess.run(
            ["buildah", "pull", "--quiet", BASE], capture_output=True, timeout=300
        ).returncode
        == 0
    ):
        return BASE
    return _stand_in_base()


@pytest.fixture(scope="module")
def image() -> Iterator[str]:
    if shutil.which("buildah") is None:
        pytest.skip("buildah is not installed (apt-get install buildah): the image is not built")
    if os.geteuid() != 0:
        pytest.skip("building with buildah's chroot isolation needs root")
    if subprocess.run(["buildah", "info"], capture_output=True, timeout=60).returncode != 0:
        pytest.skip("buildah cannot run here (`buildah info` fails)")
    base = _base()
    tag = f"localhost/regrow-test:{uuid.uuid4().hex[:12]}"
    args = ["build", "--isolation", "chroot", "--network", "host", "--quiet", "--tag", tag]
    args += ["--build-arg", f"PYTHON_IMAGE={base}"]
    # pip in the build trusts what this machine trusts (a TLS-inspecting proxy's CA), and
    # goes through the same proxy, if any.
    if os.path.exists(CA_BUNDLE):
        args += ["--volume", f"{CA_BUNDLE}:{CA_BUNDLE}:ro"]
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy"):
        if var in os.environ:
            args += ["--build-arg", f"{var}={os.environ[var]}"]
    started = time.monotonic()
    _buildah(*args, str(ROOT))
    print(f"built {tag} from {base} in {time.monotonic() - started:.1f} s")
    try:
        yield tag
    finally:
        _buildah("rmi", tag, check=False)


def _run(image: str, *command: str) -> str:
    """``command`` in a container of ``image``, as the image's user; its stdout."""
    container = _buildah("from", "--quiet", image)
    try:
        return _buildah("run", "--isolation", "chroot", container, "--", *command, timeout=120)
    finally:
        _buildah("rm", container, check=False)


def test_image_runs_regrow_as_its_user(image: str) -> None:
    config = _buildah(
        "inspect", "--format", "{{.OCIv1.Config.Entrypoint}} {{.OCIv1.Config.User}}", image
    )
    assert config == "[regrow] 10001:10001"
    assert _run(image, "id", "-u") == "10001"
    assert _run(image, "regrow", "--version").startswith("regrow, version ")
    # Installed without the test or ecosystem extras.
    assert (
        _run(image, "python", "-c", "import importlib.util as u; print(u.find_spec('pytest'))")
        == "None"
    )


def test_scheduler_in_the_image_serves_health(image: str) -> None:
    script = (
        "import asyncio, urllib.request\n"
        "from regrow.scheduler import Scheduler\n"
        "async def main():\n"
        "    s = Scheduler(port=0, dashboard_address='127.0.0.1:0')\n"
        "    await s.start()\n"
        "    url = s.http_address + '/health'\n"
        "    body = await asyncio.to_thread(lambda: urllib.request.urlopen(url).read())\n"
        "    await s.close()\n"
        "    print(body.decode().strip())\n"
        "asyncio.run(main())\n"
    )
    assert _run(image, "python", "-c", script) == "ok"


# --------------------------------------------------------- the pods, simulated
#
# What a kubelet would do with the manifests, done by hand with the built image: each
# pod in a network namespace of its own (the two joined by a veth pair, as a cluster's
# network joins pod IPs), the image's root read-only, the Secret, emptyDir and claim
# mounted where the manifests say, the downward API's variables filled in, the user and
# group of the pod's securityContext, `regrow-scheduler` resolving to the scheduler pod
# (the Service), and the probes' GETs sent. Not simulated: a real kubelet, DNS, the
# Service's virtual IP, cgroup limits.

KUBE = ROOT / "kubernetes"
QUANTITY = {"": 1, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30}


def _quantity(text: str) -> float:
    number, unit = re.fullmatch(r"([0-9.]+)([a-zA-Z]*)", text).groups()  # type: ignore[union-attr]
    return float(number) * QUANTITY[unit]


def _deployment(name: str) -> dict[str, Any]:
    for path in KUBE.glob("*.yaml"):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc.get("kind") == "Deployment" and doc["metadata"]["name"] == name:
                return dict(doc)
    raise AssertionError(f"no Deployment {name} in {KUBE}")


class Network:
    """Two network namespaces joined by a veth pair: the scheduler's pod and a worker's."""

    def __init__(self) -> None:
        tag = uuid.uuid4().hex[:6]
        self.ns = {"scheduler": f"regrow-pod-s-{tag}", "worker": f"regrow-pod-w-{tag}"}
        self.ip = {"scheduler": "10.77.0.1", "worker": "10.77.0.2"}
        self.made: list[str] = []

    def __enter__(self) -> Network:
        ends = {
            "scheduler": f"rgs{self.ns['scheduler'][-6:]}",
            "worker": f"rgw{self.ns['worker'][-6:]}",
        }
        try:
            for ns in self.ns.values():
                self._ip("netns", "add", ns)
                self.made.append(ns)
            pair = ["link", "add", ends["scheduler"], "netns", self.ns["scheduler"], "type", "veth"]
            self._ip(*pair, "peer", "name", ends["worker"], "netns", self.ns["worker"])
            for pod, ns in self.ns.items():
                self._ip("-n", ns, "addr", "add", f"{self.ip[pod]}/24", "dev", ends[pod])
                self._ip("-n", ns, "link", "set", ends[pod], "up")
                self._ip("-n", ns, "link", "set", "lo", "up")
        except RuntimeError as exc:
            self.__exit__()
            pytest.skip(f"no network namespaces for the pods here: {exc}")
        return self

    def __exit__(self, *exc: object) -> None:
        for ns in self.made:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)

    @staticmethod
    def _ip(*args: str) -> None:
        out = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
        if out.returncode != 0:
            raise RuntimeError(f"ip {' '.join(args)}: {out.stderr.strip()}")

    def run(self, pod: str, script: str, env: dict[str, str]) -> str:
        """A Python script run from the pod's network namespace (from this venv)."""
        out = subprocess.run(
            ["ip", "netns", "exec", self.ns[pod], sys.executable, "-c", script],
            env=env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert out.returncode == 0, out.stderr
        return out.stdout.strip()

    def get(self, pod: str, url: str) -> int:
        """The status of GET ``url`` sent from the pod's namespace (0: no answer)."""
        script = (
            "import urllib.request, urllib.error\n"
            "try:\n"
            f"    print(urllib.request.urlopen({url!r}, timeout=3).status)\n"
            "except urllib.error.HTTPError as e:\n"
            "    print(e.code)\n"
            "except OSError:\n"
            "    print(0)\n"
        )
        return int(self.run(pod, script, dict(os.environ)))


class Pod:
    """One pod of a Deployment, run as its manifest says, from a container of ``image``."""

    def __init__(
        self, image: str, deployment: str, net: Network, role: str, token: str, disk: Path
    ) -> None:
        self.spec = _deployment(deployment)["spec"]["template"]["spec"]
        [self.container] = self.spec["containers"]
        self.name = f"{deployment}-{uuid.uuid4().hex[:5]}"
        self.image, self.net, self.role, self.token, self.disk = image, net, role, token, disk
        self.ip = net.ip[role]
        self.proc: subprocess.Popen[bytes] | None = None
        self.buildah_container = ""

    def env(self) -> dict[str, str]:
        values: dict[str, str] = {}
        limits = self.container["resources"]["limits"]
        for var in self.container.get("env", []):
            ref = var["valueFrom"]
            if "fieldRef" in ref:
                path = ref["fieldRef"]["fieldPath"]
                values[var["name"]] = {"status.podIP": self.ip, "metadata.name": self.name}[path]
            else:
                resource = ref["resourceFieldRef"]["resource"].removeprefix("limits.")
                divisor = _quantity(ref["resourceFieldRef"].get("divisor", "1"))
                values[var["name"]] = str(math.ceil(_quantity(limits[resource]) / divisor))
        return values

    def args(self) -> list[str]:
        env = self.env()
        return [
            re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], a) for a in self.container["args"]
        ]

    def start(self) -> None:
        security = self.spec["securityContext"]
        uid, gid, group = security["runAsUser"], security["runAsGroup"], security["fsGroup"]
        self.buildah_container = _buildah("from", "--quiet", self.image)
        root = _buildah("mount", self.buildah_container)
        Path(root, "etc", "hosts").touch()  # a mount point
        etc = self.disk / f"{self.name}-etc"
        etc.mkdir()
        (etc / "hosts").write_text(
            f"127.0.0.1 localhost\n{self.ip} {self.name}\n"
            f"{self.net.ip['scheduler']} regrow-scheduler\n"
        )
        mounts = [
            f"hostname {self.name}",  # a pod's host name is its name, in its /etc/hosts
            f"mount --bind {root} {root}",
            f"mount -t proc proc {root}/proc",
            f"mount --rbind /dev {root}/dev",
            f"mount --bind {etc}/hosts {root}/etc/hosts",
        ]
        volumes = {v["name"]: v for v in self.spec["volumes"]}
        for mount in self.container["volumeMounts"]:
            volume, target = volumes[mount["name"]], f"{root}{mount['mountPath']}"
            os.makedirs(target, exist_ok=True)  # the runtime makes mount points
            if "emptyDir" in volume:
                mounts.append(f"mount -t tmpfs -o mode=1777 tmpfs {target}")
                continue
            source = self.disk / mount["name"]  # a claim keeps its directory across pods
            if "secret" in volume:
                source = self.disk / f"{self.name}-{mount['name']}"
                source.mkdir()
                for item in volume["secret"]["items"]:
                    assert item["key"] == "token"
                    path = source / item["path"]
                    path.write_text(self.token)
                    os.chown(path, 0, group)
                    path.chmod(volume["secret"]["defaultMode"])
            else:
                assert "persistentVolumeClaim" in volume
                source.mkdir(exist_ok=True)
                os.chown(source, 0, group)
                source.chmod(0o2775)  # fsGroup: the group's, and set-group-id
            mounts.append(f"mount --bind {source} {target}")
            if mount.get("readOnly"):
                mounts.append(f"mount -o remount,bind,ro {target}")
        if self.container["securityContext"].get("readOnlyRootFilesystem"):
            mounts.append(f"mount -o remount,bind,ro {root}")
        env = ["PATH=/opt/regrow/bin:/usr/local/bin:/usr/bin:/bin", "HOME=/home/regrow",
               "PYTHONUNBUFFERED=1", *(f"{k}={v}" for k, v in self.env().items())]  # fmt: skip
        # The image's ENTRYPOINT, then the manifest's args.
        run = ["chroot", f"--userspec={uid}:{gid}", f"--groups={group}", root,
               "env", "-i", *env, "regrow", *self.args()]  # fmt: skip
        script = " && ".join([*mounts, "exec " + shlex.join(run)])
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", self.net.ns[self.role],
             "unshare", "--mount", "--uts", "--propagation", "private", "bash", "-c", script],
            stdin=subprocess.DEVNULL,
        )  # fmt: skip

    def probe(self, kind: str) -> int:
        get = self.container[kind]["httpGet"]
        [port] = [p["containerPort"] for p in self.container["ports"] if p["name"] == get["port"]]
        return self.net.get(self.role, f"http://{self.ip}:{port}{get['path']}")

    def ready(self) -> bool:
        if self.proc is None or self.proc.poll() is not None:
            raise AssertionError(f"pod {self.name} exited: {self.proc and self.proc.returncode}")
        return self.probe("readinessProbe") == 200

    def stop(self, kill: bool = False) -> None:
        if self.proc is not None:
            if kill and self.proc.poll() is None:
                self.proc.kill()
            stop([self.proc])
        if self.buildah_container:
            _buildah("rm", self.buildah_container, check=False)
            self.buildah_container = ""


class Pods:
    """The pods a test started, on one network, sharing one token and one disk."""

    def __init__(self, image: str, net: Network, disk: Path) -> None:
        self.image, self.net, self.disk = image, net, disk
        self.token = uuid.uuid4().hex
        self.started: list[Pod] = []

    def start(self, deployment: str, role: str) -> Pod:
        pod = Pod(self.image, deployment, self.net, role, self.token, self.disk)
        self.started.append(pod)
        pod.start()
        return pod


@pytest.fixture
def pods(image: str, tmp_path: Path) -> Iterator[Pods]:
    if shutil.which("ip") is None or shutil.which("unshare") is None:
        pytest.skip("no iproute2 or unshare: the pods are not simulated")
    with Network() as net:
        started = Pods(image, net, tmp_path)
        try:
            yield started
        finally:
            for pod in reversed(started.started):
                pod.stop()


def test_the_manifests_pods_run_the_image(pods: Pods) -> None:
    scheduler = pods.start("regrow-scheduler", "scheduler")
    wait_until(scheduler.ready, timeout=60, what="the scheduler pod is ready")
    worker = pods.start("regrow-worker", "worker")
    wait_until(worker.ready, timeout=60, what="the worker pod is ready")
    for pod in (scheduler, worker):
        assert pod.probe("livenessProbe") == pod.probe("startupProbe") == 200

    # A client in the cluster: a 1 MiB result comes from the worker, at its pod IP.
    net = pods.net
    client = (
        "import json\n"
        "from regrow import Client\n"
        f"with Client('tcp://{net.ip['scheduler']}:8786', timeout=30) as c:\n"
        "    big = c.submit(bytes, 1 << 20).result()\n"
        "    [w] = c.scheduler_info()['workers'].values()\n"
        "    print(json.dumps([len(big), w['name'], w['address'], w['nthreads'],\n"
        "                      w['memory_limit']]))\n"
    )
    size, name, address, nthreads, memory_limit = json.loads(
        net.run("scheduler", client, child_env(pods.token))
    )
    limits = worker.container["resources"]["limits"]
    assert size == 1 << 20
    assert name == worker.name
    assert address.startswith(f"tcp://{worker.ip}:")
    assert nthreads == math.ceil(_quantity(limits["cpu"]))
    assert memory_limit == _quantity(limits["memory"])

    # The scheduler pod dies; a new one resumes from the journal on the claim, and the
    # worker is ready again once it has registered with it.
    scheduler.stop(kill=True)
    wait_until(lambda: worker.probe("readinessProbe") == 503, timeout=20, what="503")
    scheduler = pods.start("regrow-scheduler", "scheduler")
    wait_until(scheduler.ready, timeout=60, what="the new scheduler pod is ready")
    wait_until(lambda: worker.probe("readinessProbe") == 200, timeout=30, what="worker back")
    assert next(iter((scheduler.disk / "journal").iterdir())).name.startswith("journal.sqlite")
