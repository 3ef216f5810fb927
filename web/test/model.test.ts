// The timeline model, the row positions of the windowed list, and the translations.

import assert from "node:assert/strict";
import { test } from "node:test";

import { Heights } from "../src/heights.js";
import { Translator, chooseLanguage, russianKeys } from "../src/i18n.js";
import type { Entry } from "../src/protocol.js";
import { Timeline } from "../src/timeline.js";

const entry = (seq: number, extra: Partial<Entry> = {}): Entry => ({
  id: seq,
  conversation: "general",
  seq,
  sender: "anna",
  ts: seq,
  text: `m${seq}`,
  ...extra,
});

test("the timeline holds each entry once, in seq order, older pages before", () => {
  const timeline = new Timeline();
  assert.equal(timeline.add(entry(10)), true);
  assert.equal(timeline.add(entry(10)), false);
  timeline.add(entry(12));
  timeline.add(entry(11));
  assert.equal(timeline.addPage([entry(8), entry(9), entry(10)], true), 2);
  assert.deepEqual(
    timeline.rows(null).map((row) => row.key),
    ["s8", "s9", "s10", "s11", "s12"],
  );
  assert.equal(timeline.oldestSeq, 8);
  assert.equal(timeline.hasOlder, true);
});

test("an outgoing message shows after the entries until its entry arrives", () => {
  const timeline = new Timeline();
  timeline.add(entry(1));
  timeline.addOutgoing({ clientId: "x", text: "hi", sentAt: 0, failed: null, final: false });
  assert.deepEqual(
    timeline.rows(null).map((row) => row.type),
    ["message", "outgoing"],
  );
  timeline.add(entry(2, { client_id: "x", text: "hi" }));
  assert.deepEqual(
    timeline.rows(null).map((row) => row.key),
    ["s1", "s2"],
  );
});

test("changes show as event rows, unknown kinds not at all, and the marker before its seq", () => {
  const timeline = new Timeline();
  timeline.add(entry(1, { kind: "created" }));
  timeline.add(entry(2));
  timeline.add(entry(3, { kind: "a-kind-from-the-future" }));
  timeline.add(entry(4));
  assert.deepEqual(
    timeline.rows(4).map((row) => row.type),
    ["event", "message", "marker", "message"],
  );
});

test("the new-messages marker skips one's own messages and changes", () => {
  const timeline = new Timeline();
  timeline.add(entry(1, { kind: "created", sender: "anna" }));
  timeline.add(entry(2, { sender: "anna" }));
  timeline.add(entry(3, { sender: "boris" }));
  assert.deepEqual(
    timeline.rows(1, "Anna").map((row) => row.key),
    ["s1", "s2", "marker", "s3"],
  );
});

test("row positions follow measured heights; the window covers the viewport and its margin", () => {
  const heights = new Heights(50);
  heights.setKeys(Array.from({ length: 10_000 }, (_, i) => `s${i}`));
  assert.equal(heights.total(), 500_000);
  assert.equal(heights.measure("s0", 120), true);
  assert.equal(heights.measure("s0", 120), false);
  assert.equal(heights.offset(1), 120);
  assert.equal(heights.total(), 500_070);
  assert.equal(heights.indexAt(0), 0);
  assert.equal(heights.indexAt(119), 0);
  assert.equal(heights.indexAt(120), 1);
  const { start, end } = heights.window(250_000, 800, 600);
  assert.ok(end - start < 60, `drew ${end - start} rows`);
  assert.ok(heights.offset(start) <= 250_000 - 600);
  assert.ok(heights.offset(end) >= 250_000 + 800 + 600);
});

test("the language comes from the browser's list; Russian plurals have three forms", () => {
  assert.equal(chooseLanguage(["ru-RU", "en"]), "ru");
  assert.equal(chooseLanguage(["de-DE", "en-GB"]), "en");
  assert.equal(chooseLanguage(["fr"]), "en");
  const ru = new Translator("ru");
  assert.equal(ru.t("{n} new messages ↓", { n: 1 }), "1 новое сообщение ↓");
  assert.equal(ru.t("{n} new messages ↓", { n: 3 }), "3 новых сообщения ↓");
  assert.equal(ru.t("{n} new messages ↓", { n: 5 }), "5 новых сообщений ↓");
  assert.equal(ru.t("{n} new messages ↓", { n: 21 }), "21 новое сообщение ↓");
  const en = new Translator("en");
  assert.equal(en.t("{n} new messages ↓", { n: 1 }), "1 new message ↓");
  assert.equal(en.t("{n} new messages ↓", { n: 2 }), "2 new messages ↓");
  assert.equal(en.t("{name} is typing…", { name: "Вера" }), "Вера is typing…");
});

test("every text the app shows has a Russian translation", async () => {
  const { readFileSync, readdirSync } = await import("node:fs");
  const sources = readdirSync("src")
    .filter((name) => name.endsWith(".ts"))
    .map((name) => readFileSync(`src/${name}`, "utf8"))
    .join("\n");
  const used = new Set<string>();
  for (const match of sources.matchAll(/\bt\(\s*"((?:[^"\\]|\\.)*)"/g)) used.add(match[1] ?? "");
  const translated = new Set(russianKeys());
  const missing = [...used].filter((key) => !translated.has(key));
  assert.deepEqual(missing, []);
  assert.ok(used.size > 40, `found ${used.size} texts`);
});
