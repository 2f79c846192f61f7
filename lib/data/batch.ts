/**
 * The batch the native model consumes: every sequence of a micro-batch laid end to end as one
 * stream of tokens, split into documents by `cuSeqlens` (no padding; attention is
 * block-diagonal per document and position ids restart in each). This serves packed SFT rows
 * (several documents per packed row), unpacked SFT (one document per example) and DPO (one
 * document per prompt+completion).
 *
 * `targets[t]` is the token that position t predicts (labels already shifted, as HF shifts them
 * inside the model), or -100 where no loss is taken: the last token of every document, prompt
 * tokens of DPO completions, masked SFT tokens.
 */
export interface TokenBatch {
  inputIds: Int32Array;
  positionIds: Int32Array;
  targets: Int32Array;
  /** n_docs + 1 offsets into the stream: 0 first, inputIds.length last. */
  cuSeqlens: Int32Array;
}

/**
 * A DPO micro-batch: `pairs` chosen documents first, then the `pairs` rejected ones, in the
 * same order (as TRL concatenates chosen and rejected for one forward pass). A completion's
 * summed log-prob is the sum of its document's per-token log-probs over non-ignored targets.
 */
export interface PreferenceBatch extends TokenBatch {
  pairs: number;
}

export const IGNORE_INDEX = -100;
