/**
 * The Zephyr recipe's optimizer steps as benchmark shapes (recipes/zephyr-7b-beta.yaml, issue 21):
 *
 *   mistral-7b-sft: 8 micro-batches (gradient_accumulation_steps) of 16 packed rows
 *                   (per_device_train_batch_size) of 2048 tokens (max_length, packing): 262,144
 *                   policy tokens a step, 32,768 a forward call;
 *   mistral-7b-dpo: 4 micro-batches of 8 pairs, each pair two 1024-token documents (max_length;
 *                   prompt + chosen, prompt + rejected): 65,536 policy tokens a step, and the
 *                   frozen reference's log-probs of the same tokens, inside the step (the trainer
 *                   runs the reference per micro-batch), or precomputed once before training
 *                   (precompute_ref_log_probs: the step runs no reference and holds no reference
 *                   model).
 *
 * A packed SFT row is one 2048-token document here (real rows often hold two or three
 * UltraChat dialogues, so attention does somewhat less work than counted; its FLOPs are
 * about 4 % of the step's at this length). DPO prompts take 256 of each document's 1024 tokens;
 * where the prompt ends changes which tokens are targets, not the work.
 *
 * The step's model FLOPs are lib/bench/flops.ts's: 6 N per policy token, 2 N per reference
 * token, attention 3 A over the policy's documents and A over the reference's.
 */
import type { MistralConfig } from '../model/config.js';
import { attentionForwardFlops, matmulParameters } from './flops.js';
import type { PresetName } from './presets.js';

export type RecipePresetName = 'mistral-7b-sft' | 'mistral-7b-dpo';
export const RECIPE_PRESET_NAMES: RecipePresetName[] = ['mistral-7b-sft', 'mistral-7b-dpo'];

export type RecipeMode = 'sft' | 'dpo';
/** Where DPO's reference log-probs come from: a frozen model run in the step, or precomputed. */
export type RecipeReference = 'model' | 'precomputed';

export interface RecipeShape {
  mode: RecipeMode;
  /** Micro-batches an optimizer step accumulates (gradient_accumulation_steps). */
  microBatches: number;
  /** Rows of a micro-batch: packed sequences (SFT) or pairs (DPO). */
  rows: number;
  /** Tokens of each document (a packed row; a DPO prompt + completion). */
  seqLen: number;
  /** DPO: the prompt's share of seqLen (never a target); 0 for SFT. */
  promptLen: number;
}

export interface RecipePreset {
  name: RecipePresetName;
  describe: string;
  /** The bench preset whose model (config and random-init folder) the step runs. */
  model: PresetName;
  shape: RecipeShape;
}

export const RECIPE_PRESETS: Record<RecipePresetName, RecipePreset> = {
  'mistral-7b-sft': {
    name: 'mistral-7b-sft',
    describe: 'the recipe\'s SFT optimizer step on Mistral-7B: 8 micro-batches of 16 packed rows x 2048 tokens',
    model: 'mistral-7b',
    shape: { mode: 'sft', microBatches: 8, rows: 16, seqLen: 2048, promptLen: 0 },
  },
  'mistral-7b-dpo': {
    name: 'mistral-7b-dpo',
    describe: 'the recipe\'s DPO optimizer step on Mistral-7B: 4 micro-batches of 8 pairs x 2 x 1024 tokens, the reference included',
    model: 'mistral-7b',
    shape: { mode: 'dpo', microBatches: 4, rows: 8, seqLen: 1024, promptLen: 256 },
  },
};

export function isRecipePreset(name: string): name is RecipePresetName {
  return (RECIPE_PRESET_NAMES as string[]).includes(name);
}

/** Documents of one micro-batch's policy call: a row each (SFT), two a pair (DPO). */
export function documentsPerMicroBatch(shape: RecipeShape): number {
  return (shape.mode === 'dpo' ? 2 : 1) * shape.rows;
}

/** Tokens one forward call carries: what the models' activations are planned for (maxTokens). */
export function tokensPerMicroBatch(shape: RecipeShape): number {
  return documentsPerMicroBatch(shape) * shape.seqLen;
}

export interface RecipeStepFlops {
  matmul_parameters: number;
  policy_tokens: number;
  reference_tokens: number;
  /** 6 N per policy token + 3 x attention forward over the policy's documents. */
  policy_flops: number;
  /** 2 N per reference token + attention forward over the reference's documents (0 when precomputed or SFT). */
  reference_flops: number;
  flops: number;
}

