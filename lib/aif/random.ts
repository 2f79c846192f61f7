/**
 * Seeded draws that depend only on (seed, key), never on how many draws came before, so a row's
 * outcome does not change when other rows are added, dropped or reordered.
 *
 * uniformIndex(seed, key, n): hash SHA-256(`zephyr-native:${seed}:${key}:${counter}`) for
 * counter = 0, 1, ...; read each digest as eight big-endian 32-bit words w and return w mod n
 * for the first w below floor(2^32 / n) * n (rejection sampling, so every index has exactly
 * probability 1/n; a word is rejected with probability below n / 2^32).
 */
import { createHash } from 'node:crypto';

const WORD_RANGE = 2 ** 32;

/** An index in [0, n), uniform, a pure function of (seed, key, n). */
export function uniformIndex(seed: number, key: string, n: number): number {
  if (!Number.isInteger(n) || n < 1) throw new RangeError(`uniformIndex: n must be a positive integer, got ${n}`);
  const limit = Math.floor(WORD_RANGE / n) * n;
  for (let counter = 0; ; counter++) {
    const digest = createHash('sha256').update(`zephyr-native:${seed}:${key}:${counter}`).digest();
    for (let offset = 0; offset < digest.length; offset += 4) {
      const word = digest.readUInt32BE(offset);
      if (word < limit) return word % n;
    }
  }
}

/** A number in [0, 1) from 52 bits of SHA-256(`zephyr-native:${seed}:${key}`): an ordering key. */
export function uniformKey(seed: number, key: string): number {
  const digest = createHash('sha256').update(`zephyr-native:${seed}:${key}`).digest();
  return (digest.readUInt32BE(0) * 2 ** 20 + (digest.readUInt32BE(4) >>> 12)) / 2 ** 52;
}

/** SHA-256 hex of a UTF-8 string: the Hub's `prompt_id`. */
export function sha256Hex(text: string): string {
  return createHash('sha256').update(text, 'utf8').digest('hex');
}
