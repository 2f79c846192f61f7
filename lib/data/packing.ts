/**
 * SFT packing: examples placed into rows of at most `max_length` tokens that keep documents
 * apart. Each row remembers its documents' lengths; the collator restarts position ids in every
 * document and hands the model cuSeqlens, so attention is block-diagonal per document. (Naive
 * packing, TRL's old `wrapped` strategy, cuts a token stream into rows and lets documents attend
 * to each other.)
 *
 * The placement is TRL 1.13's `bfd` strategy (trl/data_utils.py `_pack_bfd`), step for step, so
 * rows hold the same documents in the same order: per batch of 1000 examples (the `datasets.map`
 * batch TRL packs in), empty examples dropped, each cut to `max_length` (keep the start), longest
 * first (ties in dataset order) into the best-fitting row found with a segment tree, rows in the
 * order they were opened. What TRL calls `padding_free` is what our collator always does: one
 * stream per micro-batch, no padding, position ids per document. TRL's `shuffle_dataset` shuffle
 * before packing is not reproduced (our trainer shuffles packed rows each epoch).
 */
import type { SftExample } from './sft-examples.js';
import type { RowSource } from './validation.js';

export interface PackedRow {
  inputIds: Int32Array;
  /** Unshifted labels, -100 where no loss. */
  labels: Int32Array;
  /** Lengths of the documents in the row, in order. */
  seqLengths: number[];
  sources: RowSource[];
}

/** datasets.map's default batch size: TRL packs each such batch on its own. */
export const TRL_PACKING_BATCH = 1000;

export function packExamples(examples: SftExample[], maxLength: number, batchSize = TRL_PACKING_BATCH): PackedRow[] {
  const rows: PackedRow[] = [];
  for (let start = 0; start < examples.length; start += batchSize) {
    rows.push(...packBatch(examples.slice(start, start + batchSize), maxLength));
  }
  return rows;
}

interface Bin {
  members: number[];
  length: number;
}

function packBatch(batch: SftExample[], maxLength: number): PackedRow[] {
  const documents = batch.filter((example) => example.inputIds.length > 0);
  const lengths = documents.map((example) => Math.min(example.inputIds.length, maxLength));
  // Array.prototype.sort is stable: equal lengths keep dataset order, as pyarrow's sort does.
  const order = lengths.map((_, i) => i).sort((a, b) => lengths[b] - lengths[a]);
  const tree = new SpaceTree(maxLength);
  tree.add(maxLength); // an empty row is always available
  const binsWithSpace = new Map<number, Bin[]>();
  const bins: Bin[] = [];
  for (const index of order) {
    const length = lengths[index];
    const space = tree.search(length);
    let bin: Bin;
    if (space < maxLength) {
      const queue = binsWithSpace.get(space)!;
      bin = queue.shift()!;
      if (queue.length === 0) tree.remove(space);
    } else {
      bin = { members: [], length: 0 };
      bins.push(bin);
    }
    bin.members.push(index);
    bin.length += length;
    const left = space - length;
    const queue = binsWithSpace.get(left) ?? [];
    queue.push(bin);
    binsWithSpace.set(left, queue);
    if (left > 0) tree.add(left);
  }
  return bins.map((bin) => toRow(bin, documents, lengths));
}

function toRow(bin: Bin, documents: SftExample[], lengths: number[]): PackedRow {
  const inputIds = new Int32Array(bin.length);
  const labels = new Int32Array(bin.length);
  let offset = 0;
  for (const index of bin.members) {
    const example = documents[index];
    const length = lengths[index];
    inputIds.set(example.inputIds.subarray(0, length), offset);
    labels.set((example.labels ?? example.inputIds).subarray(0, length), offset);
    offset += length;
  }
  return {
    inputIds,
    labels,
    seqLengths: bin.members.map((index) => lengths[index]),
    sources: bin.members.map((index) => documents[index].source),
  };
}

/**
 * TRL's _SegmentTree: which free spaces exist among open rows, answering "the smallest space
 * >= n" in O(log max_length).
 */
class SpaceTree {
  private readonly size: number;
  private readonly tree: Int32Array;

  constructor(private readonly maxValue: number) {
    let size = 1;
    while (size < maxValue) size <<= 1;
    this.size = size;
    this.tree = new Int32Array(2 * this.size);
  }

  add(value: number): void {
    this.set(value, value);
  }

  remove(value: number): void {
    this.set(value, 0);
  }

  /** The smallest stored value >= `value`. */
  search(value: number): number {
    let i = 1;
    while (i < this.size) i = this.tree[2 * i] >= value ? 2 * i : 2 * i + 1;
    return this.tree[i];
  }

  private set(value: number, stored: number): void {
    if (value <= 0 || value > this.maxValue) throw new RangeError(`space ${value} outside [1, ${this.maxValue}]`);
    let i = this.size + value - 1;
    this.tree[i] = stored;
    while (i > 1) {
      i >>= 1;
      this.tree[i] = Math.max(this.tree[2 * i], this.tree[2 * i + 1]);
    }
  }
}
