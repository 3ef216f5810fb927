"""What a message's text and time look like on screen."""

from __future__ import annotations

import datetime
import re
import time
import zlib
from collections.abc import Iterable

from .i18n import _

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


def clock_time(ts_ms: int) -> str:
    """``14:05``, local: the date is on the day's separator line above."""
    return time.strftime("%H:%M", time.localtime(ts_ms / 1000))


def local_day(ts_ms: int) -> tuple[int, int, int]:
    """The local calendar day of a moment: (year, month, day)."""
    moment = time.localtime(ts_ms / 1000)
    return moment.tm_year, moment.tm_mon, moment.tm_mday


def day_bounds(day: tuple[int, int, int]) -> tuple[int, int]:
    """The local day's first and last-plus-one moment, in ms (daylight saving included)."""
    after = _date(day) + datetime.timedelta(days=1)
    start = time.mktime((*day, 0, 0, 0, 0, 0, -1))
    end = time.mktime((after.year, after.month, after.day, 0, 0, 0, 0, 0, -1))
    return int(start * 1000), int(end * 1000)


def _days_between(day: tuple[int, int, int], today: tuple[int, int, int]) -> int:
    return (_date(today) - _date(day)).days


def _date(day: tuple[int, int, int]) -> datetime.date:
    return datetime.date(*day)


def _months() -> tuple[str, ...]:
    # In a date ("12 марта"): a translator gives the form a day number takes.
    return (
        _("January"),
        _("February"),
        _("March"),
        _("April"),
        _("May"),
        _("June"),
        _("July"),
        _("August"),
        _("September"),
        _("October"),
        _("November"),
        _("December"),
    )


def _short_months() -> tuple[str, ...]:
    return (
        _("Jan"),
        _("Feb"),
        _("Mar"),
        _("Apr"),
        _("May"),  # the same in both lists, in English and in Russian
        _("Jun"),
        _("Jul"),
        _("Aug"),
        _("Sep"),
        _("Oct"),
        _("Nov"),
        _("Dec"),
    )


def day_label(day: tuple[int, int, int], now: float | None = None) -> str:
    """The separator line above a day's first message: Today, Yesterday, March 12, or
    March 12, 2024 before this year."""
    today = local_day(int((time.time() if now is None else now) * 1000))
    between = _days_between(day, today)
    if between == 0:
        return _("Today")
    if between == 1:
        return _("Yesterday")
    month = _months()[day[1] - 1]
    if day[0] == today[0]:
        return _("{month} {day}").format(month=month, day=day[2])
    return _("{month} {day}, {year}").format(month=month, day=day[2], year=day[0])


def list_time(ts_ms: int, now: float | None = None) -> str:
    """When a conversation's last message came, for the conversation list: 14:05 today,
    Yesterday, Mar 12, or 12.03.2024 before this year."""
    day = local_day(ts_ms)
    today = local_day(int((time.time() if now is None else now) * 1000))
    between = _days_between(day, today)
    if between <= 0:
        return clock_time(ts_ms)
    if between == 1:
        return _("Yesterday")
    if day[0] == today[0]:
        return _("{month} {day}").format(month=_short_months()[day[1] - 1], day=day[2])
    return f"{day[2]:02d}.{day[1]:02d}.{day[0]}"


PREVIEW_CHARS = 60
"""The most of a message's text the conversation list shows (the row clips the rest)."""


def preview(text: str) -> str:
    """A message's text on one short line, for the conversation list."""
    line = " ".join(sanitize(text).split())
    return line if len(line) <= PREVIEW_CHARS else line[: PREVIEW_CHARS - 1] + "…"


_NAME_PARTS = re.compile(r"[^\W\d_]+")


def initials(name: str) -> str:
    """The letters of a person's avatar: ``anna`` → ``A``, ``ivan_petrov`` → ``IP``."""
    parts = _NAME_PARTS.findall(name)
    if not parts:
        return (name[:1] or "?").upper()
    return "".join(part[0] for part in parts[:2]).upper()


AVATAR_COLOURS = 8
"""How many colours avatars and names come in (the palette's ``people``)."""


def colour_of(name: str) -> int:
    """The colour (an index into the palette's people colours) of a person, the same on
    every screen and every run: a hash of the case-folded name."""
    return zlib.crc32(name.casefold().encode()) % AVATAR_COLOURS


_LINK = re.compile(r"(?:https?://|www\.)[^\s<>\"'`]+", re.IGNORECASE)
_TRAILING = ".,;:!?'\")]}»…"


def find_links(text: str) -> list[tuple[int, int]]:
    """Where the web addresses of ``text`` are: (start, end) character offsets.

    Trailing punctuation ends a sentence, not an address ("see https://a.org/x."); a closing
    parenthesis stays when the address opened one (Wikipedia's ``Tk_(software)``).
    """
    links = []
    for match in _LINK.finditer(text):
        start, end = match.span()
        while end > start and text[end - 1] in _TRAILING:
            if text[end - 1] == ")" and text.count("(", start, end) >= text.count(")", start, end):
                break
            end -= 1
        if end - start > len("www."):
            links.append((start, end))
    return links


def link_target(shown: str) -> str | None:
    """The address a link's shown text opens, or None if it is not a web address."""
    if shown.lower().startswith("www."):
        shown = "http://" + shown
    if not re.match(r"https?://[^\s/]", shown, re.IGNORECASE):
        return None
    return shown


def sanitize_spans(
    text: str, spans: Iterable[tuple[int, int]]
) -> tuple[str, tuple[tuple[int, int], ...]]:
    """:func:`sanitize` ``text``, moving the ``[start, end)`` spans (a search hit's matches)
    along with the escapes that lengthen it."""
    pieces: list[str] = []
    moved: list[tuple[int, int]] = []
    at = length = 0
    for start, end in sorted(spans):
        start, end = max(start, at), min(end, len(text))
        if start >= end:
            continue
        before, inside = sanitize(text[at:start]), sanitize(text[start:end])
        pieces += [before, inside]
        length += len(before)
        moved.append((length, length + len(inside)))
        length += len(inside)
        at = end
    pieces.append(sanitize(text[at:]))
    return "".join(pieces), tuple(moved)
