"""Thin Tk views: they show what the presenter gives them and pass the user's actions back.

:class:`MainWindow` implements the presenter's :class:`~.presenter.View`. Its widgets are
attributes so that the real-window tests can drive them as a person would.
"""

from __future__ import annotations

import contextlib
import tkinter as tk
import webbrowser
from collections.abc import Callable, Sequence
from tkinter import font as tkfont
from tkinter import ttk
from typing import Any, cast

from . import emoji, theme
from .i18n import _, ngettext
from .presenter import (
    CHANNELS,
    DIRECT,
    GENERAL_KEY,
    ChannelRow,
    ChannelSettings,
    ComposerContext,
    ConversationRow,
    Header,
    MembersPanel,
    MessageRow,
    PersonRow,
    Presenter,
    SearchPanel,
    SignInForm,
    Status,
    SwitcherRow,
)
from .text import find_links, link_target

MIN_WIDTH, MIN_HEIGHT = 760, 520
SECTION = "section:"
"""The sidebar's section rows (Channels, Direct messages) have ids with this prefix."""
SECTIONS = (CHANNELS, DIRECT)

SEARCH_KEYS = ("<Control-f>", "<Control-F>", "<Control-Cyrillic_a>", "<Control-Cyrillic_A>")
"""Ctrl+F, on a Latin or a Russian layout."""
SELECT_ALL = ("<Control-a>", "<Control-A>", "<Control-Cyrillic_ef>", "<Control-Cyrillic_EF>")
"""Ctrl+A, on a Latin or a Russian layout (there X reports the Cyrillic letter's key)."""


def bind_select_all(root: tk.Misc) -> None:
    """Ctrl+A selects all the text of any entry or text box (Tk's default on X11 moves to
    the start of the line, as in Emacs)."""

    def entry(event: tk.Event[Any]) -> str:
        widget = cast(tk.Entry, event.widget)
        widget.selection_range(0, "end")
        widget.icursor("end")
        return "break"

    def text(event: tk.Event[Any]) -> str:
        widget = cast(tk.Text, event.widget)
        widget.tag_add("sel", "1.0", "end-1c")
        widget.mark_set("insert", "end-1c")
        return "break"

    for sequence in SELECT_ALL:
        with contextlib.suppress(tk.TclError):  # a Tk that does not know the keysym
            for widget_class in ("TEntry", "Entry"):
                root.bind_class(widget_class, sequence, entry)
            root.bind_class("Text", sequence, text)


class Popup(tk.Toplevel):
    """A window over the main one that gives its Tcl variables back when it closes.

    A closed window's widgets still refer to each other (``master`` and ``children``), so
    Python frees them in a garbage collection, which may run on the network thread; a
    ``StringVar`` freed there would call Tcl from the wrong thread ("main thread is not in
    main loop"). Released here, on the Tk thread, they have nothing left to do then.
    """

    def destroy(self) -> None:
        super().destroy()
        for value in list(vars(self).values()):
            if isinstance(value, tk.Variable):
                value.__del__()
                value._tk = None  # type: ignore[attr-defined]


class SignInScreen(ttk.Frame):
    """Server, username, password; Sign in and Create account; an inline error; the question
    whether to trust a server's certificate."""

    def __init__(self, master: tk.Misc, window: MainWindow) -> None:
        super().__init__(master, style="Card.TFrame")
        self.window = window
        card = ttk.Frame(self, style="Card.TFrame", padding=24)
        card.place(relx=0.5, rely=0.45, anchor="center")
        ttk.Label(card, text="beseda", style="Title.TLabel").grid(row=0, column=0, sticky="w")
        ttk.Label(card, text=_("Sign in to chat"), style="Muted.TLabel").grid(
            row=1, column=0, sticky="w", pady=(0, 16)
        )
        self.server = tk.StringVar(self)
        self.username = tk.StringVar(self)
        self.password = tk.StringVar(self)
        self.remember = tk.BooleanVar(self, value=True)
        self.tls = tk.BooleanVar(self, value=False)
        self.server_entry = self._field(card, 2, _("Server"), self.server)
        self.username_entry = self._field(card, 4, _("Username"), self.username)
        self.password_entry = self._field(card, 6, _("Password"), self.password, show="•")
        self.remember_check = ttk.Checkbutton(
            card, text=_("Keep me signed in"), variable=self.remember
        )
        self.remember_check.grid(row=8, column=0, sticky="w", pady=(10, 0))
        self.tls_check = ttk.Checkbutton(card, text=_("Secure connection (TLS)"), variable=self.tls)
        self.tls_check.grid(row=9, column=0, sticky="w", pady=(4, 0))
        self.error = ttk.Label(card, style="Error.TLabel", wraplength=320, justify="left")
        self.error.grid(row=10, column=0, sticky="we", pady=(10, 0))
        self.trust_frame = ttk.Frame(card, style="Card.TFrame")
        self.trust_frame.grid(row=11, column=0, sticky="we", pady=(10, 0))
        self.trust_text = ttk.Label(self.trust_frame, wraplength=320, justify="left")
        self.trust_text.pack(anchor="w")
        self.trust_button = ttk.Button(
            self.trust_frame,
            text=_("Trust"),
            style="Accent.TButton",
            command=lambda: self.window.presenter.trust(),
        )
        self.trust_button.pack(side="left", pady=(8, 0))
        self.cancel_trust_button = ttk.Button(
            self.trust_frame, text=_("Cancel"), command=lambda: self.window.presenter.cancel_trust()
        )
        self.cancel_trust_button.pack(side="left", padx=(8, 0), pady=(8, 0))
        self.trust_frame.grid_remove()
        buttons = ttk.Frame(card, style="Card.TFrame")
        buttons.grid(row=12, column=0, sticky="we", pady=(14, 0))
        self.sign_in_button = ttk.Button(
            buttons, text=_("Sign in"), style="Accent.TButton", command=self._sign_in
        )
        self.sign_in_button.pack(side="left")
        self.create_button = ttk.Button(
            buttons, text=_("Create account"), command=self._create_account
        )
        self.create_button.pack(side="left", padx=(8, 0))
        card.columnconfigure(0, minsize=320)
        for entry in (self.server_entry, self.username_entry, self.password_entry):
            entry.bind("<Return>", lambda _e: self._sign_in())

    @staticmethod
    def _field(
        card: ttk.Frame, row: int, label: str, variable: tk.StringVar, show: str = ""
    ) -> ttk.Entry:
        ttk.Label(card, text=label, style="Muted.TLabel").grid(
            row=row, column=0, sticky="w", pady=(6, 2)
        )
        entry = ttk.Entry(card, textvariable=variable, show=show, width=36)
        entry.grid(row=row + 1, column=0, sticky="we")
        return entry

    def _submit(self, create: bool) -> None:
        self.window.presenter.sign_in(
            self.server.get(),
            self.username.get(),
            self.password.get(),
            remember=self.remember.get(),
            create=create,
            tls=self.tls.get(),
        )

    def _sign_in(self) -> None:
        self._submit(False)

    def _create_account(self) -> None:
        self._submit(True)

    def show(self, form: SignInForm) -> None:
        self.server.set(form.server)
        if form.username or not self.username.get():
            self.username.set(form.username)
        self.remember.set(form.remember)
        self.tls.set(form.tls)
        if form.trust is not None:
            self.error.configure(text="", style="Error.TLabel")
            self.trust_text.configure(text=form.trust.text)
            self.trust_frame.grid()
            self.trust_button.focus_set()
        else:
            self.trust_frame.grid_remove()
            if form.busy:
                self.error.configure(text=_("Connecting…"), style="Muted.TLabel")
            else:
                self.error.configure(text=form.error, style="Error.TLabel")
                self.password.set("")
        waiting = form.busy or form.trust is not None
        state = ["disabled"] if waiting else ["!disabled"]
        self.sign_in_button.state(state)
        self.create_button.state(state)
        if not waiting:
            target = self.password_entry if self.username.get() else self.username_entry
            target.focus_set()


