/**
 * Character offsets of tokens, as the Rust `tokenizers` reports them, for the pipelines of
 * SentencePiece-style BPE (Llama, Mistral): normalizer Prepend/Replace(' ' -> '▁') or none,
 * pre-tokenizer Metaspace or none, byte fallback. @huggingface/tokenizers returns tokens without
 * offsets, so they are recovered by replaying the normalization on the text and walking the
 * tokens along it; a token that does not match the replayed text is an error, never a guess.
 *
 * Offsets decide which tokens an assistant mask covers (transformers maps a character span to
 * tokens with `char_to_token`), so the Rust rules are kept: a prepended `▁` takes the span of the
 * character it precedes; every byte-fallback piece of a character takes that character's span.
 */
import { ZnError } from '../errors.js';
import type { AddedTokenJson, TokenizerJson } from './tokenizer.js';

/** [start, end) in UTF-16 units of the encoded text. */
export type TokenOffsets = [number, number];

export interface OffsetPipeline {
  /** Prepended to every piece between added tokens by a Prepend normalizer. */
  normalizerPrepend: string | null;
  /** What a space becomes (Replace normalizer or Metaspace), or null when spaces stay. */
  spaceReplacement: string | null;
  /** Metaspace's prepend scheme ('never' without Metaspace) and its replacement character. */
  metaspacePrepend: 'always' | 'first' | 'never';
  metaspaceReplacement: string;
}

interface NormalizedChar {
  ch: string;
  start: number;
  end: number;
}

/** The offset-relevant steps of a tokenizer.json; throws for pipelines this module cannot replay. */
export function offsetPipeline(json: TokenizerJson): OffsetPipeline {
  const pipeline: OffsetPipeline = { normalizerPrepend: null, spaceReplacement: null, metaspacePrepend: 'never', metaspaceReplacement: '\u2581' };
  for (const step of flatten(json.normalizer, 'normalizers')) {
    if (step.type === 'Prepend') pipeline.normalizerPrepend = step.prepend as string;
    else if (step.type === 'Replace' && (step.pattern as { String?: string }).String === ' ') pipeline.spaceReplacement = step.content as string;
    else throw unsupported(`normalizer ${JSON.stringify(step)}`);
  }
  for (const step of flatten(json.pre_tokenizer, 'pretokenizers')) {
    if (step.type !== 'Metaspace') throw unsupported(`pre-tokenizer ${String(step.type)}`);
    pipeline.metaspaceReplacement = step.replacement as string;
    pipeline.spaceReplacement = step.replacement as string;
    pipeline.metaspacePrepend = (step.prepend_scheme as OffsetPipeline['metaspacePrepend']) ?? (step.add_prefix_space === false ? 'never' : 'always');
  }
  if (json.model.type !== 'BPE') throw unsupported(`model ${json.model.type}`);
  return pipeline;
}

function flatten(step: Record<string, unknown> | null, listKey: string): Record<string, unknown>[] {
  if (step === null) return [];
  if (step.type === 'Sequence') return (step[listKey] as Record<string, unknown>[]).flatMap((inner) => flatten(inner, listKey));
  return [step];
}

function unsupported(what: string): ZnError {
  return new ZnError(`token offsets (needed for assistant-only loss) are not supported for this tokenizer's ${what}`);
}

/**
 * Offsets of `tokens` in `text`. `added[k]` is the added token that token k is (special tokens
 * such as `</s>`), or null for a model token.
 */
export function alignTokens(text: string, tokens: string[], added: (AddedTokenJson | null)[], pipeline: OffsetPipeline): TokenOffsets[] {
  const offsets: TokenOffsets[] = new Array(tokens.length);
  let position = 0;
  let section = 0;
  let k = 0;
  while (k < tokens.length) {
    const addedToken = added[k];
    if (addedToken) {
      const span = locateAdded(text, position, addedToken);
      offsets[k++] = span;
      position = span[1];
      section++;
      continue;
    }
    let next = k;
    while (next < tokens.length && !added[next]) next++;
    const end = next < tokens.length ? locateAdded(text, position, added[next]!)[0] : text.length;
    const chars = normalizeSection(text, position, end, section === 0 && position === 0, pipeline);
    walkSection(tokens, k, next, chars, offsets, text);
    k = next;
    position = end;
    section++;
  }
  return offsets;
}

