// The composer's emoji picker offers the desktop client's emoji; the conversation list's
// preview line and time.

import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { test } from "node:test";

import { COMPOSER_EMOJI, EMOJI_COLUMNS } from "../src/emoji.js";
import { listTime, PREVIEW_CHARS, previewLine } from "../src/timeline.js";

test("the picker's emoji are the desktop client's, in the same order", () => {
  // npm runs the tests in web/; the desktop client's list is in the Python package.
  const python = readFileSync("../src/beseda/gui/emoji.py", "utf8");
  const tuple = /COMPOSER = \(([^)]*)\)/u.exec(python)?.[1] ?? "";
  const desktop = Array.from(tuple.matchAll(/"([^"]+)"/gu), (match) => match[1]);
  assert.equal(desktop.length, 40);
  assert.deepEqual(COMPOSER_EMOJI, desktop);
  assert.equal(EMOJI_COLUMNS, Number(/COLUMNS = (\d+)/u.exec(python)?.[1]));
});

test("a preview is one line, cut between graphemes", () => {
  assert.equal(previewLine("  hello\n\n  world\t!"), "hello world !");
  const long = "👍🏽".repeat(PREVIEW_CHARS + 5);
  const cut = previewLine(long);
  assert.equal(cut, `${"👍🏽".repeat(PREVIEW_CHARS - 1)}…`);
  assert.equal(previewLine("x".repeat(PREVIEW_CHARS)), "x".repeat(PREVIEW_CHARS));
});

test("the list's time: the clock today, yesterday, a short date before", () => {
  const now = new Date(2026, 11, 2, 15, 30).getTime();
  const today = listTime(new Date(2026, 11, 2, 9, 5).getTime(), now, "Yesterday");
  assert.match(today, /09.05|9.05/u);
  assert.equal(listTime(new Date(2026, 11, 1, 23, 59).getTime(), now, "Yesterday"), "Yesterday");
  const earlier = listTime(new Date(2026, 2, 12, 10, 0).getTime(), now, "Yesterday");
  assert.match(earlier, /12/u);
  assert.doesNotMatch(earlier, /2026|10.00/u);
  assert.match(listTime(new Date(2024, 2, 12).getTime(), now, "Yesterday"), /2024/u);
});