class MessageList:
    """The conversation's messages in a read-only Text; rows are edited in place.

    Each row starts at a mark, so the presenter's "replace rows i..j" edits touch only those
    rows. The Text holds at most the presenter's window of rows (a few hundred), however long
    the conversation.
    """

    def __init__(self, master: tk.Misc, window: MainWindow, palette: theme.Palette) -> None:
        self.window = window
        self.frame = ttk.Frame(master)
        self.text = tk.Text(
            self.frame,
            wrap="word",
            borderwidth=0,
            highlightthickness=0,
            padx=18,
            pady=10,
            background=palette.background,
            foreground=palette.text,
            selectbackground=palette.selection,
            inactiveselectbackground=palette.selection,
            cursor="arrow",
            takefocus=False,
            width=1,
            font="TkTextFont",
        )
        self.scrollbar = ttk.Scrollbar(self.frame, orient="vertical", command=self.text.yview)
        self.text.configure(yscrollcommand=self._scrolled, state="disabled")
        self.scrollbar.pack(side="right", fill="y")
        self.text.pack(side="left", fill="both", expand=True)
        bold = ("TkDefaultFont", 10, "bold")
        small = ("TkDefaultFont", 8)
        family = tkfont.nametofont("TkDefaultFont", self.text).actual("family")
        avatar_font = tkfont.Font(self.text, family=family, size=9, weight="bold")
        self.indent = avatar_font.measure(" WW ") + 10
        """Where names and message text start: right of the widest avatar."""
        self.text.tag_configure("own", background=palette.own, lmargincolor=palette.own)
        self.text.tag_configure("mention", background=palette.mention, lmargincolor=palette.mention)
        self.text.tag_configure("header", spacing1=10, tabs=(self.indent,))
        for index, (avatar, name) in enumerate(zip(palette.avatars, palette.names, strict=True)):
            self.text.tag_configure(
                f"avatar{index}", background=avatar, foreground="#ffffff", font=avatar_font
            )
            self.text.tag_configure(f"name{index}", foreground=name, font=bold)
        self.text.tag_configure("time", foreground=palette.muted, font=small)
        self.text.tag_configure("note", foreground=palette.muted, font=small)
        self.text.tag_configure("failed", foreground=palette.error, font=small)
        self.text.tag_configure("retry", foreground=palette.accent, underline=True, font=small)
        self.text.tag_configure(
            "body", spacing1=1, spacing3=2, lmargin1=self.indent, lmargin2=self.indent
        )
        self.text.tag_configure(
            "marker",
            foreground=palette.accent,
            font=("TkDefaultFont", 8, "bold"),
            justify="center",
            spacing1=10,
            spacing3=2,
        )
        self.text.tag_configure(
            "day",
            foreground=palette.muted,
            font=("TkDefaultFont", 9, "bold"),
            justify="center",
            spacing1=14,
            spacing3=2,
        )
        self.text.tag_configure(
            "event",
            foreground=palette.muted,
            font=small,
            spacing1=6,
            spacing3=2,
            lmargin1=self.indent,
            lmargin2=self.indent,
        )
        self.text.tag_configure("link", foreground=palette.link, underline=True)
        self.text.tag_configure(
            "quote",
            foreground=palette.muted,
            font=small,
            lmargin1=self.indent,
            lmargin2=self.indent,
        )
        self.text.tag_configure("edited", foreground=palette.muted, font=small)
        self.text.tag_configure(
            "reactions", spacing1=3, spacing3=4, lmargin1=self.indent, lmargin2=self.indent
        )
        self.text.tag_configure("reaction", background=palette.sidebar, font=("TkDefaultFont", 9))
        self.text.tag_configure(
            "reaction_mine", background=palette.selection, foreground=palette.accent
        )
        self.text.tag_configure(
            "highlight", background=palette.highlight, lmargincolor=palette.highlight
        )
        self.text.tag_raise("sel")
        self.text.tag_bind("retry", "<Button-1>", self._retry)
        self.text.tag_bind("link", "<Button-1>", self._open_link)
        self.text.tag_bind("quote", "<Button-1>", self._quote_clicked)
        self.text.tag_bind("reaction", "<Button-1>", self._reaction_clicked)
        self.text.bind("<Button-3>", self._menu_requested)
        self.menu: tk.Menu | None = None
        """The menu of the message last right-clicked."""
        self.chips: dict[str, tuple[str, ...]] = {}
        """Row id → the emoji of its reactions, in the order shown."""
        self.picker: EmojiPicker | None = None
        for clickable in ("retry", "link", "quote", "reaction"):
            self.text.tag_bind(clickable, "<Enter>", lambda _e: self.text.configure(cursor="hand2"))
            self.text.tag_bind(clickable, "<Leave>", lambda _e: self.text.configure(cursor="arrow"))
        self.marks: list[str] = []
        self.row_ids: list[str] = []
        self._names = 0
        self._last_scroll: tuple[float, float] | None = None
        self._scroll_pending = False
        self.stuck = True
        """The newest row was in view when last looked: it stays in view when the window is
        resized and when rows are added."""
        self._height = 0
        self.text.bind("<Configure>", self._resized)
        self.jump_button = ttk.Button(
            self.frame, style="Accent.TButton", command=lambda: window.presenter.jump_to_latest()
        )

    def _position(self, row: int) -> str:
        return self.marks[row] if row < len(self.marks) else "end-1c"

    def edit(
        self,
        start: int,
        removed: int,
        rows: Sequence[MessageRow],
        *,
        reset: bool,
        follow: bool = True,
    ) -> None:
        text = self.text
        at_bottom = self.stuck or self._bottom_visible()
        anchor = self._anchor()
        text.configure(state="normal")
        if removed:
            text.delete(self._position(start), self._position(start + removed))
            for mark in self.marks[start : start + removed]:
                text.mark_unset(mark)
            del self.marks[start : start + removed]
            del self.row_ids[start : start + removed]
        text.mark_set("insert_row", self._position(start))
        text.mark_gravity("insert_row", "right")
        new_marks = []
        for row in rows:
            begin = text.index("insert_row")
            self._insert(row)
            self._names += 1
            mark = f"row{self._names}"
            text.mark_set(mark, begin)  # marks keep right gravity: text goes in before them
            new_marks.append(mark)
        self.marks[start:start] = new_marks
        self.row_ids[start:start] = [row.id for row in rows]
        text.configure(state="disabled")
        if reset and "marker" in self.row_ids:
            text.see("end")
            self.stuck = True
            marker = self.marks[self.row_ids.index("marker")]
            if text.bbox(marker) is None:
                # More unread than a screenful: the reader starts where they stopped.
                text.yview(marker)
                self.stuck = False
        elif reset or (at_bottom and follow):
            text.see("end")
            self.stuck = True
        elif anchor is not None and anchor[0] in self.row_ids:
            text.yview(self.marks[self.row_ids.index(anchor[0])])
            if anchor[1]:
                text.yview_scroll(-anchor[1], "pixels")

    def _anchor(self) -> tuple[str, int] | None:
        """The message at the top of the view and how far down it starts (pixels), to keep
        it there: the edit may replace every row (the window moved), so a text mark could
        not follow it. A day's line or the unread line is no anchor: older rows put before
        it keep the same line at the very top, and the reader would stay at the top, paging
        on by themselves."""
        text = self.text
        top = next(
            (t.removeprefix("row:") for t in text.tag_names("@0,0") if t.startswith("row:")),
            None,
        )
        if top is None or top not in self.row_ids:
            return None
        if not top.startswith(("day:", "marker")):
            return top, 0
        position = self.row_ids.index(top)
        for row_id, mark in zip(self.row_ids[position:], self.marks[position:], strict=True):
            if not row_id.startswith(("day:", "marker")):
                line = text.dlineinfo(mark)
                return (row_id, line[1]) if line is not None else None
        return None

    def _insert(self, row: MessageRow) -> None:
        # One Tcl call per row (text, tags, text, tags …): a window of 400 rows is redrawn
        # in a fraction of the time separate inserts take.
        self.text.tk.call(str(self.text), "insert", "insert_row", *self._parts(row))

    def _parts(self, row: MessageRow) -> list[str | tuple[str, ...]]:
        """The row's pieces of text, each followed by its tags."""
        tag = "row:" + row.id
        if row.day:
            return [row.text + "\n", ("day", tag)]
        if row.marker:
            return [f"———  {row.text}  ———\n", ("marker", tag)]
        if row.event:
            return [f"{row.text}  {row.time}\n", ("event", tag)]
        parts: list[str | tuple[str, ...]] = []
        shade: tuple[str, ...] = ("mention",) if row.mention else ("own",) if row.own else ()
        if row.highlight:
            shade = ("highlight",)
        # As few pieces as the looks allow (each costs Tk its tags' toggles); a line's
        # spacing and tab stop come from the tags of its first character.
        own = (tag, *shade)
        if not row.continued:
            parts += [f" {row.avatar} ", (f"avatar{row.colour}", "header", *own)]
            parts += ["\t" + row.sender, (f"name{row.colour}", *own)]
            parts += ["  " + row.time, ("time", *own)]
            self._marks(parts, row, own)
            _end_line(parts)
        if row.quote_seq:
            parts += [f"┃ {row.quote}\n", ("quote", f"quote:{row.quote_seq}", tag, *shade)]
        body = ("body", *own)
        at = 0
        for start, end in find_links(row.text):
            parts += [row.text[at:start], body, row.text[start:end], ("link", *body)]
            at = end
        parts += [row.text[at:], body]
        if row.continued:
            self._marks(parts, row, body)
        _end_line(parts)
        if row.reactions:
            line = ("reactions", tag, *shade)
            # Tags name a chip by its place: Tcl would hand an emoji back in UTF-16 halves.
            self.chips[row.id] = tuple(chip.emoji for chip in row.reactions)
            for index, chip in enumerate(row.reactions):
                chip_tags = ("reaction", f"react:{index}", *line)
                if chip.mine:
                    chip_tags = ("reaction_mine", *chip_tags)
                parts += [f" {chip.emoji} {chip.count} ", chip_tags, "  ", line]
            parts += ["\n", line]
        return parts

    @staticmethod
    def _marks(parts: list[str | tuple[str, ...]], row: MessageRow, tags: tuple[str, ...]) -> None:
        """The edited mark; one's own message's state (✓, sending…, why it failed) and its
        Retry link."""
        if row.edited:
            parts += ["  " + _("edited"), ("edited", *tags)]
        if row.note:
            parts += ["  " + row.note, ("failed" if row.failed else "note", *tags)]
        if row.failed:
            parts += ["  ", tags, _("Retry"), ("retry", *tags)]

    def _retry(self, event: tk.Event[Any]) -> None:
        for tag in self.text.tag_names(f"@{event.x},{event.y}"):
            if tag.startswith("row:"):
                self.window.presenter.retry(tag.removeprefix("row:"))

    def _row_at(self, x: int, y: int) -> tuple[str | None, tuple[str, ...]]:
        tags = tuple(str(t) for t in self.text.tag_names(f"@{x},{y}"))
        row = next((t.removeprefix("row:") for t in tags if t.startswith("row:")), None)
        return row, tags

    def _quote_clicked(self, event: tk.Event[Any]) -> str:
        _row, tags = self._row_at(event.x, event.y)
        for tag in tags:
            if tag.startswith("quote:"):
                self.window.presenter.jump_to(int(tag.removeprefix("quote:")))
        return "break"

    def _reaction_clicked(self, event: tk.Event[Any]) -> str:
        row, tags = self._row_at(event.x, event.y)
        for tag in tags:
            if tag.startswith("react:") and row is not None:
                chips = self.chips.get(row, ())
                index = int(tag.removeprefix("react:"))
                if index < len(chips):
                    self.window.presenter.toggle_reaction(row, chips[index])
        return "break"

    def _menu_requested(self, event: tk.Event[Any]) -> str:
        row, _tags = self._row_at(event.x, event.y)
        if row is not None:
            menu = self.menu_for(row)
            if menu is not None:
                menu.tk_popup(event.x_root, event.y_root)
        return "break"

    def menu_for(self, row_id: str) -> tk.Menu | None:
        """The menu of one message (Reply, Edit, Delete, React, Copy), as the presenter
        allows; None when the row is not a message."""
        offer = self.window.presenter.message_menu(row_id)
        if offer is None:
            return None
        if self.menu is not None:
            self.menu.destroy()
        presenter = self.window.presenter
        menu = self.menu = tk.Menu(self.text, tearoff=False)
        if offer.reply:
            menu.add_command(label=_("Reply"), command=lambda: self._reply(row_id))
        if offer.edit:
            menu.add_command(label=_("Edit"), command=lambda: self._edit(row_id))
        if offer.delete:
            menu.add_command(label=_("Delete…"), command=lambda: presenter.ask_delete(row_id))
        if offer.react:
            reactions = tk.Menu(menu, tearoff=False)
            for choice in emoji.REACTIONS:
                mark = "✓ " if choice in offer.mine else ""
                reactions.add_command(
                    label=mark + choice,
                    command=lambda c=choice: presenter.toggle_reaction(row_id, c),  # type: ignore[misc]
                )
            reactions.add_separator()
            reactions.add_command(
                label=_("More…"), command=lambda: self.pick_reaction(row_id, offer.mine)
            )
            menu.add_cascade(label=_("React"), menu=reactions)
        menu.add_command(label=_("Copy text"), command=lambda: self._copy(offer.text))
        return menu

    def _reply(self, row_id: str) -> None:
        self.window.presenter.reply(row_id)
        self.window.chat.composer.focus_set()

    def _edit(self, row_id: str) -> None:
        if self.window.presenter.start_edit(row_id):
            self.window.chat.composer.focus_set()

    def pick_reaction(self, row_id: str, mine: frozenset[str]) -> None:
        """The bigger emoji picker, for a reaction."""
        if self.picker is not None and self.picker.winfo_exists():
            self.picker.destroy()
        self.picker = EmojiPicker(
            self.window,
            emoji.COMPOSER,
            lambda chosen: self.window.presenter.toggle_reaction(row_id, chosen),
            anchor=self.window.chat.emoji_button,
            highlighted=mine,
        )

    def _copy(self, text: str) -> None:
        self.text.clipboard_clear()
        self.text.clipboard_append(text)

    def scroll_to_row(self, row_id: str) -> None:
        """Bring a row into view, a little below the top, as a jump does."""
        if row_id not in self.row_ids:
            return
        mark = self.marks[self.row_ids.index(row_id)]
        self.text.see(mark)
        self.text.yview(f"{mark} - 3 display lines")
        self.stuck = self._bottom_visible()

    def _open_link(self, event: tk.Event[Any]) -> None:
        index = self.text.index(f"@{event.x},{event.y}")
        span = self.text.tag_prevrange("link", f"{index}+1c")
        if span:
            target = link_target(self.text.get(*span))
            if target is not None:
                self.window.open_url(target)

    def _scrolled(self, first: float, last: float) -> None:
        self.scrollbar.set(first, last)
        # Reported after Tk has settled, once per burst of scrolling.
        if not self._scroll_pending:
            self._scroll_pending = True
            self.text.after_idle(self._report_scroll)

    def _bottom_visible(self) -> bool:
        # Whether the newest line is on screen. yview()'s fraction is not reliable for this:
        # scrolled fully down, Tk may report 0.9988 (the empty line after the last newline).
        return self.text.bbox("end-2c") is not None or self.text.yview()[1] >= 1.0

    def _resized(self, _event: object) -> None:
        if self.stuck:
            self.text.see("end")

    def scroll_to_bottom(self) -> None:
        self.text.see("end")
        self.stuck = True

    def show_jump(self, label: str) -> None:
        if label:
            self.jump_button.configure(text=label)
            self.jump_button.place(in_=self.text, relx=1.0, rely=1.0, x=-14, y=-10, anchor="se")
        else:
            self.jump_button.place_forget()

    def _report_scroll(self) -> None:
        self._scroll_pending = False
        height = self.text.winfo_height()
        if self.stuck and height != self._height:
            # The window was resized, the reader did not scroll: keep the newest in view.
            self.text.see("end")
        self._height = height
        first, last = self.text.yview()
        self.stuck = self._bottom_visible()
        if self.stuck:
            last = 1.0
        if (first, last) != self._last_scroll or first <= 0.0:
            self._last_scroll = (first, last)
            self.window.presenter.scrolled(first, last)

    def row_text(self, index: int) -> str:
        """The text of row ``index`` as shown (for tests)."""
        return self.text.get(self._position(index), self._position(index + 1))


