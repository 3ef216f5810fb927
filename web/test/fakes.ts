// A scripted server at the other end of a fake WebSocket, and a clock that moves only when told.

import type { SocketLike, Timers } from "../src/session.js";

export class FakeTimers implements Timers {
  time = 0;
  private queue: { at: number; seq: number; callback: () => void }[] = [];
  private seq = 0;

  now(): number {
    return this.time;
  }

  setTimeout(callback: () => void, ms: number): unknown {
    const handle = { at: this.time + ms, seq: this.seq++, callback };
    this.queue.push(handle);
    return handle;
  }

  clearTimeout(handle: unknown): void {
    this.queue = this.queue.filter((item) => item !== handle);
  }

  /** Move the clock on by `ms`, running what falls due, in order. */
  async advance(ms: number): Promise<void> {
    const end = this.time + ms;
    for (;;) {
      this.queue.sort((a, b) => a.at - b.at || a.seq - b.seq);
      const next = this.queue[0];
      if (next === undefined || next.at > end) break;
      this.queue.shift();
      this.time = next.at;
      next.callback();
      await settle();
    }
    this.time = end;
    await settle();
  }
}

/** Let pending promise callbacks run. */
export async function settle(): Promise<void> {
  for (let i = 0; i < 5; i += 1) await new Promise((resolve) => setImmediate(resolve));
}

export class FakeSocket implements SocketLike {
  onopen: ((event: Event) => void) | null = null;
  onmessage: ((event: MessageEvent) => void) | null = null;
  onclose: ((event: CloseEvent) => void) | null = null;
  onerror: ((event: Event) => void) | null = null;
  readonly sent: Record<string, unknown>[] = [];
  closed = false;

  send(data: string): void {
    if (this.closed) throw new Error("sent on a closed socket");
    this.sent.push(JSON.parse(data) as Record<string, unknown>);
  }

  close(): void {
    this.closed = true;
  }

  /** The server sends one frame. */
  receive(message: unknown): void {
    this.onmessage?.({ data: JSON.stringify(message) } as MessageEvent);
  }

  hello(): void {
    this.receive({ type: "hello", server: "beseda test", protocol: 3, limits: {} });
  }

  /** The server (or the network) drops the connection. */
  drop(): void {
    this.closed = true;
    this.onclose?.({} as CloseEvent);
  }

  /** The requests sent so far of one type. */
  requests(type: string): Record<string, unknown>[] {
    return this.sent.filter((frame) => frame.type === type);
  }

  last(type: string): Record<string, unknown> {
    const found = this.requests(type);
    const last = found[found.length - 1];
    if (last === undefined) throw new Error(`no ${type} was sent`);
    return last;
  }

  reply(request: Record<string, unknown>, data: Record<string, unknown>): void {
    this.receive({ type: "result", id: request.id, data });
  }
}
