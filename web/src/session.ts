// One logical session over a succession of WebSocket connections: the web app's port of the
// client library (beseda.client.Client). Requests wait in a pending table until answered;
// after a dropped connection it reconnects with backoff, logs in with the token, resends the
// requests that are safe to repeat (messages, by their client id, and reads) in their
// original order, sends its watch list again and syncs from its cursors. The socket, the
// clock and chance are handed in, so unit tests drive it without a network.

import { Cursors } from "./cursors.js";
import {
  PROTOCOL,
  kindOf,
  parseServerMessage,
  type ConversationInfo,
  type Entry,
  type Hello,
  type Request,
  type SearchHit,
  type ServerMessage,
  type UserEntry,
} from "./protocol.js";

/** What the session needs of a WebSocket (the browser's own fits). */
export interface SocketLike {
  send(data: string): void;
  close(): void;
  onopen: ((event: Event) => void) | null;
  onmessage: ((event: MessageEvent) => void) | null;
  onclose: ((event: CloseEvent) => void) | null;
  onerror: ((event: Event) => void) | null;
}

export type SocketFactory = (url: string) => SocketLike;

export interface Timers {
  now(): number;
  setTimeout(callback: () => void, ms: number): unknown;
  clearTimeout(handle: unknown): void;
}

export const browserTimers: Timers = {
  now: () => Date.now(),
  setTimeout: (callback, ms) => globalThis.setTimeout(callback, ms),
  clearTimeout: (handle) => {
    globalThis.clearTimeout(handle as ReturnType<typeof setTimeout>);
  },
};

export type ConnectionState = "offline" | "connecting" | "connected" | "reconnecting";

export type SessionEvent =
  | { type: "entry"; entry: Entry }
  | { type: "read"; conversation: string; seq: number }
  | { type: "typing"; conversation: string; user: string }
  | { type: "presence"; user: string; online: boolean }
  | { type: "state"; state: ConnectionState; retryIn?: number; reason?: string };

/** A refusal by the server: `code` is the wire error code. */
export class ServerError extends Error {
  constructor(
    readonly code: string,
    message: string,
    readonly retryAfter?: number,
  ) {
    super(message);
    this.name = "ServerError";
  }
}

/** The connection dropped and the request cannot be repeated (or the session is closed). */
export class ConnectionLostError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "ConnectionLostError";
  }
}

const MESSAGE_REQUESTS = new Set(["post", "dm", "send"]);

interface Pending {
  id: number;
  request: Request;
  retry: boolean;
  attempts: number;
  resolve: (data: Record<string, unknown>) => void;
  reject: (error: Error) => void;
}

export interface SessionOptions {
  socket: SocketFactory;
  timers?: Timers;
  random?: () => number;
  minBackoffMs?: number;
  maxBackoffMs?: number;
  connectTimeoutMs?: number;
  heartbeatMs?: number;
  maxRateLimitRetries?: number;
}

export interface AuthResult {
  user: string;
  token: string;
}

export class Session {
  user: string | null = null;
  token: string | null = null;
  hello: Hello | null = null;
  state: ConnectionState = "offline";
  readonly cursors = new Cursors();

  private readonly factory: SocketFactory;
  private readonly timers: Timers;
  private readonly random: () => number;
  private readonly minBackoff: number;
  private readonly maxBackoff: number;
  private readonly connectTimeout: number;
  private readonly heartbeat: number;
  private readonly maxRateLimitRetries: number;
  private readonly listeners: ((event: SessionEvent) => void)[] = [];
  private readonly pending = new Map<number, Pending>();
  private nextId = 1;
  private socket: SocketLike | null = null;
  private authenticated = false;
  private closed = false;
  private priming = false;
  private syncing: Promise<Entry[]> | null = null;
  private syncAgain = false;
  private watching: string[] = [];
  private reconnectTimer: unknown = null;
  private reconnectDelay = 0;
  private reconnecting = false;
  private heartbeatTimer: unknown = null;
  private lastSeen = 0;

  constructor(
    readonly url: string,
    options: SessionOptions,
  ) {
    this.factory = options.socket;
    this.timers = options.timers ?? browserTimers;
    this.random = options.random ?? Math.random;
    this.minBackoff = options.minBackoffMs ?? 200;
    this.maxBackoff = options.maxBackoffMs ?? 15_000;
    this.connectTimeout = options.connectTimeoutMs ?? 10_000;
    this.heartbeat = options.heartbeatMs ?? 30_000;
    this.maxRateLimitRetries = options.maxRateLimitRetries ?? 50;
  }

