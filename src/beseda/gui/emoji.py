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
