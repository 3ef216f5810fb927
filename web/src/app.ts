// The web app: what the desktop client's presenter does (gui/presenter.py), in the browser.
// State lives here; the DOM is redrawn from it once per animation frame after a change.

import { highlightPieces, preview } from "./changes.js";
import { byId, colourOf, fill, h, initials, textWithMentions } from "./dom.js";
import { Translator } from "./i18n.js";
import {
  GENERAL,
  MAX_TEXT_CHARS,
  MAX_WATCH,
  TYPING_EXPIRY_MS,
  TYPING_INTERVAL_MS,
  kindOf,
  newClientId,
  type ConversationInfo,
  type Entry,
  type MemberEntry,
  type SearchHit,
  type UserEntry,
} from "./protocol.js";
import { ConnectionLostError, ServerError, Session, type SessionEvent } from "./session.js";
import { listTime, previewLine, Timeline, type Outgoing, type Row } from "./timeline.js";
import { TimelineView } from "./timeline-view.js";
import { COMPOSER_EMOJI, EMOJI_COLUMNS } from "./emoji.js";

type Kind = "general" | "channel" | "group" | "direct";

interface Conversation {
  key: string;
  id: string | null;
  kind: Kind;
  peer: string | null;
  name: string;
  topic: string;
  role: string | null;
  member: boolean;
  archived: boolean;
  lastSeq: number;
  lastActivity: number;
  readSeq: number;
  unread: number;
  mentions: number;
  people: string[];
  timeline: Timeline;
  markerSeq: number | null;
  unseen: number;
  typing: Map<string, number>;
}

interface SavedOutgoing {
  clientId: string;
  key: string;
  id: string | null;
  peer: string | null;
  text: string;
  sentAt: number;
  replyTo?: number;
}

const SESSION_KEY = "beseda.session";
/** The reaction picker's common emoji (as the desktop client's). */
export const COMMON_EMOJI = ["👍", "❤️", "😂", "😮", "😢", "🎉", "🙏", "👀"];
const fold = (name: string): string => name.toLocaleLowerCase();
/** The most recent conversations whose last message is fetched after sign-in for the list's
 * preview (as the desktop client's PREVIEWS_AT_SIGN_IN); the others show it once opened or
 * once a message comes. */
export const PREVIEWS_AT_SIGN_IN = 30;

export const dmKey = (peer: string): string => `@${fold(peer)}`;

/**
 * Where the session token is kept: in localStorage when the user asks to stay signed in (so a
 * new tab or a restarted browser resumes without the password), else in sessionStorage (gone
 * with the tab). Both are readable by script on this origin only; the server's strict CSP
 * (no inline or foreign script) is what keeps other script out. A cookie would add nothing:
 * the token travels inside the WebSocket's `login` request, never as a header.
 */
export const tokenStore = {
  load(): { user: string; token: string } | null {
    const raw = localStorage.getItem(SESSION_KEY) ?? sessionStorage.getItem(SESSION_KEY);
    if (raw === null) return null;
    try {
      const value = JSON.parse(raw) as { user?: unknown; token?: unknown };
      if (typeof value.user === "string" && typeof value.token === "string") {
        return { user: value.user, token: value.token };
      }
    } catch {
      // a damaged entry: sign in again
    }
    return null;
  },
  save(user: string, token: string, remember: boolean): void {
    this.forget();
    (remember ? localStorage : sessionStorage).setItem(
      SESSION_KEY,
      JSON.stringify({ user, token }),
    );
  },
  forget(): void {
    localStorage.removeItem(SESSION_KEY);
    sessionStorage.removeItem(SESSION_KEY);
  },
};

export class App {
  private readonly tr: Translator;
  private session: Session;
  private user = "";
  private conversations = new Map<string, Conversation>();
  private selected = GENERAL;
  private presence = new Map<string, boolean>();
  private people: UserEntry[] = [];
  private peopleQuery = "";
  private peopleNext: string | undefined;
  private watched = "";
  private left = new Set<string>();
  private typingSentAt = 0;
  /** The message the composer answers, or the own message it edits (version 4). */
  private replyTo: Entry | null = null;
  private editing: Entry | null = null;
  private frame = 0;
  private timelineView: TimelineView | null = null;
  private shownRows = "";
  private stage: "starting" | "sign-in" | "chat" = "starting";
  private phoneView: "list" | "conversation" = "list";
  private errorText = "";
  private errorTimer = 0;

  constructor(
    private readonly root: HTMLElement,
    private readonly makeSession: () => Session,
    language: Translator,
  ) {
    this.tr = language;
    this.session = makeSession();
    document.documentElement.lang = language.language;
  }

  private t(key: string, values?: Record<string, string | number>): string {
    return this.tr.t(key, values);
  }

  // -- starting and signing in --------------------------------------------------------------

  start(): void {
    window.addEventListener("online", () => this.session.nudge());
    document.addEventListener("visibilitychange", () => this.focusChanged());
    window.addEventListener("focus", () => this.focusChanged());
    document.addEventListener("keydown", (event) => this.key(event));
    setInterval(() => this.tick(), 1000);
    const saved = tokenStore.load();
    if (saved === null) {
      this.showSignIn("");
      return;
    }
    this.showStarting();
    this.bindSession();
    this.session
      .resumeToken(saved.token)
      .then((result) => this.enterChat(result.user))
      .catch((error: unknown) => {
        this.session.close();
        this.session = this.makeSession();
        if (error instanceof ServerError && error.code === "bad_credentials") {
          tokenStore.forget();
          this.showSignIn(this.t("Your session has ended. Sign in again."));
        } else {
          this.showSignIn(this.explain(error));
        }
      });
  }

  private bindSession(): void {
    this.session.on((event) => this.handle(event));
  }

  private showStarting(): void {
    this.stage = "starting";
    fill(this.root, h("div", { class: "starting", role: "status" }, this.t("Connecting")));
  }

