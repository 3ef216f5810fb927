// Applying change entries to messages (protocol 4): the port of beseda.client.changes, pure.
//
// `edited`, `deleted`, `reacted` and `unreacted` entries arrive through the cursors, exactly
// once and in order, and name the message they change by `ref`. Each carries the resulting
// state (the whole new text, the emoji's count after the change), so applying one to a
// message loaded later by `history`, which shows it already, changes nothing.

import { kindOf, type Entry, type Reaction } from "./protocol.js";

export const CHANGE_KINDS: ReadonlySet<string> = new Set([
  "edited",
  "deleted",
  "reacted",
  "unreacted",
]);

export function isChange(entry: Entry): boolean {
  return CHANGE_KINDS.has(kindOf(entry));
}

/** How many code points of the original a quote keeps (the server cuts it so, too). */
export const QUOTE_CHARS = 100;

/** `message` after `change` (a new object; null once deleted). `me` is the reader's name
 * (compared case-insensitively, as names are). A change about another message is ignored. */
export function applyChange(message: Entry, change: Entry, me: string): Entry | null {
  const kind = kindOf(change);
  if (
    !CHANGE_KINDS.has(kind) ||
    change.ref !== message.seq ||
    change.conversation !== message.conversation
  ) {
    return message;
  }
  if (kind === "deleted") return null;
  if (kind === "edited") return { ...message, text: change.text ?? "", edited: change.ts };
  if (change.emoji === undefined) return message;
  const count = change.count ?? 0;
  const byMe = change.sender.toLocaleLowerCase() === me.toLocaleLowerCase();
  const reactions: Reaction[] = [];
  let found = false;
  for (const reaction of message.reactions ?? []) {
    if (reaction.emoji !== change.emoji) {
      reactions.push(reaction);
      continue;
    }
    found = true;
    const mine = byMe ? kind === "reacted" : reaction.me === true;
    if (count > 0) reactions.push({ emoji: reaction.emoji, count, me: mine });
  }
  if (!found && count > 0) {
    reactions.push({ emoji: change.emoji, count, me: kind === "reacted" && byMe });
  }
  return { ...message, reactions };
}

/** `message` with its quote following `change` of the message it answers: an edit gives the
 * quote the new text (cut as the server cuts it), a delete marks it deleted. */
export function applyToQuote(message: Entry, change: Entry): Entry {
  const reply = message.reply;
  const kind = kindOf(change);
  if (reply === undefined || reply.seq !== change.ref) return message;
  if (change.conversation !== message.conversation) return message;
  if (kind === "deleted") {
    if (reply.deleted === true) return message;
    return { ...message, reply: { seq: reply.seq, sender: reply.sender, deleted: true } };
  }
  if (kind === "edited") {
    return { ...message, reply: { ...reply, text: preview(change.text ?? "") } };
  }
  return message;
}

/**
 * A search hit's `highlights` are `[start, end)` offsets in code points; JavaScript strings
 * index UTF-16 code units (an emoji or a rare CJK character takes two). Returns the text cut
 * into pieces, each marked whether it is highlighted; overlapping or out-of-range offsets
 * are clamped.
 */
export function highlightPieces(
  text: string,
  highlights: readonly (readonly [number, number])[],
): { text: string; hit: boolean }[] {
  // eslint-disable-next-line @typescript-eslint/no-misused-spread -- code points, on purpose
  const points = [...text];
  const marks = new Array<boolean>(points.length).fill(false);
  for (const [start, end] of highlights) {
    for (let i = Math.max(0, start); i < Math.min(end, points.length); i += 1) marks[i] = true;
  }
  const pieces: { text: string; hit: boolean }[] = [];
  points.forEach((point, index) => {
    const hit = marks[index] === true;
    const last = pieces[pieces.length - 1];
    if (last?.hit === hit) last.text += point;
    else pieces.push({ text: point, hit });
  });
  return pieces;
}

/** The first `limit` code points of `text` (as the server cuts a quote). */
export function preview(text: string, limit = QUOTE_CHARS): string {
  // eslint-disable-next-line @typescript-eslint/no-misused-spread -- code points, on purpose
  return [...text].slice(0, limit).join("");
}
