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
 *
 * LoRA (`--peft`): the frozen base needs no weight gradients, so the policy costs 4 * N per token
 * (forward, and backward to the inputs) plus 6 * L for the adapters (L = adapter parameters:
 * r * (in + out) per adapted projection), and DPO's reference (the policy with its adapters off)
 * 2 * N per token:
 *
 *   LoRA step FLOPs = (4 * N + 6 * L) * (policy tokens) + 2 * N * (reference tokens)
 *                   + 3 * A(policy documents) + A(reference documents)
 */
import type { MistralConfig } from '../model/config.js';
import type { BenchMode, BenchPeft, BenchPreset } from './presets.js';

/** Parameters that enter a matrix multiply (lm_head counted even when tied to the embedding). */
export function matmulParameters(config: MistralConfig): number {
  const q = config.hiddenSize * config.numAttentionHeads * config.headDim;
  const kv = 2 * config.hiddenSize * config.numKeyValueHeads * config.headDim;
  const mlp = 3 * config.hiddenSize * config.intermediateSize;
  return config.numHiddenLayers * (2 * q + kv + mlp) + config.vocabSize * config.hiddenSize;
}

/** LoRA's parameters with PEFT's all-linear: r x (in + out) on each projection of every layer. */
export function loraParameters(config: MistralConfig, r: number): number {
  const hidden = config.hiddenSize;
  const q = config.numAttentionHeads * config.headDim;
  const kv = config.numKeyValueHeads * config.headDim;
  const mlp = config.intermediateSize;
  const perLayer = hidden + q + 2 * (hidden + kv) + (q + hidden) + 2 * (hidden + mlp) + (mlp + hidden);
  return config.numHiddenLayers * r * perLayer;
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
  /** LoRA's adapter parameters (0 for full training). */
  adapterParameters: number;
  policyTokens: number;
  referenceTokens: number;
  flops: number;
}

export function stepFlops(config: MistralConfig, preset: BenchPreset, mode: BenchMode, peft: BenchPeft | null = null): StepFlops {
  const n = matmulParameters(config);
  const adapters = peft ? loraParameters(config, peft.r) : 0;
  const documents = new Array<number>((mode === 'dpo' ? 2 : 1) * preset.sequences).fill(preset.seqLen);
  const tokens = documents.reduce((a, b) => a + b, 0);
  const attention = attentionForwardFlops(config, documents);
  const referenceTokens = mode === 'dpo' ? tokens : 0;
  const perPolicyToken = peft ? 4 * n + 6 * adapters : 6 * n;
  const policy = perPolicyToken * tokens + 3 * attention;
  const reference = mode === 'dpo' ? 2 * n * referenceTokens + attention : 0;
  return { matmulParameters: n, adapterParameters: adapters, policyTokens: tokens, referenceTokens, flops: policy + reference };
}
