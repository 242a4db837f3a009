"""Security: what a process proves and demands when it connects; TLS contexts from it.

Owns: the cluster's TLS material (a CA, and a certificate and key per role: scheduler,
worker, client), the ``ssl`` contexts built from it, handing it to child processes
through ``REGROW_TLS_*`` variables, and a throwaway CA (``Security.temporary()``).
Must not: open connections (protocol.comm does), or know about the token (the token
handshake runs on every connection, inside TLS when there is TLS).

Each of ``tls_ca_file``, ``tls_<role>_cert`` and ``tls_<role>_key`` is a path to a PEM
file or the PEM text itself (it starts with ``-----BEGIN``), as in dask.distributed.
Both ends of every connection present a certificate signed by the cluster's CA and check
the other's (mutual TLS); host names are not checked, as peers are reached by address
and the CA signs only the cluster's own certificates.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import ssl
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Literal

Role = Literal["scheduler", "worker", "client"]
ROLES: tuple[Role, ...] = ("scheduler", "worker", "client")

_PEM = "-----BEGIN"


@dataclass(frozen=True, kw_only=True)
class Security:
    """TLS settings for a cluster's processes, dask.distributed's names.

    ``Security()`` (nothing set) means plain TCP; the token still authenticates peers.
    ``require_encryption=True`` refuses plain TCP both ways: such a process neither
    listens nor connects without TLS.
    """

    tls_ca_file: str | None = None
    tls_scheduler_cert: str | None = None
    tls_scheduler_key: str | None = None
    tls_worker_cert: str | None = None
    tls_worker_key: str | None = None
    tls_client_cert: str | None = None
    tls_client_key: str | None = None
    require_encryption: bool = False
    tls_min_version: ssl.TLSVersion = ssl.TLSVersion.TLSv1_2
    _contexts: dict[tuple[Role, bool], ssl.SSLContext] = field(
        init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        object.__setattr__(self, "_contexts", {})
        for role in ROLES:
            cert, key = self._pair(role)
            if (cert is None) != (key is None):
                raise ValueError(f"Security: tls_{role}_cert and tls_{role}_key go together")
            if cert is not None and self.tls_ca_file is None:
                raise ValueError(f"Security: tls_{role}_cert given without tls_ca_file")
        if self.require_encryption and not self.has_tls:
            raise ValueError("Security(require_encryption=True) needs tls_ca_file and certificates")

    @property
    def has_tls(self) -> bool:
        return self.tls_ca_file is not None

    def scheme(self) -> str:
        return "tls" if self.has_tls else "tcp"

    def _pair(self, role: Role) -> tuple[str | None, str | None]:
        cert: str | None = getattr(self, f"tls_{role}_cert")
        key: str | None = getattr(self, f"tls_{role}_key")
        return cert, key

    def context(self, role: Role, *, server: bool) -> ssl.SSLContext | None:
        """The SSL context for ``role`` listening (``server``) or connecting; None
        without TLS. A role with no certificate of its own cannot take part in mutual
        TLS: a clear error, not a connection the other end refuses."""
        if not self.has_tls:
            return None
        kept = self._contexts.get((role, server))
        if kept is not None:
            return kept
        cert, key = self._pair(role)
        if cert is None or key is None:
            raise ValueError(
                f"Security has a CA but no certificate for the {role} "
                f"(tls_{role}_cert and tls_{role}_key)"
            )
        assert self.tls_ca_file is not None
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server else ssl.PROTOCOL_TLS_CLIENT)
        ctx.minimum_version = self.tls_min_version
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_REQUIRED
        try:
            ctx.load_verify_locations(cadata=_read(self.tls_ca_file, "tls_ca_file"))
            with _files(_read(cert, f"tls_{role}_cert"), _read(key, f"tls_{role}_key")) as (c, k):
                ctx.load_cert_chain(c, k)
        except ssl.SSLError as exc:
            raise ValueError(f"Security: bad TLS material for the {role}: {exc}") from None
        if server:
            # No session tickets: nothing reconnects with them, and each would be a
            # record sent after the handshake for no use.
            ctx.num_tickets = 0
        self._contexts[(role, server)] = ctx
        return ctx

    def to_env(self, role: Role) -> dict[str, str]:
        """``REGROW_TLS_*`` variables that give a child process of ``role`` this security
        (paths stay paths; PEM text travels as text, readable only by the same user)."""
        cert, key = self._pair(role)
        # Set even when empty: a child must not take up TLS variables of our own env.
        return {
            "REGROW_TLS_CA_FILE": self.tls_ca_file or "",
            "REGROW_TLS_CERT": cert or "",
            "REGROW_TLS_KEY": key or "",
            "REGROW_REQUIRE_ENCRYPTION": "1" if self.require_encryption else "0",
        }

    @classmethod
    def from_env(cls, role: Role, environ: Mapping[str, str] | None = None) -> Security:
        """The security ``to_env`` handed over, or the operator's REGROW_TLS_* variables."""
        env = os.environ if environ is None else environ
        ca = env.get("REGROW_TLS_CA_FILE") or None
        cert = env.get("REGROW_TLS_CERT") or None
        key = env.get("REGROW_TLS_KEY") or None
        require = env.get("REGROW_REQUIRE_ENCRYPTION", "").strip().lower() in {"1", "true", "yes"}
        return cls.for_files(role, ca=ca, cert=cert, key=key, require_encryption=require)

    @classmethod
    def for_files(
        cls,
        role: Role,
        *,
        ca: str | None,
        cert: str | None,
        key: str | None,
        require_encryption: bool = False,
    ) -> Security:
        """A process's security from its CLI flags (--tls-ca-file, --tls-cert, --tls-key)."""
        if ca is None and (cert is not None or key is not None):
            raise ValueError("--tls-cert and --tls-key need --tls-ca-file")
        if ca is not None and (cert is None or key is None):
            raise ValueError("--tls-ca-file needs --tls-cert and --tls-key (mutual TLS)")
        values: dict[str, object] = {
            "tls_ca_file": ca,
            f"tls_{role}_cert": cert,
            f"tls_{role}_key": key,
            "require_encryption": require_encryption,
        }
        return cls(**values)  # type: ignore[arg-type]

    @classmethod
    def temporary(cls, *, days: int = 30) -> Security:
        """A throwaway CA and one certificate for every role, made in memory (nothing
        is written to disk), with encryption required. For a LocalCluster, or a test."""
        ca_pem, cert_pem, key_pem = _temporary_material(days)
        return cls(
            tls_ca_file=ca_pem,
            tls_scheduler_cert=cert_pem,
            tls_scheduler_key=key_pem,
            tls_worker_cert=cert_pem,
            tls_worker_key=key_pem,
            tls_client_cert=cert_pem,
            tls_client_key=key_pem,
            require_encryption=True,
        )


