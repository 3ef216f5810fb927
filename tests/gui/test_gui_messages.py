"""Reading, answering, correcting, reacting to and finding messages: the presenter on fakes.

The same features run in real windows against a real server in test_gui_message_windows.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from beseda.client import EntryReceived, MessageReceived
from beseda.gui import events
from beseda.gui.preferences import Preferences
from beseda.gui.presenter import GENERAL_KEY, Presenter, dm_key
from beseda.protocol import errors, schema

from .fakes import Clock, FakeBackend, FakeView
from .test_gui_conversations import info

pytestmark = [pytest.mark.timeout(30), pytest.mark.usefixtures("english")]

SERVER = "127.0.0.1:7994"
DEV = "c:7"
NOW = 1_700_000_000.0
"""The presenter's wall clock: "today" for the day lines."""
TODAY = int(NOW * 1000) - 3_600_000
"""An hour before now, in ms."""


@pytest.fixture
def presenter(view: FakeView, backend: FakeBackend, tmp_path: Path, clock: Clock) -> Presenter:
    prefs = Preferences(tmp_path / "config")
    return Presenter(view, backend, prefs, server=SERVER, clock=clock, wall=lambda: NOW)


def entry(
    seq: int,
    text: str = "hi",
    sender: str = "bob",
    *,
    ts: int = TODAY,
    conversation: str = DEV,
    **fields: object,
) -> schema.Entry:
    return schema.Entry(
        id=seq,
        conversation=conversation,
        seq=seq,
        sender=sender,
        text=text,
        ts=ts,
        client_id=f"{sender}-{seq}",
        **fields,  # type: ignore[arg-type]
    )


def change(seq: int, kind: str, ref: int, sender: str = "bob", **fields: object) -> EntryReceived:
    return EntryReceived(entry(seq, sender=sender, kind=kind, ref=ref, **fields))


def feed(presenter: Presenter, *items: events.Event) -> None:
    for item in items:
        presenter.handle(presenter.session, item)
    presenter.render()


def sign_in(presenter: Presenter, *, role: str = "member", last_seq: int = 0) -> None:
    presenter.sign_in(SERVER, "alice", "password123", remember=True, create=False)
    conversations = [
        info("general", "channel", name="General"),
        info(DEV, "channel", name="dev", role=role, last_seq=last_seq, read_seq=last_seq),
    ]
    feed(presenter, events.SignedIn("alice", "token-1", conversations, {}))


def page(
    messages: list[schema.Entry],
    *,
    more: bool = False,
    newer: bool = False,
    before: int | None = None,
    after: int | None = None,
    around: int | None = None,
) -> events.HistoryLoaded:
    result = schema.EntriesResult(conversation=DEV, entries=messages, more=more, newer=newer)
    return events.HistoryLoaded(DEV, result, before, after, around)


def open_dev(presenter: Presenter, messages: list[schema.Entry], *, more: bool = False) -> None:
    presenter.select(DEV)
    feed(presenter, page(messages, more=more))


def shown(view: FakeView) -> list[tuple[str, str, bool]]:
    """Each message row: sender, text, whether it is under the previous one's header."""
    return [(r.sender, r.text, r.continued) for r in view.rows if not (r.marker or r.event)]


# -- a timeline people read comfortably --------------------------------------------------------


def test_a_senders_run_of_messages_shares_one_header_for_a_few_minutes(
    presenter: Presenter, view: FakeView
) -> None:
    sign_in(presenter)
    minute = 60_000
    open_dev(
        presenter,
        [
            entry(1, "one", ts=TODAY),
            entry(2, "two", ts=TODAY + minute),
            entry(3, "three", ts=TODAY + 4 * minute),
            entry(4, "later", ts=TODAY + 6 * minute),  # 6 minutes after its header's
            entry(5, "carol's", "carol", ts=TODAY + 7 * minute),
            entry(6, "bob again", ts=TODAY + 8 * minute),
            entry(7, "", "carol", ts=TODAY + 8 * minute, kind="joined"),
            entry(8, "after the line", ts=TODAY + 9 * minute),
        ],
    )
    assert shown(view) == [
        ("bob", "one", False),
        ("bob", "two", True),
        ("bob", "three", True),
        ("bob", "later", False),
        ("carol", "carol's", False),
        ("bob", "bob again", False),
        ("bob", "after the line", False),  # a change in the conversation ends a run
    ]
    first = view.rows[0]
    assert (first.avatar, first.colour) == ("B", view.rows[1].colour)
    assert view.rows[4].avatar == "C"
    assert presenter.send("mine")
    assert presenter.send("and mine again")
    assert shown(view)[-2:] == [("alice", "mine", False), ("alice", "and mine again", True)]


