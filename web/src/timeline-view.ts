// The message list: draws only the rows near the viewport (with a margin above and below),
// positioned over a spacer as tall as the whole list. Each drawn row is measured; when heights
// change or older pages arrive above, the row at the top of the viewport stays where it was
// (an anchor), so loading history never moves what the reader is looking at. At the bottom,
// the list follows new rows.

import { Heights } from "./heights.js";
import type { Row } from "./timeline.js";

const OVERSCAN_PX = 600;
const ESTIMATE_PX = 56;
const NEAR_TOP_PX = 400;

export interface TimelineCallbacks {
  render(row: Row): HTMLElement;
  /** A signature of what a row shows: a changed signature redraws it. */
  signature(row: Row): string;
  nearTop(): void;
  bottomChanged(atBottom: boolean): void;
}

export class TimelineView {
  readonly scroller: HTMLElement;
  private readonly spacer: HTMLElement;
  private rows: Row[] = [];
  private readonly heights = new Heights(ESTIMATE_PX);
  private readonly drawn = new Map<
    string,
    { element: HTMLElement; signature: string; index: number }
  >();
  private atBottom = true;
  private owner: string | null = null;
  private frame = 0;
  private adjusting = false;

  constructor(
    scroller: HTMLElement,
    private readonly callbacks: TimelineCallbacks,
  ) {
    this.scroller = scroller;
    this.spacer = document.createElement("div");
    this.spacer.className = "spacer";
    scroller.replaceChildren(this.spacer);
    scroller.addEventListener("scroll", () => {
      if (this.adjusting) return;
      this.atBottomChanged(this.distanceFromBottom() < 8);
      this.schedule();
      if (this.scroller.scrollTop < NEAR_TOP_PX) this.callbacks.nearTop();
    });
    new ResizeObserver(() => {
      // Another width wraps text differently: measure the drawn rows again.
      for (const { element } of this.drawn.values()) element.remove();
      this.drawn.clear();
      this.schedule();
    }).observe(scroller);
  }

  get following(): boolean {
    return this.atBottom;
  }

  private distanceFromBottom(): number {
    return this.scroller.scrollHeight - this.scroller.scrollTop - this.scroller.clientHeight;
  }

  private atBottomChanged(value: boolean): void {
    if (value !== this.atBottom) {
      this.atBottom = value;
      this.callbacks.bottomChanged(value);
    }
  }

  /** Show `rows` of conversation `owner`; a new owner starts at the bottom. */
  show(owner: string, rows: Row[]): void {
    if (owner !== this.owner) {
      this.owner = owner;
      for (const { element } of this.drawn.values()) element.remove();
      this.drawn.clear();
      this.atBottom = true;
      this.callbacks.bottomChanged(true);
    }
    const anchor = this.atBottom ? null : this.anchor();
    this.rows = rows;
    this.heights.setKeys(rows.map((row) => row.key));
    this.layout(anchor);
  }

  /** Scroll so the row `key` shows a third of the way down (a jump to a quoted message or a
   * search hit); false when no such row is shown. */
  reveal(key: string): boolean {
    if (this.heights.indexOf(key) < 0) return false;
    this.atBottom = false;
    this.callbacks.bottomChanged(false);
    this.layout({ key, delta: -Math.round(this.scroller.clientHeight / 3) });
    return true;
  }

  scrollToBottom(): void {
    this.atBottom = true;
    this.callbacks.bottomChanged(true);
    this.layout();
  }

  private schedule(): void {
    if (this.frame !== 0) return;
    this.frame = requestAnimationFrame(() => {
      this.frame = 0;
      this.layout();
    });
  }

  /** The key of the first row at the top of the viewport, and how far above the top it is. */
  private anchor(): { key: string; delta: number } | null {
    if (this.heights.length === 0) return null;
    const top = this.scroller.scrollTop;
    const index = this.heights.indexAt(top);
    const key = this.heights.key(index);
    return key === undefined ? null : { key, delta: top - this.heights.offset(index) };
  }

  private layout(anchor = this.atBottom ? null : this.anchor()): void {
    // Hidden (the list's turn at phone width): nothing can be measured; the resize observer
    // lays it out when it shows.
    if (this.scroller.clientHeight === 0) return;
    for (let pass = 0; pass < 4; pass += 1) {
      this.spacer.style.height = `${this.heights.total()}px`;
      this.restore(anchor);
      const viewport = this.scroller.clientHeight;
      const { start, end } = this.heights.window(this.scroller.scrollTop, viewport, OVERSCAN_PX);
      const wanted = new Set<string>();
      const fresh: { key: string; element: HTMLElement }[] = [];
      // Writes first (new rows, positions), then reads (heights): one reflow, not one a row.
      for (let index = start; index < end; index += 1) {
        const row = this.rows[index];
        if (row === undefined) continue;
        wanted.add(row.key);
        const signature = this.callbacks.signature(row);
        let drawn = this.drawn.get(row.key);
        if (drawn?.signature !== signature) {
          drawn?.element.remove();
          const element = this.callbacks.render(row);
          element.classList.add("row");
          this.scroller.appendChild(element);
          drawn = { element, signature, index };
          this.drawn.set(row.key, drawn);
          fresh.push({ key: row.key, element });
        }
        drawn.index = index;
        drawn.element.style.transform = `translateY(${this.heights.offset(index)}px)`;
      }
      for (const [key, drawn] of this.drawn) {
        if (!wanted.has(key)) {
          drawn.element.remove();
          this.drawn.delete(key);
        }
      }
      // A drawn row keeps its height (its text does not change; a resize redraws all).
      let changed = false;
      for (const { key, element } of fresh) {
        if (this.heights.measure(key, element.offsetHeight)) changed = true;
      }
      if (!changed) break;
    }
    this.spacer.style.height = `${this.heights.total()}px`;
    this.restore(anchor);
    for (const drawn of this.drawn.values()) {
      drawn.element.style.transform = `translateY(${this.heights.offset(drawn.index)}px)`;
    }
    // Too little to scroll (a short page, or live entries only): no scroll event will come, so
    // ask for older ones now. The app ignores this while a page is on its way or none is left.
    if (this.heights.total() < this.scroller.clientHeight + NEAR_TOP_PX) this.callbacks.nearTop();
  }

  private restore(anchor: { key: string; delta: number } | null): void {
    this.adjusting = true;
    if (this.atBottom) {
      this.scroller.scrollTop = this.scroller.scrollHeight;
    } else if (anchor !== null) {
      const index = this.heights.indexOf(anchor.key);
      if (index >= 0) this.scroller.scrollTop = this.heights.offset(index) + anchor.delta;
    }
    this.adjusting = false;
  }
}