  on(listener: (event: SessionEvent) => void): void {
    this.listeners.push(listener);
  }

  private emit(event: SessionEvent): void {
    for (const listener of this.listeners) listener(event);
  }

  // -- lifecycle ----------------------------------------------------------------------------

  /** Open the connection; rejects when the server cannot be reached or refuses. */
  async connect(): Promise<void> {
    this.closed = false;
    this.setState("connecting");
    try {
      await this.open();
    } catch (error) {
      this.setState("offline");
      throw error;
    }
    this.setState("connected");
  }

  /**
   * Resume a remembered session: like {@link loginToken}, but a server that cannot be reached
   * is retried with backoff (requests made meanwhile wait in the outbox) instead of failing.
   * Rejects only when the server refuses the token.
   */
  async resumeToken(token: string): Promise<AuthResult> {
    this.closed = false;
    this.token = token;
    try {
      await this.connect();
    } catch {
      return new Promise((resolve, reject) => {
        const listener = (event: SessionEvent): void => {
          if (event.type !== "state") return;
          if (event.state === "connected" && this.user !== null) {
            this.off(listener);
            resolve({ user: this.user, token });
          } else if (event.state === "offline") {
            this.off(listener);
            reject(new ServerError(event.reason ?? "offline", event.reason ?? "offline"));
          }
        };
        this.on(listener);
        this.setState("reconnecting");
        this.reconnecting = true;
        this.reconnectDelay = this.minBackoff;
        this.scheduleReconnect("unreachable");
      });
    }
    return this.loginToken(token);
  }

  /** Closed meanwhile (read through a getter: it changes while a request is awaited). */
  private get stopped(): boolean {
    return this.closed;
  }

  private off(listener: (event: SessionEvent) => void): void {
    const index = this.listeners.indexOf(listener);
    if (index >= 0) this.listeners.splice(index, 1);
  }

  /** Close for good: no reconnect; pending requests fail. */
  close(): void {
    this.closed = true;
    this.stopTimers();
    this.dropSocket();
    this.failPending(() => true, "The session was closed.");
    this.setState("offline");
  }

  /** Try to reconnect now (the browser says the network is back). */
  nudge(): void {
    if (this.reconnecting && this.socket === null && !this.closed) {
      if (this.reconnectTimer !== null) this.timers.clearTimeout(this.reconnectTimer);
      this.reconnectTimer = null;
      this.reconnectDelay = this.minBackoff;
      void this.attempt("network back");
    }
  }

  /** Requests that wait for their reply (messages not yet acknowledged among them). */
  get waiting(): number {
    let count = 0;
    for (const pending of this.pending.values()) {
      if (MESSAGE_REQUESTS.has(pending.request.type)) count += 1;
    }
    return count;
  }

  // -- accounts -----------------------------------------------------------------------------

  async register(username: string, password: string): Promise<AuthResult> {
    const data = await this.call(
      { type: "register", username, password, protocol: PROTOCOL },
      false,
    );
    return this.loggedIn(data);
  }

  async login(username: string, password: string): Promise<AuthResult> {
    const data = await this.call({ type: "login", username, password, protocol: PROTOCOL }, false);
    return this.loggedIn(data);
  }

  async loginToken(token: string): Promise<AuthResult> {
    const data = await this.call({ type: "login", token, protocol: PROTOCOL }, false);
    return this.loggedIn(data);
  }

  async logout(): Promise<void> {
    await this.call({ type: "logout" }, false);
    this.user = this.token = null;
    this.watching = [];
    this.authenticated = false;
  }

  /**
   * Logged in: every conversation starts at its newest entry (the app loads older ones with
   * `history`), like the library's `backlog=False`. Entries arriving meanwhile are held, not
   * gap-filled; the sync afterwards delivers whatever is newer, exactly once.
   */
  private async loggedIn(data: Record<string, unknown>): Promise<AuthResult> {
    const result = { user: String(data.user), token: String(data.token) };
    this.user = result.user;
    this.token = result.token;
    this.authenticated = true;
    this.priming = true;
    try {
      for (const info of await this.conversations()) {
        this.cursors.set(info.conversation, info.last_seq);
      }
    } finally {
      this.priming = false;
    }
    this.scheduleSync();
    return result;
  }

  // -- requests -----------------------------------------------------------------------------

