/**
 * Seeded shuffling: one PRNG for everything the data side draws (mixture subsets, test splits,
 * epoch orders), so a seed fixes every choice. xorshift64 seeded by a multiply-mix of (seed,
 * stream), Fisher-Yates from the end. Not numpy's generator: orders differ from `datasets`'
 * `shuffle(seed)` (documented in the README), but are the same on every machine and run.
 */

/** A seeded permutation of [0, n). `stream` separates independent draws with one seed (e.g. epochs). */
export function seededPermutation(n: number, seed: number, stream = 0): number[] {
  let state = BigInt.asUintN(64, BigInt(seed) * 0x9e3779b97f4a7c15n + BigInt(stream + 1) * 0xbf58476d1ce4e5b9n) | 1n;
  const next = (): bigint => {
    state ^= state << 13n;
    state = BigInt.asUintN(64, state);
    state ^= state >> 7n;
    state ^= state << 17n;
    state = BigInt.asUintN(64, state);
    return state;
  };
  const order = Array.from({ length: n }, (_, i) => i);
  for (let i = n - 1; i > 0; i--) {
    const j = Number(next() % BigInt(i + 1));
    [order[i], order[j]] = [order[j], order[i]];
  }
  return order;
}

/** `items` in a seeded order (a new array). */
export function seededShuffle<T>(items: T[], seed: number, stream = 0): T[] {
  return seededPermutation(items.length, seed, stream).map((i) => items[i]);
}
