"""Fakes for presenter tests: a view that keeps what it was told, a backend that records."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from beseda.gui.presenter import (
    ChannelRow,
    ChannelSettings,
    ComposerContext,
    ConversationRow,
    Header,
    MembersPanel,
    MessageRow,
    PersonRow,
    SearchPanel,
    SignInForm,
    Status,
    SwitcherRow,
)
from beseda.protocol import schema


class FakeView:
    def __init__(self) -> None:
        self.screen = ""
        self.form: SignInForm | None = None
        self.user = ""
        self.conversations: list[ConversationRow] = []
        self.selected = ""
        self.header: Header | None = None
        self.all_rows: list[MessageRow] = []
        self.edits: list[tuple[int, int, int, bool]] = []
        self.status: Status | None = None
        self.people: list[PersonRow] = []
        self.more_people = False
        self.switcher: list[SwitcherRow] = []
        self.composer_error = ""
        self.title = ""
        self.bells = 0
        self.jump = ""
        self.scrolled_to_bottom = 0
        self.typing = ""
        self.channels: list[ChannelRow] = []
        self.members: MembersPanel | None = None
        self.error = ""
        self.settings: ChannelSettings | None = None
        self.settings_shown = 0
        self.composer_note = ""
        self.context: ComposerContext | None = None
        self.composer_text = ""
        self.confirm = ""
        self.search: SearchPanel | None = None
        self.scrolled_to: list[str] = []

    def show_sign_in(self, form: SignInForm) -> None:
        self.screen, self.form = "sign_in", form

    def show_chat(self, user: str) -> None:
        self.screen, self.user = "chat", user

    def show_conversations(self, rows: Sequence[ConversationRow], selected: str) -> None:
        self.conversations, self.selected = list(rows), selected

    def show_header(self, header: Header) -> None:
        self.header = header

    def edit_messages(
        self,
        start: int,
        removed: int,
        rows: Sequence[MessageRow],
        *,
        reset: bool,
        follow: bool = True,
    ) -> None:
        assert 0 <= start <= len(self.all_rows)
        assert start + removed <= len(self.all_rows)
        self.all_rows[start : start + removed] = rows
        self.edits.append((start, removed, len(rows), reset))

    def show_status(self, status: Status) -> None:
        self.status = status

    def show_jump(self, text: str) -> None:
        self.jump = text

    def scroll_to_bottom(self) -> None:
        self.scrolled_to_bottom += 1

    def show_people(self, rows: Sequence[PersonRow], more: bool) -> None:
        self.people, self.more_people = list(rows), more

    def show_switcher(self, rows: Sequence[SwitcherRow]) -> None:
        self.switcher = list(rows)

    def show_composer_error(self, text: str) -> None:
        self.composer_error = text

    def show_typing(self, text: str) -> None:
        self.typing = text

    def show_channels(self, rows: Sequence[ChannelRow]) -> None:
        self.channels = list(rows)

    def show_members(self, panel: MembersPanel) -> None:
        self.members = panel

    def show_settings(self, panel: ChannelSettings | None) -> None:
        self.settings = panel
        self.settings_shown += 1

    def show_composer(self, note: str) -> None:
        self.composer_note = note

    def show_error(self, text: str) -> None:
        self.error = text

    def set_title(self, title: str) -> None:
        self.title = title

    def show_composer_context(self, context: ComposerContext | None) -> None:
        self.context = context

    def set_composer_text(self, text: str) -> None:
        self.composer_text = text

    def show_confirm(self, text: str) -> None:
        self.confirm = text

    def show_search(self, panel: SearchPanel) -> None:
        self.search = panel

    def scroll_to_row(self, row_id: str) -> None:
        self.scrolled_to.append(row_id)

    def bell(self) -> None:
        self.bells += 1

    # -- for assertions
    @property
    def rows(self) -> list[MessageRow]:
        """The rows shown, the lines above each day left out."""
        return [row for row in self.all_rows if not row.day]

    def texts(self) -> list[str]:
        """The messages shown (the "new messages" line left out)."""
        return [row.text for row in self.rows if not row.marker]

    def marker_above(self) -> str | None:
        """The text of the message just below the "new messages" line, if one is shown."""
        for index, row in enumerate(self.rows):
            if row.marker:
                return self.rows[index + 1].text if index + 1 < len(self.rows) else ""
        return None

    def unread(self) -> dict[str, int]:
        return {row.title: row.unread for row in self.conversations}


@dataclass
class FakeBackend:
    calls: list[tuple[str, Any]] = field(default_factory=list)
    sessions: int = 0
    fingerprints: list[str | None] = field(default_factory=list)
    """The ``fingerprint`` of each sign_in, in order."""
    history_limits: list[int] = field(default_factory=list)
    """The ``limit`` of each history call, in order."""

    def sign_in(
        self,
        host: str,
        port: int,
        username: str,
        password: str,
        *,
        create: bool,
        token: str | None,
        fingerprint: str | None = None,
    ) -> int:
        self.sessions += 1
        self.calls.append(("sign_in", (host, port, username, password, create, token)))
        self.fingerprints.append(fingerprint)
        return self.sessions

    def fetch_fingerprint(self, host: str, port: int) -> int:
        self.sessions += 1
        self.calls.append(("fetch_fingerprint", (host, port)))
        return self.sessions

    def sign_out(self) -> None:
        self.calls.append(("sign_out", None))

    def send(self, local_id: str, peer: str | None, text: str) -> None:
        self.calls.append(("send", (local_id, peer, text)))

    def history(
        self,
        key: str,
        *,
        conversation: str | None,
        peer: str | None,
        before: int | None,
        limit: int = schema.DEFAULT_PAGE,
        after: int | None = None,
        around: int | None = None,
    ) -> None:
        if after is not None:
            self.calls.append(("history_after", (key, conversation, after)))
        elif around is not None:
            self.calls.append(("history_around", (key, conversation, around)))
        else:
            self.calls.append(("history", (key, conversation, peer, before)))
        self.history_limits.append(limit)

    def users(self, request: int, query: str, *, after: str | None = None) -> None:
        self.calls.append(("users", (request, query, after)))

    def watch(self, names: list[str]) -> None:
        self.calls.append(("watch", list(names)))

    def post(
        self, local_id: str, conversation: str, text: str, *, reply_to: int | None = None
    ) -> None:
        if reply_to is None:
            self.calls.append(("post", (local_id, conversation, text)))
        else:
            self.calls.append(("reply", (local_id, conversation, text, reply_to)))

    def edit(self, conversation: str, seq: int, text: str) -> None:
        self.calls.append(("edit", (conversation, seq, text)))

    def delete(self, conversation: str, seq: int) -> None:
        self.calls.append(("delete", (conversation, seq)))

    def react(self, conversation: str, seq: int, emoji: str) -> None:
        self.calls.append(("react", (conversation, seq, emoji)))

    def unreact(self, conversation: str, seq: int, emoji: str) -> None:
        self.calls.append(("unreact", (conversation, seq, emoji)))

    def search(self, request: int, query: str, *, cursor: str | None = None) -> None:
        self.calls.append(("search", (request, query, cursor)))

    def create_channel(self, name: str, *, public: bool, topic: str) -> None:
        self.calls.append(("create_channel", (name, public, topic)))

    def create_group(self, members: list[str]) -> None:
        self.calls.append(("create_group", list(members)))

    def join(self, conversation: str) -> None:
        self.calls.append(("join", conversation))

    def leave(self, conversation: str) -> None:
        self.calls.append(("leave", conversation))

    def invite(self, conversation: str, names: list[str]) -> None:
        self.calls.append(("invite", (conversation, list(names))))

    def remove(self, conversation: str, name: str) -> None:
        self.calls.append(("remove", (conversation, name)))

    def set_role(self, conversation: str, name: str, role: str) -> None:
        self.calls.append(("set_role", (conversation, name, role)))

    def rename(self, conversation: str, name: str) -> None:
        self.calls.append(("rename", (conversation, name)))

    def set_topic(self, conversation: str, topic: str) -> None:
        self.calls.append(("set_topic", (conversation, topic)))

    def archive(self, conversation: str) -> None:
        self.calls.append(("archive", conversation))

    def lookup(self, conversation: str) -> None:
        self.calls.append(("lookup", conversation))

    def members(self, conversation: str) -> None:
        self.calls.append(("members", conversation))

    def channels(self, request: int, query: str) -> None:
        self.calls.append(("channels", (request, query)))

    def read(self, conversation: str, seq: int) -> None:
        self.calls.append(("read", (conversation, seq)))

    def typing(self, conversation: str) -> None:
        self.calls.append(("typing", conversation))

    def of(self, kind: str) -> list[Any]:
        return [args for name, args in self.calls if name == kind]

    def last(self, kind: str) -> Any:
        return self.of(kind)[-1]


def message(
    seq: int,
    text: str = "hi",
    sender: str = "bob",
    *,
    conversation: str = schema.GENERAL,
    to: str | None = None,
    client_id: str | None = None,
    ts: int = 1_700_000_000_000,
    kind: str = "message",
    mentions: list[str] | None = None,
    mention_all: bool = False,
    target: str | None = None,
) -> schema.Message:
    return schema.Message(
        kind=kind,
        mentions=mentions or [],
        mention_all=mention_all,
        target=target,
        id=seq,
        conversation=conversation,
        seq=seq,
        sender=sender,
        to=to,
        text=text,
        ts=ts + seq,
        client_id=client_id or f"c{conversation}{seq}",
    )


class Clock:
    """A monotonic clock the test moves by hand (``clock.now += 3``)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now