  /** Post a message; resolves with the stored entry once committed (resent after a reconnect
   * with the same client id, so it is stored once however often the link drops). */
  async post(
    conversation: string,
    text: string,
    clientId: string,
    replyTo?: number,
  ): Promise<Entry> {
    const data = await this.call({
      type: "post",
      conversation,
      client_id: clientId,
      text,
      ...(replyTo === undefined ? {} : { reply_to: replyTo }),
    });
    return this.acceptStored(data);
  }

  /** Version 4: replace the text of one's own message; the `edited` entry comes back (and
   * goes through the cursors like every entry). Repeating it is harmless. */
  async edit(conversation: string, seq: number, text: string): Promise<Entry> {
    return this.acceptStored({ entry: await this.call({ type: "edit", conversation, seq, text }) });
  }

  /** Delete a message (one's own, or as a channel's owner or admin anyone's). */
  async delete(conversation: string, seq: number): Promise<Entry> {
    return this.acceptStored({ entry: await this.call({ type: "delete", conversation, seq }) });
  }

  /** Add (`on`) or remove one's reaction; the change entry, when there was one, is delivered
   * through the cursors. */
  async react(conversation: string, seq: number, emoji: string, on: boolean): Promise<void> {
    const data = await this.call({ type: on ? "react" : "unreact", conversation, seq, emoji });
    if (data.entry !== undefined) this.accept(data.entry as Entry);
  }

  async search(
    query: string,
    cursor: string | null = null,
    limit = 20,
  ): Promise<{ results: SearchHit[]; next: string | undefined }> {
    const data = await this.call({ type: "search", query, cursor, limit });
    return { results: (data.results ?? []) as SearchHit[], next: data.next as string | undefined };
  }

  /** The page right after `seq`, oldest first (version 4). */
  async historyAfter(
    conversation: string,
    seq: number,
    limit = 200,
  ): Promise<{ entries: Entry[]; newer: boolean }> {
    const data = await this.call({ type: "history", conversation, after: seq, limit });
    return { entries: (data.entries ?? []) as Entry[], newer: data.newer === true };
  }

  /** The page centred on `seq` (version 4): `more` and `newer` say what lies beyond it. */
  async historyAround(
    conversation: string,
    seq: number,
    limit = 50,
  ): Promise<{ entries: Entry[]; more: boolean; newer: boolean }> {
    const data = await this.call({ type: "history", conversation, around: seq, limit });
    return {
      entries: (data.entries ?? []) as Entry[],
      more: data.more === true,
      newer: data.newer === true,
    };
  }

  /** A direct message by the peer's name (creates the conversation with its first message). */
  async dm(to: string, text: string, clientId: string): Promise<Entry> {
    const data = await this.call({ type: "dm", to, client_id: clientId, text });
    return this.acceptStored(data);
  }

  private acceptStored(data: Record<string, unknown>): Entry {
    const entry = (data.entry ?? data.message) as Entry;
    this.accept(entry);
    return entry;
  }

  async history(
    target: { conversation: string } | { peer: string },
    before: number | null,
    limit = 50,
  ): Promise<{ conversation: string; entries: Entry[]; more: boolean }> {
    const data = await this.call({ type: "history", ...target, before, limit });
    return {
      conversation: String(data.conversation),
      entries: (data.entries ?? data.messages ?? []) as Entry[],
      more: data.more === true,
    };
  }

  async users(query: string, after: string | null = null, limit = 50) {
    const data = await this.call({ type: "users", query, after, limit });
    return { users: data.users as UserEntry[], next: data.next as string | undefined };
  }

  /** Presence events for these users only (replacing the previous set); sent again after
   * every reconnect. The states in the reply arrive as presence events too. */
  async watch(names: string[]): Promise<void> {
    this.watching = [...names];
    const data = await this.call({ type: "watch", users: this.watching });
    this.watched(data);
  }

  private watched(data: Record<string, unknown>): void {
    for (const user of (data.users ?? []) as UserEntry[]) {
      this.emit({ type: "presence", user: user.name, online: user.online });
    }
  }

  /** Every conversation of the user, most recently active first (all pages). */
  async conversations(): Promise<ConversationInfo[]> {
    const out: ConversationInfo[] = [];
    let after: string | null = null;
    for (;;) {
      const page = await this.call({ type: "conversations", after });
      const found = (page.conversations ?? []) as ConversationInfo[];
      out.push(...found);
      const next = page.next;
      if (typeof next !== "string" || found.length === 0) return out;
      after = next;
    }
  }