export function recipeStepFlops(config: MistralConfig, shape: RecipeShape, reference: RecipeReference | null): RecipeStepFlops {
  const n = matmulParameters(config);
  const documents = new Array<number>(shape.microBatches * documentsPerMicroBatch(shape)).fill(shape.seqLen);
  const policyTokens = documents.length * shape.seqLen;
  const attention = attentionForwardFlops(config, documents);
  const withReference = shape.mode === 'dpo' && reference === 'model';
  const policyFlops = 6 * n * policyTokens + 3 * attention;
  const referenceFlops = withReference ? 2 * n * policyTokens + attention : 0;
  return {
    matmul_parameters: n,
    policy_tokens: policyTokens,
    reference_tokens: withReference ? policyTokens : 0,
    policy_flops: policyFlops,
    reference_flops: referenceFlops,
    flops: policyFlops + referenceFlops,
  };
}

/**
 * A card's datasheet dense bf16 tensor-core peak, by the name the CUDA driver reports: the H100
 * SXM (its name says HBM3; 989.4 TFLOP/s) and the H200 (the same chip and clocks). Any other
 * card: "unknown card", no datasheet MFU.
 */
export function datasheetPeak(deviceName: string): { card: string; tflops: number | null } {
  if (/H200/i.test(deviceName)) return { card: 'H200', tflops: 989.4 };
  if (/H100/i.test(deviceName) && /(SXM|HBM3)/i.test(deviceName)) return { card: 'H100 SXM', tflops: 989.4 };
  return { card: 'unknown card', tflops: null };
}

/** Issue 21's targets for one H100 (the same figures on an H200). */
export const RECIPE_TARGETS = {
  sftTokensPerS: 10_000,
  dpoMfu: 0.45,
  hostShare: 0.1,
} as const;

export interface TargetCheck {
  name: string;
  target: string;
  value: number | null;
  /** How value reads: tokens a second, or a fraction (MFU, a share) shown as a percentage. */
  unit: 'tokens/s' | 'fraction';
  /** null: not applicable (a CPU run, a scaled-down shape, or no datasheet peak for the card). */
  met: boolean | null;
  note?: string;
}

export interface TargetInputs {
  mode: RecipeMode;
  device: 'cpu' | 'cuda';
  shapeOverridden: boolean;
  tokensPerS: number;
  mfuDatasheet: number | null;
  hostShare: number;
}

/** The step against the targets; they apply to the recipe's own shapes on a GPU only. */
export function checkTargets(input: TargetInputs): TargetCheck[] {
  const notApplicable = input.device !== 'cuda' ? 'a CPU run: the targets are for one H100' : input.shapeOverridden ? 'a scaled-down shape' : null;
  const judge = (value: number | null, ok: (v: number) => boolean): boolean | null => (notApplicable || value === null ? null : ok(value));
  const checks: TargetCheck[] = [];
  if (input.mode === 'sft') {
    checks.push({ name: 'SFT tokens/s', target: `>= ${RECIPE_TARGETS.sftTokensPerS}`, value: input.tokensPerS, unit: 'tokens/s', met: judge(input.tokensPerS, (v) => v >= RECIPE_TARGETS.sftTokensPerS) });
  } else {
    const check: TargetCheck = { name: 'DPO MFU (datasheet peak)', target: `>= ${RECIPE_TARGETS.dpoMfu * 100}%`, value: input.mfuDatasheet, unit: 'fraction', met: judge(input.mfuDatasheet, (v) => v >= RECIPE_TARGETS.dpoMfu) };
    if (input.mfuDatasheet === null && !notApplicable) check.note = 'unknown card: no datasheet peak';
    checks.push(check);
  }
  checks.push({ name: 'host share of the step', target: `< ${RECIPE_TARGETS.hostShare * 100}%`, value: input.hostShare, unit: 'fraction', met: judge(input.hostShare, (v) => v < RECIPE_TARGETS.hostShare) });
  if (notApplicable) for (const check of checks) check.note = notApplicable;
  return checks;
}

/** The preset's shape with any of its numbers overridden (a scaled-down run: the same structure, smaller). */
export function resolveShape(preset: RecipePreset, overrides: Partial<Pick<RecipeShape, 'microBatches' | 'rows' | 'seqLen' | 'promptLen'>>): { shape: RecipeShape; overridden: boolean } {
  const shape = { ...preset.shape };
  let overridden = false;
  for (const key of ['microBatches', 'rows', 'seqLen', 'promptLen'] as const) {
    const value = overrides[key];
    if (value === undefined || value === shape[key]) continue;
    shape[key] = value;
    overridden = true;
  }
  if (shape.mode === 'sft') shape.promptLen = 0;
  if (shape.mode === 'dpo' && !(shape.promptLen >= 1 && shape.promptLen < shape.seqLen)) {
    throw new Error(`--prompt-len must be at least 1 and below --seq-len (${shape.seqLen}), got ${shape.promptLen}`);
  }
  return { shape, overridden };
}

/** The model a recipe preset runs, possibly another bench preset's (a scaled-down run). */
export function recipeModelPreset(preset: RecipePreset, override: PresetName | undefined): { model: PresetName; overridden: boolean } {
  const model = override ?? preset.model;
  return { model, overridden: model !== preset.model };
}

