/**
 * Model FLOPs of one optimizer step, the numerator of MFU (achieved FLOP/s / measured peak):
 *
 *   step FLOPs = 6 * N * (policy tokens) + 2 * N * (reference tokens)
 *              + 3 * A(policy documents) + A(reference documents)
 *   N = parameters that enter a matrix multiply: every q/k/v/o and gate/up/down projection and
 *       the lm_head (the embedding lookup and the norm weights do no multiply-adds)
 *   A = attention forward FLOPs: 4 * layers * heads * head_dim per visible (query, key) pair
 *       (QKᵀ and PV, 2 FLOPs per multiply-add); a query at position i sees min(i + 1, window) keys
 *
 * Backward counts twice the forward (the usual 6 = 2 + 4), and recomputation (gradient
 * checkpointing, the fused log-prob re-deriving logits) counts nothing: these are the FLOPs the
 * model needs, the same for every implementation, so MFU compares implementations fairly.
 */
import type { MistralConfig } from '../model/config.js';
import type { BenchMode, BenchPreset } from './presets.js';

/** Parameters that enter a matrix multiply (lm_head counted even when tied to the embedding). */
export function matmulParameters(config: MistralConfig): number {
  const q = config.hiddenSize * config.numAttentionHeads * config.headDim;
  const kv = 2 * config.hiddenSize * config.numKeyValueHeads * config.headDim;
  const mlp = 3 * config.hiddenSize * config.intermediateSize;
  return config.numHiddenLayers * (2 * q + kv + mlp) + config.vocabSize * config.hiddenSize;
}

/** (query, key) pairs a causal, optionally windowed, document of `tokens` tokens attends. */
export function visiblePairs(tokens: number, window: number | null): number {
  if (window === null || window <= 0 || window >= tokens) return (tokens * (tokens + 1)) / 2;
  return (window * (window + 1)) / 2 + (tokens - window) * window;
}

/** Attention forward FLOPs over documents of these lengths. */
export function attentionForwardFlops(config: MistralConfig, documentLengths: number[]): number {
  const perPair = 4 * config.numHiddenLayers * config.numAttentionHeads * config.headDim;
  return documentLengths.reduce((sum, length) => sum + perPair * visiblePairs(length, config.slidingWindow), 0);
}

export interface StepFlops {
  matmulParameters: number;
  policyTokens: number;
  referenceTokens: number;
  flops: number;
}

export function stepFlops(config: MistralConfig, preset: BenchPreset, mode: BenchMode): StepFlops {
  const n = matmulParameters(config);
  const documents = new Array<number>((mode === 'dpo' ? 2 : 1) * preset.sequences).fill(preset.seqLen);
  const tokens = documents.reduce((a, b) => a + b, 0);
  const attention = attentionForwardFlops(config, documents);
  const referenceTokens = mode === 'dpo' ? tokens : 0;
  const policy = 6 * n * tokens + 3 * attention;
  const reference = mode === 'dpo' ? 2 * n * referenceTokens + attention : 0;
  return { matmulParameters: n, policyTokens: tokens, referenceTokens, flops: policy + reference };
}
