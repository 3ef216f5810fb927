"""Search text: folding, the indexed form of a message, queries and snippets (no I/O).

How a message is found (docs/architecture.md, "Search", says why and what it costs):

- Text is *folded* one character at a time: diacritics removed (``Zoë`` → ``zoe``, ``ё`` →
  ``е``; ``й`` stays a letter of its own), then case folded. Folding keeps a map back to the
  original characters, so a snippet highlights the text as written.
- The index holds each message as its folded words, one space between them and a space at
  each end (``" встреча в 10 "``), under SQLite FTS5's ``trigram`` tokenizer. Any run of
  three or more characters of that form can be looked up: a part of a word, the beginning of
  a word (a space, then the letters), a whole word (spaces on both sides), a phrase.
- A query word finds the messages that contain it as a part of a word (when it has at least
  :data:`~beseda.protocol.schema.MIN_SUBSTRING_CHARS` characters), or a word that begins with
  its Snowball stem (``встречу`` → stem ``встреч`` → ``встреча``, ``встречи``; ``meeting`` →
  ``meet`` → ``meetings``). A shorter word finds that whole word only. A quoted phrase finds
  those words, whole, one after another.
"""

from __future__ import annotations

import datetime
import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Final

import Stemmer

from ..protocol import errors, schema
from ..protocol.errors import ProtocolError

_WORD = re.compile(r"\w+")
_KEEP_MARK: Final = {("и", "\u0306"), ("И", "\u0306")}
"""Combining marks that make a letter of its own (й), kept when diacritics are removed."""


@lru_cache(maxsize=65_536)
def _fold_char(char: str) -> str:
    if char.isascii():
        return char.lower()
    decomposed = unicodedata.normalize("NFD", char)
    if len(decomposed) > 1 and (decomposed[0], decomposed[1]) in _KEEP_MARK:
        return "й"
    base = "".join(c for c in decomposed if not unicodedata.combining(c))
    if base != decomposed:
        base = unicodedata.normalize("NFKC", base)
    else:
        base = unicodedata.normalize("NFKC", char)
    return base.casefold()


class _TranslateTable(dict[int, str]):
    """A ``str.translate`` table computed at each code point's first use, so that
    translating runs in C: :func:`fold` (a Russian chat line's body in 10 µs instead of 15)
    and :func:`folded_words`. Kept for the alphabets below U+3000 only, so that it stays
    small (at most 12,288 entries) whatever text arrives; other characters go through
    ``_fold_char``'s own cache each time."""

    def __init__(self, form: Callable[[str], str]) -> None:
        super().__init__()
        self._form = form

    def __missing__(self, code: int) -> str:
        formed = self._form(chr(code))
        if code < 0x3000:
            self[code] = formed
        return formed


_FOLD_TABLE: Final = _TranslateTable(_fold_char)


def fold(text: str) -> str:
    """``text`` without diacritics and case (``"Zoë Ёлка"`` → ``"zoe елка"``)."""
    if text.isascii():
        return text.lower()
    return text.translate(_FOLD_TABLE)


def _word_chars(char: str) -> str:
    """``char`` folded, with every character that is not a word character (``\\w``:
    alphanumeric or ``_``) a space: ``text.translate`` of this, split, is
    ``re.findall(r"\\w+", fold(text))``, in C (a chat line's words in 1 µs instead of 4)."""
    return "".join(c if c.isalnum() or c == "_" else " " for c in _fold_char(char))


_WORDS_TABLE: Final = _TranslateTable(_word_chars)


_NOT_PLAIN: Final = re.compile("[^\x00-\x7f\u0430-\u044f]")
"""After ``str.lower``, a character that folding may change further: ASCII and the Russian
alphabet's lower case letters (but ``ё``) fold to themselves."""


def folded_words(text: str) -> list[str]:
    """The words of ``fold(text)`` (runs of word characters), in order."""
    lowered = text.lower()
    if _NOT_PLAIN.search(lowered) is None:
        # Most chat lines: lower case is the whole fold (in C, 2.7 µs a line instead of 3.8).
        return _WORD.findall(lowered)
    return text.translate(_WORDS_TABLE).split()


def fold_mapped(text: str) -> tuple[str, list[int]]:
    """``fold(text)`` and, for each folded character, the index of the original one."""
    folded: list[str] = []
    origin: list[int] = []
    for index, char in enumerate(text):
        piece = _fold_char(char)
        folded.append(piece)
        origin.extend([index] * len(piece))
    return "".join(folded), origin


