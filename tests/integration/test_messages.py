"""Replies, edits, deletes, reactions and search (issue 11) over real sockets and a real
SQLite file, through the client library: what people who answer, correct, react and look
things up would see, including a third person who was offline the whole time."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest
from newcomer import Newcomer

from beseda.client import Client, EntryReceived, MessageReceived, apply_change
from beseda.protocol import codec, errors, schema
from beseda.protocol.errors import ProtocolError
from beseda.server.app import Server
from beseda.storage import NewMessage, SearchRequest
from beseda.storage.sqlite import SQLiteStorage, connect
from conftest import TIMEOUT_FACTOR, ServerProcess, wait_for

Connect = Callable[..., object]

SECRET = "𐌰𐌱𐌲𐌳𐌴𐌵𐌶"
"""Gothic letters: four bytes each in UTF-8 and in nobody else's text, so finding any one of
them anywhere in the files would be a remnant of the deleted message."""


def _files_hold(db: Path, text: str) -> list[str]:
    data = b"".join(p.read_bytes() for p in db.parent.glob(db.name + "*"))
    return [char for char in text if char.encode() in data]


def _drain(client: Client) -> list[schema.Entry]:
    """Everything the client delivered so far (messages and changes), in order."""
    out = []
    while (event := client.next_event_nowait()) is not None:
        if isinstance(event, MessageReceived):
            out.append(event.message)
        elif isinstance(event, EntryReceived):
            out.append(event.entry)
    return out


async def test_replies_edits_deletes_and_reactions_reach_everyone_exactly_once(
    server: Server, connect: Connect
) -> None:
    alice: Client = await connect("alice")  # type: ignore[assignment]
    bob: Client = await connect("bob")  # type: ignore[assignment]
    carol: Client = await connect("carol")  # type: ignore[assignment]
    cursors = dict(carol.cursors)
    await carol.close()  # carol is away for all of it

    question = await alice.post(schema.GENERAL, "Встреча в 10?")
    answer = await bob.post(schema.GENERAL, "Да, буду", reply_to=question.seq)
    assert answer.reply == schema.Quote(seq=question.seq, sender="alice", text="Встреча в 10?")
    await alice.edit(schema.GENERAL, question.seq, "Встреча в 11?")
    reacted = await bob.react(schema.GENERAL, question.seq, "👍")
    assert reacted.reactions == [schema.Reaction(emoji="👍", count=1, me=True)]
    again = await bob.react(schema.GENERAL, question.seq, "👍")
    assert again.entry is None  # one of each emoji per person
    await alice.react(schema.GENERAL, question.seq, "👍")
    await alice.react(schema.GENERAL, question.seq, "🎉")
    await alice.unreact(schema.GENERAL, question.seq, "🎉")
    doomed = await bob.post(schema.GENERAL, "oops, wrong chat")
    with pytest.raises(ProtocolError) as refused:
        await alice.delete(schema.GENERAL, doomed.seq)
    assert refused.value.code == errors.NOT_ALLOWED
    tombstone = await bob.delete(schema.GENERAL, doomed.seq)
    assert (tombstone.kind, tombstone.ref) == ("deleted", doomed.seq)
    assert (await bob.delete(schema.GENERAL, doomed.seq)) == tombstone  # a retry: the same

    # alice saw every change live, once each, in order.
    seen: list[schema.Entry] = []

    def tombstone_seen() -> bool:
        seen.extend(_drain(alice))
        return any(e.kind == "deleted" for e in seen)

    await wait_for(tombstone_seen)
    seqs = [e.seq for e in seen]
    assert seqs == sorted(set(seqs))
    assert {e.kind for e in seen} >= {"message", "edited", "reacted", "unreacted", "deleted"}

    # carol comes back: sync gives the same stream, and applying it gives the same state
    # that history shows.
    async with Client("127.0.0.1", server.port, cursors=cursors) as back:
        await back.login("carol", "password123")
        stream = await back.sync()
        shown: dict[int, schema.Entry] = {}
        for entry in stream:
            if entry.kind == "message":
                shown[entry.seq] = entry
            elif entry.kind in schema.CHANGE_KINDS and entry.ref in shown:
                changed = apply_change(shown[entry.ref], entry, me="carol")
                if changed is None:
                    del shown[entry.ref]
                else:
                    shown[entry.ref] = changed
        page = await back.history(schema.GENERAL)
        current = {e.seq: e for e in page.entries if e.kind == "message"}
        assert set(shown) == set(current) == {question.seq, answer.seq}
        assert current[question.seq].text == shown[question.seq].text == "Встреча в 11?"
        assert current[question.seq].edited is not None
        assert current[question.seq].reactions == [schema.Reaction(emoji="👍", count=2)]
        assert [(r.emoji, r.count) for r in shown[question.seq].reactions] == [("👍", 2)]
        assert current[answer.seq].reply is not None
        assert current[answer.seq].reply.text == "Встреча в 11?"
        # A reply to a deleted message says so.
        late = await back.post(schema.GENERAL, "what was it?", reply_to=question.seq)
        await alice.delete(schema.GENERAL, question.seq)
        page = await back.history(schema.GENERAL)
        quoted = {e.seq: e for e in page.entries}[late.seq].reply
        assert quoted == schema.Quote(seq=question.seq, sender="alice", deleted=True)
        with pytest.raises(ProtocolError) as gone:
            await back.react(schema.GENERAL, question.seq, "👍")
        assert gone.value.code == errors.UNKNOWN_MESSAGE


@pytest.mark.sqlite_only  # SQLite's files; PostgreSQL frees a dead row's space at its vacuum
async def test_a_deleted_text_is_nowhere_in_the_database_files(
    server: Server, connect: Connect
) -> None:
    alice: Client = await connect("alice")  # type: ignore[assignment]
    bob: Client = await connect("bob")  # type: ignore[assignment]
    for n in range(300):  # enough for the search index to hold several segments
        await alice.post(schema.GENERAL, f"ordinary message {n} about the weekly meeting")
    secret = await alice.post(schema.GENERAL, f"the code is {SECRET}")
    await alice.edit(schema.GENERAL, secret.seq, f"the code is still {SECRET}")
    await bob.post(schema.GENERAL, "got it", reply_to=secret.seq)
    for n in range(300):
        await bob.post(schema.GENERAL, f"more chat {n}")
    assert (await bob.search(SECRET[:3])).results[0].seq == secret.seq
    storage = server.storage
    assert isinstance(storage, SQLiteStorage)
    db = storage.path

    # The check can fail: before the delete (and a checkpoint) the text is in the files.
    with sqlite3.connect(db) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    assert _files_hold(db, SECRET) == list(SECRET)

    await alice.delete(schema.GENERAL, secret.seq)
    await asyncio.wait_for(storage.finish_erasure(), 30 * TIMEOUT_FACTOR)
    assert _files_hold(db, SECRET) == []
    assert (await bob.search(SECRET[:3])).results == []
    assert (await bob.search("weekly meeting")).results  # the index still works


async def test_search_finds_russian_and_english_as_people_expect(
    server: Server, connect: Connect
) -> None:
    alice: Client = await connect("alice")  # type: ignore[assignment]
    zoe: Client = await connect("Zoë")  # type: ignore[assignment]
    texts = {
        "forms": "Перенесём встречу на пятницу",
        "yo": "Ёлка стоит в офисе",
        "english": "Weekly meetings are on Friday",
        "compound": "Обновили вебсервер ночью",
        "phrase": "добрый день, коллеги",
        "other order": "день добрый",
    }
    seqs = {}
    for key, text in texts.items():
        seqs[key] = (await alice.post(schema.GENERAL, text)).seq
    await zoe.post(schema.GENERAL, "Zoë here: встреча ok")

    async def found(query: str, **kwargs: object) -> set[int]:
        result = await zoe.search(query, **kwargs)  # type: ignore[arg-type]
        return {hit.seq for hit in result.results}

    assert seqs["forms"] in await found("встреча")
    assert seqs["forms"] in await found("ВСТРЕЧИ")
    assert seqs["yo"] in await found("елка")
    assert seqs["english"] in await found("meeting")
    assert seqs["compound"] in await found("сервер")  # a part of a word
    assert seqs["compound"] in await found("вебс")
    assert await found('"добрый день"') == {seqs["phrase"]}
    assert seqs["other order"] in await found("добрый день")
    assert await found("встреча from:alice") == {seqs["forms"]}
    assert await found("zoe")
    assert all(hit.sender == "Zoë" for hit in (await zoe.search("from:zoe")).results)
    assert await found("встреча after:2999-01-01") == set()
    assert seqs["forms"] in await found("встреча before:2999-01-01 after:2000-01-01")
    hit = (await zoe.search("встречи")).results[-1]
    assert hit.snippet[hit.highlights[0][0] : hit.highlights[0][1]] == "встречу"
    # Directories: diacritics do not matter.
    assert [u.name for u in (await alice.users("zoe")).users] == ["Zoë"]
    await alice.create_channel("Café")
    assert [c.name for c in await zoe.channels("cafe")] == ["Café"]
    # Pages: newest first by cursor, without repeats.
    for n in range(7):
        await alice.post(schema.GENERAL, f"встреча номер {n}")
    seen: list[int] = []
    cursor = None
    while True:
        page = await zoe.search("встреча", limit=3, cursor=cursor)
        seen.extend(hit.seq for hit in page.results)
        cursor = page.next
        if cursor is None:
            break
    assert seen == sorted(set(seen), reverse=True)
    assert len(seen) == 9
    best = await zoe.search("встреча", order="best", limit=50)
    assert {hit.seq for hit in best.results} == set(seen)
    with pytest.raises(ProtocolError) as bad:
        await zoe.search("x" * (schema.MAX_SEARCH_QUERY_CHARS + 1))
    assert bad.value.code == errors.BAD_QUERY
    with pytest.raises(ProtocolError) as empty:
        await zoe.search("   ")
    assert empty.value.code == errors.BAD_QUERY


async def test_the_index_marks_of_sender_and_conversation_match_no_query_word(
    server: Server, connect: Connect
) -> None:
    """A message is indexed with marks of its sender's id and its conversation's id (so that
    ``from:`` and ``in:`` are index look-ups); no word, part of a word or number a person
    types may match them."""
    alice: Client = await connect("alice")  # type: ignore[assignment]
    bob: Client = await connect("bob")  # type: ignore[assignment]
    for _ in range(12):  # user ids 1, 2 … and the seqs of General pass 1 and 12
        await alice.post(schema.GENERAL, "обычный текст")
    plain = await alice.post(schema.GENERAL, "the general meeting, room 12")
    channel = await alice.create_channel("ops")
    await alice.post(channel.conversation, "nothing here")

    async def found(query: str) -> set[tuple[str, int]]:
        result = await bob.search(query, limit=50)
        return {(hit.conversation, hit.seq) for hit in result.results}

    assert await found("general") == {(schema.GENERAL, plain.seq)}
    assert await found("genera") == {(schema.GENERAL, plain.seq)}
    assert await found("12") == {(schema.GENERAL, plain.seq)}
    # The marks still do their work: one sender, one conversation.
    assert len(await found("текст from:alice")) == 12
    assert await found("текст from:bob") == set()
    assert await found("general in:general") == {(schema.GENERAL, plain.seq)}


async def test_history_around_a_message_opens_the_conversation_there(
    server: Server, connect: Connect
) -> None:
    alice: Client = await connect("alice")  # type: ignore[assignment]
    posted = [await alice.post(schema.GENERAL, f"message {n}") for n in range(30)]
    middle = posted[15].seq
    page = await alice.history(schema.GENERAL, around=middle, limit=10)
    seqs = [e.seq for e in page.entries]
    assert middle in seqs
    assert len(seqs) == 10
    assert seqs == sorted(seqs)
    assert page.more
    assert page.newer
    after = await alice.history(schema.GENERAL, after=seqs[-1], limit=100)
    assert [e.seq for e in after.entries] == [p.seq for p in posted if p.seq > seqs[-1]]
    assert not after.newer
    with pytest.raises(ProtocolError) as both:
        await alice.history(schema.GENERAL, before=3, after=1)
    assert both.value.code == errors.BAD_REQUEST


async def test_reaction_limits(server: Server, connect: Connect) -> None:
    alice: Client = await connect("alice")  # type: ignore[assignment]
    message = await alice.post(schema.GENERAL, "vote")
    emoji = "😀😃😄😁😆😅😂🤣😊😇🙂🙃😉😌😍🥰😘😗😙😚😋"
    for one in emoji[: schema.MAX_REACTIONS]:
        await alice.react(schema.GENERAL, message.seq, one)
    with pytest.raises(ProtocolError) as many:
        await alice.react(schema.GENERAL, message.seq, emoji[schema.MAX_REACTIONS])
    assert many.value.code == errors.TOO_MANY_REACTIONS
    for bad in ("a", "👍👍", "", "x" * 17):
        with pytest.raises(ProtocolError) as invalid:
            await alice.react(schema.GENERAL, message.seq, bad)
        assert invalid.value.code in (errors.INVALID_EMOJI, errors.BAD_REQUEST)
    family = "👨‍👩‍👧‍👦"  # one emoji of seven code points
    with pytest.raises(ProtocolError):  # the message is full
        await alice.react(schema.GENERAL, message.seq, family)
    await alice.unreact(schema.GENERAL, message.seq, emoji[0])
    result = await alice.react(schema.GENERAL, message.seq, family)
    assert result.entry is not None
    assert result.entry.count == 1


async def test_quotes_and_reactions_stay_within_a_replys_byte_budget(tmp_path: Path) -> None:
    storage = SQLiteStorage(tmp_path / "budget.db")
    await storage.open()
    try:
        alice = await storage.create_user("alice", "alice", "h", 1)
        first, _ = await storage.append_message(
            NewMessage(schema.GENERAL, alice, None, "q", "quoted " * 100, 1)
        )
        for n in range(40):
            await storage.append_message(
                NewMessage(schema.GENERAL, alice, None, f"r{n}", "ok", 1, reply_to=first.seq)
            )
        budget = 3000
        for page, _ in (
            await storage.history(schema.GENERAL, None, 200, max_bytes=budget, reader=alice.id),
            await storage.entries_after({schema.GENERAL: (0, None)}, 200, max_bytes=budget),
        ):
            assert page
            assert all(e.reply is not None for e in page if e.reply_to is not None)
            assert sum(len(codec.encode(e)) for e in page) <= budget
    finally:
        await storage.close()


async def test_older_clients_see_current_texts_and_no_change_entries(
    server: Server, connect: Connect
) -> None:
    """A version-3 client skips the new kinds and sees messages as they are now; a version-2
    client's sync and history hold messages only, never a change entry."""
    alice: Client = await connect("alice")  # type: ignore[assignment]
    first = await alice.post(schema.GENERAL, "first draft")
    await alice.edit(schema.GENERAL, first.seq, "final text")
    await alice.react(schema.GENERAL, first.seq, "👍")
    gone = await alice.post(schema.GENERAL, "sent by mistake")
    await alice.delete(schema.GENERAL, gone.seq)
    last = await alice.post(schema.GENERAL, "still here")

    old = await Newcomer.open(server.port)
    try:
        await old.call("login", username="alice", password="password123", protocol=3)
        page = await old.call("history", conversation=schema.GENERAL)
        assert [(e["seq"], e["text"]) for e in page["entries"]] == [
            (first.seq, "final text"),
            (last.seq, "still here"),
        ]
        synced = await old.call("sync", cursors={schema.GENERAL: 0})
        kinds = {e.get("kind", "message") for e in synced["entries"]}
        assert kinds == {"message", "edited", "reacted", "deleted"}
        assert "sent by mistake" not in str(synced)
    finally:
        await old.close()
    oldest = await Newcomer.open(server.port)
    try:
        await oldest.call("login", username="alice", password="password123")
        synced = await oldest.call("sync", cursors={schema.GENERAL: 0})
        assert [(m["seq"], m["text"]) for m in synced["messages"]] == [
            (first.seq, "final text"),
            (last.seq, "still here"),
        ]
        assert all("kind" not in m for m in synced["messages"])
        page = await oldest.call("history", conversation=schema.GENERAL)
        assert [m["text"] for m in page["messages"]] == ["final text", "still here"]
    finally:
        await oldest.close()