def _end_line(parts: list[str | tuple[str, ...]]) -> None:
    """End the line with its last piece of text (one piece fewer than a newline of its own)."""
    last = parts[-2]
    assert isinstance(last, str)
    parts[-2] = last + "\n"


class ChatScreen(ttk.Frame):
    """Sidebar (chats and people), the conversation, the composer, the status line."""

    def __init__(self, master: tk.Misc, window: MainWindow, palette: theme.Palette) -> None:
        super().__init__(master)
        self.window = window
        self.palette = palette
        self.dots = {
            True: theme.dot(self, palette.online),
            False: theme.dot(self, palette.offline),
            None: theme.dot(self, palette.accent),
        }
        panes = ttk.Panedwindow(self, orient="horizontal")
        panes.pack(fill="both", expand=True)
        sidebar = ttk.Frame(panes, style="Sidebar.TFrame", width=260)
        main = ttk.Frame(panes)
        panes.add(sidebar, weight=0)
        panes.add(main, weight=1)
        self._build_sidebar(sidebar)
        self._build_main(main)

    # -- sidebar -------------------------------------------------------------------------------

    def _build_sidebar(self, sidebar: ttk.Frame) -> None:
        top = ttk.Frame(sidebar, style="Sidebar.TFrame", padding=(12, 10, 8, 4))
        top.pack(fill="x")
        self.user_label = ttk.Label(top, style="SidebarBold.TLabel")
        self.user_label.pack(side="left")
        self.sign_out_button = ttk.Button(
            top, text=_("Sign out"), style="Link.TButton", command=self._sign_out
        )
        self.sign_out_button.pack(side="right")
        self.find_button = ttk.Button(
            sidebar,
            text=_("Find a person or chat…  Ctrl+K"),
            style="Link.TButton",
            command=self.window.open_switcher,
        )
        self.find_button.pack(fill="x", padx=8, pady=(0, 4))
        actions = ttk.Frame(sidebar, style="Sidebar.TFrame", padding=(8, 0, 8, 4))
        actions.pack(fill="x")
        self.new_channel_button = ttk.Button(
            actions, text=_("New channel…"), style="Link.TButton", command=self._new_channel
        )
        self.new_channel_button.pack(side="left")
        self.browse_button = ttk.Button(
            actions, text=_("Browse channels…"), style="Link.TButton", command=self._browse
        )
        self.browse_button.pack(side="left")
        self.new_group_button = ttk.Button(
            actions, text=_("New group…"), style="Link.TButton", command=self._new_group
        )
        self.new_group_button.pack(side="left")
        self.channel_dialog: NewChannelDialog | None = None
        self.browser: ChannelBrowser | None = None
        self.group_dialog: NewGroupDialog | None = None
        self.members_dialog: MembersDialog | None = None
        self.settings_dialog: ChannelSettingsDialog | None = None
        self.people_rows: list[PersonRow] = []
        self.tabs = ttk.Notebook(sidebar)
        self.tabs.pack(fill="both", expand=True)
        chats = ttk.Frame(self.tabs, style="Sidebar.TFrame")
        people = ttk.Frame(self.tabs, style="Sidebar.TFrame", padding=(8, 8, 8, 0))
        self.tabs.add(chats, text=_("Chats"))
        self.tabs.add(people, text=_("People"))

        self.chat_list = ttk.Treeview(
            chats,
            columns=("meta",),
            show="tree",
            selectmode="browse",
            takefocus=True,
            style="Chats.Treeview",
        )
        self.chat_list.column("#0", width=180, stretch=True)
        # When the last message came, and under it the unread badge.
        self.chat_list.column("meta", width=64, stretch=False, anchor="e")
        self.chat_list.tag_configure("unread", font=("TkDefaultFont", 10, "bold"))
        self.chat_list.tag_configure(
            "mention", foreground=self.palette.accent, font=("TkDefaultFont", 10, "bold")
        )
        self.chat_list.tag_configure(
            "section", foreground=self.palette.muted, font=("TkDefaultFont", 9, "bold")
        )
        for section, label in ((CHANNELS, _("Channels")), (DIRECT, _("Direct messages"))):
            self.chat_list.insert("", "end", iid=SECTION + section, text=label, open=True)
            self.chat_list.item(SECTION + section, tags=("section",))
        self.chat_list.pack(fill="both", expand=True, pady=(6, 0))
        self.chat_list.bind("<<TreeviewSelect>>", self._chat_selected)
        # A chat chosen with the mouse (or Enter) is for writing in: typing goes to the
        # composer. The arrow keys still walk the list.
        self.chat_list.bind("<ButtonRelease-1>", self._chat_clicked)
        self.chat_list.bind("<Return>", lambda _e: self.composer.focus_set())
        self._updating_list = False

        self.people_query = tk.StringVar(self)
        self.people_search = ttk.Entry(people, textvariable=self.people_query)
        self.people_search.pack(fill="x")
        self._search_job: str | None = None
        self.people_query.trace_add("write", lambda *_a: self._people_query_changed())
        self.people_list = ttk.Treeview(people, show="tree", selectmode="browse")
        self.people_list.pack(fill="both", expand=True, pady=(6, 0))
        self.people_list.bind("<ButtonRelease-1>", self._person_clicked)
        self.people_list.bind("<Double-Button-1>", self._person_chosen)
        self.people_list.bind("<Return>", self._person_chosen)
        self._people_names: dict[str, str] = {}
        self.more_people_button = ttk.Button(
            people, text=_("Show more"), style="Link.TButton", command=self._more_people
        )

    def _sign_out(self) -> None:
        self.window.presenter.sign_out()

    def _chat_selected(self, _event: object) -> None:
        if self._updating_list:
            return
        selection = self.chat_list.selection()
        if selection and not selection[0].startswith(SECTION):
            self.window.presenter.select(selection[0])

    def _people_query_changed(self) -> None:
        if self._search_job is not None:
            self.after_cancel(self._search_job)
        self._search_job = self.after(150, self._search_people)

    def _search_people(self) -> None:
        self._search_job = None
        self.window.presenter.search_people(self.people_query.get())

    def _chat_clicked(self, event: tk.Event[Any]) -> None:
        if self.chat_list.identify_row(event.y):
            self.composer.focus_set()

    def _person_clicked(self, event: tk.Event[Any]) -> None:
        row = self.people_list.identify_row(event.y)
        if row:
            self._open_person(row)

    def _person_chosen(self, _event: object = None) -> None:
        selection = self.people_list.selection()
        if selection:
            self._open_person(selection[0])

    def _open_person(self, row: str) -> None:
        name = self._people_names.get(row)
        if name is not None:
            self.window.presenter.open_dm(name)
            self.composer.focus_set()

    def _more_people(self) -> None:
        self.window.presenter.more_people()

    def show_conversations(self, rows: Sequence[ConversationRow], selected: str) -> None:
        tree = self.chat_list
        self._updating_list = True
        try:
            wanted = [row.key for row in rows]
            shown = [item for section in SECTIONS for item in tree.get_children(SECTION + section)]
            for item in set(shown) - set(wanted):
                tree.delete(item)
            positions = dict.fromkeys(SECTIONS, 0)
            for row in rows:
                parent = SECTION + (row.section if row.section in SECTIONS else DIRECT)
                tags: tuple[str, ...]
                if row.mentions:
                    badge, tags = f"@{row.mentions}", ("mention",)
                elif row.unread:
                    badge, tags = str(row.unread), ("unread",)
                else:
                    badge, tags = "", ()
                title = "  " + row.title
                if row.preview:
                    title += "\n  " + row.preview
                options: dict[str, Any] = {
                    "text": title,
                    "values": (f"{row.time}\n{badge}",),
                    "image": self.dots[row.online],
                    "tags": tags,
                }
                index = positions[parent.removeprefix(SECTION)]
                positions[parent.removeprefix(SECTION)] += 1
                if tree.exists(row.key):
                    tree.item(row.key, **options)
                    tree.move(row.key, parent, index)
                else:
                    tree.insert(parent, index, iid=row.key, **options)
            if selected in wanted and tree.selection() != (selected,):
                tree.selection_set(selected)
                tree.see(selected)
        finally:
            self._updating_list = False
        total = sum(row.unread for row in rows)
        self.tabs.tab(0, text=_("Chats") + (f"  ({total})" if total else ""))  # type: ignore[no-untyped-call]

    def show_people(self, rows: Sequence[PersonRow], more: bool) -> None:
        tree = self.people_list
        tree.delete(*tree.get_children())
        self._people_names = {}
        self.people_rows = list(rows)
        if self.group_dialog is not None and self.group_dialog.winfo_exists():
            self.group_dialog.show(self.people_rows)
        for row in rows:
            label = "  " + row.name + (_(" (you)") if row.me else "")
            self._people_names[tree.insert("", "end", text=label, image=self.dots[row.online])] = (
                row.name
            )
        if more:
            self.more_people_button.pack(fill="x", pady=4)
        else:
            self.more_people_button.pack_forget()

    # -- the conversation ----------------------------------------------------------------------

    def _build_main(self, main: ttk.Frame) -> None:
        header = ttk.Frame(main, padding=(18, 10, 18, 8))
        header.pack(fill="x")
        self.title_label = ttk.Label(header, style="Header.TLabel")
        self.title_label.pack(side="left")
        self.subtitle_label = ttk.Label(header, style="Muted.TLabel")
        self.subtitle_label.pack(side="left", padx=(10, 0), pady=(3, 0))
        self.note_label = ttk.Label(header, style="Muted.TLabel")
        self.settings_button = ttk.Button(
            header, text=_("Channel settings"), style="Link.TButton", command=self._settings
        )
        self.leave_button = ttk.Button(
            header, text=_("Leave"), style="Link.TButton", command=self._leave
        )
        self.members_button = ttk.Button(
            header, text=_("Members"), style="Link.TButton", command=self._members
        )
        ttk.Separator(main).pack(fill="x")

        status = ttk.Frame(main, style="Sidebar.TFrame")
        status.pack(side="bottom", fill="x")
        self.status_dot = ttk.Label(
            status, text="●", style="offline.Dot.TLabel", padding=(10, 0, 0, 0)
        )
        self.status_dot.pack(side="left")
        self.status_label = ttk.Label(status, style="Status.TLabel")
        self.status_label.pack(side="left")

        composer = ttk.Frame(main, padding=(14, 8, 14, 10))
        composer.pack(side="bottom", fill="x")
        self.composer_error = ttk.Label(composer, style="Error.TLabel")
        self.composer_note = ttk.Label(composer, style="Muted.TLabel")
        # Replying to or editing a message: what, and a ✕ (or Escape) to stop.
        self.context_bar = ttk.Frame(composer)
        self.context_title = ttk.Label(self.context_bar, style="ContextTitle.TLabel")
        self.context_title.pack(side="left")
        self.context_text = ttk.Label(self.context_bar, style="Muted.TLabel")
        self.context_text.pack(side="left", padx=(8, 0), fill="x", expand=True)
        self.context_cancel = ttk.Button(
            self.context_bar,
            text="✕",
            style="Link.TButton",
            width=2,
            command=lambda: self.window.presenter.cancel_composer_context(),
        )
        self.context_cancel.pack(side="right")
        box = tk.Frame(
            composer,
            background=self.palette.background,
            highlightthickness=1,
            highlightbackground=self.palette.border,
            highlightcolor=self.palette.accent,
        )
        self.send_button = ttk.Button(
            composer, text=_("Send"), style="Accent.TButton", command=self.send_message
        )
        self.send_button.pack(side="right", padx=(8, 0), anchor="s")
        self.emoji_button = ttk.Button(
            composer, text="☺", style="Emoji.TButton", width=2, command=self.open_emoji
        )
        self.emoji_button.pack(side="right", padx=(6, 0), anchor="s")
        self.emoji_picker: EmojiPicker | None = None
        box.pack(side="left", fill="x", expand=True)
        self.composer = tk.Text(
            box,
            height=3,
            width=1,
            wrap="word",
            borderwidth=0,
            highlightthickness=0,
            padx=8,
            pady=6,
            undo=True,
            font="TkTextFont",
            background=self.palette.background,
        )
        self.composer.pack(fill="both", expand=True)
        self.composer.bind("<Return>", self._enter)
        self.composer.bind("<KP_Enter>", self._enter)
        self.composer.bind("<Shift-Return>", self._newline)
        self.composer.bind("<Tab>", self._focus_next)
        self.composer.bind("<Escape>", self._escape)
        self.composer.bind("<Up>", self._up)
        self.composer.bind("<KeyRelease>", self._composer_changed, add=True)
        ttk.Separator(main).pack(side="bottom", fill="x")
        self.typing_label = ttk.Label(main, style="Muted.TLabel", padding=(18, 0, 18, 2))
        self.typing_label.pack(side="bottom", fill="x")
        self.messages = MessageList(main, self.window, self.palette)
        self.messages.frame.pack(fill="both", expand=True)

    def _enter(self, _event: object) -> str:
        self.send_message()
        return "break"

    def open_emoji(self) -> None:
        """The composer's emoji button: a picker; the chosen emoji goes in at the cursor."""
        if self.emoji_picker is not None and self.emoji_picker.winfo_exists():
            self.emoji_picker.destroy()
            return
        self.emoji_picker = EmojiPicker(
            self.window, emoji.COMPOSER, self.insert_emoji, anchor=self.emoji_button
        )

    def insert_emoji(self, chosen: str) -> None:
        if str(self.composer.cget("state")) == "disabled":
            return
        self.composer.insert("insert", chosen)
        # Back from the picker's window to the main one, ready to write on.
        self.composer.focus_force()

    def _escape(self, _event: object) -> str | None:
        return "break" if self.window.presenter.cancel_composer_context() else None

    def _up(self, _event: object) -> str | None:
        # In an empty composer, Up edits one's last message (as in Slack and Telegram).
        if self.composer.get("1.0", "end-1c").strip():
            return None
        return "break" if self.window.presenter.edit_last() else None

    def show_composer_context(self, context: ComposerContext | None) -> None:
        if context is None:
            self.context_bar.pack_forget()
            return
        self.context_title.configure(
            text=("✎ " if context.kind == "edit" else "↩ ") + context.title
        )
        self.context_text.configure(text=context.text)
        self.context_bar.pack(side="top", fill="x", pady=(0, 4), before=self.composer.master)

    def set_composer_text(self, text: str) -> None:
        self.composer.delete("1.0", "end")
        self.composer.insert("1.0", text)
        self.composer.mark_set("insert", "end-1c")

    def _newline(self, _event: object) -> str:
        self.composer.insert("insert", "\n")
        return "break"

    def _focus_next(self, _event: object) -> str:
        self.send_button.focus_set()
        return "break"

    def send_message(self) -> None:
        if self.window.presenter.send(self.composer.get("1.0", "end-1c")):
            self.composer.delete("1.0", "end")

    def _composer_changed(self, event: tk.Event[Any]) -> None:
        if event.keysym not in ("Return", "KP_Enter") and self.composer.get("1.0", "end-1c"):
            self.window.presenter.composer_changed()

    def show_header(self, header: Header) -> None:
        self.title_label.configure(text=header.title)
        self.subtitle_label.configure(text=header.subtitle)
        self.note_label.configure(text=f"({header.note})" if header.note else "")
        if header.note:
            self.note_label.pack(side="left", padx=(10, 0), pady=(3, 0))
        else:
            self.note_label.pack_forget()
        self.leave_button.pack_forget()
        self.members_button.pack_forget()
        self.settings_button.pack_forget()
        if header.shared:
            self.leave_button.pack(side="right")
            self.members_button.pack(side="right", padx=(0, 8))
        if header.settings:
            self.settings_button.pack(side="right", padx=(0, 8))

    def show_composer(self, note: str) -> None:
        """Enabled, or disabled with a note (an archived channel)."""
        self.composer_note.configure(text=note)
        if note:
            self.composer.configure(state="disabled")
            self.send_button.state(["disabled"])
            self.composer_note.pack(side="top", fill="x", before=self.composer.master)
        else:
            self.composer.configure(state="normal")
            self.send_button.state(["!disabled"])
            self.composer_note.pack_forget()

    def show_typing(self, text: str) -> None:
        self.typing_label.configure(text=text)

    def _leave(self) -> None:
        self.window.presenter.leave()

    def _members(self) -> None:
        if self.members_dialog is None or not self.members_dialog.winfo_exists():
            self.members_dialog = MembersDialog(self.window)
        self.window.presenter.open_members()

    def _settings(self) -> None:
        if self.settings_dialog is None or not self.settings_dialog.winfo_exists():
            self.settings_dialog = ChannelSettingsDialog(self.window)
        self.window.presenter.open_settings()

    def _new_channel(self) -> None:
        if self.channel_dialog is None or not self.channel_dialog.winfo_exists():
            self.channel_dialog = NewChannelDialog(self.window)

    def _browse(self) -> None:
        if self.browser is None or not self.browser.winfo_exists():
            self.browser = ChannelBrowser(self.window)
        self.window.presenter.browse_channels("")

    def _new_group(self) -> None:
        if self.group_dialog is None or not self.group_dialog.winfo_exists():
            self.group_dialog = NewGroupDialog(self.window)
        self.group_dialog.show(self.people_rows)
        # The list of people was fetched at sign-in: ask again, for those who joined since
        # (the answer refreshes the dialog, keeping what was chosen).
        self.window.presenter.search_people(self.people_query.get())

    def show_status(self, status: Status) -> None:
        self.status_dot.configure(style=f"{status.state}.Dot.TLabel")
        self.status_label.configure(text=status.text)

    def show_composer_error(self, text: str) -> None:
        self.composer_error.configure(text=text)
        if text:
            self.composer_error.pack(side="top", fill="x", before=self.composer.master)
        else:
            self.composer_error.pack_forget()


