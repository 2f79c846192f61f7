/**
 * A completion's text as its tokens arrive, decoded incrementally as vLLM does it: each step
 * decodes only the tokens since the last emitted piece together with the piece before them (so
 * the tokenizer's spacing rules see the same context as in a whole decode) and keeps what that
 * adds; a step whose text ends in U+FFFD (part of a multi-token character) waits for the next
 * token. Stop strings are found across token boundaries, and the deltas a stream shows never hold
 * text that could still turn out to begin a stop string.
 */
import type { HfTokenizer } from '../data/tokenizer.js';

export class CompletionText {
  private readonly ids: number[] = [];
  private text = '';
  private shown = 0;
  /** Tokens [prefixStart, readStart) were decoded last time as context; [readStart, ...) are new. */
  private prefixStart = 0;
  private readStart = 0;
  /** Text before this offset has been searched for stop strings and none ends before it. */
  private searched = 0;
  private readonly longestStop: number;
  /** Set when a stop string appeared: the text ends before it. */
  stopped = false;

  constructor(
    private readonly tokenizer: HfTokenizer,
    private readonly stop: readonly string[],
  ) {
    this.longestStop = Math.max(0, ...stop.map((s) => s.length));
  }

  /** Adds a token; returns the text that may be shown now (possibly empty). */
  push(token: number): string {
    this.ids.push(token);
    this.decodeNew(false);
    const at = this.firstStop();
    if (at >= 0) {
      this.text = this.text.slice(0, at);
      this.stopped = true;
      return this.take(this.text.length);
    }
    let safe = this.text.length;
    for (const s of this.stop) {
      // The longest end of the text that begins a stop string is held back.
      for (let k = Math.min(s.length - 1, safe); k > 0; k--) {
        if (this.text.slice(safe - k, safe) === s.slice(0, k)) {
          safe -= k;
          break;
        }
      }
    }
    return this.take(safe);
  }

  /** The rest of the text at the end of the completion (a partial character included). */
  finish(): string {
    if (!this.stopped) this.decodeNew(true);
    return this.take(this.text.length);
  }

  get value(): string {
    return this.text;
  }

  get tokenIds(): readonly number[] {
    return this.ids;
  }

  private decode(begin: number, end: number): string {
    return this.tokenizer.decode(this.ids.slice(begin, end), { skipSpecialTokens: true });
  }

  private decodeNew(flush: boolean): void {
    if (this.readStart === this.ids.length) return;
    const before = this.decode(this.prefixStart, this.readStart);
    const after = this.decode(this.prefixStart, this.ids.length);
    if (!flush && (after.length <= before.length || after.endsWith('\uFFFD'))) return;
    this.text += after.slice(before.length);
    this.prefixStart = this.readStart;
    this.readStart = this.ids.length;
  }

  private firstStop(): number {
    let first = -1;
    const from = Math.max(0, this.searched - this.longestStop + 1);
    for (const s of this.stop) {
      const at = this.text.indexOf(s, from);
      if (at >= 0 && (first < 0 || at < first)) first = at;
    }
    this.searched = this.text.length;
    return first;
  }

  private take(end: number): string {
    if (end <= this.shown) return '';
    const delta = this.text.slice(this.shown, end);
    this.shown = end;
    return delta;
  }
}