def search_body(text: str, sender: int | None = None, conversation: str | None = None) -> str:
    """The form of a message that the index holds: its folded words, space separated, with
    a space at each end; then the marks of its sender and conversation (:func:`sender_mark`,
    :func:`conversation_mark`), which no query word can match, so that ``from:`` and ``in:``
    are looked up in the index with the words instead of checked one match at a time."""
    words = folded_words(text)
    body = " " + " ".join(words) + " " if words else ""
    if sender is not None:
        body += sender_mark(sender)
    if conversation is not None:
        body += conversation_mark(conversation)
    return body


_MARK_BASE: Final = 0xF0000
"""The first code point of Supplementary Private Use Area-A, the alphabet of the marks."""


def _mark(start: str, value: str, end: str) -> str:
    """``value`` (an id) as UTF-8 packed two bytes to a character of a private use area,
    between the control characters ``start`` and ``end``. No folded query word holds a
    control or a private use character (neither is a word character), so no word or part of
    a word (``general``, ``123``) matches a mark; the distinct ends keep one mark from
    matching inside another (sender 12 in sender 123). Packed, a mark is a few characters
    (``dm:12:345``: 7 instead of 20 with a control character before each), and the index
    holds fewer trigrams per message (schema 6)."""
    data = value.encode()
    if len(data) % 2:
        data += b"\x00"  # (no id holds NUL, so "1" and "1\x00" cannot both be ids)
    # (The last two code points of the area, U+FFFFE and U+FFFFF, would take a byte 0xFF,
    # which UTF-8 never has.)
    packed = "".join(chr(_MARK_BASE + data[i] * 256 + data[i + 1]) for i in range(0, len(data), 2))
    return start + packed + end


@lru_cache(maxsize=4096)
def sender_mark(sender: int) -> str:
    """The index's mark of the messages of one sender (by user id)."""
    return _mark("\x02", str(sender), "\x03")


@lru_cache(maxsize=4096)
def conversation_mark(conversation: str) -> str:
    """The index's mark of the messages of one conversation (by id)."""
    return _mark("\x04", conversation, "\x05")


def fts_phrase(text: str) -> str:
    """``text`` as one FTS5 phrase (quotes doubled)."""
    return '"' + text.replace('"', '""') + '"'


_STEMMERS: Final = {
    "cyrillic": Stemmer.Stemmer("russian"),
    "latin": Stemmer.Stemmer("english"),
}


def stem(word: str) -> str:
    """The Snowball stem of a folded word (Russian for Cyrillic words, English for Latin
    ones; other scripts as they are)."""
    if re.fullmatch(r"[a-z]+", word):
        result: str = _STEMMERS["latin"].stemWord(word)
        return result
    if re.fullmatch(r"[а-яй]+", word):
        result = _STEMMERS["cyrillic"].stemWord(word)
        return result
    return word


# ---------------------------------------------------------------------------------------------
# Queries
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Term:
    """One word or phrase of a query, folded."""

    words: tuple[str, ...]
    phrase: bool = False

    def fts(self) -> str:
        """This term as an FTS5 expression over the trigram index."""
        if self.phrase or len(self.words[0]) < schema.MIN_SUBSTRING_CHARS:
            return '" ' + " ".join(self.words) + ' "'
        (word,) = self.words
        beginnings = _beginnings(word)
        if not beginnings:
            return f'"{word}"'
        return "(" + " OR ".join([f'"{word}"', *(f'" {b}"' for b in beginnings)]) + ")"

    def patterns(self) -> list[re.Pattern[str]]:
        """Regular expressions over folded text that find what this term matches."""
        if self.phrase or len(self.words[0]) < schema.MIN_SUBSTRING_CHARS:
            body = r"\W+".join(re.escape(w) for w in self.words)
            return [re.compile(rf"(?<!\w){body}(?!\w)")]
        (word,) = self.words
        found = [re.compile(re.escape(word))]
        for beginning in _beginnings(word):
            found.append(re.compile(rf"(?<!\w){re.escape(beginning)}\w*"))
        return found


def _beginnings(word: str) -> list[str]:
    """How the words that are forms of ``word`` begin, besides containing it: its stem, and
    for an English stem that Snowball ends in ``i`` (``happiness`` → ``happi``) the ``y``
    form it came from (``happy``)."""
    stemmed = stem(word)
    if stemmed == word or len(stemmed) < 2:
        return []
    found = [stemmed]
    if stemmed.endswith("i") and stemmed.isascii():
        found.append(stemmed[:-1] + "y")
    return found


