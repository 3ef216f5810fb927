"""TLS: self-signed certificates made on first start, pinning, refusal of a changed one."""

from __future__ import annotations

import asyncio
import ssl
import stat
from dataclasses import replace
from pathlib import Path

import pytest

from beseda import tls
from beseda.client import Client, ConnectionState, StateChanged
from beseda.server.accounts import PasswordHasher
from beseda.server.app import Server, StartupError
from conftest import free_port, test_settings


async def tls_server(tmp_path: Path, hasher: PasswordHasher, port: int = 0) -> Server:
    settings = replace(test_settings(tmp_path), tls_auto=True, port=port)
    server = Server(settings, hasher=hasher)
    await server.start()
    return server


@pytest.mark.sqlite_only  # the certificate is made beside the SQLite file
async def test_auto_certificate_is_made_once_and_pinned(
    tmp_path: Path, hasher: PasswordHasher
) -> None:
    server = await tls_server(tmp_path, hasher)
    try:
        cert, key = tmp_path / "tls-cert.pem", tmp_path / "tls-key.pem"
        assert cert.exists()
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
        assert server.fingerprint == tls.file_fingerprint(cert)
        seen = await asyncio.to_thread(tls.fetch_fingerprint, "127.0.0.1", server.port)
        assert seen == server.fingerprint

        async with Client("127.0.0.1", server.port, fingerprint=seen) as client:
            await client.register("alice", "password123")
            message = await client.send("over TLS")
            assert message.seq == 1
            ssl_object = client._writer.get_extra_info("ssl_object")  # type: ignore[union-attr]
            assert ssl_object.version() in ("TLSv1.2", "TLSv1.3")
    finally:
        await server.stop()
    # A restart keeps the same certificate: users' pins stay valid.
    server = await tls_server(tmp_path, hasher)
    try:
        assert server.fingerprint == seen
    finally:
        await server.stop()


async def test_wrong_fingerprint_and_unverifiable_certificate_are_refused(
    tmp_path: Path, hasher: PasswordHasher
) -> None:
    server = await tls_server(tmp_path, hasher)
    try:
        impostor = "SHA256:" + ":".join(["00"] * 32)
        with pytest.raises(tls.CertificateChangedError) as refused:
            await Client("127.0.0.1", server.port, fingerprint=impostor).connect()
        # What a program needs is in attributes, not in the wording.
        assert refused.value.address == f"127.0.0.1:{server.port}"
        assert refused.value.expected == impostor
        assert refused.value.fingerprint == server.fingerprint
        # Normal verification does not accept a self-signed certificate.
        with pytest.raises(ssl.SSLCertVerificationError):
            await Client("127.0.0.1", server.port, tls=True).connect()
        # A plaintext client gets no hello from a TLS server.
        with pytest.raises((OSError, ConnectionError, asyncio.IncompleteReadError, ValueError)):
            await Client("127.0.0.1", server.port, connect_timeout=2).connect()
    finally:
        await server.stop()


@pytest.mark.sqlite_only  # the certificate is made beside the SQLite file
async def test_client_stops_when_the_certificate_changes_on_reconnect(
    tmp_path: Path, hasher: PasswordHasher
) -> None:
    port = free_port()
    server = await tls_server(tmp_path, hasher, port)
    old = server.fingerprint
    client = Client("127.0.0.1", port, fingerprint=old, min_backoff=0.05)
    await client.connect()
    await client.register("alice", "password123")
    await server.stop()
    (tmp_path / "tls-cert.pem").unlink()
    (tmp_path / "tls-key.pem").unlink()
    server = await tls_server(tmp_path, hasher, port)
    try:
        while True:
            event = await client.next_event(timeout=10)
            if isinstance(event, StateChanged) and event.state is ConnectionState.OFFLINE:
                break
        assert isinstance(event.error, tls.CertificateChangedError)
        assert event.error.expected == old
        assert event.error.fingerprint == server.fingerprint != old
        assert client.state is ConnectionState.OFFLINE
    finally:
        await client.close()
        await server.stop()


async def test_plaintext_beyond_loopback_needs_an_explicit_flag(
    tmp_path: Path, hasher: PasswordHasher
) -> None:
    settings = replace(test_settings(tmp_path), host="0.0.0.0")
    with pytest.raises(StartupError, match="without TLS"):
        await Server(settings, hasher=hasher).start()


def test_pin_store_is_private_and_round_trips(tmp_path: Path) -> None:
    store = tls.PinStore(tmp_path / "config" / "trusted.json")
    assert store.get("example:7878") is None
    store.trust("example:7878", "SHA256:AA")
    assert store.get("example:7878") == "SHA256:AA"
    assert stat.S_IMODE(store.path.stat().st_mode) == 0o600
    store.forget("example:7878")
    assert store.get("example:7878") is None
