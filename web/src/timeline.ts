// One conversation's timeline: the entries loaded so far (in seq order, each once) and the
// user's messages not yet acknowledged. Pure data; the view renders only rows near the
// viewport (see heights.ts). Entries that change an earlier message (edits, deletes,
// reactions: protocol 4) update the message they name, and the quotes of the replies to it,
// rather than adding rows (changes.ts).

import { applyChange, applyToQuote, isChange } from "./changes.js";
import { kindOf, type Entry } from "./protocol.js";

export interface Outgoing {
  clientId: string;
  text: string;
  /** The seq of the message it answers. */
  replyTo?: number;
  sentAt: number;
  /** Why it was not sent (null while it is on its way). */
  failed: string | null;
  /** Refused for good (not a member any more, archived): no Retry. */
  final: boolean;
}

export type Row =
  | { type: "message"; key: string; entry: Entry; grouped?: boolean }
  | { type: "day"; key: string; ts: number }
  | { type: "event"; key: string; entry: Entry }
  | { type: "outgoing"; key: string; outgoing: Outgoing }
  | { type: "marker"; key: string };

/** How an entry of this kind is shown: its own row ("message", "event") or none. */
export function rowKind(entry: Entry): "message" | "event" | null {
  const kind = kindOf(entry);
  if (kind === "message") return "message";
  if (
    [
      "created",
      "joined",
      "left",
      "added",
      "removed",
      "renamed",
      "topic",
      "archived",
      "role",
    ].includes(kind)
  ) {
    return "event";
  }
  return null; // a kind this version does not know: its cursor moves on, nothing is shown
}

/** A sender's messages closer than this to the one before are grouped under one header. */
export const GROUP_MS = 5 * 60 * 1000;

/** The local calendar day of `ts` (a key: equal for two times of one day). */
export function dayOf(ts: number): string {
  const date = new Date(ts);
  return `${date.getFullYear()}-${date.getMonth() + 1}-${date.getDate()}`;
}

export class Timeline {
  private entries: Entry[] = [];
  private readonly seqs = new Set<number>();
  private readonly outgoing = new Map<string, Outgoing>();
  /** Older entries exist on the server. */
  hasOlder = true;
  loading = false;
  /** Bumped on every change, so a view knows when to rebuild its rows. */
  version = 0;

  get oldestSeq(): number | null {
    return this.entries[0]?.seq ?? null;
  }

  get newestSeq(): number {
    return this.entries[this.entries.length - 1]?.seq ?? 0;
  }

  get size(): number {
    return this.entries.length;
  }

  /** The message at `seq`, when it is loaded. */
  message(seq: number): Entry | undefined {
    if (!this.seqs.has(seq)) return undefined;
    const found = this.entries.find((entry) => entry.seq === seq);
    return found !== undefined && kindOf(found) === "message" ? found : undefined;
  }

  /** The loaded messages, oldest first. */
  messages(): Entry[] {
    return this.entries.filter((entry) => kindOf(entry) === "message");
  }

  /** Add one entry (live); false when it was there already. Its outgoing copy goes. A change
   * entry (`me` is the reader, for the own mark of reactions) changes the message it names. */
  add(entry: Entry, me = ""): boolean {
    if (this.seqs.has(entry.seq)) return false;
    this.seqs.add(entry.seq);
    if (isChange(entry)) {
      this.entries = this.entries.flatMap((item) => {
        const changed = applyChange(item, entry, me);
        return changed === null ? [] : [applyToQuote(changed, entry)];
      });
      this.version += 1;
      return true;
    }
    const last = this.entries[this.entries.length - 1];
    if (last === undefined || last.seq < entry.seq) {
      this.entries.push(entry);
    } else {
      let index = this.entries.length;
      while (index > 0 && (this.entries[index - 1]?.seq ?? 0) > entry.seq) index -= 1;
      this.entries.splice(index, 0, entry);
    }
    if (entry.client_id !== undefined) this.outgoing.delete(entry.client_id);
    this.version += 1;
    return true;
  }

  /** A page of history (older entries, oldest first); returns how many were new. */
  addPage(entries: readonly Entry[], more: boolean): number {
    const fresh = entries.filter((entry) => !this.seqs.has(entry.seq));
    for (const entry of fresh) this.seqs.add(entry.seq);
    this.entries = [...fresh, ...this.entries].sort((a, b) => a.seq - b.seq);
    this.hasOlder = more;
    this.version += 1;
    return fresh.length;
  }

