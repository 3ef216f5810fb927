// Exactly once, in order: the client library's cursor logic (beseda.client.connection:
// Client._accept, Client.sync, Client.set_cursor), without I/O, so it is tested alone.
//
// For each conversation the client keeps the seq of the last entry it delivered (its cursor).
// An entry at cursor + 1 is delivered, with whatever was held right after it; one at or below
// the cursor is a duplicate (an event and a sync may both bring it); one further ahead is held
// and the caller is told to sync, which fills the gap.

import type { Entry } from "./protocol.js";

interface ConversationCursor {
  cursor: number;
  held: Map<number, Entry>;
}

export interface Accepted {
  /** The entries new to the client, in order (possibly none). */
  delivered: Entry[];
  /** A gap was found: ask the server to `sync` from {@link Cursors.snapshot}. */
  gap: boolean;
}

export class Cursors {
  private readonly conversations = new Map<string, ConversationCursor>();

  constructor(initial: Record<string, number> = {}) {
    for (const [conversation, cursor] of Object.entries(initial)) {
      this.conversations.set(conversation, { cursor, held: new Map() });
    }
  }

  private state(conversation: string): ConversationCursor {
    let state = this.conversations.get(conversation);
    if (state === undefined) {
      state = { cursor: 0, held: new Map() };
      this.conversations.set(conversation, state);
    }
    return state;
  }

  /** Conversation id → seq of the last entry delivered: the `cursors` of a `sync`. */
  snapshot(): Record<string, number> {
    const out: Record<string, number> = {};
    for (const [conversation, state] of this.conversations) out[conversation] = state.cursor;
    return out;
  }

  cursor(conversation: string): number {
    return this.conversations.get(conversation)?.cursor ?? 0;
  }

  /** Start delivering `conversation` after `seq` (it never moves back). */
  set(conversation: string, seq: number): void {
    const state = this.state(conversation);
    if (seq > state.cursor) {
      state.cursor = seq;
      for (const held of [...state.held.keys()]) if (held <= seq) state.held.delete(held);
    }
  }

  /** One entry from an event, an acknowledgement or a reply. */
  accept(entry: Entry): Accepted {
    const state = this.state(entry.conversation);
    if (entry.seq <= state.cursor) return { delivered: [], gap: false };
    if (entry.seq > state.cursor + 1) {
      state.held.set(entry.seq, entry);
      return { delivered: [], gap: true };
    }
    const delivered = [entry];
    state.cursor = entry.seq;
    for (;;) {
      const next = state.held.get(state.cursor + 1);
      if (next === undefined) break;
      state.held.delete(state.cursor + 1);
      state.cursor += 1;
      delivered.push(next);
    }
    return { delivered, gap: false };
  }

  /**
   * One page of a `sync` reply, asked with `asked` as its cursors. The server answers from
   * the cursor or from the first entry this user may read (a group joined later, a return
   * after a removal): nothing readable lies before the first entry of a conversation in the
   * reply, so the cursor jumps there instead of waiting for a gap that cannot be filled.
   */
  acceptSyncPage(entries: readonly Entry[], asked: Record<string, number>): Entry[] {
    const delivered: Entry[] = [];
    const first = new Set<string>();
    for (const entry of entries) {
      if (!first.has(entry.conversation)) {
        first.add(entry.conversation);
        const state = this.state(entry.conversation);
        if (entry.seq > state.cursor + 1 && (asked[entry.conversation] ?? 0) === state.cursor) {
          this.set(entry.conversation, entry.seq - 1);
        }
      }
      delivered.push(...this.accept(entry).delivered);
    }
    return delivered;
  }
}
