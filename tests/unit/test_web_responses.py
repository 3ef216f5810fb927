"""The web app's responses, decided without a socket: names that are cached for good,
compression a client accepts, conditional requests, and the headers every answer carries."""

from __future__ import annotations

from pathlib import Path

import pytest

from beseda.server import web


@pytest.mark.parametrize(
    ("name", "immutable"),
    [
        ("app-3f9a1c2b.js", True),
        ("index-B2x9kQ1a.css", True),
        ("app.3f9a1c2b.js", True),
        ("chunk-a1b2c3d4e5f6.mjs", True),
        ("index.html", False),
        ("sw.js", False),
        ("manifest.webmanifest", False),
        ("index-register.js", False),  # a word, not a hash: no digit
        ("icon-192.png", False),  # too short for a hash
        ("app-3f9a1c2b", False),  # no extension
    ],
)
def test_only_content_hashed_names_are_cached_for_good(name: str, immutable: bool) -> None:
    static = web._static_file(name, b"x")
    assert (static.cache_control == web.IMMUTABLE) is immutable


@pytest.mark.parametrize(
    ("header", "accepted"),
    [
        (None, False),
        ("", False),
        ("gzip", True),
        ("br, gzip;q=0.5", True),
        ("gzip;q=0", False),
        ("gzip; q=0.0", False),
        ("*", True),
        ("identity", False),
        ("GZIP", True),
        ("gzip;q=x", False),
    ],
)
def test_gzip_is_used_only_when_the_client_accepts_it(header: str | None, accepted: bool) -> None:
    assert web.accepts_gzip(header) is accepted


def test_files_are_read_once_and_small_or_binary_ones_are_not_gzipped(tmp_path: Path) -> None:
    (tmp_path / "assets").mkdir()
    (tmp_path / "index.html").write_text("<!doctype html>" + "<p>beseda</p>" * 100)
    (tmp_path / "assets" / "tiny.css").write_text("p{}")
    (tmp_path / "logo.png").write_bytes(bytes(2000))
    (tmp_path / ".hidden").write_text("secret")
    files = web.StaticFiles.load(tmp_path)
    assert set(files.files) == {"/index.html", "/assets/tiny.css", "/logo.png"}
    assert files.get("/") is files.get("/index.html")
    index = files.get("/")
    assert index is not None
    assert index.gzipped is not None
    assert index.etag != index.gzip_etag
    assert files.files["/assets/tiny.css"].gzipped is None  # too small to gain
    assert files.files["/logo.png"].gzipped is None  # not text
    assert web.StaticFiles.load(tmp_path / "missing").files == {}


def test_a_conditional_request_for_an_unchanged_file_is_304(tmp_path: Path) -> None:
    (tmp_path / "index.html").write_text("<p>beseda</p>" * 100)
    files = web.StaticFiles.load(tmp_path)
    first = web.file_response(files, "GET", "/", if_none_match=None, accept_encoding=None, base=[])
    etag = dict(first.headers)["ETag"]
    for tags in (etag, f'"other", {etag}', f"W/{etag}", "*"):
        again = web.file_response(
            files, "GET", "/?v=2", if_none_match=tags, accept_encoding=None, base=[]
        )
        assert (again.status, again.body) == (304, b""), tags
    other = web.file_response(
        files, "GET", "/", if_none_match=etag, accept_encoding="gzip", base=[]
    )
    assert other.status == 200  # the gzipped representation has its own tag


def test_connect_src_names_a_plain_host_only() -> None:
    def policy(host: str | None, tls: bool = False) -> str:
        return dict(web.security_headers(host, tls))["Content-Security-Policy"]

    assert "connect-src 'self' ws://chat.example.org:7879;" in policy("chat.example.org:7879")
    assert "connect-src 'self' wss://[::1]:7879;" in policy("[::1]:7879", tls=True)
    for hostile in ("evil.example; script-src *", "a b", "x'y", None):
        assert "connect-src 'self';" in policy(hostile)