def test_a_line_above_each_day_says_today_yesterday_or_the_date(
    presenter: Presenter, view: FakeView
) -> None:
    sign_in(presenter)
    day = 86_400_000
    open_dev(
        presenter,
        [
            entry(1, "long ago", ts=TODAY - 40 * day),
            entry(2, "yesterday", ts=TODAY - day),
            entry(3, "yesterday too", ts=TODAY - day + 60_000),
            entry(4, "today", ts=TODAY),
        ],
    )
    days = [r.text for r in view.all_rows if r.day]
    assert days[1:] == ["Yesterday", "Today"]
    assert days[0].startswith(("September", "October"))  # 40 days before mid-November
    assert [r.text for r in view.all_rows].index("Yesterday") == 2
    # The same sender across midnight gets a header again, under the new day's line.
    assert shown(view)[3] == ("bob", "today", False)


def test_the_conversation_list_shows_the_last_message_and_its_time(
    presenter: Presenter, view: FakeView, backend: FakeBackend
) -> None:
    sign_in(presenter, last_seq=3)
    # The last message of each chat was fetched at sign-in, one message each.
    assert backend.of("history")[-1] == (DEV, DEV, None, None)
    assert backend.history_limits[-1] == 1
    feed(presenter, page([entry(3, "the plan\nis ready", "anna")], more=True))
    dev = next(r for r in view.conversations if r.key == DEV)
    assert (dev.preview, len(dev.time)) == ("anna: the plan is ready", 5)  # today: HH:MM
    # Opening it asks for the page the preview did not bring.
    presenter.select(DEV)
    assert backend.last("history") == (DEV, DEV, None, 3)
    assert presenter.send("ok")
    dev = next(r for r in view.conversations if r.key == DEV)
    assert dev.preview == "You: ok"
    feed(presenter, MessageReceived(entry(9, "psst", "bob", conversation="dm:1:2", to="alice")))
    bob = next(r for r in view.conversations if r.key == dm_key("bob"))
    assert bob.preview == "psst"  # a direct message: no name before it


def test_the_unread_line_goes_above_the_first_unread_message_past_a_change(
    presenter: Presenter, view: FakeView
) -> None:
    presenter.sign_in(SERVER, "alice", "password123", remember=True, create=False)
    conversations = [
        info("general", "channel", name="General"),
        info(DEV, "channel", name="dev", last_seq=4, read_seq=1, unread=1),
    ]
    feed(presenter, events.SignedIn("alice", "token-1", conversations, {}))
    # Seq 2 was an edit (history leaves change entries out): the line goes above seq 3.
    open_dev(presenter, [entry(1, "old"), entry(3, "new one"), entry(4, "newer")])
    assert view.marker_above() == "new one"


# -- replies -----------------------------------------------------------------------------------


def test_a_reply_quotes_the_message_above_the_composer_until_sent_or_cancelled(
    presenter: Presenter, view: FakeView, backend: FakeBackend
) -> None:
    sign_in(presenter)
    open_dev(presenter, [entry(1, "shall we ship?"), entry(2, "or wait?")])
    presenter.reply("seq:1")
    assert view.context is not None
    assert (view.context.kind, view.context.title, view.context.text) == (
        "reply",
        "Reply to bob",
        "shall we ship?",
    )
    assert presenter.cancel_composer_context()  # Escape
    assert view.context is None
    assert not presenter.cancel_composer_context()  # nothing more to cancel
    presenter.reply("seq:1")
    assert presenter.send("yes")
    local_id, conversation, text, reply_to = backend.last("reply")
    assert (conversation, text, reply_to) == (DEV, "yes", 1)
    assert view.context is None
    sending = view.rows[-1]
    assert (sending.quote, sending.quote_seq) == ("bob: shall we ship?", 1)
    quote = schema.Quote(seq=1, sender="bob", text="shall we ship?")
    stored = entry(3, "yes", "alice", reply_to=1, reply=quote)
    stored = schema.Entry(**{**schema_fields(stored), "client_id": local_id})
    feed(presenter, events.Sent(local_id, stored))
    assert (view.rows[-1].quote, view.rows[-1].note) == ("bob: shall we ship?", "✓")