class Switcher(Popup):
    """Ctrl+K: type to find a conversation or a person; Enter opens it."""

    def __init__(self, window: MainWindow) -> None:
        super().__init__(window.root)
        self.window = window
        self.title(_("Find a person or chat"))
        self.transient(window.root)
        self.configure(background=theme.PALETTE.background)
        frame = ttk.Frame(self, padding=10)
        frame.pack(fill="both", expand=True)
        self.query = tk.StringVar(self)
        self.entry = ttk.Entry(frame, textvariable=self.query, width=40)
        self.entry.pack(fill="x")
        self.results = tk.Listbox(
            frame,
            height=10,
            activestyle="none",
            borderwidth=0,
            highlightthickness=0,
            selectbackground=theme.PALETTE.selection,
            selectforeground=theme.PALETTE.text,
        )
        self.results.pack(fill="both", expand=True, pady=(8, 0))
        self.row_keys: list[str] = []
        self.query.trace_add(
            "write", lambda *_a: window.presenter.switcher_search(self.query.get())
        )
        for widget in (self.entry, self.results):
            widget.bind("<Return>", self._choose)
            widget.bind("<Escape>", lambda _e: self.destroy())
            widget.bind("<Down>", lambda _e: self._move(1))
            widget.bind("<Up>", lambda _e: self._move(-1))
        self.results.bind("<Double-Button-1>", self._choose)
        root = window.root
        self.geometry(f"+{root.winfo_rootx() + 120}+{root.winfo_rooty() + 80}")
        self.entry.focus_set()
        window.presenter.switcher_search("")

    def show(self, rows: Sequence[SwitcherRow]) -> None:
        self.results.delete(0, "end")
        self.row_keys = [row.key for row in rows]
        for row in rows:
            self.results.insert("end", f"  {row.title}    {row.detail}")
        if rows:
            self.results.selection_set(0)

    def _move(self, step: int) -> str:
        current = self.results.curselection()  # type: ignore[no-untyped-call]
        index = (current[0] if current else -1) + step
        if 0 <= index < len(self.row_keys):
            self.results.selection_clear(0, "end")
            self.results.selection_set(index)
            self.results.see(index)
        return "break"

    def _choose(self, _event: object = None) -> str:
        current = self.results.curselection()  # type: ignore[no-untyped-call]
        if current:
            key = self.row_keys[current[0]]
            self.destroy()
            self.window.presenter.switcher_choose(key)
            # Back in the main window, ready to write (the switcher had the focus).
            self.window.chat.composer.focus_force()
        return "break"


