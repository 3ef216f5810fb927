"""TLS for server and client: contexts, self-signed certificates, fingerprint pinning.

The server either loads an operator's certificate or, with ``--tls auto``, creates a
self-signed one on first start and keeps it beside the database. A client verifies a server's
certificate against the system's CAs, or pins a self-signed certificate's SHA-256 fingerprint on
first use, as SSH does with host keys, and refuses the server when the fingerprint changes.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import socket
import ssl
from pathlib import Path

from .protocol.errors import BesedaError

MINIMUM_VERSION = ssl.TLSVersion.TLSv1_2


class TLSError(BesedaError):
    """TLS could not be set up, or the server's certificate is not the one trusted."""


class CertificateChangedError(TLSError):
    """The server presented a certificate other than the pinned one.

    ``fingerprint`` is the presented certificate's (None when it presented none), so a
    program can show it or pin it without reading the message.
    """

    def __init__(self, address: str, expected: str, fingerprint: str | None) -> None:
        self.address = address
        self.expected = expected
        self.fingerprint = fingerprint
        super().__init__(
            f"The certificate of {address} has changed: it was {expected}, it is now "
            f"{fingerprint or 'no certificate'}. Someone may be intercepting the connection. "
            "If the server's certificate was replaced on purpose, remove the old fingerprint "
            "and trust the new one."
        )


# -- server side -------------------------------------------------------------------------------


def server_context(cert: Path, key: Path) -> ssl.SSLContext:
    """A server context for TLS 1.2 or newer with the given certificate chain and key."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = MINIMUM_VERSION
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise TLSError(f"Cannot load the TLS certificate {cert} and key {key}: {exc}") from exc
    return context


def ensure_self_signed(directory: Path, hostname: str) -> tuple[Path, Path]:
    """Create ``tls-cert.pem`` and ``tls-key.pem`` in ``directory`` unless they exist."""
    cert_path = directory / "tls-cert.pem"
    key_path = directory / "tls-key.pem"
    if cert_path.exists() and key_path.exists():
        return cert_path, key_path
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname or "beseda")])
    now = datetime.datetime.now(datetime.UTC)
    alt_names: list[x509.GeneralName] = [x509.DNSName("localhost")]
    if hostname and hostname not in ("localhost", "0.0.0.0", "::"):
        alt_names.append(x509.DNSName(hostname))
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    key_bytes = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    descriptor = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "wb") as file:
        file.write(key_bytes)
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    return cert_path, key_path


def certificate_fingerprint(der: bytes) -> str:
    """``SHA256:`` and the hex digest, colon-separated, of a DER certificate."""
    digest = hashlib.sha256(der).hexdigest().upper()
    return "SHA256:" + ":".join(digest[i : i + 2] for i in range(0, len(digest), 2))


def file_fingerprint(cert: Path) -> str:
    """The fingerprint of a PEM certificate file (what the operator tells users)."""
    return certificate_fingerprint(ssl.PEM_cert_to_DER_cert(cert.read_text()))


# -- client side -------------------------------------------------------------------------------


def verifying_context(cafile: Path | None = None) -> ssl.SSLContext:
    """Verify the server against the system's CAs (or ``cafile``) and its host name."""
    context = ssl.create_default_context(cafile=cafile)
    context.minimum_version = MINIMUM_VERSION
    return context


def pinning_context() -> ssl.SSLContext:
    """Encrypt without CA verification; the caller must check the peer's fingerprint."""
    context = ssl.create_default_context()
    context.minimum_version = MINIMUM_VERSION
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def fetch_fingerprint(host: str, port: int, timeout: float = 10.0) -> str:
    """Connect once and return the fingerprint of the certificate the server presents
    (blocking; to show a person before they decide to trust it)."""
    with (
        socket.create_connection((host, port), timeout=timeout) as raw,
        pinning_context().wrap_socket(raw, server_hostname=host) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    if der is None:
        raise TLSError(f"{host}:{port} presented no certificate.")
    return certificate_fingerprint(der)


class PinStore:
    """Trusted fingerprints by ``host:port``, in a JSON file readable by the user alone."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def _load(self) -> dict[str, str]:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise TLSError(f"Cannot read the trusted certificates in {self.path}: {exc}") from exc
        return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}

    def get(self, address: str) -> str | None:
        return self._load().get(address)

    def trust(self, address: str, fingerprint: str) -> None:
        pins = self._load()
        pins[address] = fingerprint
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_suffix(".tmp")
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w") as file:
            json.dump(pins, file, indent=1, sort_keys=True)
        temporary.replace(self.path)

    def forget(self, address: str) -> None:
        pins = self._load()
        if pins.pop(address, None) is not None:
            self.path.write_text(json.dumps(pins, indent=1, sort_keys=True))