def _read(value: str, what: str) -> str:
    if value.lstrip().startswith(_PEM):
        return value
    try:
        with open(value) as f:
            return f.read()
    except OSError as exc:
        raise ValueError(f"Security: cannot read {what} {value!r}: {exc.strerror}") from None


@contextlib.contextmanager
def _files(cert: str, key: str) -> Iterator[tuple[str, str]]:
    """``ssl`` loads certificate chains from files only: PEM text goes to files that only
    we can read, removed as soon as it is loaded."""
    with tempfile.TemporaryDirectory(prefix="regrow-tls-") as d:
        paths = []
        for name, text in (("cert.pem", cert), ("key.pem", key)):
            path = os.path.join(d, name)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(text)
            paths.append(path)
        yield paths[0], paths[1]


def _temporary_material(days: int) -> tuple[str, str, str]:
    """PEM text of a new CA, and of a certificate and key it signed (ECDSA P-256)."""
    try:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
    except ImportError:  # pragma: no cover - cryptography is a dependency
        raise RuntimeError("Security.temporary() needs the 'cryptography' package") from None
    now = datetime.datetime.now(datetime.UTC)
    start, end = now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=days)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "regrow temporary CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "regrow")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    key_pem = key.private_bytes(
        pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    return ca_cert.public_bytes(pem).decode(), cert.public_bytes(pem).decode(), key_pem
