/**
 * Benchmark presets: a model shape (config.json fields, as a random-init folder is written) and
 * the batch of one optimizer step. SFT: `sequences` documents of `seqLen` tokens. DPO: `sequences`
 * pairs, each a `promptLen`-token prompt and two completions filling `seqLen` tokens, so the
 * policy sees 2 x sequences x seqLen tokens and the reference model the same again.
 */
import { DEMO_MODEL } from '../demo/demo.js';
import type { LoraSettings } from '../model/peft.js';

export type PresetName = 'tiny' | 'small' | 'mistral-7b';
export type BenchMode = 'sft' | 'dpo';
export type BenchPrecision = 'f32' | 'bf16';

/**
 * LoRA as `--peft` trains it (the JSON results' `peft` field): rank 16 on every linear layer but
 * the lm_head (PEFT's `all-linear`), alpha 32 (TRL ModelConfig's default), no dropout, over a
 * frozen base; DPO's reference is the policy with its adapters off (TRL with a PEFT policy and no
 * ref_model).
 */
export interface BenchPeft {
  r: number;
  alpha: number;
  target_modules: 'all-linear';
}

export const BENCH_PEFT: BenchPeft = { r: 16, alpha: 32, target_modules: 'all-linear' };

/** The model's LoRA settings for a bench configuration (no dropout). */
export function benchLoraSettings(peft: BenchPeft): LoraSettings {
  return { rank: peft.r, alpha: peft.alpha, rslora: false, targetModules: [peft.target_modules], dropout: 0 };
}

export interface BenchPreset {
  name: PresetName;
  describe: string;
  /** config.json fields (snake_case), as mistralConfig() takes them. */
  model: Record<string, unknown>;
  sequences: number;
  seqLen: number;
  promptLen: number;
  /** Too large for a CPU step to be meaningful: the CUDA backend only. */
  gpuOnly: boolean;
  /**
   * How the policy is held: gradient checkpointing, and (GPU) the optimizer offloaded to host
   * memory. mistral-7b uses both, which is what makes a full fine-tuning step fit one 80 GB GPU.
   */
  gradientCheckpointing: boolean;
  offloadOptimizer: boolean;
}

/** Mistral-7B-v0.1's config.json. */
const MISTRAL_7B = {
  vocab_size: 32000,
  hidden_size: 4096,
  intermediate_size: 14336,
  num_hidden_layers: 32,
  num_attention_heads: 32,
  num_key_value_heads: 8,
  head_dim: 128,
  max_position_embeddings: 32768,
  sliding_window: 4096,
  rope_theta: 10000.0,
  rms_norm_eps: 1e-5,
  tie_word_embeddings: false,
  initializer_range: 0.02,
  bos_token_id: 1,
  eos_token_id: 2,
  pad_token_id: null,
};

export const PRESETS: Record<PresetName, BenchPreset> = {
  tiny: {
    name: 'tiny',
    describe: 'the demo model (hidden 128, 4 layers, vocab 32000), 4 x 128 tokens',
    model: DEMO_MODEL,
    sequences: 4,
    seqLen: 128,
    promptLen: 32,
    gpuOnly: false,
    gradientCheckpointing: false,
    offloadOptimizer: false,
  },
  small: {
    name: 'small',
    describe: 'hidden 512, intermediate 1408, 8 layers, 8 heads / 4 kv heads, vocab 32000, window 4096; 4 x 512 tokens',
    model: {
      ...MISTRAL_7B,
      hidden_size: 512,
      intermediate_size: 1408,
      num_hidden_layers: 8,
      num_attention_heads: 8,
      num_key_value_heads: 4,
      head_dim: 64,
      max_position_embeddings: 4096,
    },
    sequences: 4,
    seqLen: 512,
    promptLen: 128,
    gpuOnly: false,
    gradientCheckpointing: false,
    offloadOptimizer: false,
  },
  'mistral-7b': {
    name: 'mistral-7b',
    describe: 'Mistral-7B-v0.1 (hidden 4096, 32 layers, 32 heads / 8 kv heads); 4 x 1024 tokens; gradient checkpointing, optimizer offloaded to the host',
    model: MISTRAL_7B,
    sequences: 4,
    seqLen: 1024,
    promptLen: 256,
    gpuOnly: true,
    gradientCheckpointing: true,
    offloadOptimizer: true,
  },
};

export const PRESET_NAMES = Object.keys(PRESETS) as PresetName[];

/** Tokens the policy trains on per step (DPO: chosen and rejected documents). */
export function policyTokensPerStep(preset: BenchPreset, mode: BenchMode): number {
  return (mode === 'dpo' ? 2 : 1) * preset.sequences * preset.seqLen;
}
