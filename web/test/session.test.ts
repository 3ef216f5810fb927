// The session against a scripted server: login, exactly-once delivery, the outbox through a
// dropped connection, resume, watch, rate limits and the heartbeat.

import assert from "node:assert/strict";
import { test } from "node:test";

import type { Entry } from "../src/protocol.js";
import { ConnectionLostError, ServerError, Session, type SessionEvent } from "../src/session.js";
import { FakeSocket, FakeTimers, settle } from "./fakes.js";

interface Rig {
  session: Session;
  sockets: FakeSocket[];
  timers: FakeTimers;
  events: SessionEvent[];
  socket(): FakeSocket;
}

function rig(): Rig {
  const sockets: FakeSocket[] = [];
  const timers = new FakeTimers();
  const session = new Session("ws://test/ws", {
    socket: () => {
      const socket = new FakeSocket();
      sockets.push(socket);
      return socket;
    },
    timers,
    random: () => 1, // no jitter: waits are the backoff exactly
  });
  const events: SessionEvent[] = [];
  session.on((event) => events.push(event));
  return {
    session,
    sockets,
    timers,
    events,
    socket: () => {
      const last = sockets[sockets.length - 1];
      if (last === undefined) throw new Error("no socket");
      return last;
    },
  };
}

const message = (conversation: string, seq: number, clientId = `c${seq}`): Entry => ({
  id: seq,
  conversation,
  seq,
  sender: "boris",
  ts: seq,
  text: `text ${seq}`,
  client_id: clientId,
});

const entries = (events: SessionEvent[]): string[] =>
  events.flatMap((e) => (e.type === "entry" ? [`${e.entry.conversation}#${e.entry.seq}`] : []));

/** Connect, log in as anna with conversations at the given last seqs, answer the first sync. */
async function signedIn(r: Rig, last: Record<string, number> = { general: 2 }): Promise<void> {
  const connecting = r.session.connect();
  r.socket().hello();
  await connecting;
  const login = r.session.login("anna", "password1");
  await settle();
  r.socket().reply(r.socket().last("login"), { user: "anna", token: "T" });
  await settle();
  r.socket().reply(r.socket().last("conversations"), {
    conversations: Object.entries(last).map(([conversation, seq]) => ({
      conversation,
      kind: "channel",
      last_seq: seq,
    })),
  });
  await settle();
  r.socket().reply(r.socket().last("sync"), { entries: [], more: false });
  await login;
  await settle();
}

test("connecting waits for hello; login says protocol 4 and starts at the newest entries", async () => {
  const r = rig();
  await signedIn(r, { general: 2, "c:1": 5 });
  assert.equal(r.session.state, "connected");
  assert.equal(r.socket().last("login").protocol, 4);
  assert.deepEqual(r.socket().last("sync").cursors, { general: 2, "c:1": 5 });
  assert.deepEqual(r.session.cursors.snapshot(), { general: 2, "c:1": 5 });
});

test("an event and a sync carrying the same entry deliver it once", async () => {
  const r = rig();
  await signedIn(r);
  r.socket().receive({ type: "entry", entry: message("general", 3) });
  r.socket().receive({ type: "entry", entry: message("general", 3) });
  r.socket().receive({ type: "message", message: message("general", 3) });
  await settle();
  assert.deepEqual(entries(r.events), ["general#3"]);
});

test("a gap in the events is filled by a sync, in order", async () => {
  const r = rig();
  await signedIn(r);
  r.socket().receive({ type: "entry", entry: message("general", 5) });
  await settle();
  assert.deepEqual(entries(r.events), []);
  const sync = r.socket().last("sync");
  assert.deepEqual(sync.cursors, { general: 2 });
  r.socket().reply(sync, { entries: [message("general", 3), message("general", 4)], more: false });
  await settle();
  assert.deepEqual(entries(r.events), ["general#3", "general#4", "general#5"]);
});

test("sync pages until more is false", async () => {
  const r = rig();
  await signedIn(r);
  const syncing = r.session.sync();
  await settle();
  r.socket().reply(r.socket().last("sync"), { entries: [message("general", 3)], more: true });
  await settle();
  assert.deepEqual(r.socket().last("sync").cursors, { general: 3 });
  r.socket().reply(r.socket().last("sync"), { entries: [message("general", 4)], more: false });
  assert.deepEqual(
    (await syncing).map((e) => e.seq),
    [3, 4],
  );
});

