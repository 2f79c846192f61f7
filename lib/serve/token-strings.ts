/**
 * A token as OpenAI's logprobs show it: its UTF-8 bytes (`bytes`) and its text (`token`). The
 * bytes come from the vocabulary piece, not from decoding the token alone (which drops a
 * SentencePiece word's leading space and turns a lone byte of a multi-byte character into
 * U+FFFD): `▁the` is " the", a byte-fallback piece `<0xE2>` is the byte 0xE2, a byte-level BPE
 * piece (GPT-2's `Ġthe`) maps back through GPT-2's byte-to-character table. A token whose bytes
 * are not whole UTF-8 characters is shown as OpenAI shows it: `bytes:\xe2\x80`.
 */
import type { HfTokenizer } from '../data/tokenizer.js';

export interface TokenString {
  token: string;
  bytes: number[];
}

const BYTE_FALLBACK = /^<0x([0-9A-Fa-f]{2})>$/;

/** GPT-2's bytes_to_unicode, inverted: the character a byte-level BPE piece uses for each byte. */
function byteLevelTable(): Map<string, number> {
  const printable = (b: number) => (b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || (b >= 0xae && b <= 0xff);
  const table = new Map<string, number>();
  let shifted = 0;
  for (let b = 0; b < 256; b++) table.set(String.fromCodePoint(printable(b) ? b : 256 + shifted++), b);
  return table;
}

const strictUtf8 = new TextDecoder('utf-8', { fatal: true });

export class TokenStrings {
  private readonly cache = new Map<number, TokenString>();
  private readonly scheme: 'metaspace' | 'byte-level' | 'decode';
  private readonly byteLevel = byteLevelTable();

  constructor(private readonly tokenizer: HfTokenizer) {
    // How the vocabulary spells a space: `▁` (SentencePiece), `Ġ` (byte-level BPE), else decode.
    const pieces = tokenizer.encode('a b', { addSpecialTokens: false }).map((id) => tokenizer.idToToken(id) ?? '');
    this.scheme = pieces.some((p) => p.includes('\u2581')) ? 'metaspace' : pieces.some((p) => p.includes('\u0120')) ? 'byte-level' : 'decode';
  }

  of(id: number): TokenString {
    let entry = this.cache.get(id);
    if (entry === undefined) {
      entry = this.compute(id);
      this.cache.set(id, entry);
    }
    return entry;
  }

  private compute(id: number): TokenString {
    const bytes = this.bytesOf(id);
    try {
      return { token: strictUtf8.decode(Uint8Array.from(bytes)), bytes };
    } catch {
      return { token: `bytes:${bytes.map((b) => `\\x${b.toString(16).padStart(2, '0')}`).join('')}`, bytes };
    }
  }

  private bytesOf(id: number): number[] {
    const piece = this.tokenizer.idToToken(id);
    const utf8 = (text: string) => [...Buffer.from(text, 'utf8')];
    if (piece === null || this.tokenizer.isSpecialId(id)) return utf8(piece ?? this.tokenizer.decode([id]));
    const byte = BYTE_FALLBACK.exec(piece);
    if (byte) return [parseInt(byte[1], 16)];
    if (this.scheme === 'metaspace') return utf8(piece.replaceAll('\u2581', ' '));
    if (this.scheme === 'byte-level' && [...piece].every((c) => this.byteLevel.has(c))) return [...piece].map((c) => this.byteLevel.get(c)!);
    return utf8(this.tokenizer.decode([id]));
  }
}
