"""The HTTP port serves the web app: caching, compression, security headers, health — as a
browser sees them, over real loopback sockets (and TLS)."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import socket
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from websocket_client import WebSocketPeer

from beseda.server.accounts import PasswordHasher
from beseda.server.app import Server, StartupError
from beseda.server.web import shipped_root
from conftest import TIMEOUT_FACTOR, test_settings

INDEX = b'<!doctype html><title>beseda</title><script src="/assets/app-3f9a1c2b.js"></script>'
SCRIPT = b"console.log('beseda');\n" * 200


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes


async def fetch(
    port: int,
    path: str,
    *,
    method: str = "GET",
    headers: dict[str, str] | None = None,
    tls: ssl.SSLContext | None = None,
    raw: bytes | None = None,
) -> Reply:
    """One HTTP/1.1 request, its response read to the end (the server closes)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=tls)
    try:
        lines = [f"{method} {path} HTTP/1.1", f"Host: 127.0.0.1:{port}"]
        lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
        writer.write(raw if raw is not None else ("\r\n".join(lines) + "\r\n\r\n").encode())
        data = await asyncio.wait_for(reader.read(), 10 * TIMEOUT_FACTOR)
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            await writer.wait_closed()
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode().split("\r\n")
    fields = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        fields[name.strip().lower()] = value.strip()
    return Reply(int(status_line.split()[1]), fields, body)


