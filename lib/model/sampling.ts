/**
 * Next-token sampling over logits rows (native/kernels/cpu/sampling.h, the CPU addon on every
 * device: a GPU model's logits come to the host first). Transformers' processor order:
 * repetition penalty, then greedy, or temperature, top-k, top-p, min-p and a seeded draw.
 */
import { loadNative } from '../native.js';

export interface TokenSampling {
  /** 0: greedy (the first argmax after the repetition penalty). */
  temperature: number;
  /** 0: off. */
  topK: number;
  /** 1: off. */
  topP: number;
  /** 0: off. */
  minP: number;
  /** 1: off. */
  repetitionPenalty: number;
  /** The sequence's seed: its k-th token uses draw k of this seed's stream, whatever it is batched with. */
  seed: number;
}

export interface SampleRow {
  sampling: TokenSampling;
  /** The sequence's tokens so far (prompt and completion), for the repetition penalty. */
  history: readonly number[];
  /** Which draw of the seed's stream: the number of tokens the sequence has generated. */
  draw: number;
}

/** One token per row of `logits` ([rows x vocab]), and its log-probability under the model (synchronous: a few ms a step). */
export function sampleTokens(
  logits: Float32Array,
  vocab: number,
  rows: readonly SampleRow[],
): { tokens: Int32Array; logprobs: Float32Array } {
  const n = rows.length;
  const column = <T extends Float32Array | Int32Array>(make: new (n: number) => T, value: (row: SampleRow) => number): T => {
    const out = new make(n);
    rows.forEach((row, i) => (out[i] = value(row)));
    return out;
  };
  const historyOffsets = new Int32Array(n + 1);
  rows.forEach((row, i) => (historyOffsets[i + 1] = historyOffsets[i] + row.history.length));
  const history = new Int32Array(historyOffsets[n]);
  rows.forEach((row, i) => history.set(row.history, historyOffsets[i]));
  return loadNative('cpu').sampleTokens({
    logits,
    vocab,
    temperature: column(Float32Array, (row) => row.sampling.temperature),
    topK: column(Int32Array, (row) => row.sampling.topK),
    topP: column(Float32Array, (row) => row.sampling.topP),
    minP: column(Float32Array, (row) => row.sampling.minP),
    repetitionPenalty: column(Float32Array, (row) => row.sampling.repetitionPenalty),
    seedLow: column(Int32Array, (row) => row.sampling.seed % 2 ** 32),
    seedHigh: column(Int32Array, (row) => Math.floor(row.sampling.seed / 2 ** 32)),
    draws: column(Int32Array, (row) => row.draw),
    history,
    historyOffsets,
  });
}