  private showSignIn(message: string, username = ""): void {
    this.stage = "sign-in";
    document.title = "beseda";
    const name = h("input", {
      id: "username",
      name: "username",
      autocomplete: "username",
      required: true,
      maxlength: 32,
      value: username,
    });
    const password = h("input", {
      id: "password",
      name: "password",
      type: "password",
      autocomplete: "current-password",
      required: true,
    });
    const remember = h("input", { id: "remember", type: "checkbox", checked: true });
    const error = h("p", { class: "form-error", id: "sign-in-error", role: "alert" }, message);
    const signIn = h(
      "button",
      { type: "submit", id: "sign-in", class: "primary" },
      this.t("Sign in"),
    );
    const create = h("button", { type: "button", id: "create-account" }, this.t("Create account"));
    const form = h(
      "form",
      { class: "sign-in", id: "sign-in-form" },
      h("h1", {}, this.t("Sign in to beseda")),
      h("label", { for: "username" }, this.t("Username")),
      name,
      h("label", { for: "password" }, this.t("Password")),
      password,
      h("label", { class: "check" }, remember, this.t("Keep me signed in on this device")),
      error,
      h("div", { class: "buttons" }, signIn, create),
    );
    const submit = (creating: boolean): void => {
      if (name.value.trim() === "" || password.value === "") {
        form.reportValidity();
        return;
      }
      signIn.disabled = create.disabled = true;
      error.textContent = "";
      void this.signIn(name.value.trim(), password.value, creating, remember.checked).catch(
        (failure: unknown) => {
          signIn.disabled = create.disabled = false;
          error.textContent = this.explain(failure, name.value.trim());
        },
      );
    };
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      submit(false);
    });
    create.addEventListener("click", () => submit(true));
    fill(this.root, h("main", { class: "sign-in-page" }, form));
    (username === "" ? name : password).focus();
  }

  private async signIn(
    username: string,
    password: string,
    creating: boolean,
    remember: boolean,
  ): Promise<void> {
    this.session.close();
    this.session = this.makeSession();
    this.bindSession();
    await this.session.connect();
    try {
      const result = creating
        ? await this.session.register(username, password)
        : await this.session.login(username, password);
      tokenStore.save(result.user, result.token, remember);
      this.enterChat(result.user);
    } catch (error) {
      this.session.close();
      throw error;
    }
    if ("Notification" in window && Notification.permission === "default") {
      void Notification.requestPermission(); // asked on the click that signed in
    }
  }

  private explain(error: unknown, name = ""): string {
    if (error instanceof ServerError) {
      switch (error.code) {
        case "bad_credentials":
          return this.t("Wrong username or password.");
        case "name_taken":
          return this.t("The name “{name}” is taken. Choose another, or sign in.", { name });
        case "invalid_username":
          return this.t(
            "A username has 1 to 32 letters (of one alphabet), digits, “_”, “-” or “.”.",
          );
        case "invalid_password":
          return this.t("A password has 8 to 256 characters.");
        case "rate_limited": {
          const n = Math.ceil(error.retryAfter ?? 1);
          return this.t("Too many attempts. Try again in {n} seconds.", { n });
        }
        default:
          return this.t("The server refused: {reason}", { reason: error.message });
      }
    }
    if (error instanceof ConnectionLostError)
      return this.t("Cannot reach the server. Is it running?");
    return String(error);
  }

  private signOut(): void {
    this.saveOutbox();
    void this.session
      .logout()
      .catch(() => undefined)
      .finally(() => this.session.close());
    tokenStore.forget();
    this.session = this.makeSession();
    this.conversations.clear();
    this.timelineView = null;
    this.showSignIn("", this.user);
  }

  // -- the chat -----------------------------------------------------------------------------

  private enterChat(user: string): void {
    this.user = user;
    this.stage = "chat";
    this.conversations = new Map();
    this.conversations.set(GENERAL, this.newConversation(GENERAL, GENERAL, "general", null));
    this.selected = GENERAL;
    this.buildChat();
    void this.session.conversations().then((list) => {
      for (const info of list) if (info.member !== false) this.opened(info, false);
      this.open(this.current());
      this.restoreOutbox();
      this.fetchPreviews();
      this.render();
    });
    this.searchPeople("");
    this.open(this.current());
    this.render();
  }

  private newConversation(
    key: string,
    id: string | null,
    kind: Kind,
    peer: string | null,
  ): Conversation {
    return {
      key,
      id,
      kind,
      peer,
      name: "",
      topic: "",
      role: null,
      member: true,
      archived: false,
      lastSeq: 0,
      lastActivity: 0,
      readSeq: 0,
      unread: 0,
      mentions: 0,
      people: [],
      timeline: new Timeline(),
      markerSeq: null,
      unseen: 0,
      typing: new Map(),
    };
  }

  private current(): Conversation {
    const found = this.conversations.get(this.selected);
    if (found !== undefined) return found;
    this.selected = GENERAL;
    return this.conversations.get(GENERAL) as Conversation;
  }

  private byId(id: string): Conversation | undefined {
    if (id === GENERAL) return this.conversations.get(GENERAL);
    for (const conversation of this.conversations.values()) {
      if (conversation.id === id) return conversation;
    }
    return undefined;
  }

  private keyOf(info: ConversationInfo): string {
    if (info.conversation === GENERAL) return GENERAL;
    if (info.kind === "direct" && info.peer !== undefined) return dmKey(info.peer);
    return info.conversation;
  }

  private opened(info: ConversationInfo, select: boolean): void {
    this.left.delete(info.conversation);
    const key = this.keyOf(info);
    let conversation = this.conversations.get(key);
    const kind: Kind = key === GENERAL ? "general" : info.kind;
    if (conversation === undefined) {
      conversation = this.newConversation(key, info.conversation, kind, info.peer ?? null);
      conversation.lastActivity = info.last_ts ?? Date.now();
      conversation.timeline.hasOlder = info.last_seq > 0;
      this.conversations.set(key, conversation);
    }
    conversation.id = info.conversation;
    conversation.kind = kind;
    conversation.name = info.name ?? "";
    conversation.topic = info.topic ?? "";
    conversation.role = info.role ?? null;
    conversation.member = info.member !== false;
    conversation.archived = info.archived === true;
    conversation.lastSeq = Math.max(conversation.lastSeq, info.last_seq);
    conversation.lastActivity = Math.max(conversation.lastActivity, info.last_ts ?? 0);
    conversation.readSeq = Math.max(conversation.readSeq, info.read_seq ?? 0);
    conversation.unread = info.unread ?? 0;
    conversation.mentions = info.mentions ?? 0;
    if (info.kind === "group" && conversation.people.length === 0)
      void this.loadMembers(conversation);
    if (select) this.select(key);
    this.render();
  }

  private handle(event: SessionEvent): void {
    if (this.stage !== "chat") return;
    switch (event.type) {
      case "entry":
        this.received(event.entry);
        break;
      case "read":
        this.readElsewhere(event.conversation, event.seq);
        break;
      case "typing": {
        const conversation = this.byId(event.conversation);
        if (conversation !== undefined && fold(event.user) !== fold(this.user)) {
          conversation.typing.set(event.user, Date.now() + TYPING_EXPIRY_MS);
        }
        break;
      }
      case "presence":
        this.presence.set(fold(event.user), event.online);
        break;
      case "state":
        if (event.state === "offline" && event.reason === "bad_credentials") {
          tokenStore.forget();
          this.saveOutbox();
          this.showSignIn(this.t("Your session has ended. Sign in again."), this.user);
          return;
        }
        if (event.state === "connected") this.searchPeople(this.peopleQuery);
        break;
    }
    this.render();
  }

  private received(entry: Entry): void {
    if (this.left.has(entry.conversation)) return;
    let conversation = this.byId(entry.conversation);
    if (conversation === undefined) {
      if (entry.conversation.startsWith("dm:")) {
        const own = fold(entry.sender) === fold(this.user);
        const peer = own ? (entry.to ?? entry.sender) : entry.sender;
        const key = dmKey(peer);
        conversation = this.conversations.get(key);
        if (conversation === undefined) {
          conversation = this.newConversation(key, entry.conversation, "direct", peer);
          conversation.timeline.hasOlder = entry.seq > 1;
          this.conversations.set(key, conversation);
        }
        conversation.id = entry.conversation;
      } else {
        // A channel or group one was just added to: its name, kind and members.
        conversation = this.newConversation(
          entry.conversation,
          entry.conversation,
          "channel",
          null,
        );
        conversation.timeline.hasOlder = entry.seq > 1;
        this.conversations.set(entry.conversation, conversation);
        void this.session
          .conversation(entry.conversation)
          .then((info) => this.opened(info, false))
          .catch(() => undefined);
      }
    }
    if (!conversation.timeline.add(entry, this.user)) return;
    this.forgetOutgoing(entry.client_id);
    conversation.lastSeq = Math.max(conversation.lastSeq, entry.seq);
    conversation.lastActivity = Math.max(conversation.lastActivity, entry.ts);
    conversation.typing.delete(entry.sender);
    if (kindOf(entry) !== "message") {
      this.applyChange(conversation, entry);
      if (entry.seq <= conversation.readSeq + 1 && conversation.unread === 0) {
        conversation.readSeq = Math.max(conversation.readSeq, entry.seq);
      }
      return;
    }
    if (fold(entry.sender) === fold(this.user)) {
      this.markRead(conversation, entry.seq);
      return;
    }
    const mentioned = this.mentionsMe(entry);
    if (entry.seq > conversation.readSeq) {
      conversation.unread += 1;
      if (mentioned) conversation.mentions += 1;
    }
    const visible = this.selected === conversation.key && this.timelineView?.following === true;
    if (this.selected === conversation.key && !visible) {
      if (conversation.unseen === 0) conversation.markerSeq = entry.seq;
      conversation.unseen += 1;
    }
    if (visible && this.focused()) this.markRead(conversation, entry.seq);
    if (!this.focused() && (mentioned || conversation.kind === "direct"))
      this.notify(conversation, entry, mentioned);
  }

  private forgetOutgoing(clientId: string | undefined): void {
    if (clientId === undefined) return;
    const saved = this.loadOutbox().filter((item) => item.clientId !== clientId);
    this.writeOutbox(saved);
  }

  private mentionsMe(entry: Entry): boolean {
    const me = fold(this.user);
    if (fold(entry.sender) === me) return false;
    return entry.mention_all === true || (entry.mentions ?? []).some((name) => fold(name) === me);
  }

  private applyChange(conversation: Conversation, entry: Entry): void {
    const kind = kindOf(entry);
    const me = fold(this.user);
    if (kind === "renamed" && entry.name !== undefined) conversation.name = entry.name;
    else if (kind === "topic") conversation.topic = entry.topic ?? "";
    else if (kind === "archived") conversation.archived = true;
    else if (kind === "role" && fold(entry.target ?? "") === me)
      conversation.role = entry.role ?? null;
    else if (conversation.kind === "group" && entry.target !== undefined) {
      const target = entry.target;
      const people = conversation.people.filter((p) => fold(p) !== fold(target));
      if (kind === "added" && fold(target) !== me) people.push(target);
      conversation.people = people;
    }
    if (kind === "removed" || kind === "left") {
      const who = kind === "removed" ? entry.target : entry.sender;
      if (who !== undefined && fold(who) === me) {
        conversation.member = false;
        if (kind === "left") this.conversationLeft(conversation);
      }
    }
    if (
      ["joined", "left", "added", "removed", "role"].includes(kind) &&
      this.openDialog?.kind === "members" &&
      this.openDialog.key === conversation.key
    ) {
      void this.showMembers();
    }
  }

  private conversationLeft(conversation: Conversation): void {
    if (conversation.id !== null) this.left.add(conversation.id);
    if (conversation.key === GENERAL) return;
    this.conversations.delete(conversation.key);
    if (this.selected === conversation.key) this.select(GENERAL);
  }

  private readElsewhere(id: string, seq: number): void {
    const conversation = this.byId(id);
    if (conversation === undefined || seq <= conversation.readSeq) return;
    conversation.readSeq = seq;
    if (seq >= conversation.lastSeq) {
      conversation.unread = conversation.mentions = 0;
      conversation.markerSeq = null;
    }
  }

  private markRead(conversation: Conversation, seq = conversation.lastSeq): void {
    if (seq <= conversation.readSeq) return;
    conversation.readSeq = seq;
    if (seq >= conversation.lastSeq) conversation.unread = conversation.mentions = 0;
    // The server keeps the marker: every device of the user clears its badge.
    if (conversation.id !== null)
      void this.session.read(conversation.id, seq).catch(() => undefined);
  }

  private focused(): boolean {
    return document.visibilityState === "visible" && document.hasFocus();
  }

  private focusChanged(): void {
    if (this.stage !== "chat") return;
    const conversation = this.current();
    if (this.focused() && this.timelineView?.following === true) this.markRead(conversation);
    this.render();
  }

  private notify(conversation: Conversation, entry: Entry, mentioned: boolean): void {
    if (!("Notification" in window) || Notification.permission !== "granted") return;
    const title = mentioned
      ? this.t("{sender} mentioned you", { sender: entry.sender })
      : this.t("{sender} wrote to you", { sender: entry.sender });
    const notification = new Notification(title, {
      body: (entry.text ?? "").slice(0, 200),
      tag: conversation.key,
      icon: "icon-192.png",
    });
    notification.onclick = () => {
      window.focus();
      this.select(conversation.key);
      notification.close();
    };
  }

  // -- opening, history, sending ------------------------------------------------------------

  select(key: string): void {
    const conversation = this.conversations.get(key);
    if (conversation === undefined) return;
    if (key !== this.selected) this.setComposerMode(null, null);
    this.selected = key;
    this.phoneView = "conversation";
    this.open(conversation);
    this.render();
    byId<HTMLTextAreaElement>("composer").focus();
  }

  private open(conversation: Conversation): void {
    // The line above the first unread message, placed before reading marks it read.
    conversation.markerSeq = conversation.unread > 0 ? conversation.readSeq + 1 : null;
    conversation.unseen = 0;
    if (this.focused()) this.markRead(conversation);
    if (conversation.timeline.oldestSeq === null) void this.loadOlder(conversation);
  }

  private async loadOlder(conversation: Conversation): Promise<void> {
    const timeline = conversation.timeline;
    if (timeline.loading || !timeline.hasOlder) return;
    timeline.loading = true;
    try {
      const target =
        conversation.id !== null
          ? { conversation: conversation.id }
          : { peer: conversation.peer ?? "" };
      const page = await this.session.history(target, timeline.oldestSeq);
      conversation.id = page.conversation;
      timeline.addPage(page.entries, page.more);
      const newest = page.entries[page.entries.length - 1]?.seq ?? 0;
      if (newest > conversation.lastSeq) conversation.lastSeq = newest;
      if (this.selected === conversation.key && this.focused()) this.markRead(conversation);
    } catch (error) {
      this.showError(this.explain(error));
    } finally {
      timeline.loading = false;
      this.render();
    }
  }

  /** The last message of the most recent conversations, for the list's previews (as the
   * desktop client: `history` with limit 1, for at most PREVIEWS_AT_SIGN_IN of them). The
   * entry goes into the timeline, whose older pages load once the conversation is opened. */
  private fetchPreviews(): void {
    const recent = this.ordered().filter(
      (c) => c.key !== this.selected && c.lastSeq > 0 && (c.id !== null || c.peer !== null),
    );
    for (const conversation of recent.slice(0, PREVIEWS_AT_SIGN_IN)) {
      const timeline = conversation.timeline;
      if (timeline.oldestSeq !== null || timeline.loading) continue;
      timeline.loading = true;
      const target =
        conversation.id !== null
          ? { conversation: conversation.id }
          : { peer: conversation.peer ?? "" };
      this.session
        .history(target, null, 1)
        .then((page) => {
          conversation.id = page.conversation;
          timeline.addPage(page.entries, page.more);
        })
        .catch(() => undefined)
        .finally(() => {
          timeline.loading = false;
          this.render();
        });
    }
  }

  /** The list's line under a conversation's name: its last message, and when it came. */
  private lastLine(conversation: Conversation, now: number): [string, string] {
    const outgoing = conversation.timeline.pendingOutgoing();
    const pending = outgoing[outgoing.length - 1];
    if (pending !== undefined) {
      const text = this.t("You: {text}", { text: previewLine(pending.text) });
      return [text, listTime(pending.sentAt, now, this.t("Yesterday"))];
    }
    const messages = conversation.timeline.messages();
    const last = messages[messages.length - 1];
    if (last === undefined) return ["", ""];
    const line = previewLine(last.text ?? "");
    let text: string;
    if (fold(last.sender) === fold(this.user)) text = this.t("You: {text}", { text: line });
    else if (conversation.kind === "direct") text = line;
    else text = `${last.sender}: ${line}`;
    return [text, listTime(last.ts, now, this.t("Yesterday"))];
  }

  openDm(name: string): void {
    if (fold(name) === fold(this.user)) return;
    const key = dmKey(name);
    if (!this.conversations.has(key)) {
      const conversation = this.newConversation(key, null, "direct", name);
      conversation.lastActivity = Date.now();
      this.conversations.set(key, conversation);
    }
    this.select(key);
  }

  private send(text: string): boolean {
    text = text.trim();
    const conversation = this.current();
    if (text === "" || conversation.archived || !conversation.member) return false;
    // The server counts code points, as spreading a string does.
    // eslint-disable-next-line @typescript-eslint/no-misused-spread
    const length = [...text].length;
    if (length > MAX_TEXT_CHARS) {
      this.showComposerError(
        this.t("A message may have at most {limit} characters; this one has {n}.", {
          limit: MAX_TEXT_CHARS,
          n: length,
        }),
      );
      return false;
    }
    this.showComposerError("");
    const outgoing: Outgoing = {
      clientId: newClientId(),
      text,
      sentAt: Date.now(),
      failed: null,
      final: false,
    };
    if (this.replyTo !== null && conversation.id !== null) outgoing.replyTo = this.replyTo.seq;
    this.setComposerMode(null, null);
    conversation.timeline.addOutgoing(outgoing);
    conversation.lastActivity = Math.max(conversation.lastActivity, outgoing.sentAt);
    const saved = this.loadOutbox();
    saved.push({
      clientId: outgoing.clientId,
      key: conversation.key,
      id: conversation.id,
      peer: conversation.peer,
      text,
      sentAt: outgoing.sentAt,
      replyTo: outgoing.replyTo,
    });
    this.writeOutbox(saved);
    this.deliver(conversation, outgoing);
    this.timelineView?.scrollToBottom();
    this.render();
    return true;
  }

  private deliver(conversation: Conversation, outgoing: Outgoing): void {
    const request =
      conversation.kind === "direct" && conversation.peer !== null && outgoing.replyTo === undefined
        ? this.session.dm(conversation.peer, outgoing.text, outgoing.clientId)
        : this.session.post(
            conversation.id ?? GENERAL,
            outgoing.text,
            outgoing.clientId,
            outgoing.replyTo,
          );
    request
      .then((entry) => {
        // Delivered through the cursors as an entry; an older duplicate is only dropped here.
        conversation.id ??= entry.conversation;
        if (conversation.timeline.findOutgoing(outgoing.clientId) !== undefined) {
          conversation.timeline.add(entry);
          this.forgetOutgoing(outgoing.clientId);
          this.render();
        }
      })
      .catch((error: unknown) => {
        if (error instanceof ConnectionLostError && this.session.token !== null) return;
        outgoing.failed = error instanceof ServerError ? error.message : String(error);
        outgoing.final =
          error instanceof ServerError &&
          ["not_a_member", "archived", "unknown_conversation", "unknown_user"].includes(error.code);
        conversation.timeline.touch();
        this.render();
      });
  }

  private retry(clientId: string): void {
    for (const conversation of this.conversations.values()) {
      const outgoing = conversation.timeline.findOutgoing(clientId);
      if (outgoing !== undefined && outgoing.failed !== null) {
        outgoing.failed = null;
        conversation.timeline.touch();
        this.deliver(conversation, outgoing);
        this.render();
      }
    }
  }

  // The outbox, kept in localStorage per user: messages typed but not yet acknowledged survive
  // a reload or a closed tab, and go out (once: same client id) at the next sign-in.
  private outboxKey(): string {
    return `beseda.outbox.${fold(this.user)}`;
  }

  private loadOutbox(): SavedOutgoing[] {
    try {
      const raw = localStorage.getItem(this.outboxKey());
      return raw === null ? [] : (JSON.parse(raw) as SavedOutgoing[]);
    } catch {
      return [];
    }
  }

  private writeOutbox(items: SavedOutgoing[]): void {
    if (items.length === 0) localStorage.removeItem(this.outboxKey());
    else localStorage.setItem(this.outboxKey(), JSON.stringify(items));
  }

  private saveOutbox(): void {
    // Nothing to do: every outgoing message is written when it is sent and removed on its ack.
  }

  private restoreOutbox(): void {
    for (const item of this.loadOutbox()) {
      let conversation =
        (item.id !== null ? this.byId(item.id) : undefined) ?? this.conversations.get(item.key);
      if (conversation === undefined && item.peer !== null) {
        this.openDm(item.peer);
        conversation = this.conversations.get(dmKey(item.peer));
      }
      if (conversation === undefined) continue;
      if (conversation.timeline.findOutgoing(item.clientId) !== undefined) continue;
      const outgoing: Outgoing = {
        clientId: item.clientId,
        text: item.text,
        sentAt: item.sentAt,
        failed: null,
        final: false,
      };
      if (item.replyTo !== undefined) outgoing.replyTo = item.replyTo;
      conversation.timeline.addOutgoing(outgoing);
      this.deliver(conversation, outgoing);
    }
  }

  private composerChanged(): void {
    const conversation = this.current();
    if (conversation.id === null) return;
    const now = Date.now();
    if (now - this.typingSentAt < TYPING_INTERVAL_MS) return;
    this.typingSentAt = now;
    void this.session.typing(conversation.id).catch(() => undefined);
  }

  // -- people -------------------------------------------------------------------------------

  private searchPeople(query: string): void {
    this.peopleQuery = query;
    void this.session
      .users(query.trim())
      .then((page) => {
        if (query !== this.peopleQuery) return;
        this.people = page.users;
        this.peopleNext = page.next;
        for (const user of page.users) this.presence.set(fold(user.name), user.online);
        this.render();
      })
      .catch(() => undefined);
  }

  private morePeople(): void {
    const after = this.peopleNext;
    if (after === undefined) return;
    this.peopleNext = undefined;
    const query = this.peopleQuery;
    void this.session.users(query.trim(), after).then((page) => {
      if (query !== this.peopleQuery) return;
      this.people.push(...page.users);
      this.peopleNext = page.next;
      this.render();
    });
  }

  private watchList(): string[] {
    const me = fold(this.user);
    const names = new Map<string, string>();
    for (const name of [
      ...this.people.map((u) => u.name),
      ...[...this.conversations.values()].flatMap((c) => (c.peer === null ? [] : [c.peer])),
    ]) {
      if (fold(name) !== me && !names.has(fold(name))) names.set(fold(name), name);
    }
    return [...names.values()].slice(0, MAX_WATCH);
  }

  private updateWatch(): void {
    const names = this.watchList();
    const key = names.map(fold).sort().join("\n");
    if (key === this.watched) return;
    this.watched = key;
    void this.session.watch(names).catch(() => undefined);
  }

  private isOnline(name: string): boolean {
    return this.presence.get(fold(name)) === true;
  }

  private async loadMembers(conversation: Conversation): Promise<MemberEntry[]> {
    if (conversation.id === null) return [];
    const members = await this.session.members(conversation.id);
    const me = fold(this.user);
    for (const member of members) {
      this.presence.set(fold(member.name), member.online);
      if (fold(member.name) === me) conversation.role = member.role;
    }
    if (conversation.kind === "group") {
      conversation.people = members.map((m) => m.name).filter((name) => fold(name) !== me);
    }
    this.render();
    return members;
  }

  // -- keyboard and time --------------------------------------------------------------------

  private key(event: KeyboardEvent): void {
    if (this.stage !== "chat") return;
    if ((event.ctrlKey || event.metaKey) && event.key.toLowerCase() === "k") {
      event.preventDefault();
      this.showSwitcher();
    } else if ((event.ctrlKey || event.metaKey) && event.key.toLowerCase() === "f") {
      event.preventDefault();
      this.showSearch();
    } else if (event.key === "Escape" && this.openDialog === null) {
      if (this.phoneView === "conversation" && window.matchMedia("(max-width: 700px)").matches) {
        this.phoneView = "list";
        this.render();
      } else {
        byId<HTMLTextAreaElement>("composer").blur();
      }
    }
  }

  private tick(): void {
    if (this.stage !== "chat") return;
    this.render();
  }

  private showError(text: string): void {
    this.errorText = text;
    window.clearTimeout(this.errorTimer);
    this.errorTimer = window.setTimeout(() => {
      this.errorText = "";
      this.render();
    }, 6000);
    this.render();
  }

  private showComposerError(text: string): void {
    byId("composer-error").textContent = text;
  }

  // -- drawing ------------------------------------------------------------------------------

  private buildChat(): void {
    const composer = h("textarea", {
      id: "composer",
      rows: 1,
      placeholder: this.t("Write a message…"),
      "aria-label": this.t("Write a message…"),
    });
    composer.addEventListener("keydown", (event) => {
      if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
        event.preventDefault();
        if (this.submit(composer.value)) composer.value = "";
      } else if (event.key === "Escape" && (this.replyTo !== null || this.editing !== null)) {
        event.preventDefault();
        event.stopPropagation();
        if (this.editing !== null) composer.value = "";
        this.setComposerMode(null, null);
      } else if (event.key === "ArrowUp" && composer.value === "" && this.editing === null) {
        // As in Slack and Telegram: Up in an empty composer edits one's last message.
        const own = this.current()
          .timeline.messages()
          .filter((entry) => fold(entry.sender) === fold(this.user));
        const last = own[own.length - 1];
        if (last !== undefined) {
          event.preventDefault();
          this.startEdit(last);
        }
      }
    });
    composer.addEventListener("input", () => this.composerChanged());
    const sendButton = h(
      "button",
      { id: "send", class: "primary", type: "button" },
      this.t("Send"),
    );
    sendButton.addEventListener("click", () => {
      if (this.submit(composer.value)) composer.value = "";
      composer.focus();
    });
    const emojiButton = h(
      "button",
      {
        id: "emoji",
        class: "emoji-button",
        type: "button",
        title: this.t("Insert emoji"),
        "aria-label": this.t("Insert emoji"),
        "aria-haspopup": "true",
        "aria-expanded": "false",
        "aria-controls": "emoji-grid",
      },
      "☺",
    );
    const emojiGrid = this.buildEmojiGrid(composer, emojiButton);
    emojiButton.addEventListener("click", () => {
      if (emojiGrid.hidden) this.openEmojiGrid(emojiGrid, emojiButton);
      else this.closeEmojiGrid(emojiGrid, emojiButton, true);
    });
    const search = h("input", {
      id: "people-search",
      type: "search",
      placeholder: this.t("Search people"),
      "aria-label": this.t("Search people"),
    });
    search.addEventListener("input", () => this.searchPeople(search.value));
    const button = (
      id: string,
      text: string,
      action: () => void,
      extra = "",
    ): HTMLButtonElement => {
      const element = h("button", { id, type: "button", class: extra }, text);
      element.addEventListener("click", action);
      return element;
    };
    // A magnifier, named for screen readers and on hover: a word would crowd a phone's header.
    const searchButton = h(
      "button",
      {
        id: "search",
        type: "button",
        class: "icon",
        title: this.t("Search messages"),
        "aria-label": this.t("Search messages"),
      },
      "⌕",
    );
    searchButton.addEventListener("click", () => this.showSearch());
    const notifications =
      "Notification" in window && Notification.permission === "default"
        ? button("enable-notifications", this.t("Enable notifications"), () => {
            void Notification.requestPermission().then(() => {
              document.getElementById("enable-notifications")?.remove();
            });
          })
        : null;
    const timeline = h("div", { id: "timeline", class: "timeline", role: "log" });
    const layout = h(
      "div",
      { class: "chat", id: "chat" },
      h(
        "aside",
        { class: "sidebar" },
        h(
          "header",
          { class: "whoami" },
          h("span", { class: "dot online", id: "me-dot" }),
          h("strong", { id: "me" }, this.user),
          button("sign-out", this.t("Sign out"), () => this.signOut(), "link"),
        ),
        h("div", { id: "status", class: "status", role: "status" }),
        h("nav", { id: "conversations", class: "conversations" }),
        h(
          "div",
          { class: "actions" },
          button("new-channel", this.t("New channel"), () => this.showNewChannel()),
          button("browse-channels", this.t("Browse channels"), () => this.showBrowse()),
          button("new-group", this.t("New group"), () => this.showNewGroup()),
        ),
        h(
          "section",
          { class: "people" },
          h("h2", {}, this.t("People")),
          search,
          h("ul", { id: "people" }),
          button("more-people", this.t("More…"), () => this.morePeople(), "link"),
        ),
        notifications,
      ),
      h(
        "main",
        { class: "conversation" },
        h(
          "header",
          { class: "conversation-header" },
          button(
            "back",
            this.t("Back"),
            () => {
              this.phoneView = "list";
              this.render();
            },
            "back",
          ),
          h("div", { class: "titles" }, h("h1", { id: "title" }), h("p", { id: "subtitle" })),
          h(
            "div",
            { class: "tools" },
            searchButton,
            button("members", this.t("Members"), () => void this.showMembers()),
            button("settings", this.t("Channel settings"), () => this.showSettings()),
          ),
        ),
        h("div", { id: "error", class: "error-bar", role: "alert" }),
        timeline,
        button(
          "jump",
          "",
          () => {
            this.current().unseen = 0;
            this.timelineView?.scrollToBottom();
            this.render();
          },
          "jump",
        ),
        h("div", { id: "typing", class: "typing", "aria-live": "polite" }),
        h("p", { id: "composer-note", class: "composer-note" }),
        h("div", { id: "composer-context", class: "composer-context", hidden: true }),
        emojiGrid,
        h("div", { class: "composer" }, composer, emojiButton, sendButton),
        h("p", { id: "composer-error", class: "form-error", role: "alert" }),
      ),
    );
    fill(this.root, layout);
    this.shownRows = "";
    this.timelineView = new TimelineView(timeline, {
      render: (row) => this.renderRow(row),
      signature: (row) => this.signature(row),
      nearTop: () => void this.loadOlder(this.current()),
      bottomChanged: (atBottom) => {
        if (!atBottom) return;
        const conversation = this.current();
        conversation.unseen = 0;
        if (this.focused()) this.markRead(conversation);
        this.render();
      },
    });
  }

  /** The composer's emoji picker: a grid of COMPOSER_EMOJI; a click or Enter puts the chosen
   * one in at the caret and closes it, the arrow keys move in the grid, Escape closes it. */
  private buildEmojiGrid(composer: HTMLTextAreaElement, button: HTMLButtonElement): HTMLDivElement {
    const cells = COMPOSER_EMOJI.map((emoji) => {
      const cell = h("button", { type: "button", class: "emoji-cell", tabindex: "-1" }, emoji);
      cell.addEventListener("click", () => {
        const start = composer.selectionStart;
        const end = composer.selectionEnd;
        composer.setRangeText(emoji, start, end, "end");
        this.closeEmojiGrid(grid, button, false);
        composer.focus();
        this.composerChanged();
      });
      return cell;
    });
    const grid = h(
      "div",
      {
        id: "emoji-grid",
        class: "emoji-grid",
        role: "group",
        "aria-label": this.t("Emoji"),
        hidden: true,
      },
      ...cells,
    );
    grid.addEventListener("keydown", (event) => {
      const index = cells.indexOf(document.activeElement as HTMLButtonElement);
      const moves: Record<string, number> = {
        ArrowLeft: -1,
        ArrowRight: 1,
        ArrowUp: -EMOJI_COLUMNS,
        ArrowDown: EMOJI_COLUMNS,
      };
      const move = moves[event.key];
      if (event.key === "Escape") {
        event.preventDefault();
        event.stopPropagation();
        this.closeEmojiGrid(grid, button, true);
      } else if (move !== undefined && index >= 0) {
        event.preventDefault();
        const next = cells[Math.min(cells.length - 1, Math.max(0, index + move))];
        this.focusEmojiCell(cells, next);
      } else if (event.key === "Tab") {
        this.closeEmojiGrid(grid, button, false);
      }
    });
    return grid;
  }

  private focusEmojiCell(cells: HTMLButtonElement[], cell: HTMLButtonElement | undefined): void {
    if (cell === undefined) return;
    for (const other of cells) other.tabIndex = other === cell ? 0 : -1;
    cell.focus();
  }

  private openEmojiGrid(grid: HTMLDivElement, button: HTMLButtonElement): void {
    grid.hidden = false;
    button.setAttribute("aria-expanded", "true");
    const cells = [...grid.querySelectorAll<HTMLButtonElement>("button")];
    this.focusEmojiCell(cells, cells[0]);
  }

  private closeEmojiGrid(grid: HTMLDivElement, button: HTMLButtonElement, refocus: boolean): void {
    grid.hidden = true;
    button.setAttribute("aria-expanded", "false");
    if (refocus) button.focus();
  }

  render(): void {
    if (this.frame !== 0 || this.stage !== "chat") return;
    this.frame = requestAnimationFrame(() => {
      this.frame = 0;
      if (this.stage === "chat") this.draw();
    });
  }

  private ordered(): Conversation[] {
    return [...this.conversations.values()].sort(
      (a, b) =>
        b.lastActivity - a.lastActivity ||
        Number(a.key !== GENERAL) - Number(b.key !== GENERAL) ||
        a.key.localeCompare(b.key),
    );
  }

  private title(conversation: Conversation): string {
    if (conversation.kind === "channel") return `# ${conversation.name || conversation.key}`;
    if (conversation.kind === "group") {
      return conversation.people.length === 0 ? this.t("Group") : conversation.people.join(", ");
    }
    if (conversation.peer === null) return this.t("General");
    return conversation.peer;
  }

  private subtitle(conversation: Conversation): string {
    if (conversation.topic !== "") return conversation.topic;
    if (conversation.kind === "channel") return "";
    if (conversation.kind === "group") {
      return this.t("{n} members", { n: conversation.people.length + 1 });
    }
    if (conversation.peer === null) return this.t("everyone on this server");
    return this.isOnline(conversation.peer) ? this.t("online") : this.t("offline");
  }

  private draw(): void {
    this.updateWatch();
    const chat = byId("chat");
    chat.classList.toggle("phone-conversation", this.phoneView === "conversation");
    const conversation = this.current();
    // The conversation list, in two sections.
    const list = byId("conversations");
    const sections: [string, Conversation[]][] = [
      [this.t("Channels"), []],
      [this.t("Direct messages"), []],
    ];
    for (const c of this.ordered()) {
      (c.kind === "general" || c.kind === "channel" ? sections[0] : sections[1])?.[1].push(c);
    }
    const nodes: Node[] = [];
    const now = Date.now();
    for (const [heading, items] of sections) {
      if (items.length === 0) continue;
      nodes.push(h("h2", {}, heading));
      for (const c of items) {
        const [last, when] = this.lastLine(c, now);
        const row = h(
          "button",
          {
            type: "button",
            class: c.key === this.selected ? "conv selected" : "conv",
            "data-key": c.key,
            "aria-current": c.key === this.selected ? "true" : undefined,
          },
          c.kind === "direct" && c.peer !== null
            ? h("span", { class: this.isOnline(c.peer) ? "dot online" : "dot" })
            : null,
          h(
            "span",
            { class: "conv-text" },
            h(
              "span",
              { class: "conv-top" },
              h(
                "span",
                { class: c.unread > 0 ? "name unread" : "name", dir: "auto" },
                this.title(c),
              ),
              when === "" ? null : h("span", { class: "conv-time" }, when),
            ),
            last === "" ? null : h("span", { class: "conv-last", dir: "auto" }, last),
          ),
          c.mentions > 0 ? h("span", { class: "badge mention" }, `@${c.mentions}`) : null,
          c.unread > 0 ? h("span", { class: "badge" }, String(Math.min(c.unread, 1000))) : null,
        );
        row.addEventListener("click", () => this.select(c.key));
        nodes.push(row);
      }
    }
    fill(list, ...nodes);
    // The header.
    byId("title").textContent = this.title(conversation);
    byId("subtitle").textContent =
      this.subtitle(conversation) + (conversation.archived ? ` · ${this.t("archived")}` : "");
    byId("members").hidden = !(
      (conversation.kind === "channel" || conversation.kind === "group") &&
      conversation.member
    );
    byId("settings").hidden = !(
      conversation.kind === "channel" &&
      (conversation.role === "owner" || conversation.role === "admin")
    );
    const note = conversation.archived ? this.t("This channel is archived: it is read-only.") : "";
    byId("composer-note").textContent = note;
    byId<HTMLTextAreaElement>("composer").disabled = conversation.archived || !conversation.member;
    // The status line: quiet while all is well.
    byId("status").textContent = this.statusText();
    byId("status").className = `status ${this.session.state}`;
    byId("me-dot").className = this.session.state === "connected" ? "dot online" : "dot";
    const error = byId("error");
    error.textContent = this.errorText;
    error.hidden = this.errorText === "";
    // Typing.
    // (now: this frame's time, as in the list above.)
    for (const [name, until] of conversation.typing)
      if (until <= now) conversation.typing.delete(name);
    const typing = [...conversation.typing.keys()];
    byId("typing").textContent =
      typing.length === 0
        ? ""
        : typing.length === 1
          ? this.t("{name} is typing…", { name: typing[0] ?? "" })
          : typing.length === 2
            ? this.t("{first} and {second} are typing…", {
                first: typing[0] ?? "",
                second: typing[1] ?? "",
              })
            : this.t("Several people are typing…");
    // People.
    const people = byId("people");
    fill(
      people,
      ...this.people.map((user) => {
        const me = fold(user.name) === fold(this.user);
        const item = h(
          "li",
          {},
          h(
            "button",
            { type: "button", class: "person", "data-name": user.name, disabled: me },
            h("span", { class: this.isOnline(user.name) ? "dot online" : "dot" }),
            h("span", { dir: "auto" }, user.name),
            me ? h("span", { class: "hint" }, ` (${this.t("you")})`) : null,
          ),
        );
        item.querySelector("button")?.addEventListener("click", () => this.openDm(user.name));
        return item;
      }),
    );
    byId("more-people").hidden = this.peopleNext === undefined;
    // The timeline.
    const view = this.timelineView;
    if (view !== null) {
      // Rebuilt only when something in them changed: a second's tick redraws nothing here.
      const shown = `${conversation.key}|${conversation.timeline.version}|${conversation.markerSeq ?? ""}|${this.session.state}`;
      if (shown !== this.shownRows) {
        this.shownRows = shown;
        view.show(
          conversation.key,
          conversation.timeline.rows(conversation.markerSeq, this.user, true),
        );
      }
      const jump = byId("jump");
      jump.hidden = view.following;
      jump.textContent =
        conversation.unseen > 0
          ? this.t("{n} new messages ↓", { n: conversation.unseen })
          : this.t("Jump to latest ↓");
    }
    // The title counts what is unread everywhere.
    let unread = 0;
    for (const c of this.conversations.values()) unread += c.unread;
    document.title =
      unread > 0
        ? this.t("({n}) {user} — beseda", { n: unread, user: this.user })
        : this.t("{user} — beseda", { user: this.user });
  }

  private statusText(): string {
    const waiting = this.session.waiting;
    switch (this.session.state) {
      case "connected":
        return "";
      case "connecting":
        return this.t("Connecting");
      case "reconnecting": {
        let text = this.t("Reconnecting…");
        if (waiting > 0) text += ` ${this.t("{n} messages wait to be sent.", { n: waiting })}`;
        return text;
      }
      case "offline":
        return this.t("Offline");
    }
  }

  private signature(row: Row): string {
    if (row.type === "outgoing") {
      const o = row.outgoing;
      return `${row.key}|${o.failed ?? ""}|${this.session.state}`;
    }
    if (row.type === "message") {
      const e = row.entry;
      const reactions = (e.reactions ?? []).map((r) => `${r.emoji}${r.count}${r.me === true}`);
      const quote = e.reply === undefined ? "" : `${e.reply.deleted === true}${e.reply.text ?? ""}`;
      const grouped = row.grouped === true ? "g" : "";
      return `${row.key}|${grouped}|${e.edited ?? ""}|${e.text ?? ""}|${reactions.join()}|${quote}`;
    }
    return row.key;
  }

  private renderRow(row: Row): HTMLElement {
    switch (row.type) {
      case "marker":
        return h("div", { class: "marker" }, h("span", {}, this.t("New messages")));
      case "day":
        return h("div", { class: "day" }, h("span", {}, this.dayLabel(row.ts)));
      case "event":
        return h(
          "div",
          { class: "event", "data-seq": row.entry.seq },
          describeEntry(this.tr, row.entry),
          h("time", {}, formatTime(row.entry.ts)),
        );
      case "message": {
        const entry = row.entry;
        const own = fold(entry.sender) === fold(this.user);
        const classes = ["message"];
        if (own) classes.push("own");
        if (this.mentionsMe(entry)) classes.push("mentioned");
        if (entry.seq === this.flashSeq) classes.push("flash");
        if (row.grouped === true) classes.push("grouped");
        const more = h(
          "button",
          { type: "button", class: "link more", "aria-label": this.t("Message actions") },
          "⋯",
        );
        more.addEventListener("click", () => this.showActions(entry));
        const element = h(
          "div",
          { class: classes.join(" "), "data-seq": entry.seq, "data-client-id": entry.client_id },
          row.grouped === true
            ? null
            : h(
                "span",
                { class: `avatar c${colourOf(entry.sender)}`, "aria-hidden": "true" },
                initials(entry.sender),
              ),
          h(
            "div",
            { class: "meta" },
            h("span", { class: "sender", dir: "auto" }, entry.sender),
            h("time", { datetime: new Date(entry.ts).toISOString() }, formatTime(entry.ts)),
            entry.edited !== undefined
              ? h("span", { class: "note edited" }, this.t("(edited)"))
              : null,
            own ? h("span", { class: "note sent" }, "✓") : null,
            more,
          ),
          this.renderQuote(entry),
          h("div", { class: "text", dir: "auto" }, textWithMentions(entry.text ?? "", this.user)),
          this.renderReactions(entry),
        );
        element.addEventListener("contextmenu", (event) => {
          event.preventDefault();
          this.showActions(entry);
        });
        return element;
      }
      case "outgoing": {
        const o = row.outgoing;
        const note =
          o.failed !== null
            ? this.t("not sent: {reason}", { reason: o.failed })
            : this.session.state === "connected"
              ? this.t("sending…")
              : this.t("waiting for connection…");
        const retry =
          o.failed !== null && !o.final
            ? h("button", { type: "button", class: "link retry" }, this.t("Retry"))
            : null;
        retry?.addEventListener("click", () => this.retry(o.clientId));
        return h(
          "div",
          {
            class: o.failed !== null ? "message own outgoing failed" : "message own outgoing",
            "data-client-id": o.clientId,
          },
          h(
            "span",
            { class: `avatar c${colourOf(this.user)}`, "aria-hidden": "true" },
            initials(this.user),
          ),
          h(
            "div",
            { class: "meta" },
            h("span", { class: "sender" }, this.user),
            h("time", {}, formatTime(o.sentAt)),
            h("span", { class: "note" }, note),
            retry,
          ),
          h("div", { class: "text", dir: "auto" }, textWithMentions(o.text, this.user)),
        );
      }
    }
  }

  private renderQuote(entry: Entry): HTMLElement | null {
    const reply = entry.reply;
    if (reply === undefined) return null;
    const quote = h(
      "button",
      { type: "button", class: "quote", "data-reply-to": reply.seq, dir: "auto" },
      h("span", { class: "sender" }, reply.sender),
      " ",
      reply.deleted === true
        ? h("em", {}, this.t("deleted message"))
        : h("span", { class: "quote-text" }, reply.text ?? ""),
    );
    quote.addEventListener("click", () => {
      if (reply.deleted !== true) void this.jumpTo(entry.conversation, reply.seq);
    });
    return quote;
  }

  private renderReactions(entry: Entry): HTMLElement | null {
    const reactions = entry.reactions ?? [];
    if (reactions.length === 0) return null;
    return h(
      "div",
      { class: "reactions" },
      ...reactions.map((reaction) => {
        const chip = h(
          "button",
          {
            type: "button",
            class: reaction.me === true ? "reaction mine" : "reaction",
            "data-emoji": reaction.emoji,
            "aria-pressed": reaction.me === true ? "true" : "false",
          },
          `${reaction.emoji} ${reaction.count}`,
        );
        chip.addEventListener("click", () => {
          this.react(entry, reaction.emoji, reaction.me !== true);
        });
        return chip;
      }),
    );
  }

  // -- replies, edits, deletes, reactions, search (protocol 4) -------------------------------

  private flashSeq: number | null = null;

  /** "Today", "Yesterday", or the date (with the year when it is not this one). */
  private dayLabel(ts: number): string {
    const date = new Date(ts);
    const today = new Date();
    const yesterday = new Date(today.getFullYear(), today.getMonth(), today.getDate() - 1);
    if (date.toDateString() === today.toDateString()) return this.t("Today");
    if (date.toDateString() === yesterday.toDateString()) return this.t("Yesterday");
    return (date.getFullYear() === today.getFullYear() ? dateFormat : yearFormat).format(date);
  }

  /** Sends the composer's text: an edit when editing, else a message (a reply when one is
   * chosen). */
  private submit(text: string): boolean {
    const editing = this.editing;
    if (editing === null) return this.send(text);
    text = text.trim();
    if (text === "") return false;
    // eslint-disable-next-line @typescript-eslint/no-misused-spread -- code points
    const length = [...text].length;
    if (length > MAX_TEXT_CHARS) {
      this.showComposerError(
        this.t("A message may have at most {limit} characters; this one has {n}.", {
          limit: MAX_TEXT_CHARS,
          n: length,
        }),
      );
      return false;
    }
    this.showComposerError("");
    this.setComposerMode(null, null);
    if (text !== editing.text) {
      this.session
        .edit(editing.conversation, editing.seq, text)
        .catch((error: unknown) => this.showError(this.explain(error)));
    }
    return true;
  }

  private setComposerMode(replyTo: Entry | null, editing: Entry | null): void {
    this.replyTo = replyTo;
    this.editing = editing;
    const context = document.getElementById("composer-context");
    if (context === null) return;
    const subject = replyTo ?? editing;
    if (subject === null) {
      fill(context);
      context.hidden = true;
      return;
    }
    const cancel = h(
      "button",
      {
        type: "button",
        class: "link close",
        id: "composer-cancel",
        "aria-label": this.t("Cancel"),
      },
      "×",
    );
    cancel.addEventListener("click", () => {
      if (this.editing !== null) byId<HTMLTextAreaElement>("composer").value = "";
      this.setComposerMode(null, null);
    });
    fill(
      context,
      h(
        "div",
        { class: "quote", dir: "auto" },
        h(
          "strong",
          {},
          replyTo !== null
            ? this.t("Reply to {sender}", { sender: replyTo.sender })
            : this.t("Editing message"),
        ),
        " ",
        h("span", { class: "quote-text" }, preview(subject.text ?? "")),
      ),
      cancel,
    );
    context.hidden = false;
  }

  private startReply(entry: Entry): void {
    this.setComposerMode(entry, null);
    byId<HTMLTextAreaElement>("composer").focus();
  }

  private startEdit(entry: Entry): void {
    this.setComposerMode(null, entry);
    const composer = byId<HTMLTextAreaElement>("composer");
    composer.value = entry.text ?? "";
    composer.focus();
  }

  private react(entry: Entry, emoji: string, on: boolean): void {
    this.session
      .react(entry.conversation, entry.seq, emoji, on)
      .catch((error: unknown) => this.showError(this.explain(error)));
  }

  /** The server's rule: the author, or a channel's owner or admin, may delete. */
  private mayDelete(entry: Entry): boolean {
    if (fold(entry.sender) === fold(this.user)) return true;
    const conversation = this.byId(entry.conversation);
    return (
      conversation?.kind === "channel" &&
      (conversation.role === "owner" || conversation.role === "admin")
    );
  }

  private showActions(entry: Entry): void {
    const own = fold(entry.sender) === fold(this.user);
    const conversation = this.byId(entry.conversation);
    const writable = conversation !== undefined && conversation.member && !conversation.archived;
    const action = (id: string, text: string, run: () => void): HTMLButtonElement => {
      const element = h("button", { type: "button", id, class: "action" }, text);
      element.addEventListener("click", () => {
        dialog.close();
        run();
      });
      return element;
    };
    const mine = new Set((entry.reactions ?? []).filter((r) => r.me === true).map((r) => r.emoji));
    const picker = h(
      "div",
      { class: "emoji-picker", role: "group", "aria-label": this.t("React") },
      ...COMMON_EMOJI.map((emoji) => {
        const chip = h(
          "button",
          {
            type: "button",
            class: mine.has(emoji) ? "reaction mine" : "reaction",
            "data-emoji": emoji,
          },
          emoji,
        );
        chip.addEventListener("click", () => {
          dialog.close();
          this.react(entry, emoji, !mine.has(emoji));
        });
        return chip;
      }),
    );
    const dialog = this.dialog(
      "actions",
      this.t("Message actions"),
      writable ? picker : null,
      h(
        "div",
        { class: "action-list" },
        writable ? action("action-reply", this.t("Reply"), () => this.startReply(entry)) : null,
        writable && own ? action("action-edit", this.t("Edit"), () => this.startEdit(entry)) : null,
        writable && this.mayDelete(entry)
          ? action("action-delete", this.t("Delete"), () => this.confirmDelete(entry))
          : null,
        action("action-copy", this.t("Copy text"), () => {
          void navigator.clipboard.writeText(entry.text ?? "").catch(() => undefined);
        }),
      ),
    );
  }

  private confirmDelete(entry: Entry): void {
    const yes = h(
      "button",
      { type: "button", id: "confirm-delete", class: "primary danger" },
      this.t("Delete"),
    );
    const no = h("button", { type: "button", id: "cancel-delete" }, this.t("Cancel"));
    const dialog = this.dialog(
      "delete",
      this.t("Delete this message?"),
      h("p", {}, this.t("It is deleted for everyone, and cannot be brought back.")),
      h("p", { class: "quote", dir: "auto" }, preview(entry.text ?? "")),
      h("div", { class: "buttons" }, no, yes),
    );
    no.addEventListener("click", () => dialog.close());
    yes.addEventListener("click", () => {
      dialog.close();
      if (this.editing?.seq === entry.seq) this.setComposerMode(null, null);
      this.session
        .delete(entry.conversation, entry.seq)
        .catch((error: unknown) => this.showError(this.explain(error)));
    });
    yes.focus();
  }

  private showSearch(): void {
    const input = h("input", {
      id: "search-query",
      type: "search",
      placeholder: this.t("Search messages"),
      "aria-label": this.t("Search messages"),
    });
    const results = h("ul", { id: "search-results", class: "search-results" });
    const status = h("p", { id: "search-status", class: "hint", role: "status" });
    const more = h("button", { type: "button", class: "link", hidden: true }, this.t("More…"));
    let next: string | undefined;
    let asked = 0;
    const run = async (query: string, cursor: string | null): Promise<void> => {
      const ticket = ++asked;
      if (query.trim() === "") {
        fill(results);
        status.textContent = "";
        more.hidden = true;
        return;
      }
      try {
        const page = await this.session.search(query, cursor);
        if (ticket !== asked) return;
        if (cursor === null) fill(results);
        for (const hit of page.results) results.appendChild(this.renderHit(hit, dialog));
        next = page.next;
        more.hidden = next === undefined;
        status.textContent = results.childElementCount === 0 ? this.t("Nothing found.") : "";
      } catch (error) {
        if (ticket === asked) status.textContent = this.explain(error);
      }
    };
    let timer = 0;
    input.addEventListener("input", () => {
      window.clearTimeout(timer);
      timer = window.setTimeout(() => void run(input.value, null), 250);
    });
    input.addEventListener("keydown", (event) => {
      if (event.key === "Enter") {
        event.preventDefault();
        window.clearTimeout(timer);
        void run(input.value, null);
      }
    });
    more.addEventListener("click", () => {
      if (next !== undefined) void run(input.value, next);
    });
    const dialog = this.dialog("search", this.t("Search messages"), input, status, results, more);
    input.focus();
  }

  private renderHit(hit: SearchHit, dialog: HTMLDialogElement): HTMLElement {
    const conversation = this.byId(hit.conversation);
    const where = conversation === undefined ? hit.conversation : this.title(conversation);
    const snippet = h("span", { class: "snippet", dir: "auto" });
    for (const piece of highlightPieces(hit.snippet, hit.highlights)) {
      snippet.appendChild(
        piece.hit ? h("mark", {}, piece.text) : document.createTextNode(piece.text),
      );
    }
    const item = h(
      "button",
      { type: "button", class: "hit", "data-conversation": hit.conversation, "data-seq": hit.seq },
      h(
        "span",
        { class: "meta" },
        h("span", { class: "sender", dir: "auto" }, hit.sender),
        h("span", { class: "where" }, ` · ${where} · `),
        h("time", {}, formatTime(hit.ts)),
      ),
      snippet,
    );
    item.addEventListener("click", () => {
      dialog.close();
      void this.jumpTo(hit.conversation, hit.seq);
    });
    return h("li", {}, item);
  }

  /** Open `conversationId` at message `seq`: loaded with `history` `around` it when it is not
   * (then `after` pages up to what was loaded, so the timeline stays without gaps). */
  private async jumpTo(conversationId: string, seq: number): Promise<void> {
    const conversation = this.byId(conversationId);
    if (conversation === undefined) return;
    if (this.selected !== conversation.key) this.select(conversation.key);
    const timeline = conversation.timeline;
    try {
      if (timeline.message(seq) === undefined) {
        const oldest = timeline.oldestSeq;
        const around = await this.session.historyAround(conversationId, seq);
        timeline.addEntries(around.entries);
        if (oldest === null || (around.entries[0]?.seq ?? oldest) < oldest) {
          timeline.hasOlder = around.more;
        }
        let last = around.entries[around.entries.length - 1]?.seq ?? seq;
        let newer = around.newer;
        while (newer && (oldest === null || last + 1 < oldest)) {
          const page = await this.session.historyAfter(conversationId, last);
          timeline.addEntries(page.entries);
          const end = page.entries[page.entries.length - 1]?.seq;
          if (end === undefined) break;
          last = end;
          newer = page.newer;
        }
      }
    } catch (error) {
      this.showError(this.explain(error));
      return;
    }
    this.flashSeq = seq;
    timeline.touch();
    this.shownRows = "";
    this.draw();
    if (this.timelineView?.reveal(`s${seq}`) !== true) {
      this.showError(this.t("That message is no longer there."));
    }
  }

  // -- dialogs ------------------------------------------------------------------------------

  private openDialog: { kind: string; key: string; element: HTMLDialogElement } | null = null;

  private dialog(kind: string, title: string, ...content: (Node | null)[]): HTMLDialogElement {
    this.openDialog?.element.close();
    const close = h(
      "button",
      { type: "button", class: "link close", "aria-label": this.t("Close") },
      "×",
    );
    const element = h(
      "dialog",
      { id: `${kind}-dialog`, class: "dialog" },
      h("header", {}, h("h2", {}, title), close),
      ...content,
    );
    close.addEventListener("click", () => element.close());
    element.addEventListener("close", () => {
      element.remove();
      if (this.openDialog?.element === element) this.openDialog = null;
    });
    document.body.appendChild(element);
    this.openDialog = { kind, key: this.selected, element };
    element.showModal();
    return element;
  }

  private failed(error: unknown, where: HTMLElement): void {
    where.textContent = this.explain(error);
  }

  private showNewChannel(): void {
    const name = h("input", { id: "channel-name", required: true, maxlength: 32 });
    const topic = h("input", { id: "channel-topic", maxlength: 250 });
    const open = h("input", { id: "channel-public", type: "checkbox", checked: true });
    const error = h("p", { class: "form-error", role: "alert" });
    const form = h(
      "form",
      { method: "dialog" },
      h("label", { for: "channel-name" }, this.t("Name")),
      name,
      h("label", { for: "channel-topic" }, this.t("Topic")),
      topic,
      h("label", { class: "check" }, open, this.t("Public: anyone may find and join it")),
      error,
      h(
        "div",
        { class: "buttons" },
        h("button", { type: "submit", class: "primary", id: "create-channel" }, this.t("Create")),
      ),
    );
    const dialog = this.dialog("new-channel", this.t("New channel"), form);
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      const value = name.value.trim().replace(/^#/, "").trim();
      if (value === "") return;
      this.session
        .createChannel(value, open.checked, topic.value.trim())
        .then((info) => {
          dialog.close();
          this.opened(info, true);
        })
        .catch((failure: unknown) => this.failed(failure, error));
    });
  }

  private showBrowse(): void {
    const search = h("input", {
      id: "channel-search",
      type: "search",
      placeholder: this.t("Search channels"),
    });
    const list = h("ul", { class: "list", id: "channel-list" });
    const error = h("p", { class: "form-error", role: "alert" });
    const load = (): void => {
      void this.session
        .channels(search.value.trim())
        .then((channels) => {
          fill(
            list,
            ...channels.map((channel) => {
              const join = h(
                "button",
                {
                  type: "button",
                  class: "primary",
                  disabled: channel.joined === true,
                  "data-conversation": channel.conversation,
                },
                channel.joined === true ? this.t("joined") : this.t("Join"),
              );
              join.addEventListener("click", () => {
                this.session
                  .join(channel.conversation)
                  .then((info) => {
                    dialog.close();
                    this.opened(info, true);
                  })
                  .catch((failure: unknown) => this.failed(failure, error));
              });
              return h(
                "li",
                {},
                h(
                  "span",
                  { class: "grow" },
                  h("strong", {}, `# ${channel.name}`),
                  " ",
                  h("span", { class: "hint" }, channel.topic ?? ""),
                ),
                join,
              );
            }),
          );
        })
        .catch((failure: unknown) => this.failed(failure, error));
    };
    search.addEventListener("input", load);
    const dialog = this.dialog("browse", this.t("Browse channels"), search, list, error);
    load();
  }

  private showNewGroup(): void {
    const names = h("input", { id: "group-members", required: true });
    const error = h("p", { class: "form-error", role: "alert" });
    const form = h(
      "form",
      { method: "dialog" },
      h("label", { for: "group-members" }, this.t("People (comma-separated names)")),
      names,
      error,
      h(
        "div",
        { class: "buttons" },
        h("button", { type: "submit", class: "primary" }, this.t("Create")),
      ),
    );
    const dialog = this.dialog("new-group", this.t("New group"), form);
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      const people = splitNames(names.value);
      this.session
        .createGroup(people)
        .then((info) => {
          dialog.close();
          this.opened(info, true);
        })
        .catch((failure: unknown) => this.failed(failure, error));
    });
  }

  private async showMembers(): Promise<void> {
    const conversation = this.current();
    if (conversation.id === null) return;
    const id = conversation.id;
    const reopen = this.openDialog?.kind === "members" ? this.openDialog.element : null;
    const list = h("ul", { class: "list", id: "member-list" });
    const error = h("p", { class: "form-error", role: "alert" });
    const manager = conversation.role === "owner" || conversation.role === "admin";
    const invite = h("input", {
      id: "invite-names",
      placeholder: this.t("People (comma-separated names)"),
    });
    const inviteButton = h(
      "button",
      { type: "button", class: "primary", id: "invite" },
      this.t("Invite"),
    );
    inviteButton.addEventListener("click", () => {
      this.session
        .invite(id, splitNames(invite.value))
        .then(() => {
          invite.value = "";
          void this.showMembers();
        })
        .catch((failure: unknown) => this.failed(failure, error));
    });
    const leave = h("button", { type: "button", id: "leave" }, this.t("Leave"));
    leave.addEventListener("click", () => {
      this.session
        .leave(id)
        .then(() => {
          this.openDialog?.element.close();
          this.conversationLeft(conversation);
          this.render();
        })
        .catch((failure: unknown) => this.failed(failure, error));
    });
    const canInvite = manager || (conversation.kind === "group" && conversation.member);
    const content = [
      list,
      canInvite ? h("div", { class: "inline" }, invite, inviteButton) : null,
      error,
      h("div", { class: "buttons" }, leave),
    ];
    if (reopen === null) {
      this.dialog("members", this.t("Members"), ...content);
    } else {
      const header = reopen.querySelector("header");
      reopen.replaceChildren(
        ...(header === null ? [] : [header]),
        ...content.filter((n) => n !== null),
      );
    }
    let members: MemberEntry[];
    try {
      members = await this.loadMembers(conversation);
    } catch (failure) {
      this.failed(failure, error);
      return;
    }
    const roleName = (role: string): string => this.t(role);
    const me = fold(this.user);
    fill(
      list,
      ...members.map((member) => {
        const actions: Node[] = [];
        const self = fold(member.name) === me;
        if (
          conversation.kind === "channel" &&
          manager &&
          !self &&
          !(member.role === "owner" && conversation.role !== "owner")
        ) {
          const roles =
            conversation.role === "owner" ? ["owner", "admin", "member"] : ["admin", "member"];
          for (const role of roles.filter((r) => r !== member.role)) {
            const set = h(
              "button",
              { type: "button", class: "link" },
              this.t("Make {role}", { role: roleName(role) }),
            );
            set.addEventListener("click", () => {
              this.session
                .setRole(id, member.name, role)
                .then(() => void this.showMembers())
                .catch((failure: unknown) => this.failed(failure, error));
            });
            actions.push(set);
          }
        }
        if (manager && !self && member.role !== "owner") {
          const remove = h("button", { type: "button", class: "link danger" }, this.t("Remove"));
          remove.addEventListener("click", () => {
            this.session
              .remove(id, member.name)
              .then(() => void this.showMembers())
              .catch((failure: unknown) => this.failed(failure, error));
          });
          actions.push(remove);
        }
        return h(
          "li",
          {},
          h("span", { class: member.online ? "dot online" : "dot" }),
          h(
            "span",
            { class: "grow", dir: "auto" },
            member.name,
            " ",
            h("span", { class: "hint" }, roleName(member.role)),
          ),
          ...actions,
        );
      }),
    );
  }

  private showSettings(): void {
    const conversation = this.current();
    const id = conversation.id;
    if (id === null) return;
    const name = h("input", { id: "settings-name", value: conversation.name, maxlength: 32 });
    const topic = h("input", { id: "settings-topic", value: conversation.topic, maxlength: 250 });
    const error = h("p", { class: "form-error", role: "alert" });
    const save = h("button", { type: "submit", class: "primary" }, this.t("Save"));
    const archive = h("button", { type: "button", class: "danger" }, this.t("Archive"));
    const form = h(
      "form",
      { method: "dialog" },
      h("label", { for: "settings-name" }, this.t("Name")),
      name,
      h("label", { for: "settings-topic" }, this.t("Topic")),
      topic,
      error,
      h("div", { class: "buttons" }, save, archive),
    );
    const dialog = this.dialog("settings", this.t("Channel settings"), form);
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      const changes: Promise<unknown>[] = [];
      if (name.value.trim() !== conversation.name)
        changes.push(this.session.rename(id, name.value.trim()));
      if (topic.value.trim() !== conversation.topic)
        changes.push(this.session.setTopic(id, topic.value.trim()));
      Promise.all(changes)
        .then(() => dialog.close())
        .catch((failure: unknown) => this.failed(failure, error));
    });
    archive.addEventListener("click", () => {
      if (!window.confirm(this.t("Archive this channel? Nobody will be able to post in it.")))
        return;
      this.session
        .archive(id)
        .then(() => dialog.close())
        .catch((failure: unknown) => this.failed(failure, error));
    });
  }

  private showSwitcher(): void {
    const input = h("input", {
      id: "switcher-input",
      type: "search",
      placeholder: this.t("Conversation or person"),
      "aria-label": this.t("Conversation or person"),
    });
    const list = h("ul", { class: "list switcher", id: "switcher-list", role: "listbox" });
    let choices: { label: string; detail: string; choose: () => void }[] = [];
    let active = 0;
    const draw = (): void => {
      fill(
        list,
        ...choices.map((choice, index) => {
          const item = h(
            "li",
            {
              role: "option",
              class: index === active ? "active" : "",
              "aria-selected": index === active ? "true" : "false",
            },
            h("span", { class: "grow", dir: "auto" }, choice.label),
            h("span", { class: "hint" }, choice.detail),
          );
          item.addEventListener("click", () => {
            dialog.close();
            choice.choose();
          });
          return item;
        }),
      );
    };
    const update = (): void => {
      const query = fold(input.value.trim());
      choices = this.ordered()
        .filter((c) => fold(this.title(c)).includes(query))
        .map((c) => ({
          label: this.title(c),
          detail: this.subtitle(c),
          choose: () => this.select(c.key),
        }));
      active = 0;
      draw();
      const asked = input.value;
      void this.session
        .users(query)
        .then((page) => {
          if (asked !== input.value) return;
          const known = new Set(choices.map((c) => fold(c.label)));
          for (const user of page.users) {
            if (fold(user.name) === fold(this.user) || known.has(fold(user.name))) continue;
            choices.push({
              label: user.name,
              detail: user.online ? this.t("online") : this.t("offline"),
              choose: () => this.openDm(user.name),
            });
          }
          draw();
        })
        .catch(() => undefined);
    };
    input.addEventListener("input", update);
    input.addEventListener("keydown", (event) => {
      if (event.key === "ArrowDown" || event.key === "ArrowUp") {
        event.preventDefault();
        active = Math.max(
          0,
          Math.min(choices.length - 1, active + (event.key === "ArrowDown" ? 1 : -1)),
        );
        draw();
      } else if (event.key === "Enter") {
        event.preventDefault();
        const choice = choices[active];
        dialog.close();
        choice?.choose();
      }
    });
    const dialog = this.dialog("switcher", this.t("Go to…"), input, list);
    update();
    input.focus();
  }
}

