"""What a message's text and time look like on screen."""

from __future__ import annotations

import re
import time

# C0 and C1 controls (but newline and tab), DEL, the bidirectional embeddings, overrides,
# isolates and marks, line and paragraph separators, and invisible characters that could
# hide or reorder what a reader sees.
_HIDDEN = re.compile(
    "[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200b\u200e\u200f\u2028-\u202e\u2060-\u2069\ufeff"
    "\ufff9-\ufffb]"
)


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def sanitize(text: str) -> str:
    """``text`` with every control or direction-changing character shown as its escape.

    A right-to-left override (U+202E) could make ``exe.txt`` read as ``txt.exe``; a stray
    carriage return could hide what precedes it. Shown as ``\\u202e`` they hide nothing.
    """
    return _HIDDEN.sub(_escape, text)


def sanitize_name(name: str) -> str:
    """A name on one line: like :func:`sanitize`, newlines and tabs escaped too."""
    return sanitize(name).replace("\n", "\\n").replace("\t", "\\t")


def format_time(ts_ms: int, now: float | None = None) -> str:
    """Local time of a message: ``14:05`` today, ``2024-03-12 14:05`` before."""
    moment = time.localtime(ts_ms / 1000)
    today = time.localtime(time.time() if now is None else now)
    if moment[:3] == today[:3]:
        return time.strftime("%H:%M", moment)
    return time.strftime("%Y-%m-%d %H:%M", moment)
