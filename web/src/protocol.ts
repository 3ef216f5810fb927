// The wire types of docs/protocol.md (version 4) that the web app uses. The server is the
// authority: these only describe what arrives, and unknown fields are ignored.

export const GENERAL = "general";
export const PROTOCOL = 4;
export const MAX_TEXT_CHARS = 16_384;
export const MAX_WATCH = 1000;
export const TYPING_INTERVAL_MS = 3000;
export const TYPING_EXPIRY_MS = 6000;

/** A message or a change of a conversation, with its conversation's next `seq`. */
export interface Entry {
  id: number;
  conversation: string;
  seq: number;
  sender: string;
  ts: number;
  /** Absent for a message (normalised to "message" by {@link kindOf}). */
  kind?: string;
  text?: string;
  client_id?: string;
  to?: string;
  mentions?: string[];
  mention_all?: boolean;
  target?: string;
  name?: string;
  topic?: string;
  role?: string;
  /** Version 4: the seq of the message this one answers, and that message as it is now. */
  reply_to?: number;
  reply?: Quote;
  /** When the text was last edited (ms). */
  edited?: number;
  reactions?: Reaction[];
  /** A change (`edited`, `deleted`, `reacted`, `unreacted`): the message it is about. */
  ref?: number;
  emoji?: string;
  count?: number;
}

export interface Quote {
  seq: number;
  sender: string;
  text?: string;
  deleted?: boolean;
}

export interface Reaction {
  emoji: string;
  count: number;
  me?: boolean;
}

/** One result of `search`: `highlights` are [start, end) offsets in code points. */
export interface SearchHit {
  conversation: string;
  seq: number;
  id: number;
  sender: string;
  ts: number;
  snippet: string;
  highlights: [number, number][];
  edited?: number;
  reply_to?: number;
}

export function kindOf(entry: Entry): string {
  return entry.kind ?? "message";
}

export interface ConversationInfo {
  conversation: string;
  kind: "channel" | "group" | "direct";
  name?: string;
  peer?: string;
  topic?: string;
  public?: boolean;
  archived?: boolean;
  role?: string;
  member?: boolean;
  members?: number;
  last_seq: number;
  last_ts?: number;
  read_seq?: number;
  unread?: number;
  mentions?: number;
}

export interface UserEntry {
  name: string;
  online: boolean;
}

export interface MemberEntry {
  name: string;
  role: string;
  online: boolean;
}

export interface ChannelEntry {
  conversation: string;
  name: string;
  topic?: string;
  public?: boolean;
  archived?: boolean;
  members?: number;
  joined?: boolean;
}

export interface Hello {
  type: "hello";
  server: string;
  protocol: number;
  limits: Record<string, number>;
}

export interface ResultReply {
  type: "result";
  id: number | string;
  data: Record<string, unknown>;
}

export interface ErrorReply {
  type: "error";
  id: number | string | null;
  code: string;
  message: string;
  retry_after?: number;
}

export type ServerMessage =
  | Hello
  | ResultReply
  | ErrorReply
  | { type: "entry"; entry: Entry }
  | { type: "message"; message: Entry }
  | { type: "read"; conversation: string; seq: number }
  | { type: "typing"; conversation: string; user: string }
  | { type: "presence"; user: string; online: boolean }
  | { type: "bye"; code: string; message: string };

/** A request: its `type` and fields; the session adds the `id`. */
export type Request = { type: string } & Record<string, unknown>;

/** Parses one text frame; null for anything that is not a JSON object with a string type. */
export function parseServerMessage(text: string): ServerMessage | null {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    return null;
  }
  if (typeof value !== "object" || value === null || Array.isArray(value)) return null;
  if (typeof (value as { type?: unknown }).type !== "string") return null;
  return value as ServerMessage;
}

/** A fresh client id for a message: random, so a retry after a reload stays unique. */
export function newClientId(): string {
  const bytes = new Uint8Array(16);
  crypto.getRandomValues(bytes);
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}