async def test_an_erasure_cut_short_is_finished_at_the_next_start(tmp_path: Path) -> None:
    """A delete committed, then the process stopped before the index was merged (here the
    delete is written by hand, as the crashed process left it): the next start erases."""
    path = tmp_path / "crash.db"
    storage = SQLiteStorage(path)
    await storage.open()
    alice = await storage.create_user("alice", "alice", "h", 1)
    for n in range(200):
        await storage.append_message(
            NewMessage(schema.GENERAL, alice, None, f"c{n}", f"chat line {n}", 1)
        )
    secret, _ = await storage.append_message(
        NewMessage(schema.GENERAL, alice, None, "s", f"the code is {SECRET}", 1)
    )
    assert await storage.catch_up_index() == 0  # its words are in the index's segments
    await storage.close()
    conn = connect(path)
    try:
        conn.execute("BEGIN")
        conn.execute(
            "UPDATE messages SET kind = 'deleted', ref = seq, text = '' WHERE id = ?",
            (secret.id,),
        )
        conn.execute("INSERT INTO erasures (id, deletes) VALUES (1, 1)")
        conn.execute("COMMIT")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()
    assert _files_hold(path, SECRET)  # the index's old segments still hold its words

    storage = SQLiteStorage(path)
    await storage.open()
    await asyncio.wait_for(storage.finish_erasure(), 30 * TIMEOUT_FACTOR)
    await storage.close()
    assert _files_hold(path, SECRET) == []
    with sqlite3.connect(path) as raw:
        assert raw.execute("SELECT count(*) FROM erasures").fetchone() == (0,)


