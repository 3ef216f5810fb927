// The exactly-once cursor logic, case by case (the client library's rules: docs/protocol.md,
// "Guarantees").

import assert from "node:assert/strict";
import { test } from "node:test";

import { Cursors } from "../src/cursors.js";
import type { Entry } from "../src/protocol.js";

const entry = (conversation: string, seq: number, text = `m${seq}`): Entry => ({
  id: seq,
  conversation,
  seq,
  sender: "anna",
  ts: 0,
  text,
});
const seqs = (entries: Entry[]): number[] => entries.map((e) => e.seq);

test("entries in order are delivered once each; repeats are dropped", () => {
  const cursors = new Cursors();
  assert.deepEqual(seqs(cursors.accept(entry("general", 1)).delivered), [1]);
  assert.deepEqual(seqs(cursors.accept(entry("general", 2)).delivered), [2]);
  assert.deepEqual(cursors.accept(entry("general", 2)), { delivered: [], gap: false });
  assert.deepEqual(cursors.accept(entry("general", 1)), { delivered: [], gap: false });
  assert.equal(cursors.cursor("general"), 2);
});

test("an entry ahead of the cursor is held and asks for a sync; the gap filled delivers both", () => {
  const cursors = new Cursors({ general: 3 });
  assert.deepEqual(cursors.accept(entry("general", 5)), { delivered: [], gap: true });
  assert.equal(cursors.cursor("general"), 3);
  const filled = cursors.accept(entry("general", 4));
  assert.deepEqual(seqs(filled.delivered), [4, 5]);
  assert.equal(filled.gap, false);
  assert.equal(cursors.cursor("general"), 5);
  // The held one arriving again (from the sync) is a duplicate.
  assert.deepEqual(cursors.accept(entry("general", 5)).delivered, []);
});

test("conversations keep separate cursors", () => {
  const cursors = new Cursors();
  cursors.accept(entry("general", 1));
  cursors.accept(entry("c:1", 1));
  cursors.accept(entry("c:1", 2));
  assert.deepEqual(cursors.snapshot(), { general: 1, "c:1": 2 });
});

test("setting a cursor never moves it back and forgets what was held up to it", () => {
  const cursors = new Cursors();
  cursors.accept(entry("general", 3)); // held
  cursors.accept(entry("general", 9)); // held
  cursors.set("general", 5);
  assert.equal(cursors.cursor("general"), 5);
  cursors.set("general", 2);
  assert.equal(cursors.cursor("general"), 5);
  assert.deepEqual(seqs(cursors.accept(entry("general", 6)).delivered), [6]);
  assert.deepEqual(cursors.accept(entry("general", 3)).delivered, []);
});

test("a sync page starting past the cursor moves it to the first readable entry", () => {
  // A group joined later is read from the entry that added the user: nothing before it.
  const cursors = new Cursors();
  const asked = cursors.snapshot();
  const delivered = cursors.acceptSyncPage([entry("c:2", 7), entry("c:2", 8)], asked);
  assert.deepEqual(seqs(delivered), [7, 8]);
  assert.equal(cursors.cursor("c:2"), 8);
});

test("a sync page does not jump a cursor that an event moved meanwhile", () => {
  const cursors = new Cursors({ general: 1 });
  const asked = cursors.snapshot(); // {general: 1}
  cursors.accept(entry("general", 2)); // a live event while the sync was on its way
  cursors.accept(entry("general", 4)); // ahead: held
  const delivered = cursors.acceptSyncPage([entry("general", 3), entry("general", 4)], asked);
  assert.deepEqual(seqs(delivered), [3, 4]);
  assert.equal(cursors.cursor("general"), 4);
});

test("a sync page's later conversations are taken in commit order, each from its cursor", () => {
  const cursors = new Cursors({ general: 1, "dm:1:2": 0 });
  const asked = cursors.snapshot();
  const page = [entry("general", 2), entry("dm:1:2", 1), entry("general", 3)];
  assert.deepEqual(
    cursors.acceptSyncPage(page, asked).map((e) => `${e.conversation}#${e.seq}`),
    ["general#2", "dm:1:2#1", "general#3"],
  );
});