test("a message sent while the link is down goes out after the reconnect with the same client id", async () => {
  const r = rig();
  await signedIn(r);
  const first = r.socket();
  first.drop();
  await settle();
  assert.equal(r.session.state, "reconnecting");
  const posting = r.session.post("general", "hello", "cid-1");
  let settled = false;
  void posting.then(() => (settled = true));
  await settle();
  assert.equal(r.session.waiting, 1);
  assert.equal(first.requests("post").length, 0);
  await r.timers.advance(200); // the first backoff
  const second = r.socket();
  assert.notEqual(second, first);
  second.hello();
  await settle();
  second.reply(second.last("login"), { user: "anna", token: "T" });
  await settle();
  const post = second.last("post");
  assert.equal(post.client_id, "cid-1");
  assert.equal(post.text, "hello");
  assert.equal(settled, false);
  // After the resent requests, a sync from the cursors (the server answers in order, so it
  // sees the message).
  const order = second.sent.map((frame) => frame.type);
  assert.deepEqual(order, ["login", "post", "sync"]);
  second.reply(post, { entry: { ...message("general", 3, "cid-1"), sender: "anna" } });
  assert.equal((await posting).seq, 3);
  assert.deepEqual(r.session.cursors.snapshot(), { general: 3 });
});

test("an unacknowledged message is resent after a drop; the server's duplicate ack is delivered once", async () => {
  const r = rig();
  await signedIn(r);
  const posting = r.session.post("general", "once", "cid-2");
  await settle();
  const first = r.socket();
  const sent = first.last("post");
  first.drop(); // stored, but the ack was lost
  await settle();
  await r.timers.advance(200);
  const second = r.socket();
  second.hello();
  await settle();
  second.reply(second.last("login"), { user: "anna", token: "T" });
  await settle();
  const again = second.last("post");
  assert.equal(again.id, sent.id);
  assert.equal(again.client_id, "cid-2");
  second.reply(again, { entry: message("general", 3, "cid-2"), duplicate: true });
  await posting;
  second.reply(second.last("sync"), { entries: [message("general", 3, "cid-2")], more: false });
  await settle();
  assert.deepEqual(entries(r.events), ["general#3"]);
});

test("a request that is not safe to repeat fails when the connection drops", async () => {
  const r = rig();
  await signedIn(r);
  const creating = r.session.createChannel("design", true, "");
  await settle();
  r.socket().drop();
  await assert.rejects(creating, ConnectionLostError);
});

test("the watch list is sent again after a reconnect, and its states arrive as presence", async () => {
  const r = rig();
  await signedIn(r);
  const watching = r.session.watch(["boris"]);
  await settle();
  r.socket().reply(r.socket().last("watch"), { users: [{ name: "boris", online: true }] });
  await watching;
  r.socket().drop();
  await settle();
  await r.timers.advance(200);
  r.socket().hello();
  await settle();
  r.socket().reply(r.socket().last("login"), { user: "anna", token: "T" });
  await settle();
  assert.deepEqual(r.socket().last("watch").users, ["boris"]);
  r.socket().reply(r.socket().last("watch"), { users: [{ name: "boris", online: false }] });
  await settle();
  const presence = r.events.flatMap((e) => (e.type === "presence" ? [e.online] : []));
  assert.deepEqual(presence, [true, false]);
});

test("backoff doubles while the server is away, up to its limit", async () => {
  const r = rig();
  await signedIn(r);
  r.socket().drop();
  await settle();
  const waits: number[] = [];
  for (let attempt = 0; attempt < 8; attempt += 1) {
    const state = r.events.filter((e) => e.type === "state").pop();
    waits.push(state?.type === "state" ? (state.retryIn ?? -1) : -1);
    await r.timers.advance(waits[waits.length - 1] ?? 0);
    r.socket().drop(); // refused
    await settle();
  }
  assert.deepEqual(waits, [200, 400, 800, 1600, 3200, 6400, 12800, 15000]);
});

test("a revoked token ends the session: offline, queued messages fail", async () => {
  const r = rig();
  await signedIn(r);
  r.socket().drop();
  await settle();
  const posting = r.session.post("general", "lost", "cid-3");
  await r.timers.advance(200);
  r.socket().hello();
  await settle();
  r.socket().receive({
    type: "error",
    id: r.socket().last("login").id,
    code: "bad_credentials",
    message: "The session token is not valid.",
  });
  await assert.rejects(posting, ConnectionLostError);
  assert.equal(r.session.state, "offline");
  assert.equal(r.session.token, null);
  const last = r.events[r.events.length - 1];
  assert.deepEqual(last, { type: "state", state: "offline", reason: "bad_credentials" });
});

test("a message refused as rate_limited is sent again after retry_after", async () => {
  const r = rig();
  await signedIn(r);
  const posting = r.session.post("general", "fast", "cid-4");
  await settle();
  const post = r.socket().last("post");
  r.socket().receive({
    type: "error",
    id: post.id,
    code: "rate_limited",
    message: "slow down",
    retry_after: 1.5,
  });
  await r.timers.advance(1499);
  assert.equal(r.socket().requests("post").length, 1);
  await r.timers.advance(1);
  assert.equal(r.socket().requests("post").length, 2);
  r.socket().reply(post, { entry: message("general", 3, "cid-4") });
  assert.equal((await posting).seq, 3);
});