/** Where an added token's content sits at or after `from` (whitespace it strips belongs to it). */
function locateAdded(text: string, from: number, token: AddedTokenJson): TokenOffsets {
  const at = text.indexOf(token.content, from);
  if (at < 0) throw new ZnError(`token offsets: added token '${token.content}' not found in the text after offset ${from}`);
  let start = at;
  if (token.lstrip) while (start > from && /\s/.test(text[start - 1])) start--;
  let end = at + token.content.length;
  if (token.rstrip) while (end < text.length && /\s/.test(text[end])) end++;
  return [start, end];
}

/** The text between added tokens as the normalizer and Metaspace see it, each char with its source span. */
function normalizeSection(text: string, start: number, end: number, isFirst: boolean, pipeline: OffsetPipeline): NormalizedChar[] {
  const chars: NormalizedChar[] = [];
  for (let i = start; i < end; ) {
    const codePoint = text.codePointAt(i)!;
    const width = codePoint > 0xffff ? 2 : 1;
    const ch = String.fromCodePoint(codePoint);
    chars.push({ ch: ch === ' ' && pipeline.spaceReplacement !== null ? pipeline.spaceReplacement : ch, start: i, end: i + width });
    i += width;
  }
  if (chars.length === 0) return chars;
  const firstSpan = { start: chars[0].start, end: chars[0].end };
  if (pipeline.normalizerPrepend !== null) {
    chars.unshift(...Array.from(pipeline.normalizerPrepend, (ch) => ({ ch, ...firstSpan })));
  }
  const prepend = pipeline.metaspacePrepend === 'always' || (pipeline.metaspacePrepend === 'first' && isFirst);
  if (prepend && chars[0].ch !== pipeline.metaspaceReplacement) chars.unshift({ ch: pipeline.metaspaceReplacement, ...firstSpan });
  return chars;
}

const BYTE_TOKEN = /^<0x([0-9A-Fa-f]{2})>$/;

/** Assigns spans to tokens [from, to) by consuming `chars`; byte-fallback runs consume whole characters. */
function walkSection(tokens: string[], from: number, to: number, chars: NormalizedChar[], offsets: TokenOffsets[], text: string): void {
  let c = 0;
  const fail = (k: number): never => {
    throw new ZnError(`token offsets: token ${k} '${tokens[k]}' does not match the text near offset ${chars[c]?.start ?? text.length}`);
  };
  for (let k = from; k < to; ) {
    if (BYTE_TOKEN.test(tokens[k])) {
      if (c >= chars.length) fail(k);
      const bytes = Buffer.from(chars[c].ch, 'utf8');
      for (let b = 0; b < bytes.length; b++) {
        const match = k + b < to ? BYTE_TOKEN.exec(tokens[k + b]) : null;
        if (!match || parseInt(match[1], 16) !== bytes[b]) fail(k + b);
        offsets[k + b] = [chars[c].start, chars[c].end];
      }
      k += bytes.length;
      c++;
      continue;
    }
    const first = c;
    for (const ch of tokens[k]) {
      if (c >= chars.length || chars[c].ch !== ch) fail(k);
      c++;
    }
    if (c === first) fail(k);
    offsets[k] = [chars[first].start, chars[c - 1].end];
    k++;
  }
  if (c !== chars.length) throw new ZnError(`token offsets: text left over at offset ${chars[c].start} after the last token`);
}

/** transformers' `char_to_token`: the first token whose span contains the character, or null. */
export function charToToken(offsets: TokenOffsets[], char: number): number | null {
  for (let k = 0; k < offsets.length; k++) if (offsets[k][0] <= char && char < offsets[k][1]) return k;
  return null;
}