class EmojiPicker(Popup):
    """A small grid of emoji over the window; a click chooses one and closes it, Escape or a
    click elsewhere closes it."""

    def __init__(
        self,
        window: MainWindow,
        choices: Sequence[str],
        chosen: Callable[[str], object],
        *,
        anchor: tk.Misc,
        highlighted: frozenset[str] = frozenset(),
    ) -> None:
        super().__init__(window.root)
        self.window = window
        self.title(_("Emoji"))
        self.transient(window.root)
        self.resizable(False, False)
        palette = theme.PALETTE
        self.configure(background=palette.background)
        self._chosen = chosen
        self.cells: dict[str, tk.Label] = {}
        frame = tk.Frame(self, background=palette.background, padx=6, pady=6)
        frame.pack()
        for index, choice in enumerate(choices):
            cell = tk.Label(
                frame,
                text=choice,
                font=("TkDefaultFont", 14),
                width=2,
                padx=3,
                pady=1,
                cursor="hand2",
                background=palette.selection if choice in highlighted else palette.background,
            )
            cell.grid(row=index // emoji.COLUMNS, column=index % emoji.COLUMNS)
            self._bind_cell(cell, choice, highlighted)
            self.cells[choice] = cell
        self.bind("<Escape>", lambda _e: self.destroy())
        self.update_idletasks()
        x = anchor.winfo_rootx() + anchor.winfo_width() - self.winfo_reqwidth()
        y = anchor.winfo_rooty() - self.winfo_reqheight() - 8
        self.geometry(f"+{max(0, x)}+{max(0, y)}")
        self.focus_set()

    def _bind_cell(self, cell: tk.Label, choice: str, highlighted: frozenset[str]) -> None:
        palette = theme.PALETTE
        resting = palette.selection if choice in highlighted else palette.background
        cell.bind("<Button-1>", lambda _e: self.choose(choice))
        cell.bind("<Enter>", lambda _e: cell.configure(background=palette.border))
        cell.bind("<Leave>", lambda _e: cell.configure(background=resting))

    def choose(self, choice: str) -> None:
        self.destroy()
        self._chosen(choice)


class ConfirmDialog(Popup):
    """A question with Delete and Cancel (deleting a message)."""

    def __init__(self, window: MainWindow) -> None:
        super().__init__(window.root)
        self.window = window
        self.title(_("Delete message"))
        self.transient(window.root)
        self.configure(background=theme.PALETTE.background)
        body = ttk.Frame(self, padding=14)
        body.pack(fill="both", expand=True)
        self.label = ttk.Label(body, wraplength=320, justify="left")
        self.label.pack(fill="x")
        buttons = ttk.Frame(body)
        buttons.pack(fill="x", pady=(12, 0))
        self.confirm_button = ttk.Button(
            buttons,
            text=_("Delete"),
            style="Accent.TButton",
            command=lambda: window.presenter.confirm_delete(),
        )
        self.confirm_button.pack(side="right")
        self.cancel_button = ttk.Button(
            buttons, text=_("Cancel"), command=lambda: window.presenter.cancel_delete()
        )
        self.cancel_button.pack(side="right", padx=(0, 8))
        self.protocol("WM_DELETE_WINDOW", lambda: window.presenter.cancel_delete())
        self.bind("<Escape>", lambda _e: window.presenter.cancel_delete())
        self.bind("<Return>", lambda _e: window.presenter.confirm_delete())
        root = window.root
        self.geometry(f"+{root.winfo_rootx() + 200}+{root.winfo_rooty() + 200}")
        self.cancel_button.focus_set()


class SearchWindow(Popup):
    """Ctrl+F: search the messages of every conversation; a click on a result opens it at
    that message."""

    def __init__(self, window: MainWindow) -> None:
        super().__init__(window.root)
        self.window = window
        palette = theme.PALETTE
        self.title(_("Search messages"))
        self.transient(window.root)
        self.configure(background=palette.background)
        frame = ttk.Frame(self, padding=10)
        frame.pack(fill="both", expand=True)
        self.query = tk.StringVar(self)
        self.entry = ttk.Entry(frame, textvariable=self.query, width=56)
        self.entry.pack(fill="x")
        self.hint = ttk.Label(
            frame,
            text=_('Words, "a phrase", from:name, in:channel, before:2026-01-31, after:…'),
            style="Small.TLabel",
        )
        self.hint.pack(anchor="w", pady=(4, 0))
        self.status = ttk.Label(frame, style="Muted.TLabel")
        self.status.pack(anchor="w", pady=(6, 0))
        self.results = tk.Text(
            frame,
            height=16,
            width=60,
            wrap="word",
            borderwidth=0,
            highlightthickness=0,
            cursor="arrow",
            background=palette.background,
            font="TkTextFont",
            padx=4,
        )
        self.results.pack(fill="both", expand=True, pady=(6, 0))
        self.results.tag_configure(
            "meta", foreground=palette.muted, font=("TkDefaultFont", 8), spacing1=8
        )
        self.results.tag_configure(
            "match", background=palette.mention, font=("TkDefaultFont", 10, "bold")
        )
        self.results.tag_configure("snippet", spacing3=2)
        self.results.tag_bind("hit", "<Button-1>", self._clicked)
        self.results.tag_bind("hit", "<Enter>", lambda _e: self.results.configure(cursor="hand2"))
        self.results.tag_bind("hit", "<Leave>", lambda _e: self.results.configure(cursor="arrow"))
        self.results.configure(state="disabled")
        self.more_button = ttk.Button(
            frame, text=_("Show more"), style="Link.TButton", command=self._more
        )
        self.count = 0
        self._job: str | None = None
        self.query.trace_add("write", lambda *_a: self._changed())
        self.entry.bind("<Return>", lambda _e: self._search_now())
        self.bind("<Escape>", lambda _e: self.destroy())
        root = window.root
        self.geometry(f"+{root.winfo_rootx() + 160}+{root.winfo_rooty() + 70}")
        self.entry.focus_set()

    def _changed(self) -> None:
        if self._job is not None:
            self.after_cancel(self._job)
        self._job = self.after(300, self._search_now)

    def _search_now(self) -> None:
        if self._job is not None:
            self.after_cancel(self._job)
            self._job = None
        self.window.presenter.search_messages(self.query.get())

    def _more(self) -> None:
        self.window.presenter.more_search()

    def show(self, panel: SearchPanel) -> None:
        text = self.results
        text.configure(state="normal")
        text.delete("1.0", "end")
        for index, row in enumerate(panel.rows):
            hit = ("hit", f"hit:{index}")
            text.insert("end", f"{row.title}  ·  {row.sender}  ·  {row.time}\n", ("meta", *hit))
            at = 0
            for start, end in row.highlights:
                text.insert("end", row.snippet[at:start], ("snippet", *hit))
                text.insert("end", row.snippet[start:end], ("snippet", "match", *hit))
                at = end
            text.insert("end", row.snippet[at:] + "\n", ("snippet", *hit))
        text.configure(state="disabled")
        self.count = len(panel.rows)
        self.status.configure(text=panel.status)
        if panel.more:
            self.more_button.pack(anchor="e", pady=(4, 0))
        else:
            self.more_button.pack_forget()

    def _clicked(self, event: tk.Event[Any]) -> None:
        for tag in self.results.tag_names(f"@{event.x},{event.y}"):
            if str(tag).startswith("hit:"):
                self.choose(int(str(tag).removeprefix("hit:")))

    def choose(self, index: int) -> None:
        self.window.presenter.search_choose(index)
        self.window.root.focus_force()


class Dialog(Popup):
    """A small window over the main one; Escape closes it."""

    def __init__(self, window: MainWindow, title: str) -> None:
        super().__init__(window.root)
        self.window = window
        self.title(title)
        self.transient(window.root)
        self.configure(background=theme.PALETTE.background)
        self.body = ttk.Frame(self, padding=12)
        self.body.pack(fill="both", expand=True)
        self.bind("<Escape>", lambda _e: self.destroy())
        root = window.root
        self.geometry(f"+{root.winfo_rootx() + 140}+{root.winfo_rooty() + 90}")


class NewChannelDialog(Dialog):
    """New channel: a name, a topic, public or private."""

    def __init__(self, window: MainWindow) -> None:
        super().__init__(window, _("New channel"))
        self.channel_name = tk.StringVar(self)
        self.topic = tk.StringVar(self)
        self.public = tk.BooleanVar(self, value=True)
        ttk.Label(self.body, text=_("Name")).pack(anchor="w")
        self.name_entry = ttk.Entry(self.body, textvariable=self.channel_name, width=36)
        self.name_entry.pack(fill="x")
        ttk.Label(self.body, text=_("Topic")).pack(anchor="w", pady=(8, 0))
        ttk.Entry(self.body, textvariable=self.topic).pack(fill="x")
        ttk.Checkbutton(
            self.body, text=_("Public: anyone can find and join it"), variable=self.public
        ).pack(anchor="w", pady=(8, 0))
        self.create_button = ttk.Button(
            self.body, text=_("Create"), style="Accent.TButton", command=self.create
        )
        self.create_button.pack(anchor="e", pady=(10, 0))
        self.name_entry.bind("<Return>", lambda _e: self.create())
        self.name_entry.focus_set()

    def create(self) -> None:
        if self.window.presenter.create_channel(
            self.channel_name.get(), public=self.public.get(), topic=self.topic.get()
        ):
            self.destroy()


class ChannelBrowser(Dialog):
    """Browse channels: the server's directory, with a Join button."""

    def __init__(self, window: MainWindow) -> None:
        super().__init__(window, _("Browse channels"))
        self.query = tk.StringVar(self)
        entry = ttk.Entry(self.body, textvariable=self.query, width=44)
        entry.pack(fill="x")
        self.query.trace_add(
            "write", lambda *_a: window.presenter.browse_channels(self.query.get())
        )
        self.list = ttk.Treeview(
            self.body, columns=("members",), show="tree", selectmode="browse", height=10
        )
        self.list.column("#0", width=300, stretch=True)
        self.list.column("members", width=90, stretch=False, anchor="e")
        self.list.pack(fill="both", expand=True, pady=(8, 0))
        self.list.bind("<Double-Button-1>", lambda _e: self.join())
        self.join_button = ttk.Button(
            self.body, text=_("Join"), style="Accent.TButton", command=self.join
        )
        self.join_button.pack(anchor="e", pady=(8, 0))
        entry.focus_set()

    def show(self, rows: Sequence[ChannelRow]) -> None:
        self.list.delete(*self.list.get_children())
        for row in rows:
            label = "# " + row.name + ("" if row.public else "  " + _("(private)"))
            if row.topic:
                label += " — " + row.topic
            joined = _("joined") if row.joined else ""
            members = ngettext("{n} member", "{n} members", row.members).format(n=row.members)
            self.list.insert(
                "", "end", iid=row.conversation, text=label, values=(f"{joined} {members}",)
            )
        if rows:
            self.list.selection_set(rows[0].conversation)

    def join(self) -> None:
        selection = self.list.selection()
        if selection:
            self.destroy()
            self.window.presenter.join(selection[0])


class NewGroupDialog(Dialog):
    """New group: choose two or more people (from the People list)."""

    def __init__(self, window: MainWindow) -> None:
        super().__init__(window, _("New group"))
        ttk.Label(self.body, text=_("Choose two or more people:")).pack(anchor="w")
        self.list = tk.Listbox(
            self.body,
            selectmode="multiple",
            height=10,
            activestyle="none",
            exportselection=False,
            selectbackground=theme.PALETTE.selection,
            selectforeground=theme.PALETTE.text,
        )
        self.list.pack(fill="both", expand=True, pady=(6, 0))
        self.names: list[str] = []
        self.create_button = ttk.Button(
            self.body, text=_("Create group"), style="Accent.TButton", command=self.create
        )
        self.create_button.pack(anchor="e", pady=(8, 0))

    def show(self, rows: Sequence[PersonRow]) -> None:
        chosen = set(self.chosen())
        self.list.delete(0, "end")
        self.names = [row.name for row in rows if not row.me]
        for index, name in enumerate(self.names):
            self.list.insert("end", "  " + name)
            if name in chosen:
                self.list.selection_set(index)

    def chosen(self) -> list[str]:
        indexes = self.list.curselection()  # type: ignore[no-untyped-call]
        return [self.names[i] for i in indexes if i < len(self.names)]

    def create(self) -> None:
        if self.window.presenter.create_group(self.chosen()):
            self.destroy()


class MembersDialog(Dialog):
    """The members of the conversation on screen; invite and remove for owners and admins."""

    def __init__(self, window: MainWindow) -> None:
        super().__init__(window, _("Members"))
        self.list = ttk.Treeview(
            self.body, columns=("role",), show="tree", selectmode="browse", height=10
        )
        self.list.column("#0", width=220, stretch=True)
        self.list.column("role", width=90, stretch=False, anchor="e")
        self.list.pack(fill="both", expand=True)
        self.actions = ttk.Frame(self.body)
        self.actions.pack(fill="x", pady=(4, 0))
        self.remove_button = ttk.Button(
            self.actions, text=_("Remove"), style="Link.TButton", command=self.remove
        )
        labels = {"owner": _("Make owner"), "admin": _("Make admin"), "member": _("Make member")}
        self.role_buttons = {
            role: ttk.Button(
                self.actions,
                text=label,
                style="Link.TButton",
                command=lambda role=role: self.set_role(role),  # type: ignore[misc]
            )
            for role, label in labels.items()
        }
        self.roles: dict[str, tuple[str, ...]] = {}
        self.list.bind("<<TreeviewSelect>>", lambda _e: self._show_actions())
        self.invite_row = ttk.Frame(self.body)
        self.invite_names = tk.StringVar(self)
        ttk.Entry(self.invite_row, textvariable=self.invite_names).pack(
            side="left", fill="x", expand=True
        )
        self.invite_button = ttk.Button(
            self.invite_row, text=_("Invite"), style="Accent.TButton", command=self.invite
        )
        self.invite_button.pack(side="right", padx=(6, 0))
        self.removable: set[str] = set()
        self.protocol("WM_DELETE_WINDOW", self.close)
        self.bind("<Escape>", lambda _e: self.close())

    def show(self, panel: MembersPanel) -> None:
        self.title(panel.title)
        selected = self.list.selection()
        self.list.delete(*self.list.get_children())
        self.removable = set()
        self.roles = {row.name: row.roles for row in panel.rows}
        for row in panel.rows:
            self.list.insert(
                "",
                "end",
                iid=row.name,
                text="  " + row.name,
                values=(row.role,),
                image=self.window.chat.dots[row.online],
            )
            if row.removable:
                self.removable.add(row.name)
        if selected and self.list.exists(selected[0]):
            self.list.selection_set(selected[0])
        self._show_actions()
        if panel.can_invite:
            self.invite_row.pack(fill="x", pady=(8, 0))
        else:
            self.invite_row.pack_forget()

    def _selected(self) -> str | None:
        selection = self.list.selection()
        return selection[0] if selection else None

    def _show_actions(self) -> None:
        """Remove while anyone is removable; the role buttons of the selected member."""
        selected = self._selected()
        roles = self.roles.get(selected, ()) if selected is not None else ()
        for button in (*self.role_buttons.values(), self.remove_button):
            button.pack_forget()
        if self.removable:
            self.remove_button.pack(side="right")
        for role, button in self.role_buttons.items():
            if role in roles:
                button.pack(side="left", padx=(0, 8))

    def remove(self) -> None:
        selected = self._selected()
        if selected is not None and selected in self.removable:
            self.window.presenter.remove_member(selected)

    def set_role(self, role: str) -> None:
        selected = self._selected()
        if selected is not None and role in self.roles.get(selected, ()):
            self.window.presenter.set_role(selected, role)

    def invite(self) -> None:
        self.window.presenter.invite(self.invite_names.get())
        self.invite_names.set("")

    def close(self) -> None:
        self.window.presenter.close_members()
        self.destroy()


class ChannelSettingsDialog(Dialog):
    """Channel settings: rename, set the topic, archive (after asking)."""

    def __init__(self, window: MainWindow) -> None:
        super().__init__(window, _("Channel settings"))
        self.channel_name = tk.StringVar(self)
        self.topic = tk.StringVar(self)
        ttk.Label(self.body, text=_("Name")).pack(anchor="w")
        self.name_entry = ttk.Entry(self.body, textvariable=self.channel_name, width=40)
        self.name_entry.pack(fill="x")
        ttk.Label(self.body, text=_("Topic")).pack(anchor="w", pady=(8, 0))
        ttk.Entry(self.body, textvariable=self.topic).pack(fill="x")
        buttons = ttk.Frame(self.body)
        buttons.pack(fill="x", pady=(10, 0))
        self.archive_button = ttk.Button(
            buttons, text=_("Archive…"), style="Link.TButton", command=self.ask_archive
        )
        self.archive_button.pack(side="left")
        self.save_button = ttk.Button(
            buttons, text=_("Save"), style="Accent.TButton", command=self.save
        )
        self.save_button.pack(side="right")
        self.confirm_row = ttk.Frame(self.body)
        self.confirm_label = ttk.Label(self.confirm_row, wraplength=320, justify="left")
        self.confirm_label.pack(fill="x")
        self.confirm_button = ttk.Button(
            self.confirm_row, text=_("Archive"), style="Accent.TButton", command=self.archive
        )
        self.confirm_button.pack(side="right", pady=(6, 0))
        self.cancel_button = ttk.Button(
            self.confirm_row,
            text=_("Cancel"),
            style="Link.TButton",
            command=lambda: window.presenter.cancel_archive(),
        )
        self.cancel_button.pack(side="right", padx=(0, 8), pady=(6, 0))
        self.name_entry.bind("<Return>", lambda _e: self.save())
        self.protocol("WM_DELETE_WINDOW", self.close)
        self.bind("<Escape>", lambda _e: self.close())
        self._filled = False
        self.name_entry.focus_set()

    def show(self, panel: ChannelSettings) -> None:
        self.title(panel.title)
        if not self._filled:  # what the user typed is not overwritten
            self._filled = True
            self.channel_name.set(panel.name)
            self.topic.set(panel.topic)
        self.confirm_label.configure(text=panel.confirm)
        if panel.confirm:
            self.confirm_row.pack(fill="x", pady=(10, 0))
        else:
            self.confirm_row.pack_forget()

    def save(self) -> None:
        if self.window.presenter.save_settings(self.channel_name.get(), self.topic.get()):
            self.close()

    def ask_archive(self) -> None:
        self.window.presenter.ask_archive()

    def archive(self) -> None:
        if self.window.presenter.archive():
            self.close()

    def close(self) -> None:
        self.window.presenter.close_settings()
        self.destroy()


class MainWindow:
    """The one window: the sign-in screen or the chat screen. Implements the presenter's View."""

    def __init__(self, root: tk.Tk, palette: theme.Palette) -> None:
        self.root = root
        self._presenter: Presenter | None = None
        root.minsize(MIN_WIDTH, MIN_HEIGHT)
        root.geometry("1000x680")
        self.sign_in_screen = SignInScreen(root, self)
        self.chat = ChatScreen(root, self, palette)
        self.switcher: Switcher | None = None
        self._screen: ttk.Frame | None = None
        self.open_url: Callable[[str], object] = webbrowser.open
        """Opens a clicked link (in the system's browser)."""
        self.search_window: SearchWindow | None = None
        self.confirm_dialog: ConfirmDialog | None = None
        for sequence in SEARCH_KEYS:
            with contextlib.suppress(tk.TclError):
                root.bind(sequence, lambda _e: self.open_search())
        root.bind("<Control-k>", lambda _e: self.open_switcher())
        root.bind("<Control-K>", lambda _e: self.open_switcher())
        root.bind("<FocusIn>", self._focus_in, add=True)
        root.bind("<FocusOut>", self._focus_out, add=True)
        bind_select_all(root)
        self._focused = True

    @property
    def presenter(self) -> Presenter:
        assert self._presenter is not None
        return self._presenter

    @presenter.setter
    def presenter(self, presenter: Presenter) -> None:
        self._presenter = presenter

    def _show_screen(self, screen: ttk.Frame) -> None:
        if self._screen is not screen:
            if self._screen is not None:
                self._screen.pack_forget()
            screen.pack(fill="both", expand=True)
            self._screen = screen

    def _focus_in(self, _event: object) -> None:
        if not self._focused:
            self._focused = True
            self.presenter.focus_changed(True)

    def _focus_out(self, _event: object) -> None:
        # Focus moving between our own widgets also sends FocusOut; look once it settles.
        self.root.after(50, self._check_focus)

    def _check_focus(self) -> None:
        try:
            focused = self.root.focus_displayof() is not None
        except (KeyError, tk.TclError):
            focused = False
        if focused != self._focused:
            self._focused = focused
            self.presenter.focus_changed(focused)

    def open_switcher(self) -> None:
        if self._screen is not self.chat:
            return
        if self.switcher is not None and self.switcher.winfo_exists():
            self.switcher.lift()
            self.switcher.entry.focus_set()
            return
        self.switcher = Switcher(self)

    def open_search(self) -> None:
        """Ctrl+F: the search window (or back to it, when open)."""
        if self._screen is not self.chat:
            return
        if self.search_window is not None and self.search_window.winfo_exists():
            self.search_window.lift()
            self.search_window.entry.focus_set()
            return
        self.search_window = SearchWindow(self)

    # -- the View protocol ---------------------------------------------------------------------

    def show_sign_in(self, form: SignInForm) -> None:
        for popup in (self.switcher, self.search_window, self.confirm_dialog):
            if popup is not None and popup.winfo_exists():
                popup.destroy()
        self._show_screen(self.sign_in_screen)
        self.sign_in_screen.show(form)

    def show_chat(self, user: str) -> None:
        self.chat.user_label.configure(text=user)
        self.chat.messages.edit(0, len(self.chat.messages.marks), [], reset=True)
        self._show_screen(self.chat)
        self.chat.composer.focus_set()

    def show_conversations(self, rows: Sequence[ConversationRow], selected: str) -> None:
        self.chat.show_conversations(rows, selected)

    def show_header(self, header: Header) -> None:
        self.chat.show_header(header)

    def edit_messages(
        self,
        start: int,
        removed: int,
        rows: Sequence[MessageRow],
        *,
        reset: bool,
        follow: bool = True,
    ) -> None:
        self.chat.messages.edit(start, removed, rows, reset=reset, follow=follow)

    def show_status(self, status: Status) -> None:
        self.chat.show_status(status)

    def show_jump(self, text: str) -> None:
        self.chat.messages.show_jump(text)

    def scroll_to_bottom(self) -> None:
        self.chat.messages.scroll_to_bottom()

    def show_people(self, rows: Sequence[PersonRow], more: bool) -> None:
        self.chat.show_people(rows, more)

    def show_switcher(self, rows: Sequence[SwitcherRow]) -> None:
        if self.switcher is not None and self.switcher.winfo_exists():
            self.switcher.show(rows)

    def show_composer_error(self, text: str) -> None:
        self.chat.show_composer_error(text)

    def show_typing(self, text: str) -> None:
        self.chat.show_typing(text)

    def show_channels(self, rows: Sequence[ChannelRow]) -> None:
        browser = self.chat.browser
        if browser is not None and browser.winfo_exists():
            browser.show(rows)

    def show_members(self, panel: MembersPanel) -> None:
        dialog = self.chat.members_dialog
        if dialog is not None and dialog.winfo_exists():
            dialog.show(panel)

    def show_settings(self, panel: ChannelSettings | None) -> None:
        dialog = self.chat.settings_dialog
        if dialog is None or not dialog.winfo_exists():
            return
        if panel is None:
            dialog.destroy()
        else:
            dialog.show(panel)

    def show_composer(self, note: str) -> None:
        self.chat.show_composer(note)

    def show_error(self, text: str) -> None:
        self.chat.show_composer_error(text)

    def set_title(self, title: str) -> None:
        self.root.title(title)

    def show_composer_context(self, context: ComposerContext | None) -> None:
        self.chat.show_composer_context(context)

    def set_composer_text(self, text: str) -> None:
        self.chat.set_composer_text(text)

    def show_confirm(self, text: str) -> None:
        dialog = self.confirm_dialog
        if not text:
            if dialog is not None and dialog.winfo_exists():
                dialog.destroy()
            self.confirm_dialog = None
            return
        if dialog is None or not dialog.winfo_exists():
            dialog = self.confirm_dialog = ConfirmDialog(self)
        dialog.label.configure(text=text)

    def show_search(self, panel: SearchPanel) -> None:
        if self.search_window is not None and self.search_window.winfo_exists():
            self.search_window.show(panel)

    def scroll_to_row(self, row_id: str) -> None:
        self.chat.messages.scroll_to_row(row_id)

    def bell(self) -> None:
        self.root.bell()


__all__ = ["GENERAL_KEY", "MainWindow"]
