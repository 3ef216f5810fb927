"""The emoji the desktop client's pickers offer."""

from __future__ import annotations

COMPOSER = (
    "😀", "😃", "😄", "😁", "😅", "😂", "🙂", "😉", "😊", "😍",
    "😘", "😎", "🤔", "😐", "😴", "😮", "😢", "😭", "😡", "🙏",
    "👍", "👎", "👏", "🙌", "💪", "👋", "👀", "❤️", "🔥", "🎉",
    "✨", "✅", "❌", "⭐", "☕", "🍕", "🚀", "💯", "🤝", "🤷",
)  # fmt: skip
"""The composer's picker: faces, hands and a few things, in rows of ten."""

COLUMNS = 10

REACTIONS = ("👍", "❤️", "😂", "😮", "😢", "🙏", "🎉", "🔥")
"""The message menu's React row: the reactions people use most."""