@pytest.fixture
def web_root(tmp_path: Path) -> Path:
    root = tmp_path / "web"
    (root / "assets").mkdir(parents=True)
    (root / "index.html").write_bytes(INDEX)
    (root / "assets" / "app-3f9a1c2b.js").write_bytes(SCRIPT)
    (root / "sw.js").write_bytes(b"self.addEventListener('fetch', () => {});\n")
    (root / "icon.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(500))
    return root


@pytest.fixture
async def web_server(
    tmp_path: Path, web_root: Path, hasher: PasswordHasher
) -> AsyncIterator[Server]:
    settings = replace(test_settings(tmp_path), web_root=web_root)
    async with Server(settings, hasher=hasher) as server:
        yield server


def port_of(server: Server) -> int:
    assert server.http_port is not None
    return server.http_port


async def test_index_is_served_at_the_root_with_security_headers(web_server: Server) -> None:
    reply = await fetch(port_of(web_server), "/")
    assert reply.status == 200
    assert reply.body == INDEX
    assert reply.headers["content-type"] == "text/html; charset=utf-8"
    policy = reply.headers["content-security-policy"]
    directives = dict(d.strip().split(" ", 1) for d in policy.split(";"))
    assert directives["default-src"] == "'none'"
    assert directives["script-src"] == "'self'"  # no inline script, no eval
    assert directives["style-src"] == "'self'"
    assert directives["frame-ancestors"] == "'none'"
    assert directives["connect-src"] == f"'self' ws://127.0.0.1:{port_of(web_server)}"
    assert "unsafe-inline" not in policy
    assert "unsafe-eval" not in policy
    assert reply.headers["x-content-type-options"] == "nosniff"
    assert reply.headers["referrer-policy"] == "no-referrer"
    assert reply.headers["x-frame-options"] == "DENY"
    assert "strict-transport-security" not in reply.headers  # not without TLS


async def test_index_is_revalidated_by_etag(web_server: Server) -> None:
    port = port_of(web_server)
    first = await fetch(port, "/index.html")
    assert first.headers["cache-control"] == "no-cache"
    etag = first.headers["etag"]
    again = await fetch(port, "/", headers={"If-None-Match": etag})
    assert again.status == 304
    assert again.body == b""
    assert again.headers["etag"] == etag
    changed = await fetch(port, "/", headers={"If-None-Match": '"something-else"'})
    assert changed.status == 200


async def test_hashed_assets_are_immutable_and_others_revalidate(web_server: Server) -> None:
    port = port_of(web_server)
    asset = await fetch(port, "/assets/app-3f9a1c2b.js")
    assert asset.status == 200
    assert asset.headers["cache-control"] == "public, max-age=31536000, immutable"
    assert asset.headers["content-type"] == "text/javascript; charset=utf-8"
    for path in ("/sw.js", "/icon.png"):
        reply = await fetch(port, path)
        assert reply.status == 200
        assert reply.headers["cache-control"] == "no-cache", path


async def test_text_is_gzipped_for_clients_that_accept_it(web_server: Server) -> None:
    port = port_of(web_server)
    packed = await fetch(port, "/assets/app-3f9a1c2b.js", headers={"Accept-Encoding": "gzip, br"})
    assert packed.headers["content-encoding"] == "gzip"
    assert packed.headers["vary"] == "Accept-Encoding"
    assert int(packed.headers["content-length"]) == len(packed.body) < len(SCRIPT) / 5
    assert gzip.decompress(packed.body) == SCRIPT
    plain = await fetch(port, "/assets/app-3f9a1c2b.js")
    assert "content-encoding" not in plain.headers
    assert plain.body == SCRIPT
    assert plain.headers["etag"] != packed.headers["etag"]  # two representations
    refused = await fetch(port, "/assets/app-3f9a1c2b.js", headers={"Accept-Encoding": "gzip;q=0"})
    assert "content-encoding" not in refused.headers
    image = await fetch(port, "/icon.png", headers={"Accept-Encoding": "gzip"})
    assert "content-encoding" not in image.headers  # already compressed


async def test_head_404_405_and_a_missing_request(
    tmp_path: Path, web_root: Path, hasher: PasswordHasher
) -> None:
    settings = replace(test_settings(tmp_path, auth_timeout=0.3), web_root=web_root)
    async with Server(settings, hasher=hasher) as server:
        port = port_of(server)
        head = await fetch(port, "/", method="HEAD")
        assert head.status == 200
        assert head.body == b""
        assert int(head.headers["content-length"]) == len(INDEX)
        missing = await fetch(port, "/nothing-here.js")
        assert missing.status == 404
        assert "content-security-policy" in missing.headers
        escape = await fetch(port, "/../beseda.db")
        assert escape.status == 404
        post = await fetch(port, "/", method="POST", headers={"Content-Length": "0"})
        assert post.status == 405
        assert post.headers["allow"] == "GET, HEAD"
        # A connection that sends no request is answered 408 and closed (auth_timeout).
        silent = await fetch(port, "/", raw=b"")
        assert silent.status == 408


async def test_health_answers_json(web_server: Server) -> None:
    reply = await fetch(port_of(web_server), "/health")
    assert reply.status == 200
    assert reply.headers["content-type"] == "application/json"
    assert reply.headers["cache-control"] == "no-store"
    health = json.loads(reply.body)
    assert health["status"] == "ok"
    assert health["server"].startswith("beseda ")
    assert isinstance(health["protocol"], int)


async def test_the_package_ships_an_index(server: Server) -> None:
    assert (shipped_root() / "index.html").is_file()
    reply = await fetch(port_of(server), "/")
    assert reply.status == 200
    assert reply.body == (shipped_root() / "index.html").read_bytes()


async def test_https_with_tls_auto_and_hsts_only_with_an_operators_certificate(
    tmp_path: Path, web_root: Path, hasher: PasswordHasher
) -> None:
    settings = replace(test_settings(tmp_path), web_root=web_root, tls_auto=True)
    context = ssl.create_default_context(cafile=None)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # the fingerprint is checked instead
    async with Server(settings, hasher=hasher) as server:
        reply = await fetch(port_of(server), "/", tls=context)
        assert reply.status == 200
        assert reply.body == INDEX
        policy = reply.headers["content-security-policy"]
        assert f"connect-src 'self' wss://127.0.0.1:{port_of(server)}" in policy
        # Self-signed: a person must stay able to choose to trust it, so no HSTS.
        assert "strict-transport-security" not in reply.headers
    cert, key = tmp_path / "tls-cert.pem", tmp_path / "tls-key.pem"
    settings = replace(test_settings(tmp_path), web_root=web_root, tls_cert=cert, tls_key=key)
    async with Server(settings, hasher=hasher) as server:
        reply = await fetch(port_of(server), "/health", tls=context)
        assert reply.status == 200
        assert reply.headers["strict-transport-security"] == "max-age=31536000"


async def test_http_port_off_serves_tcp_only(tmp_path: Path, hasher: PasswordHasher) -> None:
    settings = replace(test_settings(tmp_path), http_port=None)
    async with Server(settings, hasher=hasher) as server:
        assert server.http is None
        assert server.http_port is None
        assert server.port > 0


async def test_a_taken_http_port_is_a_clear_startup_error(
    tmp_path: Path, hasher: PasswordHasher
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = Server(replace(test_settings(tmp_path), http_port=port), hasher=hasher)
        with pytest.raises(StartupError, match=rf"127\.0\.0\.1:{port} \(--http-port\)"):
            await server.start()
        await server.stop()


async def test_a_web_root_without_an_index_still_serves_health_and_websocket(
    tmp_path: Path, hasher: PasswordHasher
) -> None:
    settings = replace(test_settings(tmp_path), web_root=tmp_path / "nowhere")
    async with Server(settings, hasher=hasher) as server:
        assert (await fetch(port_of(server), "/")).status == 404
        assert (await fetch(port_of(server), "/health")).status == 200
        peer = await WebSocketPeer.open(port_of(server))
        await peer.close()
