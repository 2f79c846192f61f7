/** Comparing against reference values that Python scripts wrote (test/conformance). */
import assert from 'node:assert/strict';

import type { TokenBatch } from '../../lib/data/batch.js';

/** ||a - b|| / ||b|| over the whole tensor. */
export function relError(a: ArrayLike<number>, b: ArrayLike<number>): number {
  assert.equal(a.length, b.length);
  let diff = 0;
  let norm = 0;
  for (let i = 0; i < b.length; i++) {
    diff += (a[i] - b[i]) ** 2;
    norm += b[i] ** 2;
  }
  return Math.sqrt(diff) / Math.max(Math.sqrt(norm), 1e-30);
}

/** Documents (each with its per-token targets) packed end to end, positions restarting per document. */
export function packDocuments(documents: number[][], targets: number[][]): TokenBatch {
  const cu = [0];
  for (const doc of documents) cu.push(cu[cu.length - 1] + doc.length);
  return {
    inputIds: Int32Array.from(documents.flat()),
    positionIds: Int32Array.from(documents.flatMap((doc) => doc.map((_, i) => i))),
    targets: Int32Array.from(targets.flat()),
    cuSeqlens: Int32Array.from(cu),
  };
}
