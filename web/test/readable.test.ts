// The readable timeline: a sender's consecutive messages grouped, date lines, link safety,
// avatars' initials and colours.

import assert from "node:assert/strict";
import { test } from "node:test";

import { colourOf, initials, safeLink } from "../src/dom.js";
import type { Entry } from "../src/protocol.js";
import { GROUP_MS, Timeline } from "../src/timeline.js";

const at = (day: number, hour: number, minute: number): number =>
  new Date(2026, 11, day, hour, minute).getTime();

const entry = (seq: number, sender: string, ts: number, kind?: string): Entry => ({
  id: seq,
  conversation: "general",
  seq,
  sender,
  ts,
  text: `m${seq}`,
  ...(kind === undefined ? {} : { kind }),
});

test("a sender's messages within five minutes go under one header; days get a line", () => {
  const timeline = new Timeline();
  timeline.addPage(
    [
      entry(1, "anna", at(1, 10, 0)),
      entry(2, "anna", at(1, 10, 4)), // grouped
      entry(3, "anna", at(1, 10, 4) + GROUP_MS), // five minutes later: a new header
      entry(4, "boris", at(1, 10, 10)),
      entry(5, "boris", at(1, 10, 11), "joined"), // an event breaks the group
      entry(6, "boris", at(1, 10, 12)),
      entry(7, "boris", at(2, 9, 0)), // another day: a date line, a new header
      entry(8, "boris", at(2, 9, 1)),
    ],
    false,
  );
  const rows = timeline.rows(8, "anna", true);
  assert.deepEqual(
    rows.map((row) => (row.type === "message" && row.grouped === true ? `${row.key}+` : row.key)),
    ["d2026-12-1", "s1", "s2+", "s3", "s4", "s5", "s6", "d2026-12-2", "s7", "marker", "s8"],
  );
  // Without `readable`: the plain rows, as before.
  assert.deepEqual(
    timeline.rows(null).map((row) => row.key),
    ["s1", "s2", "s3", "s4", "s5", "s6", "s7", "s8"],
  );
});

test("only http and https addresses become links", () => {
  assert.equal(safeLink("https://example.org/a?b=1"), "https://example.org/a?b=1");
  assert.equal(safeLink("http://example.org"), "http://example.org/");
  assert.equal(safeLink("javascript:alert(1)"), null);
  assert.equal(safeLink("data:text/html,hi"), null);
  assert.equal(safeLink("not a url"), null);
});

test("avatars: up to two initials, and one colour per name whatever its case", () => {
  assert.equal(initials("anna"), "AN");
  assert.equal(initials("Анна Петрова"), "АП");
  assert.equal(initials("zoë.k"), "ZK");
  assert.equal(initials("😀x"), "😀X");
  assert.equal(colourOf("Anna"), colourOf("anna"));
  assert.ok(colourOf("boris") >= 0 && colourOf("boris") < 8);
  const colours = new Set(["anna", "boris", "cara", "dan", "eve", "fay", "gus"].map(colourOf));
  assert.ok(colours.size > 2);
});
