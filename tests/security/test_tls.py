"""TLS with mutual authentication, against real processes started with the ``regrow`` CLI.

Every refusal ends fast with a clear error on the side that was refused, and leaves the
scheduler serving legitimate peers with its memory where it was.
"""

from __future__ import annotations

import contextlib
import operator
import os
import secrets
import socket
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from regrow import AuthenticationError, Client, LocalCluster, Security
from regrow.testing import child_env, stop, wait_ready, wait_until

from .cluster import cli, computes

pytestmark = pytest.mark.timeout(120)


def write_material(directory: Path, security: Security) -> dict[str, str]:
    """The PEM text of a temporary Security, as the files an operator would have."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, text in (
        ("ca", security.tls_ca_file),
        ("cert", security.tls_worker_cert),
        ("key", security.tls_worker_key),
    ):
        assert text is not None
        path = directory / f"{name}.pem"
        path.write_text(text)
        path.chmod(0o600)
        paths[name] = str(path)
    return paths


def flags(files: dict[str, str]) -> list[str]:
    return ["--tls-ca-file", files["ca"], "--tls-cert", files["cert"], "--tls-key", files["key"]]


def client_security(files: dict[str, str]) -> Security:
    return Security(
        tls_ca_file=files["ca"],
        tls_client_cert=files["cert"],
        tls_client_key=files["key"],
        require_encryption=True,
    )


class TLSCluster:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.files = write_material(tmp / "tls", Security.temporary())
        self.token = secrets.token_hex(16)
        self.log_path = tmp / "scheduler.log"
        self.procs: list[subprocess.Popen[bytes]] = []
        try:
            ready = tmp / "scheduler.ready"
            env = child_env(self.token, handshake_timeout=2)
            self.scheduler = cli(
                ["scheduler", "--port", "0", *flags(self.files)], env, ready, self.log_path
            )
            self.procs.append(self.scheduler)
            self.address = wait_ready(self.scheduler, ready)
            for i in range(2):  # two, so that worker-to-worker traffic is tested too
                ready = tmp / f"worker{i}.ready"
                worker = cli(
                    ["worker", self.address, "--nthreads", "2", *flags(self.files)],
                    child_env(self.token),
                    ready,
                    tmp / f"worker{i}.log",
                )
                self.procs.append(worker)
                wait_ready(worker, ready)
        except BaseException:
            stop(self.procs)
            raise

    def client(self, **kw: object) -> Client:
        kw.setdefault("token", self.token)
        kw.setdefault("security", client_security(self.files))
        return Client(self.address, set_as_default=False, timeout=10, **kw)  # type: ignore[arg-type]

    def rss(self) -> int:
        return int(psutil.Process(self.scheduler.pid).memory_info().rss)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@pytest.fixture(scope="module")
def tls_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TLSCluster]:
    c = TLSCluster(tmp_path_factory.mktemp("tls"))
    try:
        yield c
    finally:
        stop(c.procs)


def test_a_tls_cluster_computes_and_every_address_is_tls(tls_cluster: TLSCluster) -> None:
    assert tls_cluster.address.startswith("tls://")
    with tls_cluster.client() as client:
        computes(client, n=200)
        info = client.scheduler_info()
        assert len(info["workers"]) == 2
        assert all(a.startswith("tls://") for a in info["workers"])
        # Worker to worker: a value made on one is used by a task on the other.
        a, b = list(info["workers"])
        x = client.submit(bytes, 10**6, workers=[a], pure=False)
        assert client.submit(len, x, workers=[b]).result(timeout=30) == 10**6


def _refused(tls_cluster: TLSCluster, **kw: object) -> BaseException:
    with pytest.raises((AuthenticationError, OSError, ValueError)) as info:
        tls_cluster.client(**kw).close()
    return info.value


def test_wrong_certificate_no_certificate_and_wrong_token_are_refused(
    tls_cluster: TLSCluster,
) -> None:
    with tls_cluster.client() as client:
        computes(client, n=200)
        baseline = tls_cluster.rss()
        for _ in range(20):
            # A certificate signed by another CA.
            err = _refused(tls_cluster, security=Security.temporary())
            assert "CERTIFICATE_VERIFY_FAILED" in str(err) or "refused" in str(err), err
            # The right certificate, the wrong token: refused inside TLS.
            err = _refused(tls_cluster, token="not-the-token")
            assert "wrong token" in str(err), err
            # No certificate at all: the address is TLS, the client has no TLS.
            err = _refused(tls_cluster, security=Security())
            assert "TLS address" in str(err), err
            # A raw TLS client that trusts the CA but shows no certificate of its own.
            _raw_tls_without_certificate(tls_cluster)
        computes(client, n=200)
        wait_until(lambda: tls_cluster.rss() <= baseline * 1.10, timeout=20, interval=0.1)
    log = tls_cluster.log()
    assert "wrong token" in log
    assert "Traceback" not in log


def _raw_tls_without_certificate(tls_cluster: TLSCluster) -> None:
    host, port = tls_cluster.address.removeprefix("tls://").rsplit(":", 1)
    ctx = ssl.create_default_context(cafile=tls_cluster.files["ca"])
    ctx.check_hostname = False
    with socket.create_connection((host, int(port)), timeout=10) as raw:
        try:
            with ctx.wrap_socket(raw) as tls:
                # TLS 1.3: the server's refusal of our (absent) certificate comes after
                # the client's side of the handshake, with the first read.
                tls.settimeout(10)
                assert tls.recv(1024) == b""
        except (ssl.SSLError, ConnectionResetError):
            pass


def test_plaintext_to_a_tls_port_and_tls_to_a_plaintext_port(
    tls_cluster: TLSCluster, tmp_path: Path
) -> None:
    plain_address = tls_cluster.address.replace("tls://", "tcp://")
    with tls_cluster.client() as client:

        def refused_then_computes(n: int) -> None:
            for _ in range(n):
                with pytest.raises(OSError, match="expects TLS"):
                    Client(plain_address, token=tls_cluster.token, set_as_default=False, timeout=5)
            computes(client, n=200)

        # A warm-up round first: the baseline is a scheduler that has refused plaintext
        # handshakes before (each client tries a hang-up three times: the scheduler may
        # have been stopping). A leak grows with the rounds that follow.
        refused_then_computes(5)
        baseline = tls_cluster.rss()
        refused_then_computes(20)
        wait_until(lambda: tls_cluster.rss() <= baseline * 1.10, timeout=20, interval=0.1)
    # A plaintext scheduler, reached by a TLS client.
    with LocalCluster(n_workers=0) as plain:
        tls_address = plain.scheduler_address.replace("tcp://", "tls://")
        with pytest.raises(AuthenticationError, match="TLS handshake"):
            Client(
                tls_address,
                token=plain.token,
                security=client_security(tls_cluster.files),
                set_as_default=False,
                timeout=5,
            )
        # Encryption required: a plaintext address is refused before any byte is sent.
        with pytest.raises(ValueError, match="encryption is required"):
            Client(
                plain.scheduler_address,
                token=plain.token,
                security=client_security(tls_cluster.files),
                set_as_default=False,
            )


def test_local_cluster_security_true_in_and_out_of_process() -> None:
    for processes in (True, False):
        with (
            LocalCluster(n_workers=1, processes=processes, security=True) as cluster,
            Client(cluster, set_as_default=False) as client,
        ):
            assert cluster.scheduler_address.startswith("tls://")
            assert client.security is cluster.security
            assert client.submit(operator.add, 1, 2).result(timeout=30) == 3


def _sniff(
    port: int, marker: bytes, ready: threading.Event, stop_: threading.Event, seen: list[bool]
) -> None:
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.ntohs(0x0003))
    s.bind(("lo", 0))
    s.settimeout(0.1)
    ready.set()
    with s:
        while not stop_.is_set():
            with contextlib.suppress(TimeoutError):
                frame = s.recv(1 << 16)
                if marker in frame and port.to_bytes(2, "big") in frame[:64]:
                    seen[0] = True


@contextlib.contextmanager
def sniffing(port: int, marker: bytes) -> Iterator[list[bool]]:
    """Whether ``marker`` crossed loopback in a TCP segment to or from ``port``."""
    try:
        socket.socket(socket.AF_PACKET, socket.SOCK_RAW).close()
    except (PermissionError, AttributeError, OSError):
        pytest.skip("reading packets off loopback needs CAP_NET_RAW on Linux")
    seen = [False]
    ready, stop_ = threading.Event(), threading.Event()
    t = threading.Thread(target=_sniff, args=(port, marker, ready, stop_, seen), daemon=True)
    t.start()
    assert ready.wait(10), "the sniffer did not start"
    try:
        yield seen
    finally:
        stop_.set()
        t.join(5)


@pytest.mark.parametrize("tls", [True, False], ids=["tls", "plaintext"])
def test_nothing_readable_crosses_the_wire_with_tls(tls: bool) -> None:
    """The control run (plaintext) must see the marker, or the check proves nothing."""
    marker = ("secret-" + secrets.token_hex(8)).encode()
    with (
        LocalCluster(n_workers=1, security=tls) as cluster,
        Client(cluster, set_as_default=False) as client,
    ):
        port = int(cluster.scheduler_address.rsplit(":", 1)[1])
        with sniffing(port, marker) as seen:
            fut = client.submit(operator.add, marker, b"!", pure=False)
            assert fut.result(timeout=30) == marker + b"!"
            if not tls:
                wait_until(lambda: seen[0], timeout=10, what="the marker seen in plaintext")
        assert seen[0] is (not tls)


def test_no_accidental_exposure(tmp_path: Path) -> None:
    """Beyond loopback, a scheduler needs a token or TLS, or says --insecure and warns."""
    env = dict(os.environ)
    env.pop("REGROW_TOKEN", None)
    env["PYTHONPATH"] = os.pathsep.join([os.getcwd(), *sys.path])
    cmd = [sys.executable, "-m", "regrow.cli", "scheduler", "--host", "0.0.0.0", "--port", "0"]
    refused = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
    assert refused.returncode == 1
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1 and "refusing to listen on 0.0.0.0" in lines[0], refused.stderr
    ready, log = tmp_path / "insecure.ready", tmp_path / "insecure.log"
    proc = cli(["scheduler", "--host", "0.0.0.0", "--port", "0", "--insecure"], env, ready, log)
    try:
        address = wait_ready(proc, ready)
        assert address.startswith("tcp://")
        assert "INSECURE" in log.read_text()
    finally:
        stop([proc])


def test_certificates_made_as_the_readme_says(tmp_path: Path) -> None:
    """The README's openssl commands make material a TLS cluster accepts."""
    import shutil

    if shutil.which("openssl") is None:
        pytest.skip("no openssl command here")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
    ca_out = ["-keyout", "ca-key.pem", "-out", "ca.pem"]
    sign = ["-CAcreateserial", "-days", "365", "-out", "cert.pem"]
    for cmd in (
        ["req", "-x509", *ec, "-days", "365", "-subj", "/CN=regrow-ca", *ca_out],
        ["req", *ec, "-subj", "/CN=regrow", "-keyout", "key.pem", "-out", "cert.csr"],
        ["x509", "-req", "-in", "cert.csr", "-CA", "ca.pem", "-CAkey", "ca-key.pem", *sign],
    ):
        subprocess.run(["openssl", *cmd], cwd=tmp_path, check=True, capture_output=True)
    files = {name: str(tmp_path / f"{name}.pem") for name in ("ca", "cert", "key")}
    token = secrets.token_hex(8)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        ready = tmp_path / "s.ready"
        procs.append(
            cli(
                ["scheduler", "--port", "0", *flags(files)],
                child_env(token),
                ready,
                tmp_path / "s.log",
            )
        )
        address = wait_ready(procs[0], ready)
        ready = tmp_path / "w.ready"
        procs.append(
            cli(
                ["worker", address, "--no-nanny", *flags(files)],
                child_env(token),
                ready,
                tmp_path / "w.log",
            )
        )
        wait_ready(procs[1], ready)
        with Client(
            address, token=token, security=client_security(files), set_as_default=False
        ) as client:
            assert client.submit(operator.mul, 6, 7).result(timeout=30) == 42
    finally:
        stop(procs)


def test_bad_tls_flags_are_one_line_usage_errors(tmp_path: Path) -> None:
    env = child_env("t")
    base = [sys.executable, "-m", "regrow.cli", "scheduler", "--port", "0"]
    (tmp_path / "junk.pem").write_text("not a certificate")
    for args, says in (
        (["--tls-cert", "x.pem", "--tls-key", "y.pem"], "need --tls-ca-file"),
        (["--tls-ca-file", "x.pem"], "needs --tls-cert and --tls-key"),
        (
            ["--tls-ca-file", str(tmp_path / "missing.pem"), "--tls-cert", "c", "--tls-key", "k"],
            "cannot read",
        ),
        (
            ["--tls-ca-file", str(tmp_path / "junk.pem"), "--tls-cert", "c", "--tls-key", "k"],
            "bad TLS material",
        ),
    ):
        r = subprocess.run(base + args, env=env, capture_output=True, text=True, timeout=60)
        assert r.returncode == 2, r.stderr
        assert says in r.stderr and "Traceback" not in r.stderr, r.stderr
