// The emoji the composer's picker offers: the desktop client's (src/beseda/gui/emoji.py
// COMPOSER), the same ones in the same order; a unit test compares the two.

/** The composer's picker: the desktop client's (gui/emoji.py COMPOSER), in the same order. */
// prettier-ignore
export const COMPOSER_EMOJI = [
  "😀", "😃", "😄", "😁", "😅", "😂", "🙂", "😉", "😊", "😍",
  "😘", "😎", "🤔", "😐", "😴", "😮", "😢", "😭", "😡", "🙏",
  "👍", "👎", "👏", "🙌", "💪", "👋", "👀", "❤️", "🔥", "🎉",
  "✨", "✅", "❌", "⭐", "☕", "🍕", "🚀", "💯", "🤝", "🤷",
];

/** The picker's grid is this many emoji wide (as the desktop client's). */
export const EMOJI_COLUMNS = 10;
