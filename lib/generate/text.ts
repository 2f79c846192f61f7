/**
 * A completion's text as its tokens arrive: the tokens decoded together (so multi-token
 * characters and the tokenizer's spacing come out as in one decode), stop strings found across
 * token boundaries, and the deltas a stream may show: never a partial character (a trailing
 * U+FFFD waits for the next token) nor text that could still turn out to begin a stop string.
 */
import type { HfTokenizer } from '../data/tokenizer.js';

export class CompletionText {
  private readonly ids: number[] = [];
  private text = '';
  private shown = 0;
  /** Set when a stop string appeared: the text ends before it. */
  stopped = false;

  constructor(
    private readonly tokenizer: HfTokenizer,
    private readonly stop: readonly string[],
  ) {}

  /** Adds a token; returns the text that may be shown now (possibly empty). */
  push(token: number): string {
    this.ids.push(token);
    this.text = this.tokenizer.decode(this.ids, { skipSpecialTokens: true });
    const at = this.firstStop();
    if (at >= 0) {
      this.text = this.text.slice(0, at);
      this.stopped = true;
      return this.take(this.text.length);
    }
    let safe = this.text.endsWith('\uFFFD') ? this.text.length - 1 : this.text.length;
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

  /** The rest of the text at the end of the completion. */
  finish(): string {
    return this.take(this.text.length);
  }

  get value(): string {
    return this.text;
  }

  get tokenIds(): readonly number[] {
    return this.ids;
  }

  private firstStop(): number {
    let first = -1;
    for (const s of this.stop) {
      const at = this.text.indexOf(s);
      if (at >= 0 && (first < 0 || at < first)) first = at;
    }
    return first;
  }

  private take(end: number): string {
    if (end <= this.shown) return '';
    const delta = this.text.slice(this.shown, end);
    this.shown = end;
    return delta;
  }
}