async def test_a_quote_is_cut_and_a_search_page_bounded(server: Server, connect: Connect) -> None:
    alice: Client = await connect("alice")  # type: ignore[assignment]
    long = await alice.post(schema.GENERAL, "д" * (schema.REPLY_PREVIEW_CHARS + 50))
    reply = await alice.post(schema.GENERAL, "ответ", reply_to=long.seq)
    assert reply.reply is not None
    assert reply.reply.text == "д" * schema.REPLY_PREVIEW_CHARS
    with pytest.raises(ProtocolError) as unknown:
        await alice.post(schema.GENERAL, "to nothing", reply_to=long.seq + 100)
    assert unknown.value.code == errors.UNKNOWN_MESSAGE
    with pytest.raises(ProtocolError) as big:
        await alice.search("ответ", limit=schema.MAX_SEARCH_PAGE + 1)
    assert big.value.code == errors.BAD_REQUEST
    with pytest.raises(ProtocolError) as cursor:
        await alice.search("ответ", cursor="b:3")  # a best-first cursor for a newest search
    assert cursor.value.code == errors.BAD_REQUEST


async def test_date_filters_find_exactly_the_messages_of_their_days(tmp_path: Path) -> None:
    day = 86_400_000
    storage = SQLiteStorage(tmp_path / "dates.db")
    await storage.open()
    try:
        alice = await storage.create_user("alice", "alice", "h", 1)
        for n in range(1, 31):  # one message a day, the 5th one twice
            for copy in range(2 if n == 5 else 1):
                await storage.append_message(
                    NewMessage(schema.GENERAL, alice, None, f"d{n}-{copy}", f"day {n}", n * day)
                )
        scope = {schema.GENERAL: (0, 2**62)}

        async def days(**filters: int) -> list[int]:
            found, _ = await storage.search(
                SearchRequest(match='"day"', readable=scope, reader=alice.id, limit=50, **filters)
            )
            return sorted(e.ts // day for e in found)

        assert await days(before=10 * day) == [1, 2, 3, 4, 5, 5, 6, 7, 8, 9]
        assert await days(after=25 * day) == [25, 26, 27, 28, 29, 30]
        assert await days(after=5 * day, before=6 * day) == [5, 5]
        assert await days(after=31 * day) == []
        assert await days(before=day) == []
    finally:
        await storage.close()


async def test_a_channels_owners_and_admins_delete_anyones_message(
    server: Server, connect: Connect
) -> None:
    alice: Client = await connect("alice")  # type: ignore[assignment]
    bob: Client = await connect("bob")  # type: ignore[assignment]
    carol: Client = await connect("carol")  # type: ignore[assignment]
    channel = await alice.create_channel("ops", public=False, members=["bob"])
    mine = await alice.post(channel.conversation, "from the owner")
    spam = await bob.post(channel.conversation, "spam")
    with pytest.raises(ProtocolError) as member:
        await bob.delete(channel.conversation, mine.seq)
    assert member.value.code == errors.NOT_ALLOWED
    deleted = await alice.delete(channel.conversation, spam.seq)
    assert (deleted.kind, deleted.sender, deleted.ref) == ("deleted", "alice", spam.seq)
    with pytest.raises(ProtocolError) as stranger:
        await carol.react(channel.conversation, mine.seq, "👍")
    assert stranger.value.code == errors.UNKNOWN_CONVERSATION
    group = await alice.create_group(["bob", "carol"])
    theirs = await bob.post(group.conversation, "in the group")
    with pytest.raises(ProtocolError) as nobody:  # a group has no admins
        await alice.delete(group.conversation, theirs.seq)
    assert nobody.value.code == errors.NOT_ALLOWED
    await alice.archive(channel.conversation)
    with pytest.raises(ProtocolError) as archived:
        await alice.edit(channel.conversation, mine.seq, "too late")
    assert archived.value.code == errors.ARCHIVED
    await alice.delete(channel.conversation, mine.seq)  # deleting stays possible


@pytest.mark.sqlite_only  # reads SQLite's index tables; the refusal is the same on both
async def test_a_server_without_the_search_index_says_so(
    server_process: Callable[..., ServerProcess],
) -> None:
    """``beseda serve --search-index off`` stores and delivers messages as ever, indexes none,
    and answers ``search`` with ``search_off``."""
    proc = server_process("--search-index", "off")
    alice = Client("127.0.0.1", proc.port)
    await alice.connect()
    try:
        await alice.register("alice", "password123")
        await alice.post(schema.GENERAL, "встреча в пятницу")
        with pytest.raises(ProtocolError) as refused:
            await alice.search("встреча")
        assert refused.value.code == errors.SEARCH_OFF
        page = await alice.history(schema.GENERAL, limit=10)
        assert [e.text for e in page.entries if e.kind == "message"] == ["встреча в пятницу"]
    finally:
        await alice.close()
    proc.terminate()
    with sqlite3.connect(proc.db) as conn:
        (indexed,) = conn.execute("SELECT count(*) FROM search_docsize").fetchone()
    assert indexed == 0


async def test_a_text_with_u0000_is_refused_and_nothing_is_stored(
    server: Server, connect: Connect
) -> None:
    """U+0000 is refused in a message and in an edit on every engine (PostgreSQL's text cannot
    hold it), with a clear error, and nothing is stored."""
    alice: Client = await connect("alice")  # type: ignore[assignment]
    with pytest.raises(ProtocolError) as posted:
        await alice.post(schema.GENERAL, "a\x00b")
    assert posted.value.code == errors.BAD_REQUEST
    kept = await alice.post(schema.GENERAL, "kept")
    with pytest.raises(ProtocolError) as edited:
        await alice.edit(schema.GENERAL, kept.seq, "a\x00b")
    assert edited.value.code == errors.BAD_REQUEST
    page = await alice.history(schema.GENERAL)
    assert [entry.text for entry in page.entries if entry.kind == "message"][-1:] == ["kept"]
    assert all("\x00" not in (entry.text or "") for entry in page.entries)