function splitNames(text: string): string[] {
  return text
    .split(/[\s,]+/)
    .map((name) => name.replace(/^@/, ""))
    .filter((name) => name !== "");
}

// Formatters are costly to make: one of each, made once (a row is drawn per frame or more).
const timeFormat = new Intl.DateTimeFormat([], { hour: "2-digit", minute: "2-digit" });
const dayFormat = new Intl.DateTimeFormat([], { day: "numeric", month: "short" });
const dateFormat = new Intl.DateTimeFormat([], { weekday: "long", day: "numeric", month: "long" });
const yearFormat = new Intl.DateTimeFormat([], { day: "numeric", month: "long", year: "numeric" });

export function formatTime(ts: number): string {
  const date = new Date(ts);
  const time = timeFormat.format(date);
  if (date.toDateString() === new Date().toDateString()) return time;
  return `${dayFormat.format(date)} ${time}`;
}

/** The grey line of a change in a conversation ("Anna added Boris"). */
export function describeEntry(tr: Translator, entry: Entry): string {
  const who = entry.sender;
  const target = entry.target ?? "";
  const role = (name: string): string => tr.t(name);
  switch (kindOf(entry)) {
    case "created":
      return tr.t("{who} created the conversation", { who });
    case "joined":
      return tr.t("{who} joined", { who });
    case "left":
      return tr.t("{who} left", { who });
    case "added":
      return tr.t("{who} added {target}", { who, target });
    case "removed":
      return tr.t("{who} removed {target}", { who, target });
    case "renamed":
      return tr.t("{who} renamed the channel to {name}", { who, name: entry.name ?? "" });
    case "topic":
      return tr.t("{who} set the topic: {topic}", { who, topic: entry.topic ?? "" });
    case "archived":
      return tr.t("{who} archived the channel", { who });
    case "role":
      return tr.t("{who} made {target} {role}", { who, target, role: role(entry.role ?? "") });
    default:
      return who;
  }
}
