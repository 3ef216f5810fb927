"""Search text without I/O: folding, the indexed form, queries, snippets; and applying change
entries on the client (both plain code)."""

from __future__ import annotations

import random

import pytest

from beseda.client import apply_change, quote_deleted
from beseda.protocol import errors, schema
from beseda.protocol.errors import ProtocolError
from beseda.server.search import (
    _WORDS_TABLE,
    conversation_mark,
    fold,
    folded_words,
    parse_query,
    search_body,
    sender_mark,
    snippet,
)


def test_folding_removes_case_and_diacritics_but_keeps_short_i() -> None:
    assert fold("Zoë ÅSA Jürgen") == "zoe asa jurgen"
    assert fold("Ёлка ЁЖ") == "елка еж"
    assert fold("Йогурт мой") == "йогурт мой"
    assert fold("ﬁle") == "file"


def test_the_indexed_form_is_folded_words_between_single_spaces() -> None:
    assert search_body("Встреча, в 10:00!  Zoë") == " встреча в 10 00 zoe "
    assert search_body("?!") == ""
    # The sender's and the conversation's marks, which no folded query word can match: the
    # id's UTF-8 two bytes to a private use character, between control characters.
    assert search_body("Hi", 7, "c:3") == " hi \x02\U000f3700\x03\x04\U000f633a\U000f3300\x05"
    assert len(sender_mark(123_456_789)) == 2 + 5  # nine digits, five characters
    marks = [sender_mark(n) for n in range(1, 2000)] + [
        conversation_mark(c) for c in ("general", "c:1", "c:10", "dm:1:2", "dm:1:20", "dm:12:0")
    ]
    assert len(set(marks)) == len(marks)
    # No mark is inside another (sender 12 in 123), and none holds a folded word character.
    assert not any(a in b for a in marks for b in marks if a != b)
    assert not any(folded_words(mark) for mark in marks)


def test_the_fast_fold_of_plain_text_agrees_with_the_full_one() -> None:
    rng = random.Random(7)
    alphabet = (
        [chr(c) for c in range(0x20, 0x7F)]
        + [chr(c) for c in range(0x400, 0x460)]
        + [chr(c) for c in range(0xC0, 0x180)]
        + list("İıẞßKÅ²①ﬁ\u0301\u0306\t\n")
    )
    for _ in range(20_000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12)))
        assert folded_words(text) == text.translate(_WORDS_TABLE).split(), text


def test_a_query_becomes_terms_and_filters() -> None:
    query = parse_query('Встречу "Добрый  день" ok from:@Bob in:design after:2026-01-31')
    assert [t.words for t in query.terms] == [("встречу",), ("добрый", "день"), ("ok",)]
    assert query.senders == ["Bob"]
    assert query.conversations == ["design"]
    assert query.after == 1_769_904_000_000  # 2026-02-01 00:00 UTC: after that day
    assert query.fts() == '("встречу" OR " встреч") AND " добрый день " AND " ok "'


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   ",
        "!!!",
        "x" * (schema.MAX_SEARCH_QUERY_CHARS + 1),
        "before:soon",
        "from:",
        " ".join(["word"] * (schema.MAX_SEARCH_TERMS + 1)),
    ],
)
def test_bad_queries_are_refused_with_bad_query(text: str) -> None:
    with pytest.raises(ProtocolError) as refused:
        parse_query(text)
    assert refused.value.code == errors.BAD_QUERY


def test_a_snippet_highlights_whole_words_as_written() -> None:
    text, spans = snippet("Перенесём ВСТРЕЧУ на пятницу", parse_query("встреча").terms)
    assert [text[s:e] for s, e in spans] == ["ВСТРЕЧУ"]
    long = "слово " * 100 + "Ёлка стоит" + " конец" * 100
    text, spans = snippet(long, parse_query("елка").terms)
    assert len(text) <= schema.SEARCH_SNIPPET_CHARS
    assert text.startswith("…")
    assert text.endswith("…")
    assert [text[s:e] for s, e in spans] == ["Ёлка"]


def _message(**fields: object) -> schema.Entry:
    base: dict[str, object] = {
        "id": 1,
        "conversation": "general",
        "seq": 1,
        "sender": "alice",
        "text": "hi",
        "ts": 1,
    }
    base.update(fields)
    return schema.Entry(**base)  # type: ignore[arg-type]


def _change(kind: str, **fields: object) -> schema.Entry:
    return _message(**{"id": 9, "seq": 9, "kind": kind, "ref": 1, "text": "", **fields})


def test_changes_set_the_state_so_applying_twice_changes_nothing() -> None:
    message = _message()
    edited = apply_change(message, _change("edited", text="hello", ts=5), me="bob")
    assert edited is not None
    assert (edited.text, edited.edited) == ("hello", 5)
    plus = _change("reacted", emoji="👍", count=2, sender="bob")
    once = apply_change(message, plus, me="bob")
    assert once is not None
    assert once.reactions == [schema.Reaction(emoji="👍", count=2, me=True)]
    assert apply_change(once, plus, me="bob") == once
    minus = _change("unreacted", emoji="👍", count=0, sender="bob")
    assert apply_change(once, minus, me="bob") == _message()
    assert apply_change(message, _change("deleted"), me="bob") is None
    assert apply_change(message, _change("deleted", ref=2), me="bob") == message
    reply = _message(seq=3, reply_to=1, reply=schema.Quote(seq=1, sender="alice", text="hi"))
    quoted = quote_deleted(reply, 1)
    assert quoted.reply == schema.Quote(seq=1, sender="alice", deleted=True)