def schema_fields(item: schema.Entry) -> dict[str, object]:
    return {f: getattr(item, f) for f in item.__struct_fields__}


def test_a_quote_follows_the_edit_and_the_delete_of_what_it_quotes(
    presenter: Presenter, view: FakeView
) -> None:
    sign_in(presenter)
    quote = schema.Quote(seq=1, sender="bob", text="typo")
    open_dev(presenter, [entry(1, "typo"), entry(2, "answer", "carol", reply_to=1, reply=quote)])
    assert view.rows[-1].quote == "bob: typo"
    feed(presenter, change(3, "edited", 1, text="fixed"))
    assert view.rows[-1].quote == "bob: fixed"
    assert [(r.text, r.edited) for r in view.rows] == [("fixed", True), ("answer", False)]
    feed(presenter, change(4, "deleted", 1))
    assert view.texts() == ["answer"]
    assert view.rows[-1].quote == "A deleted message"


# -- edits -------------------------------------------------------------------------------------


def test_up_in_an_empty_composer_edits_the_last_own_message(
    presenter: Presenter, view: FakeView, backend: FakeBackend
) -> None:
    sign_in(presenter)
    open_dev(
        presenter,
        [entry(1, "first", "alice"), entry(2, "my lsat word", "alice"), entry(3, "bob's")],
    )
    assert presenter.edit_last()
    assert view.composer_text == "my lsat word"
    assert view.context is not None
    assert (view.context.kind, view.context.text) == ("edit", "my lsat word")
    assert presenter.send("my last word")
    assert backend.last("edit") == (DEV, 2, "my last word")
    assert view.context is None
    # Sending the text unchanged edits nothing; Escape gives the composer back empty.
    assert presenter.start_edit("seq:1")
    assert presenter.send("first")
    assert len(backend.of("edit")) == 1
    assert presenter.start_edit("seq:1")
    view.composer_text = "first, and more"
    assert presenter.cancel_composer_context()
    assert view.composer_text == ""
    assert not presenter.start_edit("seq:3")  # not one's own


def test_an_edit_entry_changes_the_text_and_marks_it_edited(
    presenter: Presenter, view: FakeView
) -> None:
    sign_in(presenter)
    open_dev(presenter, [entry(1, "helo"), entry(2, "world")])
    feed(presenter, change(3, "edited", 1, text="hello"))
    assert [(r.text, r.edited) for r in view.rows] == [("hello", True), ("world", False)]
    # Applied again (a page fetched before it, say): the same state.
    feed(presenter, change(3, "edited", 1, text="hello"))
    assert view.texts() == ["hello", "world"]


# -- deletes -----------------------------------------------------------------------------------


def test_deleting_asks_first_and_the_tombstone_takes_the_message_away(
    presenter: Presenter, view: FakeView, backend: FakeBackend
) -> None:
    sign_in(presenter)
    open_dev(presenter, [entry(1, "wrong chat!", "alice"), entry(2, "bob's")])
    menu = presenter.message_menu("seq:1")
    assert menu is not None
    assert (menu.reply, menu.edit, menu.delete, menu.react, menu.text) == (
        True,
        True,
        True,
        True,
        "wrong chat!",
    )
    others = presenter.message_menu("seq:2")
    assert others is not None
    assert (others.edit, others.delete) == (False, False)  # a member deletes only their own
    presenter.ask_delete("seq:1")
    assert view.confirm == "Delete this message? It is deleted for everyone."
    presenter.cancel_delete()
    assert view.confirm == ""
    assert backend.of("delete") == []
    presenter.ask_delete("seq:1")
    presenter.confirm_delete()
    assert backend.last("delete") == (DEV, 1)
    assert view.confirm == ""
    feed(presenter, change(3, "deleted", 1, sender="alice"))
    assert view.texts() == ["bob's"]
    # A page fetched before the delete does not bring it back.
    feed(presenter, page([entry(1, "wrong chat!", "alice")], before=2))
    assert view.texts() == ["bob's"]


def test_an_owner_or_admin_of_a_channel_deletes_anyones_message(
    presenter: Presenter, view: FakeView
) -> None:
    sign_in(presenter, role="admin")
    open_dev(presenter, [entry(1, "spam", "bob")])
    menu = presenter.message_menu("seq:1")
    assert menu is not None
    assert (menu.edit, menu.delete) == (False, True)
    presenter.ask_delete("seq:1")
    assert view.confirm == "Delete this message of bob? It is deleted for everyone."


# -- reactions ---------------------------------------------------------------------------------


