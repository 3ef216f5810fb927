"""The desktop client's behaviour, without a display: a presenter with a fake view and backend."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from beseda.client import ConnectionState, MessageReceived, PresenceChanged, StateChanged
from beseda.gui import events, i18n
from beseda.gui.preferences import Preferences, SavedSession
from beseda.gui.presenter import GENERAL_KEY, Presenter, dm_key
from beseda.gui.timeline import Timeline
from beseda.protocol import errors, schema
from beseda.tls import CertificateChangedError

from .fakes import Clock, FakeBackend, FakeView, message

SERVER = "127.0.0.1:7992"

pytestmark = pytest.mark.usefixtures("english")


@pytest.fixture
def prefs(tmp_path: Path) -> Preferences:
    return Preferences(tmp_path / "config")


@pytest.fixture
def presenter(view: FakeView, backend: FakeBackend, prefs: Preferences, clock: Clock) -> Presenter:
    return Presenter(view, backend, prefs, server=SERVER, clock=clock, wall=lambda: 1.7e9)


def sign_in(
    presenter: Presenter,
    conversations: list[schema.ConversationEntry] | None = None,
    online: dict[str, bool] | None = None,
    *,
    user: str = "alice",
    remember: bool = True,
) -> None:
    presenter.sign_in(SERVER, user, "password123", remember=remember, create=False)
    entries = conversations or [schema.ConversationEntry(conversation="general", last_seq=0)]
    feed(presenter, events.SignedIn(user, "token-1", entries, online or {}))


def feed(presenter: Presenter, *items: events.Event) -> None:
    for item in items:
        presenter.handle(presenter.session, item)
    presenter.render()


def received(*messages: schema.Message) -> list[events.Event]:
    return [MessageReceived(m) for m in messages]


def history(
    presenter: Presenter,
    key: str,
    messages: list[schema.Message],
    *,
    more: bool,
    before: int | None = None,
    conversation: str = "general",
) -> None:
    result = schema.HistoryResult(conversation=conversation, messages=messages, more=more)
    feed(presenter, events.HistoryLoaded(key, result, before))


# -- signing in --------------------------------------------------------------------------------


def test_the_form_remembers_the_server(
    presenter: Presenter, view: FakeView, prefs: Preferences
) -> None:
    prefs.server = "10.0.0.5:9000"
    Presenter(view, FakeBackend(), prefs).start()
    assert view.screen == "sign_in"
    assert view.form is not None
    assert view.form.server == "10.0.0.5:9000"


def test_a_fresh_install_offers_the_local_server(view: FakeView, tmp_path: Path) -> None:
    Presenter(view, FakeBackend(), Preferences(tmp_path / "none")).start()
    assert view.form is not None
    assert view.form.server == "127.0.0.1:7878"


@pytest.mark.parametrize(
    ("server", "user", "password", "error"),
    [
        (SERVER, "", "password123", "Enter your username and password."),
        (SERVER, "alice", "", "Enter your username and password."),
        ("host:notaport", "alice", "password123", "Enter the server as host:port"),
    ],
)
def test_incomplete_forms_are_refused_before_connecting(
    presenter: Presenter,
    view: FakeView,
    backend: FakeBackend,
    server: str,
    user: str,
    password: str,
    error: str,
) -> None:
    presenter.sign_in(server, user, password, remember=False, create=False)
    assert view.form is not None
    assert view.form.error.startswith(error)
    assert backend.of("sign_in") == []


def test_sign_in_connects_and_shows_progress(
    presenter: Presenter, view: FakeView, backend: FakeBackend, prefs: Preferences
) -> None:
    presenter.sign_in(" 127.0.0.1:7992 ", " alice ", "password123", remember=True, create=True)
    assert backend.last("sign_in") == ("127.0.0.1", 7992, "alice", "password123", True, None)
    assert view.form is not None
    assert view.form.busy
    assert prefs.server == SERVER


@pytest.mark.parametrize(
    ("code", "shown"),
    [
        (errors.BAD_CREDENTIALS, "Wrong username or password."),
        (errors.NAME_TAKEN, "The name “alice” is taken. Choose another, or sign in."),
        (events.UNREACHABLE, "Cannot reach a server at 127.0.0.1:7992. Is it running?"),
        (events.GONE, "The server closed the connection. Try again in a moment."),
        (errors.INVALID_PASSWORD, "A password has 8 to 256 characters."),
        (errors.RATE_LIMITED, "Too many attempts. Try again in 3 seconds."),
    ],
)
def test_failures_are_explained_in_plain_words(
    presenter: Presenter, view: FakeView, code: str, shown: str
) -> None:
    presenter.sign_in(SERVER, "alice", "password123", remember=False, create=True)
    feed(presenter, events.SignInFailed(code, "detail", retry_after=2.2))
    assert view.screen == "sign_in"
    assert view.form is not None
    assert view.form.error == shown
    assert not view.form.busy


def test_errors_speak_russian(presenter: Presenter, view: FakeView) -> None:
    i18n.install("ru")
    presenter.sign_in(SERVER, "alice", "password123", remember=False, create=False)
    feed(presenter, events.SignInFailed(errors.BAD_CREDENTIALS, ""))
    assert view.form is not None
    assert view.form.error == "Неверное имя или пароль."


def test_keep_me_signed_in_stores_the_token_privately(
    presenter: Presenter, prefs: Preferences
) -> None:
    sign_in(presenter, remember=True)
    assert prefs.session() == SavedSession(SERVER, "alice", "token-1")
    mode = (prefs.directory / "session.json").stat().st_mode
    assert stat.S_IMODE(mode) == 0o600


def test_without_keep_me_signed_in_no_token_is_stored(
    presenter: Presenter, prefs: Preferences
) -> None:
    prefs.save_session(SavedSession(SERVER, "alice", "old"))
    sign_in(presenter, remember=False)
    assert prefs.session() is None


def test_a_kept_session_signs_in_by_itself(
    view: FakeView, backend: FakeBackend, prefs: Preferences
) -> None:
    prefs.save_session(SavedSession(SERVER, "alice", "tok"))
    Presenter(view, backend, prefs, server=SERVER).start()
    assert backend.last("sign_in") == ("127.0.0.1", 7992, "alice", "", False, "tok")


def test_an_expired_kept_session_is_forgotten(
    view: FakeView, backend: FakeBackend, prefs: Preferences
) -> None:
    prefs.save_session(SavedSession(SERVER, "alice", "tok"))
    presenter = Presenter(view, backend, prefs, server=SERVER)
    presenter.start()
    feed(presenter, events.SignInFailed(errors.BAD_CREDENTIALS, ""))
    assert prefs.session() is None
    assert view.form is not None
    assert view.form.error == "Your session has ended. Sign in again."
    assert view.form.username == "alice"


def test_sign_out_revokes_and_forgets_the_session(
    presenter: Presenter, view: FakeView, backend: FakeBackend, prefs: Preferences
) -> None:
    sign_in(presenter)
    presenter.sign_out()
    assert backend.of("sign_out") == [None]
    assert prefs.session() is None
    assert view.screen == "sign_in"
    # Late events of the old session change nothing.
    presenter.handle(1, MessageReceived(message(1)))
    assert presenter.conversations == {}


def test_a_session_revoked_elsewhere_returns_to_the_form(
    presenter: Presenter, view: FakeView, prefs: Preferences
) -> None:
    sign_in(presenter)
    feed(presenter, StateChanged(ConnectionState.OFFLINE, reason=errors.BAD_CREDENTIALS))
    assert view.screen == "sign_in"
    assert view.form is not None
    assert "session has ended" in view.form.error
    assert prefs.session() is None


# -- conversations -----------------------------------------------------------------------------


def entries() -> list[schema.ConversationEntry]:
    return [
        schema.ConversationEntry(conversation="general", last_seq=5, last_ts=1_000_000),
        schema.ConversationEntry(conversation="dm:1:2", peer="bob", last_seq=2, last_ts=3_000_000),
        schema.ConversationEntry(
            conversation="dm:1:3", peer="carol", last_seq=1, last_ts=2_000_000
        ),
    ]


def test_signed_in_shows_channels_then_direct_chats_newest_first_with_presence(
    presenter: Presenter, view: FakeView, backend: FakeBackend
) -> None:
    sign_in(presenter, entries(), {"bob": True, "carol": False})
    assert view.screen == "chat"
    assert view.user == "alice"
    assert [(r.title, r.online, r.section) for r in view.conversations] == [
        ("General", None, "channels"),
        ("bob", True, "direct"),
        ("carol", False, "direct"),
    ]
    assert view.selected == GENERAL_KEY
    # General's newest page, and the last message of each other chat for its preview.
    assert backend.of("history") == [
        (GENERAL_KEY, "general", None, None),
        (dm_key("bob"), "dm:1:2", None, None),
        (dm_key("carol"), "dm:1:3", None, None),
    ]
    assert backend.history_limits == [schema.DEFAULT_PAGE, 1, 1]
    assert backend.of("users") == [(1, "", None)]
    # First run on this machine: nothing old counts as unread.
    assert view.unread() == {"bob": 0, "carol": 0, "General": 0}


def test_presence_changes_move_the_dots(presenter: Presenter, view: FakeView) -> None:
    sign_in(presenter, entries(), {"bob": True})
    feed(presenter, PresenceChanged("bob", False), PresenceChanged("carol", True))
    assert {r.title: r.online for r in view.conversations} == {
        "bob": False,
        "carol": True,
        "General": None,
    }


def test_it_watches_the_dm_peers_and_the_directory_page(
    presenter: Presenter, view: FakeView, backend: FakeBackend
) -> None:
    sign_in(presenter, entries(), {"bob": True, "carol": False})
    # The network watched the peers while signing in: nothing more to ask yet.
    assert backend.of("watch") == []
    request = backend.last("users")[0]
    feed(presenter, events.UsersFound(request, users(("alice", True), ("Dave", False)), False))
    assert sorted(backend.last("watch")) == ["Dave", "bob", "carol"]  # not herself
    assert view.people[1].online is False
    feed(presenter, PresenceChanged("Dave", True))
    assert view.people[1].online is True
    # A new DM adds its peer; a search that shows other people replaces them.
    presenter.open_dm("Erin")
    assert sorted(backend.last("watch")) == ["Dave", "Erin", "bob", "carol"]
    presenter.search_people("zz")
    feed(presenter, events.UsersFound(backend.last("users")[0], users(("zzz", False)), False))
    assert sorted(backend.last("watch")) == ["Erin", "bob", "carol", "zzz"]
    calls = len(backend.of("watch"))
    feed(presenter, PresenceChanged("bob", False), *received(message(6, ts=5_000_000_000)))
    assert len(backend.of("watch")) == calls  # the same people: no new watch


def test_the_watch_stays_within_the_servers_limit(
    presenter: Presenter, backend: FakeBackend
) -> None:
    peers = [
        schema.ConversationEntry(
            conversation=f"dm:1:{n}", peer=f"peer{n}", last_seq=1, last_ts=1_000_000 + n
        )
        for n in range(2, schema.MAX_WATCH + 2)
    ]
    sign_in(presenter, peers)
    request = backend.last("users")[0]
    feed(presenter, events.UsersFound(request, users(("shown", False)), False))
    watched = backend.last("watch")
    assert len(watched) == schema.MAX_WATCH
    # The page on screen first, then the most recently active conversations.
    assert watched[0] == "shown"
    assert "peer2" not in watched
    assert f"peer{schema.MAX_WATCH + 1}" in watched


def test_new_activity_moves_a_chat_to_the_top(presenter: Presenter, view: FakeView) -> None:
    sign_in(presenter, entries())
    feed(presenter, *received(message(6, ts=5_000_000_000)))
    assert view.conversations[0].title == "General"


def test_unread_counts_badge_title_and_bell(presenter: Presenter, view: FakeView) -> None:
    sign_in(presenter, entries())
    presenter.select(dm_key("bob"))
    feed(presenter, *received(message(6), message(7)))
    assert view.unread()["General"] == 2
    assert view.title == "(2) alice — beseda"
    assert view.bells == 1
    presenter.select(GENERAL_KEY)
    assert view.unread()["General"] == 0
    assert view.title == "alice — beseda"


def test_a_message_on_screen_is_read_at_once(presenter: Presenter, view: FakeView) -> None:
    sign_in(presenter, entries())
    feed(presenter, *received(message(6)))
    assert view.unread()["General"] == 0
    assert view.bells == 0


def test_an_unfocused_window_notifies_even_for_the_chat_on_screen(
    presenter: Presenter, view: FakeView
) -> None:
    sign_in(presenter, entries())
    presenter.focus_changed(False)
    feed(presenter, *received(message(6)))
    assert view.unread()["General"] == 1
    assert view.bells == 1
    assert view.title.startswith("(1)")
    presenter.focus_changed(True)
    assert view.unread()["General"] == 0


def test_own_messages_are_never_unread(presenter: Presenter, view: FakeView) -> None:
    sign_in(presenter, entries())
    presenter.select(dm_key("bob"))
    feed(presenter, *received(message(6, sender="alice")))
    assert view.unread()["General"] == 0
    assert view.bells == 0


def test_unread_counts_survive_a_restart(
    view: FakeView, backend: FakeBackend, prefs: Preferences
) -> None:
    first = Presenter(view, backend, prefs, server=SERVER)
    sign_in(first, entries())
    first.close()
    later = [
        schema.ConversationEntry(conversation="general", last_seq=9, last_ts=1),
        schema.ConversationEntry(conversation="dm:1:2", peer="bob", last_seq=5, last_ts=1),
        schema.ConversationEntry(conversation="dm:1:3", peer="carol", last_seq=1, last_ts=1),
        schema.ConversationEntry(conversation="dm:1:4", peer="dave", last_seq=3, last_ts=1),
    ]
    second_view = FakeView()
    second = Presenter(second_view, FakeBackend(), prefs, server=SERVER)
    sign_in(second, later)
    # General is on screen, so read; bob wrote 3 more; dave's chat is new since.
    assert second_view.unread() == {"General": 0, "bob": 3, "carol": 0, "dave": 3}


def test_a_direct_message_from_a_stranger_opens_a_chat(
    presenter: Presenter, view: FakeView
) -> None:
    sign_in(presenter)
    dm = message(1, "psst", sender="erin", conversation="dm:1:5", to="alice")
    feed(presenter, *received(dm))
    assert view.unread()["erin"] == 1
    presenter.select(dm_key("erin"))
    assert view.texts() == ["psst"]
    assert view.header is not None
    assert view.header.title == "erin"


# -- messages ----------------------------------------------------------------------------------


def test_history_is_shown_with_own_messages_distinct(presenter: Presenter, view: FakeView) -> None:
    sign_in(presenter, entries())
    history(presenter, GENERAL_KEY, [message(4, "a", "bob"), message(5, "b", "alice")], more=True)
    assert [(r.sender, r.text, r.own, r.note) for r in view.rows] == [
        ("bob", "a", False, ""),
        ("alice", "b", True, "✓"),
    ]
    assert view.rows[0].time  # local time, formatted


def test_sending_then_sent(presenter: Presenter, view: FakeView, backend: FakeBackend) -> None:
    sign_in(presenter)
    assert presenter.send("  hello\nworld  ")
    local_id, peer, text = backend.last("send")
    assert (peer, text) == (None, "hello\nworld")
    assert [(r.text, r.note) for r in view.rows] == [("hello\nworld", "sending…")]
    stored = message(1, "hello\nworld", "alice", client_id=local_id)
    feed(presenter, MessageReceived(stored), events.Sent(local_id, stored))
    assert [(r.text, r.note) for r in view.rows] == [("hello\nworld", "✓")]


def test_a_failed_message_can_be_retried_with_its_client_id(
    presenter: Presenter, view: FakeView, backend: FakeBackend
) -> None:
    sign_in(presenter)
    presenter.send("hello")
    local_id = backend.last("send")[0]
    feed(presenter, events.SendFailed(local_id, errors.STORAGE_UNAVAILABLE, "x"))
    row = view.rows[0]
    assert row.failed
    assert row.note == "not sent: the server cannot store it now"
    presenter.retry(row.id)
    assert backend.last("send") == (local_id, None, "hello")
    assert view.rows[0].note == "sending…"
    assert not view.rows[0].failed


def test_a_message_refused_for_good_says_why_and_offers_no_retry(
    presenter: Presenter, view: FakeView, backend: FakeBackend
) -> None:
    sign_in(presenter)
    presenter.send("hello")
    local_id = backend.last("send")[0]
    feed(presenter, events.SendFailed(local_id, errors.NOT_A_MEMBER, "x"))
    row = view.rows[0]
    assert row.note == "not sent: you are not a member of this conversation"
    assert not row.failed  # no Retry link: resending cannot succeed


def test_empty_and_oversized_messages_are_not_sent(
    presenter: Presenter, view: FakeView, backend: FakeBackend
) -> None:
    sign_in(presenter)
    assert not presenter.send(" \n ")
    assert not presenter.send("x" * (schema.MAX_TEXT_CHARS + 1))
    assert "at most 16384 characters" in view.composer_error
    assert backend.of("send") == []
    assert presenter.send("x" * schema.MAX_TEXT_CHARS)
    assert view.composer_error == ""


def test_the_outbox_waits_for_the_connection_and_delivers_once(
    presenter: Presenter, view: FakeView, backend: FakeBackend, clock: Clock
) -> None:
    sign_in(presenter)
    feed(presenter, StateChanged(ConnectionState.RECONNECTING, retry_in=4.2, reason="gone"))
    assert view.status is not None
    assert view.status.state == "reconnecting"
    assert view.status.text == "Reconnecting in 5 seconds…"
    presenter.send("while away")
    local_id = backend.last("send")[0]
    assert view.rows[-1].note == "waiting for connection…"
    assert view.status.text.endswith("1 message waits to be sent.")
    clock.now += 3.5
    presenter.tick()
    assert view.status.text.startswith("Reconnecting in 1 second…")
    feed(presenter, StateChanged(ConnectionState.CONNECTED))
    assert view.rows[-1].note == "sending…"
    stored = message(1, "while away", "alice", client_id=local_id)
    feed(presenter, events.Sent(local_id, stored), MessageReceived(stored))
    assert view.texts() == ["while away"]
    assert view.rows[0].note == "✓"
    assert view.status.state == "connected"
    assert view.status.text == ""  # all is well: nothing to read, no address


def test_the_status_line_is_empty_when_connected_and_speaks_of_problems(
    presenter: Presenter, view: FakeView
) -> None:
    sign_in(presenter)
    assert view.status is not None
    assert (view.status.state, view.status.text) == ("connected", "")
    feed(presenter, StateChanged(ConnectionState.RECONNECTING, retry_in=2.0, reason="gone"))
    assert view.status.text == "Reconnecting in 2 seconds…"
    feed(presenter, StateChanged(ConnectionState.CONNECTED))
    assert view.status.text == ""


def test_a_message_from_another_arriving_while_sending_goes_above(
    presenter: Presenter, view: FakeView, backend: FakeBackend
) -> None:
    sign_in(presenter)
    presenter.send("mine")
    feed(presenter, *received(message(1, "theirs")))
    assert view.texts() == ["theirs", "mine"]


def test_text_cannot_disguise_itself(presenter: Presenter, view: FakeView) -> None:
    sign_in(presenter)
    feed(presenter, *received(message(1, "invoice\u202efdp.exe\x1b[2J\r", sender="bob")))
    assert view.texts() == ["invoice\\u202efdp.exe\\x1b[2J\\x0d"]


def test_cyrillic_emoji_and_long_text_pass_through(presenter: Presenter, view: FakeView) -> None:
    sign_in(presenter)
    long = "привет 😀 " + "ы" * 10_000
    feed(presenter, *received(message(1, long)))
    assert view.texts() == [long]


def test_scrolling_to_the_top_loads_older_pages(
    presenter: Presenter, view: FakeView, backend: FakeBackend
) -> None:
    sign_in(presenter, [schema.ConversationEntry(conversation="general", last_seq=120)])
    history(presenter, GENERAL_KEY, [message(s) for s in range(71, 121)], more=True)
    presenter.scrolled(0.0, 0.4)
    assert backend.last("history") == (GENERAL_KEY, "general", None, 71)
    presenter.scrolled(0.0, 0.4)  # one request at a time
    assert len(backend.of("history")) == 2
    history(presenter, GENERAL_KEY, [message(s) for s in range(21, 71)], more=False, before=71)
    assert [r.id for r in view.rows[:2]] == ["seq:21", "seq:22"]
    assert len(view.rows) == 100
    # Prepended after the day's line; the run of Bob's messages now starts with #21, so
    # #71 loses its header. The view keeps its place.
    assert view.edits[-1][:2] == (1, 1)
    presenter.scrolled(0.0, 0.4)
    assert len(backend.of("history")) == 2  # no more to load


def test_ten_thousand_messages_keep_the_view_small(
    presenter: Presenter, view: FakeView, backend: FakeBackend
) -> None:
    sign_in(presenter, [schema.ConversationEntry(conversation="general", last_seq=10_000)])
    for end in range(10_000, 0, -200):
        history(
            presenter,
            GENERAL_KEY,
            [message(s) for s in range(end - 199, end + 1)],
            more=end > 200,
            before=None,
        )
    assert len(presenter.conversations[GENERAL_KEY].timeline) == 10_000
    assert len(view.rows) <= Timeline.CAP
    presenter.select(dm_key("nobody"))  # not a chat: nothing changes
    presenter.open_dm("bob")
    presenter.select(GENERAL_KEY)
    assert view.rows[-1].id == "seq:10000"
    assert len(view.rows) == Timeline.INITIAL
    for _ in range(100):
        presenter.scrolled(0.0, 0.5)
    assert view.rows[0].id == "seq:1"
    assert len(view.rows) == Timeline.CAP
    for _ in range(100):
        presenter.scrolled(0.5, 1.0)
    assert view.rows[-1].id == "seq:10000"
    assert len(view.rows) == Timeline.CAP


def test_new_messages_while_reading_older_ones_do_not_jump(
    presenter: Presenter, view: FakeView
) -> None:
    sign_in(presenter, [schema.ConversationEntry(conversation="general", last_seq=50)])
    history(presenter, GENERAL_KEY, [message(s) for s in range(1, 51)], more=False)
    presenter.scrolled(0.2, 0.5)
    feed(presenter, *received(message(51, "new one")))
    start, removed, added, reset = view.edits[-1]
    # After the day's line and the 50: the "new messages" line and the message.
    assert (start, removed, added, reset) == (51, 0, 2, False)
    assert view.marker_above() == "new one"


def dm_from_bob(seq: int, text: str) -> schema.Message:
    return message(seq, text, "bob", conversation="d1", to="alice")


def test_opening_a_chat_marks_where_the_unread_messages_start(
    presenter: Presenter, view: FakeView
) -> None:
    sign_in(presenter)
    feed(presenter, *received(dm_from_bob(1, "one"), dm_from_bob(2, "two")))
    presenter.select(dm_key("bob"))
    assert view.marker_above() == "one"  # all of it was unread
    presenter.select(GENERAL_KEY)
    feed(presenter, *received(dm_from_bob(3, "three"), dm_from_bob(4, "four")))
    presenter.select(dm_key("bob"))
    assert view.texts() == ["one", "two", "three", "four"]
    assert view.marker_above() == "three"
    assert [row.text for row in view.rows if row.marker] == ["New messages"]
    presenter.select(dm_key("bob"))  # chosen again (a double click): it stays as it is
    assert view.marker_above() == "three"
    presenter.select(GENERAL_KEY)
    presenter.select(dm_key("bob"))
    assert view.marker_above() is None  # nothing new since: no line


def test_messages_arriving_while_scrolled_up_are_marked_and_counted(
    presenter: Presenter, view: FakeView
) -> None:
    sign_in(presenter, [schema.ConversationEntry(conversation="general", last_seq=50)])
    history(presenter, GENERAL_KEY, [message(s, f"m{s}") for s in range(1, 51)], more=False)
    assert view.jump == ""  # at the bottom: no button
    presenter.scrolled(0.2, 0.5)
    assert view.jump == "Jump to latest ↓"
    feed(presenter, *received(message(51, "m51")))
    assert view.jump == "1 new message ↓"
    feed(presenter, *received(message(52, "m52"), message(53, "m53")))
    assert view.jump == "3 new messages ↓"
    assert view.marker_above() == "m51"
    i18n.install("ru")
    presenter.render()
    assert view.jump == "3 новых сообщения ↓"
    i18n.install("en")
    presenter.scrolled(0.6, 1.0)  # the reader scrolled down to them
    assert view.jump == ""
    assert view.marker_above() == "m51"  # the line stays while the chat is open


def test_jump_to_latest_scrolls_to_the_newest(presenter: Presenter, view: FakeView) -> None:
    sign_in(presenter, [schema.ConversationEntry(conversation="general", last_seq=50)])
    history(presenter, GENERAL_KEY, [message(s, f"m{s}") for s in range(1, 51)], more=False)
    presenter.scrolled(0.2, 0.5)
    feed(presenter, *received(message(51, "m51")))
    presenter.jump_to_latest()
    assert view.scrolled_to_bottom == 1
    assert view.jump == ""
    assert view.texts()[-1] == "m51"


def test_sending_while_scrolled_up_brings_the_message_into_view(
    presenter: Presenter, view: FakeView
) -> None:
    sign_in(presenter, [schema.ConversationEntry(conversation="general", last_seq=50)])
    history(presenter, GENERAL_KEY, [message(s, f"m{s}") for s in range(1, 51)], more=False)
    presenter.scrolled(0.2, 0.5)
    presenter.send("mine")
    assert view.texts()[-1] == "mine"
    assert view.scrolled_to_bottom == 1
    assert view.jump == ""


def test_sending_from_far_back_in_a_long_chat_shows_the_newest(
    presenter: Presenter, view: FakeView
) -> None:
    sign_in(presenter, [schema.ConversationEntry(conversation="general", last_seq=1000)])
    for end in range(1000, 0, -200):
        history(
            presenter, GENERAL_KEY, [message(s) for s in range(end - 199, end + 1)], more=end > 200
        )
    for _ in range(20):
        presenter.scrolled(0.0, 0.5)
    assert view.rows[0].id == "seq:1"
    presenter.send("mine")
    assert view.texts()[-1] == "mine"
    assert view.rows[-2].id == "seq:1000"
    assert view.scrolled_to_bottom == 1


# -- people ------------------------------------------------------------------------------------


def users(*pairs: tuple[str, bool], more: str | None = None) -> schema.UsersResult:
    return schema.UsersResult(
        users=[schema.UserEntry(name=n, online=o) for n, o in pairs], next=more
    )


def test_the_directory_searches_on_the_server(
    presenter: Presenter, view: FakeView, backend: FakeBackend
) -> None:
    sign_in(presenter)
    presenter.search_people("bo")
    request = backend.last("users")[0]
    assert backend.last("users") == (request, "bo", None)
    feed(presenter, events.UsersFound(request - 1, users(("stale", True)), False))
    feed(
        presenter,
        events.UsersFound(request, users(("bob", True), ("bobby", False), more="bobby"), False),
    )
    assert [(p.name, p.online) for p in view.people] == [("bob", True), ("bobby", False)]
    assert view.more_people
    presenter.more_people()
    assert backend.last("users") == (request, "bo", "bobby")
    feed(presenter, events.UsersFound(request, users(("bobo", True)), True))
    assert [p.name for p in view.people] == ["bob", "bobby", "bobo"]
    assert not view.more_people


def test_choosing_a_person_opens_the_dm_with_history(
    presenter: Presenter, view: FakeView, backend: FakeBackend
) -> None:
    sign_in(presenter)
    presenter.open_dm("Bob")
    assert backend.last("history") == (dm_key("bob"), None, "Bob", None)
    assert view.header is not None
    assert view.header.title == "Bob"
    old = message(1, "earlier", sender="bob", conversation="dm:1:2", to="alice")
    history(presenter, dm_key("bob"), [old], more=False, conversation="dm:1:2")
    assert view.texts() == ["earlier"]
    presenter.send("hi bob")
    assert backend.last("send")[1:] == ("Bob", "hi bob")


def test_the_quick_switcher_finds_chats_and_people(
    presenter: Presenter, view: FakeView, backend: FakeBackend
) -> None:
    sign_in(presenter, entries())
    presenter.switcher_search("ca")
    assert [r.title for r in view.switcher] == ["carol"]
    request = backend.last("users")[0]
    feed(presenter, events.UsersFound(request, users(("carol", True), ("casey", False)), False))
    assert [r.title for r in view.switcher] == ["carol", "casey"]
    presenter.switcher_choose(dm_key("casey"))
    assert view.header is not None
    assert view.header.title == "casey"
    presenter.switcher_search("gen")
    presenter.switcher_choose(view.switcher[0].key)
    assert view.selected == GENERAL_KEY


# -- TLS: trust on first use, pinning, a changed certificate ---------------------------------

FINGERPRINT = "SHA256:" + ":".join(["AB"] * 32)
OTHER = "SHA256:" + ":".join(["CD"] * 32)


def sign_in_tls(presenter: Presenter) -> None:
    presenter.sign_in(SERVER, "alice", "password123", remember=True, create=False, tls=True)


def test_first_tls_sign_in_asks_to_trust_the_fingerprint_then_connects_pinned(
    presenter: Presenter, view: FakeView, backend: FakeBackend, prefs: Preferences
) -> None:
    sign_in_tls(presenter)
    assert backend.of("fetch_fingerprint") == [("127.0.0.1", 7992)]
    assert backend.of("sign_in") == []
    feed(presenter, events.FingerprintFetched(SERVER, FINGERPRINT))
    assert view.form is not None
    prompt = view.form.trust
    assert prompt is not None
    assert (prompt.address, prompt.fingerprint) == (SERVER, FINGERPRINT)
    assert FINGERPRINT in prompt.text
    assert SERVER in prompt.text
    assert "operator" in prompt.text
    presenter.trust()
    assert prefs.trusted_servers.get(SERVER) == FINGERPRINT
    path = prefs.directory / "trusted-servers.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert backend.last("sign_in") == ("127.0.0.1", 7992, "alice", "password123", False, None)
    assert backend.fingerprints == [FINGERPRINT]
    assert view.form.trust is None
    assert view.form.busy
    feed(presenter, events.SignedIn("alice", "t", [], {}))
    assert view.screen == "chat"
    # The box is remembered with the address.
    again = Preferences(prefs.directory)
    assert again.tls
    assert Presenter(FakeView(), FakeBackend(), again).form.tls


def test_a_trusted_server_is_pinned_without_asking(
    presenter: Presenter, view: FakeView, backend: FakeBackend, prefs: Preferences
) -> None:
    prefs.trusted_servers.trust(SERVER, FINGERPRINT)
    sign_in_tls(presenter)
    assert backend.of("fetch_fingerprint") == []
    assert backend.fingerprints == [FINGERPRINT]
    assert view.form is not None
    assert view.form.trust is None


def test_without_tls_nothing_is_pinned(presenter: Presenter, backend: FakeBackend) -> None:
    presenter.sign_in(SERVER, "alice", "password123", remember=True, create=False, tls=False)
    assert backend.of("fetch_fingerprint") == []
    assert backend.fingerprints == [None]


def test_cancelling_the_trust_prompt_returns_to_the_form(
    presenter: Presenter, view: FakeView, backend: FakeBackend, prefs: Preferences
) -> None:
    sign_in_tls(presenter)
    feed(presenter, events.FingerprintFetched(SERVER, FINGERPRINT))
    presenter.cancel_trust()
    assert view.screen == "sign_in"
    assert view.form is not None
    assert view.form.trust is None
    assert not view.form.busy
    assert view.form.tls
    assert prefs.trusted_servers.get(SERVER) is None
    assert backend.of("sign_in") == []
    presenter.trust()  # a late click does nothing
    assert backend.of("sign_in") == []
    # And the form works again: asking anew.
    sign_in_tls(presenter)
    assert len(backend.of("fetch_fingerprint")) == 2


def test_a_changed_certificate_at_sign_in_is_refused_with_both_fingerprints(
    presenter: Presenter, view: FakeView, backend: FakeBackend, prefs: Preferences
) -> None:
    prefs.trusted_servers.trust(SERVER, FINGERPRINT)
    sign_in_tls(presenter)
    feed(presenter, events.CertificateChanged(SERVER, FINGERPRINT, OTHER))
    assert view.screen == "sign_in"
    assert view.form is not None
    assert "has changed" in view.form.error
    assert "intercepting" in view.form.error
    assert FINGERPRINT in view.form.error
    assert OTHER in view.form.error
    assert not view.form.busy
    assert len(backend.of("sign_in")) == 1
    assert prefs.trusted_servers.get(SERVER) == FINGERPRINT


def test_a_changed_certificate_while_reconnecting_ends_the_session(
    presenter: Presenter, view: FakeView, backend: FakeBackend, prefs: Preferences
) -> None:
    prefs.trusted_servers.trust(SERVER, FINGERPRINT)
    sign_in_tls(presenter)
    feed(presenter, events.SignedIn("alice", "t", [], {}))
    # The client library's typed error, whatever its wording: the window reads attributes.
    changed = CertificateChangedError(SERVER, FINGERPRINT, OTHER)
    feed(presenter, StateChanged(ConnectionState.OFFLINE, reason="(any text)", error=changed))
    assert view.screen == "sign_in"
    assert view.form is not None
    assert "intercepting" in view.form.error
    assert FINGERPRINT in view.form.error
    assert OTHER in view.form.error
    assert len(backend.of("sign_in")) == 1


def test_a_server_without_tls_is_explained(presenter: Presenter, view: FakeView) -> None:
    sign_in_tls(presenter)
    feed(presenter, events.SignInFailed(events.TLS_FAILED, "wrong version number"))
    assert view.form is not None
    assert "secure connection" in view.form.error
    assert view.form.trust is None


def test_the_trust_prompt_is_translated(presenter: Presenter, view: FakeView) -> None:
    i18n.install("ru")
    sign_in_tls(presenter)
    feed(presenter, events.FingerprintFetched(SERVER, FINGERPRINT))
    assert view.form is not None
    assert view.form.trust is not None
    assert "Доверять" in view.form.trust.text
    assert FINGERPRINT in view.form.trust.text