  async conversation(conversation: string): Promise<ConversationInfo> {
    const data = await this.call({ type: "conversation", conversation });
    return data.conversation as ConversationInfo;
  }

  async createChannel(name: string, isPublic: boolean, topic: string, members: string[] = []) {
    const data = await this.call(
      { type: "create_channel", name, public: isPublic, topic, members },
      false,
    );
    this.scheduleSync(); // its `created` entry
    return data.conversation as ConversationInfo;
  }

  async createGroup(members: string[]): Promise<ConversationInfo> {
    const data = await this.call({ type: "create_group", members }, false);
    this.scheduleSync();
    return data.conversation as ConversationInfo;
  }

  async join(conversation: string): Promise<ConversationInfo> {
    const data = await this.call({ type: "join", conversation });
    this.scheduleSync(); // its `joined` entry
    return data.conversation as ConversationInfo;
  }

  async leave(conversation: string): Promise<void> {
    await this.call({ type: "leave", conversation }, false);
    this.scheduleSync(); // the `left` entry, the last one of it
  }

  async invite(conversation: string, users: string[]): Promise<Entry[]> {
    const data = await this.call({ type: "invite", conversation, users }, false);
    const entries = (data.entries ?? []) as Entry[];
    for (const entry of entries) this.accept(entry);
    return entries;
  }

  remove(conversation: string, user: string): Promise<Entry> {
    return this.change({ type: "remove", conversation, user });
  }

  setRole(conversation: string, user: string, role: string): Promise<Entry> {
    return this.change({ type: "set_role", conversation, user, role });
  }

  rename(conversation: string, name: string): Promise<Entry> {
    return this.change({ type: "rename", conversation, name });
  }

  setTopic(conversation: string, topic: string): Promise<Entry> {
    return this.change({ type: "set_topic", conversation, topic });
  }

  archive(conversation: string): Promise<Entry> {
    return this.change({ type: "archive", conversation });
  }

  private async change(request: Request): Promise<Entry> {
    const entry = (await this.call(request, false)) as unknown as Entry;
    this.accept(entry);
    return entry;
  }

  async members(conversation: string) {
    const out: { name: string; role: string; online: boolean }[] = [];
    let after: string | null = null;
    for (;;) {
      const page = await this.call({ type: "members", conversation, after, limit: 200 });
      const found = (page.members ?? []) as { name: string; role: string; online: boolean }[];
      out.push(...found);
      if (typeof page.next !== "string" || found.length === 0) return out;
      after = page.next;
    }
  }

  async channels(query: string) {
    const data = await this.call({ type: "channels", query, limit: 200 });
    return (data.channels ?? []) as import("./protocol.js").ChannelEntry[];
  }

  async read(conversation: string, seq: number): Promise<number> {
    const data = await this.call({ type: "read", conversation, seq });
    return Number(data.seq);
  }

  async typing(conversation: string): Promise<void> {
    await this.call({ type: "typing", conversation }, false);
  }

  async ping(): Promise<void> {
    await this.call({ type: "ping" }, false);
  }

  /** Fetch everything after the cursors (all pages); returns the entries new to the client,
   * which are also emitted as events. Runs by itself after every (re)login and gap. */
  async sync(): Promise<Entry[]> {
    const fresh: Entry[] = [];
    for (;;) {
      const asked = this.cursors.snapshot();
      const data = await this.call({ type: "sync", cursors: asked });
      const entries = (data.entries ?? data.messages ?? []) as Entry[];
      const delivered = this.cursors.acceptSyncPage(entries, asked);
      for (const entry of delivered) this.emit({ type: "entry", entry });
      fresh.push(...delivered);
      if (data.more !== true) return fresh;
    }
  }

  // -- the request machinery ----------------------------------------------------------------