def test_reactions_show_under_the_message_and_a_click_toggles_ones_own(
    presenter: Presenter, view: FakeView, backend: FakeBackend
) -> None:
    sign_in(presenter)
    open_dev(presenter, [entry(1, "we shipped", "bob")])
    presenter.toggle_reaction("seq:1", "🎉")
    assert backend.last("react") == (DEV, 1, "🎉")
    feed(
        presenter,
        change(2, "reacted", 1, sender="carol", emoji="👍", count=1),
        change(3, "reacted", 1, sender="alice", emoji="🎉", count=1),
        change(4, "reacted", 1, sender="dan", emoji="🎉", count=2),
    )
    chips = [(c.emoji, c.count, c.mine) for c in view.rows[0].reactions]
    assert chips == [("👍", 1, False), ("🎉", 2, True)]
    menu = presenter.message_menu("seq:1")
    assert menu is not None
    assert menu.mine == frozenset({"🎉"})
    presenter.toggle_reaction("seq:1", "🎉")
    assert backend.last("unreact") == (DEV, 1, "🎉")
    feed(presenter, change(5, "unreacted", 1, sender="alice", emoji="🎉", count=1))
    feed(presenter, change(6, "unreacted", 1, sender="carol", emoji="👍", count=0))
    assert [(c.emoji, c.count, c.mine) for c in view.rows[0].reactions] == [("🎉", 1, False)]
    # Changes are not unread messages.
    dev = next(r for r in view.conversations if r.key == DEV)
    assert dev.unread == 0


# -- jumping to a message ----------------------------------------------------------------------


def test_a_quote_of_a_loaded_message_scrolls_to_it_and_marks_it(
    presenter: Presenter, view: FakeView, backend: FakeBackend, clock: Clock
) -> None:
    sign_in(presenter)
    quote = schema.Quote(seq=1, sender="bob", text="the question")
    open_dev(presenter, [entry(1, "the question"), entry(2, "the answer", reply_to=1, reply=quote)])
    presenter.jump_to(1)
    assert view.scrolled_to == ["seq:1"]
    assert [r.highlight for r in view.rows] == [True, False]
    assert backend.of("history_around") == []
    clock.now += 5
    presenter.tick()
    assert [r.highlight for r in view.rows] == [False, False]


def test_a_jump_to_an_older_message_opens_the_page_around_it_then_comes_back(
    presenter: Presenter, view: FakeView, backend: FakeBackend
) -> None:
    sign_in(presenter, last_seq=1000)
    open_dev(presenter, [entry(s, f"m{s}") for s in range(951, 1001)], more=True)
    presenter.jump_to(300)
    assert backend.last("history_around") == (DEV, DEV, 300)
    assert view.rows == []  # the page is on its way
    feed(
        presenter,
        page([entry(s, f"m{s}") for s in range(275, 326)], more=True, newer=True, around=300),
    )
    assert view.texts()[0] == "m275"
    assert view.scrolled_to == ["seq:300"]
    assert next(r for r in view.rows if r.highlight).text == "m300"
    assert view.jump == "Jump to latest ↓"
    # A message arriving meanwhile is kept for later and counted.
    feed(presenter, MessageReceived(entry(1001, "fresh")))
    assert "fresh" not in view.texts()
    assert view.jump == "1 new message ↓"
    # Scrolling down fetches the next page; the last one joins the newest messages.
    presenter.scrolled(0.5, 1.0)
    assert backend.last("history_after") == (DEV, DEV, 325)
    feed(presenter, page([entry(s, f"m{s}") for s in range(326, 951)], newer=False, after=325))
    timeline = presenter.conversations[DEV].timeline
    assert len(timeline) == 1001 - 275 + 1
    assert presenter.conversations[DEV].live is None
    presenter.jump_to_latest()
    assert view.texts()[-2:] == ["m1000", "fresh"]


def test_going_back_to_the_latest_drops_the_page_around_the_older_message(
    presenter: Presenter, view: FakeView, backend: FakeBackend
) -> None:
    sign_in(presenter, last_seq=1000)
    open_dev(presenter, [entry(s, f"m{s}") for s in range(951, 1001)], more=True)
    presenter.jump_to(300)
    feed(
        presenter,
        page([entry(s, f"m{s}") for s in range(275, 326)], more=True, newer=True, around=300),
    )
    presenter.jump_to_latest()
    assert view.texts()[-1] == "m1000"
    assert len(presenter.conversations[DEV].timeline) == 50
    # A late page for the dropped view is ignored.
    feed(presenter, page([entry(s, f"m{s}") for s in range(326, 400)], newer=True, after=325))
    assert len(presenter.conversations[DEV].timeline) == 50


