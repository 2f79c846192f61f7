/**
 * Speed, not semantics. With Metaspace `split: false` (Mistral, Llama) a whole message reaches
 * the BPE model as one word, which @huggingface/tokenizers merges in O(n log n) per word without
 * its word cache (about 30k tokens/s). Every merge result is a vocabulary token, so a merge can
 * only join two characters `ab` that stand next to each other in some vocabulary token; cutting a
 * word between characters that are adjacent in no token changes no merge. The ids stay
 * identical (checked against HF tokenizers in test/conformance/data-tokenizer.test.ts) and the
 * short pieces hit the model's cache. Mistral's 32k vocabulary has only ~3.2k such pairs.
 */
import type { Tokenizer } from '@huggingface/tokenizers';

import type { TokenizerJson } from './tokenizer.js';

/** Which characters stand next to each other in some vocabulary token. */
class AdjacentPairs {
  /** BMP code unit -> index in the alphabet of BMP characters that occur in pairs, or -1. */
  private readonly alphabet = new Int32Array(65536).fill(-1);
  private readonly bits: Uint8Array;
  private readonly size: number;
  /** Pairs with a character outside the BMP (emoji), as strings. */
  private readonly astral = new Set<string>();

  constructor(tokens: Iterable<string>) {
    const pairs: [string, string][] = [];
    for (const token of tokens) {
      const chars = Array.from(token);
      for (let i = 1; i < chars.length; i++) pairs.push([chars[i - 1], chars[i]]);
    }
    let size = 0;
    for (const [a, b] of pairs) {
      for (const ch of [a, b]) if (ch.length === 1 && this.alphabet[ch.charCodeAt(0)] < 0) this.alphabet[ch.charCodeAt(0)] = size++;
    }
    this.size = size;
    this.bits = new Uint8Array(Math.ceil((size * size) / 8));
    for (const [a, b] of pairs) {
      if (a.length === 1 && b.length === 1) {
        const bit = this.alphabet[a.charCodeAt(0)] * size + this.alphabet[b.charCodeAt(0)];
        this.bits[bit >> 3] |= 1 << (bit & 7);
      } else {
        this.astral.add(a + b);
      }
    }
  }

  /** Whether the character at [i, j) and the one at [j, k) of `text` are adjacent in some token. */
  adjacent(text: string, i: number, j: number, k: number): boolean {
    if (j - i === 1 && k - j === 1) {
      const a = this.alphabet[text.charCodeAt(i)];
      const b = this.alphabet[text.charCodeAt(j)];
      if (a < 0 || b < 0) return false;
      const bit = a * this.size + b;
      return (this.bits[bit >> 3] & (1 << (bit & 7))) !== 0;
    }
    return this.astral.has(text.slice(i, k));
  }
}

/** Wraps the BPE model so each word is cut into independently mergeable pieces first. */
export function cutWordsAtUnmergeableBoundaries(tokenizer: Tokenizer, json: TokenizerJson): void {
  const model = tokenizer.model as unknown as { _call?: (words: string[]) => string[] } | null;
  // `_call` is the library's word-encoding entry point; without it tokenizing is just slower.
  if (typeof model?._call !== 'function' || json.model.type !== 'BPE' || Array.isArray(json.model.vocab)) return;
  const pairs = new AdjacentPairs(Object.keys(json.model.vocab));
  const encodeWords = model._call.bind(model);
  model._call = (words: string[]) => encodeWords(words.flatMap((word) => cutWord(word, pairs)));
}

function cutWord(word: string, pairs: AdjacentPairs): string[] {
  const pieces: string[] = [];
  let start = 0;
  let previous = -1;
  for (let i = 0; i < word.length; ) {
    const code = word.charCodeAt(i);
    const width = code >= 0xd800 && code <= 0xdbff && i + 1 < word.length ? 2 : 1;
    if (previous >= 0 && !pairs.adjacent(word, previous, i, i + width)) {
      pieces.push(word.slice(start, i));
      start = i;
    }
    previous = i;
    i += width;
  }
  pieces.push(word.slice(start));
  return pieces;
}