test("other errors reject with the server's code", async () => {
  const r = rig();
  await signedIn(r);
  const posting = r.session.post("c:9", "x", "cid-5");
  await settle();
  r.socket().receive({
    type: "error",
    id: r.socket().last("post").id,
    code: "not_a_member",
    message: "Join it first.",
  });
  await assert.rejects(posting, (error: unknown) => {
    assert.ok(error instanceof ServerError);
    assert.equal(error.code, "not_a_member");
    return true;
  });
});

test("silence past the heartbeat sends a ping; no answer drops the link and reconnects", async () => {
  const r = rig();
  await signedIn(r);
  const first = r.socket();
  await r.timers.advance(30_000);
  assert.equal(first.requests("ping").length, 1);
  await r.timers.advance(15_000);
  assert.equal(first.closed, true);
  assert.equal(r.session.state, "reconnecting");
});

test("a server that refuses with bye before hello is an error with its code", async () => {
  const r = rig();
  const connecting = r.session.connect();
  r.socket().receive({ type: "bye", code: "too_many_connections", message: "Too many." });
  await assert.rejects(connecting, (error: unknown) => {
    assert.ok(error instanceof ServerError);
    assert.equal(error.code, "too_many_connections");
    return true;
  });
  assert.equal(r.session.state, "offline");
});

test("a remembered session waits for an unreachable server, with messages in the outbox", async () => {
  const r = rig();
  const resuming = r.session.resumeToken("T");
  r.socket().drop(); // nobody listens
  await settle();
  assert.equal(r.session.state, "reconnecting");
  const posting = r.session.post("general", "queued", "cid-6");
  await r.timers.advance(200);
  r.socket().hello();
  await settle();
  assert.equal(r.socket().last("login").token, "T");
  r.socket().reply(r.socket().last("login"), { user: "anna", token: "T" });
  await settle();
  r.socket().reply(r.socket().last("conversations"), {
    conversations: [{ conversation: "general", kind: "channel", last_seq: 4 }],
  });
  await settle();
  assert.equal(r.socket().last("post").client_id, "cid-6");
  assert.deepEqual(await resuming, { user: "anna", token: "T" });
  r.socket().reply(r.socket().last("post"), { entry: message("general", 5, "cid-6") });
  assert.equal((await posting).seq, 5);
});

test("edit, delete and react (protocol 4): their change entries come through the cursors once", async () => {
  const r = rig();
  await signedIn(r);
  const change = (seq: number, kind: string, extra: Partial<Entry> = {}): Entry => ({
    id: seq,
    conversation: "general",
    seq,
    sender: "anna",
    ts: seq,
    kind,
    ref: 1,
    ...extra,
  });
  const editing = r.session.edit("general", 1, "fixed");
  await settle();
  assert.deepEqual(
    { ...r.socket().last("edit"), id: 0 },
    { id: 0, type: "edit", conversation: "general", seq: 1, text: "fixed" },
  );
  // The live event may come before the reply: delivered once all the same.
  r.socket().receive({ type: "entry", entry: change(3, "edited", { text: "fixed" }) });
  r.socket().reply(r.socket().last("edit"), { ...change(3, "edited", { text: "fixed" }) });
  assert.equal((await editing).seq, 3);
  const reacting = r.session.react("general", 1, "👍", false);
  await settle();
  assert.equal(r.socket().last("unreact").emoji, "👍");
  r.socket().reply(r.socket().last("unreact"), {
    conversation: "general",
    seq: 1,
    reactions: [],
    entry: change(4, "unreacted", { emoji: "👍", count: 0 }),
  });
  await reacting;
  // Nothing changed: no entry in the reply, nothing delivered.
  const again = r.session.react("general", 1, "👍", false);
  await settle();
  r.socket().reply(r.socket().last("unreact"), { conversation: "general", seq: 1, reactions: [] });
  await again;
  const deleting = r.session.delete("general", 1);
  await settle();
  r.socket().reply(r.socket().last("delete"), { ...change(5, "deleted") });
  await deleting;
  await settle();
  assert.deepEqual(entries(r.events), ["general#3", "general#4", "general#5"]);
});

test("search and history around and after send the version-4 fields", async () => {
  const r = rig();
  await signedIn(r);
  const searching = r.session.search("встреча", "n:3", 10);
  await settle();
  const request = r.socket().last("search");
  assert.deepEqual([request.query, request.cursor, request.limit], ["встреча", "n:3", 10]);
  r.socket().reply(request, { results: [], next: "n:1" });
  assert.deepEqual(await searching, { results: [], next: "n:1" });
  const around = r.session.historyAround("general", 40, 20);
  await settle();
  assert.equal(r.socket().last("history").around, 40);
  r.socket().reply(r.socket().last("history"), { entries: [], more: true, newer: true });
  assert.deepEqual(await around, { entries: [], more: true, newer: true });
  const after = r.session.historyAfter("general", 50);
  await settle();
  assert.equal(r.socket().last("history").after, 50);
  r.socket().reply(r.socket().last("history"), { entries: [], more: true });
  assert.deepEqual(await after, { entries: [], newer: false });
});