  /**
   * Send a request and wait for its reply's `data`. With `retry` (the default: reads, and
   * messages, which their client id makes idempotent) it waits through a reconnect and is
   * sent again; without, it fails when the connection drops.
   */
  call(request: Request, retry = true): Promise<Record<string, unknown>> {
    if (this.closed) return Promise.reject(new ConnectionLostError("The session is closed."));
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      const pending: Pending = { id, request, retry, attempts: 0, resolve, reject };
      this.pending.set(id, pending);
      if (this.socket !== null && (this.authenticated || !retry || this.token === null)) {
        this.write(pending);
      } else if (this.state !== "reconnecting") {
        this.pending.delete(id);
        reject(new ConnectionLostError("Not connected."));
      }
      // else: queued; sent after the reconnect logs in again.
    });
  }

  private write(pending: Pending): void {
    if (this.socket === null) return;
    pending.attempts += 1;
    this.socket.send(JSON.stringify({ id: pending.id, ...pending.request }));
  }

  private open(): Promise<void> {
    return new Promise((resolve, reject) => {
      let settled = false;
      const socket = this.factory(this.url);
      const timer = this.timers.setTimeout(() => {
        fail(new ConnectionLostError("The server did not answer in time."));
        socket.close();
      }, this.connectTimeout);
      const fail = (error: Error): void => {
        if (settled) return;
        settled = true;
        this.timers.clearTimeout(timer);
        socket.onopen = socket.onmessage = socket.onclose = socket.onerror = null;
        reject(error);
      };
      socket.onerror = () => undefined; // the close event that follows says it
      socket.onclose = () => fail(new ConnectionLostError("The server cannot be reached."));
      socket.onmessage = (event) => {
        const message = parseServerMessage(String(event.data));
        if (message?.type !== "hello") {
          const refusal =
            message?.type === "bye" || message?.type === "error"
              ? new ServerError(message.code, message.message)
              : new ConnectionLostError("Expected hello.");
          fail(refusal);
          socket.close();
          return;
        }
        settled = true;
        this.timers.clearTimeout(timer);
        this.hello = message;
        this.socket = socket;
        this.lastSeen = this.timers.now();
        socket.onmessage = (next) => {
          if (this.socket !== socket) return;
          this.lastSeen = this.timers.now();
          const parsed = parseServerMessage(String(next.data));
          if (parsed !== null) this.dispatch(parsed);
        };
        socket.onclose = () => {
          if (this.socket === socket) this.connectionLost("connection closed");
        };
        this.startHeartbeat();
        resolve();
      };
    });
  }

  private dispatch(message: ServerMessage): void {
    switch (message.type) {
      case "result": {
        const pending = this.pending.get(Number(message.id));
        if (pending === undefined) return;
        this.pending.delete(pending.id);
        pending.resolve(message.data);
        return;
      }
      case "error": {
        const pending = message.id === null ? undefined : this.pending.get(Number(message.id));
        if (pending === undefined) return;
        if (
          message.code === "rate_limited" &&
          MESSAGE_REQUESTS.has(pending.request.type) &&
          pending.attempts <= this.maxRateLimitRetries
        ) {
          // Not stored: send it again (same client id) when allowed.
          this.timers.setTimeout(
            () => {
              if (this.pending.get(pending.id) === pending && this.authenticated) {
                this.write(pending);
              }
            },
            (message.retry_after ?? 1) * 1000,
          );
          return;
        }
        this.pending.delete(pending.id);
        pending.reject(new ServerError(message.code, message.message, message.retry_after));
        return;
      }
      case "entry":
        this.accept(message.entry);
        return;
      case "message":
        this.accept(message.message);
        return;
      case "read":
        this.emit({ type: "read", conversation: message.conversation, seq: message.seq });
        return;
      case "typing":
        this.emit({ type: "typing", conversation: message.conversation, user: message.user });
        return;
      case "presence":
        this.emit({ type: "presence", user: message.user, online: message.online });
        return;
      case "bye":
        // The close that follows reconnects; a revoked session ends at the next login.
        return;
      case "hello":
        return;
    }
  }

  // -- exactly once -------------------------------------------------------------------------

  private accept(entry: Entry): void {
    const { delivered, gap } = this.cursors.accept(entry);
    for (const item of delivered) this.emit({ type: "entry", entry: item });
    if (gap) this.scheduleSync();
  }

  private scheduleSync(): void {
    if (this.priming) return;
    if (this.syncing !== null) {
      this.syncAgain = true;
      return;
    }
    this.syncing = this.sync();
    this.syncing
      .catch(() => undefined) // the next (re)login syncs again
      .finally(() => {
        this.syncing = null;
        if (this.syncAgain) {
          this.syncAgain = false;
          this.scheduleSync();
        }
      });
  }

  // -- reconnecting -------------------------------------------------------------------------

  private connectionLost(reason: string): void {
    this.dropSocket();
    this.authenticated = false;
    if (this.closed) return;
    const canResume = this.token !== null;
    this.failPending((p) => !(p.retry && canResume), `Connection lost: ${reason}`);
    if (!canResume) {
      this.setState("offline", { reason });
      return;
    }
    if (!this.reconnecting) {
      this.reconnecting = true;
      this.reconnectDelay = this.minBackoff;
      this.setState("reconnecting", { reason });
      this.scheduleReconnect(reason);
    }
  }

  private scheduleReconnect(reason: string): void {
    const wait = this.reconnectDelay * (0.5 + this.random() * 0.5);
    this.reconnectDelay = Math.min(this.reconnectDelay * 2, this.maxBackoff);
    this.setState("reconnecting", { retryIn: wait, reason });
    this.reconnectTimer = this.timers.setTimeout(() => {
      this.reconnectTimer = null;
      void this.attempt(reason);
    }, wait);
  }

  private async attempt(reason: string): Promise<void> {
    if (this.closed) return;
    try {
      await this.open();
      await this.resume();
    } catch (error) {
      if (error instanceof ServerError && error.code === "bad_credentials") {
        // The token was revoked (logged out elsewhere): a person must sign in.
        this.token = null;
        this.reconnecting = false;
        this.dropSocket();
        this.failPending(() => true, "The session ended; sign in again.");
        this.setState("offline", { reason: error.code });
        return;
      }
      this.dropSocket();
      if (!this.stopped) {
        this.scheduleReconnect(error instanceof ServerError ? error.code : reason);
      }
      return;
    }
    this.reconnecting = false;
  }

  private async resume(): Promise<void> {
    const token = this.token;
    if (token === null) throw new ConnectionLostError("No session to resume.");
    const data = await this.call({ type: "login", token, protocol: PROTOCOL }, false);
    const firstLogin = this.user === null;
    this.user = String(data.user);
    this.authenticated = true;
    if (firstLogin) {
      // A remembered session that had to wait for the server: start at the newest entries.
      this.priming = true;
      try {
        for (const info of await this.conversations()) {
          this.cursors.set(info.conversation, info.last_seq);
        }
      } finally {
        this.priming = false;
      }
    }
    // Unacknowledged requests go out again in their original order, with the same ids.
    const again = [...this.pending.values()].filter((p) => p.retry).sort((a, b) => a.id - b.id);
    for (const pending of again) this.write(pending);
    this.setState("connected");
    // A new connection watches nobody: send the set again, after the resent requests.
    if (this.watching.length > 0) {
      const names = this.watching;
      this.call({ type: "watch", users: names })
        .then((result) => {
          if (names === this.watching) this.watched(result);
        })
        .catch(() => undefined);
    }
    this.scheduleSync();
  }

  private startHeartbeat(): void {
    if (this.heartbeatTimer !== null) return;
    const beat = (): void => {
      this.heartbeatTimer = this.timers.setTimeout(beat, this.heartbeat / 2);
      const socket = this.socket;
      if (socket === null || this.timers.now() - this.lastSeen < this.heartbeat) return;
      // A peer that vanished without closing (a laptop asleep) sends no close frame; without
      // this the app would think itself connected for minutes.
      const deadline = this.timers.setTimeout(() => {
        if (this.socket === socket) {
          socket.close();
          this.connectionLost("no answer to a ping");
        }
      }, this.heartbeat / 2);
      this.ping()
        .catch(() => undefined)
        .finally(() => this.timers.clearTimeout(deadline));
    };
    this.heartbeatTimer = this.timers.setTimeout(beat, this.heartbeat / 2);
  }

  private stopTimers(): void {
    if (this.reconnectTimer !== null) this.timers.clearTimeout(this.reconnectTimer);
    if (this.heartbeatTimer !== null) this.timers.clearTimeout(this.heartbeatTimer);
    this.reconnectTimer = this.heartbeatTimer = null;
    this.reconnecting = false;
  }

  private dropSocket(): void {
    const socket = this.socket;
    this.socket = null;
    if (socket !== null) {
      socket.onmessage = socket.onclose = socket.onerror = null;
      socket.close();
    }
  }

  private failPending(which: (pending: Pending) => boolean, text: string): void {
    for (const pending of [...this.pending.values()]) {
      if (which(pending)) {
        this.pending.delete(pending.id);
        pending.reject(new ConnectionLostError(text));
      }
    }
  }

  private setState(state: ConnectionState, extra: { retryIn?: number; reason?: string } = {}) {
    if (state === this.state && state !== "reconnecting") return;
    this.state = state;
    this.emit({ type: "state", state, ...extra });
  }
}

/** Whether an entry is a message (as opposed to a change of the conversation). */
export function isMessage(entry: Entry): boolean {
  return kindOf(entry) === "message";
}
