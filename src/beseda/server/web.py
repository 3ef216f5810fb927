"""The web app's files as HTTP responses: caching, compression and security headers, sans I/O.

The built app (``beseda/web/static`` in the package, or ``--web-root``) is read once at start
and kept in memory, each compressible file also gzipped once, so a request costs a dictionary
look-up and no disk or CPU work:

- **Caching.** A file whose name carries a content hash (``app-3f9a1c2b.js``: a ``-`` or ``.``,
  then 8 or more of ``[A-Za-z0-9_]`` with at least one digit, then the extension) never changes:
  ``Cache-Control: public, max-age=31536000, immutable``. Every other file (``index.html``, the
  service worker, the manifest) is ``no-cache`` with a strong ``ETag``, so a browser revalidates
  it each time and gets ``304 Not Modified`` while it is unchanged.
- **Compression.** ``Content-Encoding: gzip`` when the client accepts it and it saves bytes,
  with ``Vary: Accept-Encoding`` and an ETag of its own.
- **Security headers** on every response (see :func:`security_headers`): a strict
  Content-Security-Policy with no inline script or style, ``connect-src`` allowing the
  WebSocket of the same origin only, ``frame-ancestors 'none'``, ``nosniff``, no referrer.

The transport parses requests and writes responses; this module only decides them.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import mimetypes
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Final

IMMUTABLE: Final = "public, max-age=31536000, immutable"
REVALIDATE: Final = "no-cache"
HASHED_NAME: Final = re.compile(r".+[.-](?=[A-Za-z0-9_]*[0-9])[A-Za-z0-9_]{8,}\.[A-Za-z0-9]+")
"""A content-hashed file name, whose content never changes: cached for a year."""
COMPRESSIBLE: Final = ("text/", "application/javascript", "application/json", "image/svg+xml")
TYPES: Final = {
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".html": "text/html; charset=utf-8",
    ".json": "application/json",
    ".webmanifest": "application/manifest+json",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
    ".woff2": "font/woff2",
    ".map": "application/json",
    ".txt": "text/plain; charset=utf-8",
}
MAX_FILES: Final = 2000
"""Files of the web root kept in memory, at most (a web app has a few dozen)."""
MAX_FILE_BYTES: Final = 16 * 1024 * 1024
"""Bytes of one file kept in memory, at most; larger files are not served."""
HOST: Final = re.compile(r"[A-Za-z0-9.-]+(:[0-9]{1,5})?|\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?")
"""A ``Host`` header that is a plain host name or address, and a port."""


def shipped_root() -> Path:
    """The web app built into the package."""
    return Path(str(resources.files("beseda") / "web" / "static"))


@dataclass(frozen=True, slots=True)
class HttpResponse:
    """What to answer: a status, headers and a body (empty for HEAD and 304)."""

    status: int
    reason: str
    headers: list[tuple[str, str]]
    body: bytes = b""


@dataclass(frozen=True, slots=True)
class StaticFile:
    """One file of the web app, in memory."""

    content_type: str
    body: bytes
    etag: str
    cache_control: str
    gzipped: bytes | None = None
    gzip_etag: str = ""


@dataclass(slots=True)
class StaticFiles:
    """The web app's files, by URL path (``/`` is ``/index.html``)."""

    files: dict[str, StaticFile] = field(default_factory=dict)

    @classmethod
    def load(cls, root: Path) -> StaticFiles:
        """Read every file under ``root`` (none if it does not exist)."""
        files: dict[str, StaticFile] = {}
        if root.is_dir():
            for path in sorted(root.rglob("*")):
                if not path.is_file() or path.name.startswith("."):
                    continue
                if len(files) >= MAX_FILES:
                    break
                if path.stat().st_size > MAX_FILE_BYTES:
                    continue
                relative = path.relative_to(root).as_posix()
                files["/" + relative] = _static_file(relative, path.read_bytes())
        return cls(files)

    def get(self, path: str) -> StaticFile | None:
        return self.files.get("/index.html" if path == "/" else path)


def _static_file(name: str, body: bytes) -> StaticFile:
    suffix = Path(name).suffix.lower()
    content_type = TYPES.get(suffix) or mimetypes.guess_type(name)[0] or "application/octet-stream"
    digest = hashlib.sha256(body).hexdigest()[:20]
    cache = IMMUTABLE if HASHED_NAME.fullmatch(Path(name).name) else REVALIDATE
    gzipped: bytes | None = None
    if content_type.startswith(COMPRESSIBLE) and len(body) > 256:
        packed = gzip.compress(body, compresslevel=9, mtime=0)
        if len(packed) < len(body) * 0.9:
            gzipped = packed
    return StaticFile(content_type, body, f'"{digest}"', cache, gzipped, f'"{digest}-gz"')


