/**
 * Packing (TRL's `bfd`: expected rows from TRL's own pack_dataset docstring and worked by hand)
 * and collation into the padding-free batches the model consumes (targets shifted per document,
 * -100 at each document's last token and wherever the label is -100; positions restart).
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { IGNORE_INDEX } from '../lib/data/batch.js';
import { collatePreference, collateSft } from '../lib/data/collate.js';
import { packExamples } from '../lib/data/packing.js';
import type { SftExample } from '../lib/data/sft-examples.js';

const example = (ids: number[], labels: number[] | null = null, index = 0): SftExample => ({
  inputIds: Int32Array.from(ids),
  labels: labels === null ? null : Int32Array.from(labels),
  source: { file: 'f.jsonl', index },
});

describe('packing (TRL bfd)', () => {
  it('reproduces the example in TRL pack_dataset docstring', () => {
    // trl/data_utils.py: [[1,2,3,4,5],[6,7],[8,9,10],[11]] at seq_length 4 ->
    // [[1,2,3,4],[8,9,10,11],[6,7]] with seq_lengths [[4],[3,1],[2]].
    const rows = packExamples([example([1, 2, 3, 4, 5]), example([6, 7]), example([8, 9, 10]), example([11])], 4);
    assert.deepEqual(rows.map((row) => Array.from(row.inputIds)), [[1, 2, 3, 4], [8, 9, 10, 11], [6, 7]]);
    assert.deepEqual(rows.map((row) => row.seqLengths), [[4], [3, 1], [2]]);
  });

  it('best fit: a document goes to the fullest row it fits; equal lengths keep dataset order', () => {
    // Lengths 5,4,3,3,2,1 at 8: 5 opens A (3 left), 4 opens B (4 left), 3(first) best-fits A
    // (3 left is the smallest >= 3) -> A full, 3(second) -> B (1 left), 2 opens C (6 left), 1 -> B.
    const docs = [[1, 1, 1, 1, 1], [2, 2, 2, 2], [3, 3, 3], [4, 4, 4], [5, 5], [6]].map((ids, i) => example(ids, null, i));
    const rows = packExamples(docs, 8);
    assert.deepEqual(rows.map((row) => row.sources.map((s) => s.index)), [[0, 2], [1, 3, 5], [4]]);
  });

  it('labels travel with their tokens; empty documents are dropped; long ones are cut to max_length', () => {
    const rows = packExamples([example([1, 2, 3], [-100, 2, 3]), example([]), example([7, 8, 9, 10, 11, 12], [7, 8, -100, 10, 11, 12])], 5);
    assert.deepEqual(rows.map((row) => Array.from(row.inputIds)), [[7, 8, 9, 10, 11], [1, 2, 3]]);
    assert.deepEqual(rows.map((row) => Array.from(row.labels)), [[7, 8, -100, 10, 11], [-100, 2, 3]]);
  });

  it('packs each batch of 1000 examples on its own, as TRL packs each datasets.map batch', () => {
    const docs = [...Array.from({ length: 1000 }, (_, i) => example([1, 2, 3], null, i)), example([9], null, 1000)];
    const rows = packExamples(docs, 4);
    assert.equal(rows.length, 1001); // the 1-token document cannot join a 3-token one from the first batch
    assert.deepEqual(rows[1000].sources.map((s) => s.index), [1000]);
  });
});

describe('collation', () => {
  it('SFT: documents end to end, positions restart, targets shifted within each document', () => {
    const batch = collateSft([example([10, 11, 12]), example([20, 21], [-100, 21])]);
    assert.deepEqual(Array.from(batch.inputIds), [10, 11, 12, 20, 21]);
    assert.deepEqual(Array.from(batch.positionIds), [0, 1, 2, 0, 1]);
    assert.deepEqual(Array.from(batch.cuSeqlens), [0, 3, 5]);
    assert.deepEqual(Array.from(batch.targets), [11, 12, IGNORE_INDEX, 21, IGNORE_INDEX]);
  });

  it('SFT: a packed row contributes one document per packed example', () => {
    const [row] = packExamples([example([1, 2], [1, -100]), example([3, 4, 5])], 8);
    const batch = collateSft([row]);
    assert.deepEqual(Array.from(batch.cuSeqlens), [0, 3, 5]);
    assert.deepEqual(Array.from(batch.positionIds), [0, 1, 2, 0, 1]);
    assert.deepEqual(Array.from(batch.targets), [4, 5, IGNORE_INDEX, -100, IGNORE_INDEX]);
  });

  it('DPO: chosen documents first, then rejected; only completion tokens are targets', () => {
    const source = { file: 'p.jsonl', index: 0 };
    const pairs = [
      { promptIds: Int32Array.from([1, 2]), chosenIds: Int32Array.from([3, 4]), rejectedIds: Int32Array.from([5]), source },
      { promptIds: Int32Array.from([6]), chosenIds: Int32Array.from([7]), rejectedIds: Int32Array.from([8, 9]), source },
    ];
    const batch = collatePreference(pairs);
    assert.equal(batch.pairs, 2);
    assert.deepEqual(Array.from(batch.inputIds), [1, 2, 3, 4, 6, 7, 1, 2, 5, 6, 8, 9]);
    assert.deepEqual(Array.from(batch.cuSeqlens), [0, 4, 6, 9, 12]);
    assert.deepEqual(Array.from(batch.positionIds), [0, 1, 2, 3, 0, 1, 0, 1, 2, 0, 1, 2]);
    const X = IGNORE_INDEX;
    assert.deepEqual(Array.from(batch.targets), [X, 3, 4, X, 7, X, X, 5, X, 8, 9, X]);
  });
});