# -- search ------------------------------------------------------------------------------------


def test_search_lists_hits_with_their_matches_and_opens_one_in_context(
    presenter: Presenter, view: FakeView, backend: FakeBackend
) -> None:
    sign_in(presenter, last_seq=500)
    presenter.search_messages("встреча")
    assert backend.last("search")[1:] == ("встреча", None)
    assert view.search is not None
    assert view.search.status == "Searching…"
    request = backend.last("search")[0]
    hits = [
        schema.SearchHit(
            conversation=DEV,
            seq=120,
            id=120,
            sender="anna",
            ts=TODAY,
            snippet="\u202eНазначим встречу на пятницу",
            highlights=[(10, 17)],
        ),
        schema.SearchHit(
            conversation="general", seq=4, id=4, sender="bob", ts=TODAY, snippet="встреча"
        ),
    ]
    result = schema.SearchResult(results=hits, next="page-2")
    feed(presenter, events.SearchFound(request, result, appended=False))
    assert view.search is not None
    first = view.search.rows[0]
    assert (first.title, first.sender) == ("# dev", "anna")
    # The hidden character is shown as its escape; the match moves along with it.
    start, end = first.highlights[0]
    assert first.snippet[start:end] == "встречу"
    assert view.search.more
    presenter.more_search()
    assert backend.last("search")[2] == "page-2"
    presenter.search_choose(0)
    assert presenter.selected == DEV
    assert backend.last("history_around") == (DEV, DEV, 120)
    # A newer search's answer replaces, an older one's is ignored.
    feed(presenter, events.SearchFound(request - 1, result, appended=False))
    presenter.search_messages("nothing")
    feed(
        presenter,
        events.SearchFound(backend.last("search")[0], schema.SearchResult(results=[]), False),
    )
    assert view.search is not None
    assert (view.search.rows, view.search.status) == ((), "No messages found.")


def test_a_server_without_search_says_so_in_the_search_window(
    presenter: Presenter, view: FakeView, backend: FakeBackend
) -> None:
    sign_in(presenter)
    presenter.search_messages("встреча")
    request = backend.last("search")[0]
    feed(presenter, events.SearchFailed(request, errors.SEARCH_OFF, "Search is off."))
    assert view.search is not None
    assert view.search.status == "Search is switched off on this server."
    presenter.search_messages("встреча")
    feed(presenter, events.SearchFailed(backend.last("search")[0], "bad_query", "Bad."))
    assert view.search is not None
    assert view.search.status == "The search failed: Bad."


def test_general_is_a_conversation_like_the_others_for_replies(
    presenter: Presenter, view: FakeView, backend: FakeBackend
) -> None:
    sign_in(presenter)
    presenter.select(GENERAL_KEY)
    general = [entry(1, "hello all", conversation="general")]
    feed(
        presenter,
        events.HistoryLoaded(
            GENERAL_KEY,
            schema.EntriesResult(conversation="general", entries=general, more=False),
            None,
        ),
    )
    presenter.reply("seq:1")
    assert presenter.send("hi bob")
    assert backend.last("reply")[1:] == ("general", "hi bob", 1)


def test_a_change_is_no_unread_message_where_the_server_counts_none(
    presenter: Presenter, view: FakeView
) -> None:
    # A conversation listed the protocol-2 way: the client counts unread from seqs.
    presenter.sign_in(SERVER, "alice", "password123", remember=True, create=False)
    listed = [schema.ConversationEntry(conversation="general", last_seq=1)]
    feed(presenter, events.SignedIn("alice", "token-1", listed, {}))
    presenter.open_dm("bob")
    feed(presenter, change(2, "reacted", 1, conversation="general", emoji="👍", count=1))
    assert {r.title: r.unread for r in view.conversations}["General"] == 0


def test_an_archived_channel_offers_delete_but_not_reply_edit_or_react(
    presenter: Presenter, view: FakeView
) -> None:
    sign_in(presenter)
    open_dev(presenter, [entry(1, "mine", "alice")])
    feed(presenter, EntryReceived(entry(2, "", "carol", kind="archived")))
    menu = presenter.message_menu("seq:1")
    assert menu is not None
    assert (menu.reply, menu.edit, menu.delete, menu.react) == (False, False, True, False)
    assert not presenter.edit_last()
