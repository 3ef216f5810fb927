// The port of beseda.client.changes (apply_change), the quotes following their original, the
// timeline applying changes, and the search highlights' code-point offsets in UTF-16 strings.

import assert from "node:assert/strict";
import { test } from "node:test";

import { applyChange, applyToQuote, highlightPieces, preview } from "../src/changes.js";
import type { Entry } from "../src/protocol.js";
import { Timeline } from "../src/timeline.js";

const message = (seq: number, extra: Partial<Entry> = {}): Entry => ({
  id: seq,
  conversation: "general",
  seq,
  sender: "alice",
  ts: 1000 + seq,
  text: `m${seq}`,
  ...extra,
});

const change = (seq: number, kind: string, ref: number, extra: Partial<Entry> = {}): Entry => ({
  id: seq,
  conversation: "general",
  seq,
  sender: "bob",
  ts: 5000 + seq,
  kind,
  ref,
  ...extra,
});

test("an edit sets the whole text and the edited time", () => {
  const edited = applyChange(message(1), change(3, "edited", 1, { text: "new" }), "bob");
  assert.deepEqual(edited, { ...message(1), text: "new", edited: 5003 });
});

test("a delete removes the message; a change of another message changes nothing", () => {
  assert.equal(applyChange(message(1), change(3, "deleted", 1), "bob"), null);
  const original = message(2);
  assert.equal(applyChange(original, change(3, "deleted", 1), "bob"), original);
  assert.equal(
    applyChange(original, change(3, "deleted", 2, { conversation: "c:1" }), "bob"),
    original,
  );
  // A message is no change.
  assert.equal(applyChange(original, message(5, { ref: 2 }), "bob"), original);
});

test("reactions take the count after the change; one's own mark follows one's own changes", () => {
  const step = (m: Entry, c: Entry): Entry => {
    const next = applyChange(m, c, "alice");
    assert.ok(next !== null);
    return next;
  };
  let m = message(1);
  m = step(m, change(4, "reacted", 1, { emoji: "👍", count: 1 }));
  assert.deepEqual(m.reactions, [{ emoji: "👍", count: 1, me: false }]);
  m = step(m, change(5, "reacted", 1, { sender: "Alice", emoji: "👍", count: 2 }));
  assert.deepEqual(m.reactions, [{ emoji: "👍", count: 2, me: true }]);
  m = step(m, change(6, "reacted", 1, { emoji: "🎉", count: 1 }));
  m = step(m, change(7, "unreacted", 1, { emoji: "👍", count: 1 }));
  // Bob's removal leaves Alice's own mark; the order is the order first added.
  assert.deepEqual(m.reactions, [
    { emoji: "👍", count: 1, me: true },
    { emoji: "🎉", count: 1, me: false },
  ]);
  m = step(m, change(8, "unreacted", 1, { sender: "alice", emoji: "👍", count: 0 }));
  assert.deepEqual(m.reactions, [{ emoji: "🎉", count: 1, me: false }]);
});

test("a change applied to a message loaded later (already showing it) changes nothing", () => {
  const loaded = message(1, {
    text: "new",
    edited: 5003,
    reactions: [{ emoji: "👍", count: 2, me: true }],
  });
  const afterEdit = applyChange(loaded, change(3, "edited", 1, { text: "new" }), "alice");
  assert.deepEqual(afterEdit, loaded);
  const afterReact = applyChange(
    loaded,
    change(5, "reacted", 1, { sender: "alice", emoji: "👍", count: 2 }),
    "alice",
  );
  assert.deepEqual(afterReact, loaded);
});

test("a quote follows its original's edit (cut to 100 code points) and delete", () => {
  const reply = message(2, { reply_to: 1, reply: { seq: 1, sender: "alice", text: "old" } });
  const long = "😀".repeat(150);
  const edited = applyToQuote(reply, change(3, "edited", 1, { text: long }));
  assert.equal(edited.reply?.text, "😀".repeat(100));
  const deleted = applyToQuote(edited, change(4, "deleted", 1));
  assert.deepEqual(deleted.reply, { seq: 1, sender: "alice", deleted: true });
  assert.equal(applyToQuote(reply, change(3, "edited", 9, { text: "x" })), reply);
  assert.equal(preview("ab😀c", 3), "ab😀");
});

test("the timeline applies changes to its messages and the replies quoting them", () => {
  const timeline = new Timeline();
  timeline.add(message(1));
  timeline.add(
    message(2, { sender: "bob", reply_to: 1, reply: { seq: 1, sender: "alice", text: "m1" } }),
  );
  const before = timeline.version;
  assert.equal(
    timeline.add(change(3, "edited", 1, { sender: "alice", text: "fixed" }), "bob"),
    true,
  );
  assert.equal(
    timeline.add(change(3, "edited", 1, { sender: "alice", text: "fixed" }), "bob"),
    false,
  );
  assert.ok(timeline.version > before);
  assert.equal(timeline.message(1)?.text, "fixed");
  assert.equal(timeline.message(2)?.reply?.text, "fixed");
  timeline.add(change(4, "reacted", 2, { sender: "alice", emoji: "👍", count: 1 }), "bob");
  assert.deepEqual(timeline.message(2)?.reactions, [{ emoji: "👍", count: 1, me: false }]);
  timeline.add(change(5, "deleted", 1, { sender: "alice" }), "bob");
  assert.equal(timeline.message(1), undefined);
  assert.equal(timeline.message(2)?.reply?.deleted, true);
  assert.deepEqual(
    timeline.rows(null).map((row) => row.key),
    ["s2"],
  );
  // A deleted message's own place in a sync: a deleted entry naming its own seq, no row.
  timeline.add(change(6, "deleted", 6), "bob");
  assert.equal(timeline.rows(null).length, 1);
  assert.equal(timeline.newestSeq, 2);
});

test("highlights are code points: a UTF-16 string with emoji and Cyrillic is cut right", () => {
  // From docs/protocol.md: «встреча» at [14, 21) of this snippet.
  assert.deepEqual(highlightPieces("Ёлка в офисе, встреча в 5", [[14, 21]]), [
    { text: "Ёлка в офисе, ", hit: false },
    { text: "встреча", hit: true },
    { text: " в 5", hit: false },
  ]);
  // Each emoji is one code point but two UTF-16 units: the offsets must not drift.
  const text = "😀😀 встречу 🎉 meeting";
  assert.deepEqual(
    highlightPieces(text, [
      [3, 10],
      [13, 20],
    ]),
    [
      { text: "😀😀 ", hit: false },
      { text: "встречу", hit: true },
      { text: " 🎉 ", hit: false },
      { text: "meeting", hit: true },
    ],
  );
  // Out of range and overlapping offsets are clamped and merged.
  assert.deepEqual(
    highlightPieces("abc", [
      [0, 2],
      [1, 9],
    ]),
    [{ text: "abc", hit: true }],
  );
  assert.deepEqual(highlightPieces("", [[0, 1]]), []);
});