  /** Entries of a `history` page after or around a seq: hasOlder is left as it was. */
  addEntries(entries: readonly Entry[]): number {
    const more = this.hasOlder;
    const count = this.addPage(entries, more);
    return count;
  }

  addOutgoing(outgoing: Outgoing): void {
    this.outgoing.set(outgoing.clientId, outgoing);
    this.version += 1;
  }

  findOutgoing(clientId: string): Outgoing | undefined {
    return this.outgoing.get(clientId);
  }

  pendingOutgoing(): Outgoing[] {
    return [...this.outgoing.values()];
  }

  /** Something about an outgoing message changed (failed, retried). */
  touch(): void {
    this.version += 1;
  }

  /**
   * The rows to show: entries in order, then outgoing ones. The "new messages" marker goes
   * above the first message of someone else (not `me`) at or after `markerSeq`.
   */
  rows(markerSeq: number | null, me = "", readable = false): Row[] {
    const rows: Row[] = [];
    let marker = markerSeq;
    let day = "";
    let previous: Entry | null = null;
    for (const entry of this.entries) {
      const kind = rowKind(entry);
      if (kind === null) continue;
      if (readable && dayOf(entry.ts) !== day) {
        // A date line above the first entry of each day.
        day = dayOf(entry.ts);
        rows.push({ type: "day", key: `d${day}`, ts: entry.ts });
        previous = null;
      }
      if (
        marker !== null &&
        entry.seq >= marker &&
        kindOf(entry) === "message" &&
        entry.sender.toLocaleLowerCase() !== me.toLocaleLowerCase()
      ) {
        rows.push({ type: "marker", key: "marker" });
        marker = null;
        previous = null;
      }
      if (kind === "event") {
        rows.push({ type: kind, key: `s${entry.seq}`, entry });
        previous = null;
        continue;
      }
      const grouped =
        readable &&
        previous !== null &&
        previous.sender === entry.sender &&
        entry.ts - previous.ts < GROUP_MS;
      rows.push({ type: kind, key: `s${entry.seq}`, entry, grouped });
      previous = entry;
    }
    for (const outgoing of this.outgoing.values()) {
      rows.push({ type: "outgoing", key: `o${outgoing.clientId}`, outgoing });
    }
    return rows;
  }
}

/** The most of a message's text the conversation list shows (the row's CSS clips the rest),
 * as the desktop client's PREVIEW_CHARS. */
export const PREVIEW_CHARS = 60;

const graphemeSegmenter = new Intl.Segmenter([], { granularity: "grapheme" });

/** A message's text on one short line, for the conversation list. */
export function previewLine(text: string): string {
  const line = text.split(/\s+/u).filter(Boolean).join(" ");
  if (line.length <= PREVIEW_CHARS) return line;
  // Cut between graphemes, never inside an emoji or a letter with its accents.
  const graphemes = Array.from(graphemeSegmenter.segment(line), (part) => part.segment);
  if (graphemes.length <= PREVIEW_CHARS) return line;
  return `${graphemes.slice(0, PREVIEW_CHARS - 1).join("")}…`;
}

const clockFormat = new Intl.DateTimeFormat([], { hour: "2-digit", minute: "2-digit" });
const shortDayFormat = new Intl.DateTimeFormat([], { day: "numeric", month: "short" });
const shortDateFormat = new Intl.DateTimeFormat([], {
  day: "2-digit",
  month: "2-digit",
  year: "numeric",
});

/** When a conversation's last message came, for the list: 14:05 today, `yesterday`, 12 Mar
 * this year, 12.03.2024 before (as the desktop client's list_time). */
export function listTime(ts: number, now: number, yesterday: string): string {
  const date = new Date(ts);
  const today = new Date(now);
  if (dayOf(ts) === dayOf(now) || ts > now) return clockFormat.format(date);
  const before = new Date(today.getFullYear(), today.getMonth(), today.getDate() - 1);
  if (dayOf(ts) === dayOf(before.getTime())) return yesterday;
  if (date.getFullYear() === today.getFullYear()) return shortDayFormat.format(date);
  return shortDateFormat.format(date);
}