@dataclass(slots=True)
class Query:
    """A parsed ``search`` query: terms to match, and the filters as written."""

    terms: list[Term] = field(default_factory=list)
    senders: list[str] = field(default_factory=list)
    """``from:`` names, as written."""
    conversations: list[str] = field(default_factory=list)
    """``in:`` values, as written."""
    before: int | None = None
    """Messages stored before this time (ms since the epoch), from ``before:``."""
    after: int | None = None
    """Messages stored at or after this time, from ``after:``."""

    def fts(self) -> str | None:
        """The FTS5 MATCH expression of the terms (all must match), or None without any."""
        if not self.terms:
            return None
        return " AND ".join(term.fts() for term in self.terms)


_TOKEN = re.compile(
    r'(?P<key>from|in|before|after):(?P<value>"[^"]*"?|\S*)|"(?P<phrase>[^"]*)"?|(?P<word>\S+)'
)


def _day(value: str, key: str) -> int:
    try:
        day = datetime.date.fromisoformat(value)
    except ValueError:
        raise ProtocolError(
            errors.BAD_QUERY, f"{key}: takes a date as YYYY-MM-DD, not {value[:32]!r}."
        ) from None
    start = datetime.datetime(day.year, day.month, day.day, tzinfo=datetime.UTC)
    return int(start.timestamp() * 1000)


def parse_query(text: str) -> Query:
    """Parse a query; ``bad_query`` when it is too long, has too many parts, a date that is
    not one, or nothing to look for."""
    if len(text) > schema.MAX_SEARCH_QUERY_CHARS:
        raise ProtocolError(
            errors.BAD_QUERY,
            f"A search query has at most {schema.MAX_SEARCH_QUERY_CHARS} characters.",
        )
    query = Query()
    parts = 0
    for match in _TOKEN.finditer(text):
        parts += 1
        key = match.group("key")
        if key is not None:
            value = match.group("value").strip('"')
            if not value:
                raise ProtocolError(errors.BAD_QUERY, f"{key}: needs a value.")
            if key == "from":
                query.senders.append(value.removeprefix("@"))
            elif key == "in":
                query.conversations.append(value)
            elif key == "before":
                query.before = _day(value, key)
            else:
                query.after = _day(value, key) + 86_400_000  # after that day
            continue
        raw = match.group("phrase")
        if raw is not None:
            words = tuple(_WORD.findall(fold(raw)))
            if words:
                query.terms.append(Term(words, phrase=len(words) > 1))
            continue
        for word in _WORD.findall(fold(match.group("word"))):
            query.terms.append(Term((word,)))
    if parts > schema.MAX_SEARCH_TERMS or len(query.terms) > schema.MAX_SEARCH_TERMS:
        raise ProtocolError(
            errors.BAD_QUERY,
            f"A search query has at most {schema.MAX_SEARCH_TERMS} words, phrases and filters.",
        )
    if not (query.terms or query.senders or query.conversations):
        raise ProtocolError(errors.BAD_QUERY, "Say what to look for.")
    return query


# ---------------------------------------------------------------------------------------------
# Snippets
# ---------------------------------------------------------------------------------------------


def snippet(text: str, terms: list[Term]) -> tuple[str, list[tuple[int, int]]]:
    """A part of ``text`` of at most :data:`~beseda.protocol.schema.SEARCH_SNIPPET_CHARS`
    code points around its first match, and the ``[start, end)`` spans of the matches in it
    (whole words, in code points of the snippet). "…" marks a cut."""
    folded, origin = fold_mapped(text)
    spans: list[tuple[int, int]] = []
    for term in terms:
        for pattern in term.patterns():
            for found in pattern.finditer(folded):
                if found.end() == found.start():
                    continue
                start, end = origin[found.start()], origin[found.end() - 1] + 1
                # The whole word the match is in.
                while start > 0 and text[start - 1].isalnum():
                    start -= 1
                while end < len(text) and text[end].isalnum():
                    end += 1
                spans.append((start, end))
    spans = _merged(spans)
    limit = schema.SEARCH_SNIPPET_CHARS
    if len(text) <= limit:
        return text, spans
    first = spans[0][0] if spans else 0
    begin = max(0, min(first - limit // 4, len(text) - limit + 1))
    while 0 < begin < first and not text[begin - 1].isspace():
        begin += 1  # start at a word
    lead = "…" if begin > 0 else ""
    room = limit - len(lead)
    finish = begin + room
    tail = ""
    if finish < len(text):
        finish -= 1
        tail = "…"
    part = lead + text[begin:finish] + tail
    shift = len(lead) - begin
    inside = [
        (max(s + shift, len(lead)), min(e + shift, len(lead) + finish - begin))
        for s, e in spans
        if e > begin and s < finish
    ]
    return part, inside


def _merged(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for start, end in sorted(spans):
        if out and start <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], end))
        else:
            out.append((start, end))
    return out
