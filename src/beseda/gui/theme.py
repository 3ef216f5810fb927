"""The look: a light ttk theme on top of ``clam``, fonts, colours and the presence dots."""

from __future__ import annotations

import tkinter as tk
from dataclasses import dataclass
from tkinter import font as tkfont
from tkinter import ttk

FONT_FAMILIES = (
    "Inter",
    "Segoe UI",
    "SF Pro Text",
    "Cantarell",
    "Noto Sans",
    "Ubuntu",
    "DejaVu Sans",
    "Helvetica",
)


@dataclass(frozen=True)
class Palette:
    background: str = "#ffffff"
    sidebar: str = "#f4f5f7"
    border: str = "#e3e6ea"
    text: str = "#1f2328"
    muted: str = "#6b7280"
    accent: str = "#2f6fde"
    accent_active: str = "#255bc0"
    own: str = "#eef3fd"
    own_sender: str = "#2f6fde"
    sender: str = "#8a3ffc"
    error: str = "#c62828"
    online: str = "#22a45d"
    offline: str = "#c3c8cf"
    warning: str = "#d98200"
    selection: str = "#dfe8fb"
    mention: str = "#fff4d6"
    link: str = "#1a62c9"
    highlight: str = "#fff1b8"
    """The message a jump went to, for a moment."""
    avatars: tuple[str, ...] = (
        "#e17076",
        "#eda86c",
        "#a695e7",
        "#7bc862",
        "#6ec9cb",
        "#65aadd",
        "#ee7aae",
        "#c49a6c",
    )
    """Avatar backgrounds, one per person (by :func:`~.text.colour_of`), under white initials."""
    names: tuple[str, ...] = (
        "#c03d33",
        "#b8661d",
        "#7a55d1",
        "#3c9a28",
        "#1f8f9f",
        "#2f77c0",
        "#c2407e",
        "#8d6339",
    )
    """The same people's names: darker shades of their avatar colours, readable on white."""


PALETTE = Palette()


def _family(root: tk.Misc) -> str:
    available = set(tkfont.families(root))
    return next((f for f in FONT_FAMILIES if f in available), "TkDefaultFont")


def apply(root: tk.Tk) -> Palette:
    """Style ``root``'s widgets; returns the colours the views use."""
    p = PALETTE
    family = _family(root)
    for name in ("TkDefaultFont", "TkTextFont", "TkMenuFont"):
        tkfont.nametofont(name, root).configure(family=family, size=10)
    tkfont.nametofont("TkHeadingFont", root).configure(family=family, size=10, weight="bold")
    fonts = {
        "Title": (family, 20, "bold"),
        "Header": (family, 13, "bold"),
        "Bold": (family, 10, "bold"),
        "Small": (family, 9, "normal"),
    }
    style = ttk.Style(root)
    style.theme_use("clam")
    root.configure(background=p.background)
    style.configure(
        ".",
        background=p.background,
        foreground=p.text,
        bordercolor=p.border,
        lightcolor=p.background,
        darkcolor=p.border,
        troughcolor=p.sidebar,
        focuscolor=p.accent,
        selectbackground=p.selection,
        selectforeground=p.text,
        font="TkDefaultFont",
    )
    style.configure("TFrame", background=p.background)
    style.configure("Sidebar.TFrame", background=p.sidebar)
    style.configure("Card.TFrame", background=p.background)
    style.configure("TLabel", background=p.background, foreground=p.text)
    style.configure("Sidebar.TLabel", background=p.sidebar)
    style.configure("SidebarBold.TLabel", background=p.sidebar, font=fonts["Bold"])
    style.configure("Title.TLabel", font=fonts["Title"], foreground=p.accent)
    style.configure("Header.TLabel", font=fonts["Header"])
    style.configure("Muted.TLabel", foreground=p.muted)
    style.configure("Small.TLabel", foreground=p.muted, font=fonts["Small"])
    style.configure("Error.TLabel", foreground=p.error)
    style.configure("ContextTitle.TLabel", foreground=p.accent, font=fonts["Bold"])
    style.configure("Status.TLabel", background=p.sidebar, foreground=p.muted, padding=(8, 3))
    for state, colour in (
        ("connected", p.online),
        ("reconnecting", p.warning),
        ("connecting", p.warning),
        ("offline", p.error),
    ):
        style.configure(f"{state}.Dot.TLabel", background=p.sidebar, foreground=colour)
    style.configure("TEntry", padding=(6, 5), fieldbackground=p.background)
    style.map("TEntry", bordercolor=[("focus", p.accent)], lightcolor=[("focus", p.accent)])
    style.configure("TButton", padding=(12, 5), background=p.sidebar, relief="flat")
    style.map("TButton", background=[("active", p.border), ("disabled", p.sidebar)])
    style.configure(
        "Accent.TButton",
        background=p.accent,
        foreground="#ffffff",
        bordercolor=p.accent,
        lightcolor=p.accent,
        darkcolor=p.accent,
    )
    style.map(
        "Accent.TButton",
        background=[("disabled", p.offline), ("active", p.accent_active)],
        foreground=[("disabled", "#ffffff")],
    )
    style.configure("Link.TButton", background=p.sidebar, foreground=p.accent, padding=(6, 2))
    style.map("Link.TButton", background=[("active", p.border)])
    style.configure("Emoji.TButton", padding=(4, 3), font=(family, 13))
    style.configure("TCheckbutton", background=p.background)
    style.configure(
        "Treeview",
        background=p.sidebar,
        fieldbackground=p.sidebar,
        bordercolor=p.sidebar,
        lightcolor=p.sidebar,
        darkcolor=p.sidebar,
        rowheight=30,
        borderwidth=0,
    )
    style.layout("Treeview", [("Treeview.treearea", {"sticky": "nswe"})])
    # The conversation list: a name and, under it, the last message.
    style.configure("Chats.Treeview", rowheight=44)
    style.layout("Chats.Treeview", [("Treeview.treearea", {"sticky": "nswe"})])
    style.map(
        "Treeview",
        background=[("selected", p.selection)],
        foreground=[("selected", p.text)],
    )
    style.configure("TNotebook", background=p.sidebar, borderwidth=0, tabmargins=(8, 6, 8, 0))
    style.configure("TNotebook.Tab", padding=(14, 5), background=p.sidebar, bordercolor=p.sidebar)
    style.map(
        "TNotebook.Tab",
        background=[("selected", p.background)],
        foreground=[("selected", p.accent)],
    )
    style.configure("TPanedwindow", background=p.border)
    style.configure("Vertical.TScrollbar", arrowsize=0, width=10, background=p.border)
    return p


def dot(root: tk.Misc, colour: str, size: int = 10) -> tk.PhotoImage:
    """A filled circle on a transparent square, for presence."""
    image = tk.PhotoImage(master=root, width=size + 6, height=size)
    centre = (size - 1) / 2
    for y in range(size):
        row = [x for x in range(size) if (x - centre) ** 2 + (y - centre) ** 2 <= (size / 2) ** 2]
        if row:
            image.put(colour, to=(row[0] + 2, y, row[-1] + 3, y + 1))
    return image