def security_headers(host: str | None, tls: bool) -> list[tuple[str, str]]:
    """The headers every response carries. ``connect-src`` names the WebSocket of the origin
    the browser asked (``Host``) besides ``'self'``, for browsers whose ``'self'`` does not
    cover ``ws:``/``wss:``."""
    connect = "'self'"
    if host is not None and HOST.fullmatch(host):
        connect += f" {'wss' if tls else 'ws'}://{host}"
    policy = "; ".join(
        (
            "default-src 'none'",
            "script-src 'self'",
            "style-src 'self'",
            "img-src 'self' data: blob:",
            "font-src 'self'",
            f"connect-src {connect}",
            "manifest-src 'self'",
            "worker-src 'self'",
            "base-uri 'none'",
            "form-action 'none'",
            "frame-ancestors 'none'",
            "object-src 'none'",
        )
    )
    return [
        ("Content-Security-Policy", policy),
        ("X-Content-Type-Options", "nosniff"),
        ("Referrer-Policy", "no-referrer"),
        ("X-Frame-Options", "DENY"),
        ("Cross-Origin-Opener-Policy", "same-origin"),
        ("Cross-Origin-Resource-Policy", "same-origin"),
        ("Permissions-Policy", "camera=(), microphone=(), geolocation=(), payment=()"),
    ]


def accepts_gzip(accept_encoding: str | None) -> bool:
    """Whether ``Accept-Encoding`` allows gzip (``gzip;q=0`` refuses it)."""
    if not accept_encoding:
        return False
    for part in accept_encoding.split(","):
        coding, *params = (item.strip() for item in part.split(";"))
        if coding.lower() not in ("gzip", "*"):
            continue
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    return float(value) > 0
                except ValueError:
                    return False
        return True
    return False


def _matches(if_none_match: str | None, etag: str) -> bool:
    if not if_none_match:
        return False
    if if_none_match.strip() == "*":
        return True
    tags = {tag.strip().removeprefix("W/") for tag in if_none_match.split(",")}
    return etag in tags


def file_response(
    files: StaticFiles,
    method: str,
    path: str,
    *,
    if_none_match: str | None,
    accept_encoding: str | None,
    base: list[tuple[str, str]],
) -> HttpResponse:
    """The response to a GET or HEAD of ``path``, with ``base`` headers added."""
    static = files.get(path.partition("?")[0])
    if static is None:
        return text_response(404, "Not Found", "Not found.\n", base)
    use_gzip = static.gzipped is not None and accepts_gzip(accept_encoding)
    etag = static.gzip_etag if use_gzip else static.etag
    headers = [
        *base,
        ("Cache-Control", static.cache_control),
        ("ETag", etag),
    ]
    if static.gzipped is not None:
        headers.append(("Vary", "Accept-Encoding"))
    if _matches(if_none_match, etag):
        return HttpResponse(304, "Not Modified", headers)
    body = static.gzipped if use_gzip and static.gzipped is not None else static.body
    headers.append(("Content-Type", static.content_type))
    if use_gzip:
        headers.append(("Content-Encoding", "gzip"))
    headers.append(("Content-Length", str(len(body))))
    return HttpResponse(200, "OK", headers, b"" if method == "HEAD" else body)


def text_response(
    status: int, reason: str, text: str, base: list[tuple[str, str]], *, head: bool = False
) -> HttpResponse:
    body = text.encode()
    headers = [
        *base,
        ("Cache-Control", "no-store"),
        ("Content-Type", "text/plain; charset=utf-8"),
        ("Content-Length", str(len(body))),
    ]
    return HttpResponse(status, reason, headers, b"" if head else body)


def json_response(
    data: dict[str, object], base: list[tuple[str, str]], *, head: bool = False
) -> HttpResponse:
    body = json.dumps(data, separators=(",", ":")).encode()
    headers = [
        *base,
        ("Cache-Control", "no-store"),
        ("Content-Type", "application/json"),
        ("Content-Length", str(len(body))),
    ]
    return HttpResponse(200, "OK", headers, b"" if head else body)
