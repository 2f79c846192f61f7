/**
 * One rank's part of the multi-rank step benchmark (lib/bench/rank-bench.ts): the preset's SFT or
 * DPO optimizer step as the trainer takes it on data-parallel ranks (lib/train/loop.ts): every
 * rank makes the same global batch, takes rows rank, rank + N, ... of it (rankShare), runs the
 * trainer's objective over them (normalised by the whole step), sums the gradients across the
 * ranks for the ZeRO stage (lib/train/zero.ts: all-reduce, or stage 2's reduce-scatter), sums the
 * loss (sumAcrossRanks), then clips and steps (this rank's range under ZeRO, the updated weights
 * all-gathered). With one rank it is the single-process step.
 */
import { performance } from 'node:perf_hooks';

import type { PreferencePair } from '../data/dpo-tokenize.js';
import type { SftItem } from '../data/load.js';
import { uniformSampler } from '../model/init.js';
import { loadModel, type MistralModel } from '../model/model.js';
import type { Ranks } from '../model/ranks.js';
import { loadNative } from '../native.js';
import { type Objective, rankShare, sumAcrossRanks } from '../train/loop.js';
import { DpoObjective, ModelReference, SftObjective } from '../train/objectives.js';
import { reduceGradients, shardOption, stepAndGather, type ZeroStage } from '../train/zero.js';
import { type BenchMode, type BenchPrecision, PRESETS, type PresetName } from './presets.js';
import { dpoBatch, median, sftBatch } from './step-bench.js';

/** ZeRO stages the bench passes to the step (lib/train/zero.ts): 0 whole optimizer state on every rank, 1 and 2 sharded. */
export const ZERO_STAGES = [0, 1, 2] as const;
export type BenchZeroStage = ZeroStage;

export interface RankStepOptions {
  preset: PresetName;
  mode: BenchMode;
  precision: BenchPrecision;
  steps: number;
  warmup: number;
  /** The preset's random-init folder (lib/bench/model-cache.ts). */
  modelDir: string;
  zeroStage: BenchZeroStage;
}

/** What one rank measured. */
export interface RankMeasurement {
  rank: number;
  /** Median seconds of the timed steps on this rank (the all-reduce keeps the ranks in step). */
  step_s: number;
  steps_s: number[];
  /** Median seconds in the gradient all-reduce (zero_stage 2: the reduce-scatter and the norm's sum), waiting for the slowest rank included (0 with one rank). */
  allreduce_s: number;
  /** Policy tokens of this rank's rows per step. */
  tokens_per_step: number;
  /** Max RSS of this rank's process. */
  peak_bytes: number;
  planned_bytes: number;
  threads: number;
  /** The step's loss summed across the ranks (every rank has the same), warm-up steps included. */
  losses: number[];
}

/** Policy tokens of `rows` of the preset's step (DPO: chosen and rejected). */
function policyTokens(options: RankStepOptions, rows: number): number {
  return (options.mode === 'dpo' ? 2 : 1) * rows * PRESETS[options.preset].seqLen;
}

/** The rows rank r takes of a step of `rows` rows (rankShare's count). */
export function rowsOfRank(rows: number, rank: number, size: number): number {
  return Math.max(0, Math.ceil((rows - rank) / size));
}

async function buildStep(options: RankStepOptions, ranks: Ranks): Promise<{ policy: MistralModel; objective: Objective<SftItem | PreferencePair>; planned: number; models: MistralModel[] }> {
  const preset = PRESETS[options.preset];
  const maxTokens = Math.max(1, policyTokens(options, rowsOfRank(preset.sequences, ranks.rank, ranks.size)));
  const common = { device: 'cpu', dtype: options.precision, maxTokens } as const;
  const policy = await loadModel(options.modelDir, {
    ...common,
    trainable: true,
    gradientCheckpointing: preset.gradientCheckpointing,
    // As the trainer's policy on several ranks (lib/train/stage.ts): ranks sum whole gradient buffers.
    ...(ranks.size > 1 ? { denseEmbeddingGradient: true } : {}),
    ...shardOption(options.zeroStage, ranks),
  });
  if (options.mode === 'sft') return { policy, objective: new SftObjective(policy) as Objective<SftItem | PreferencePair>, planned: policy.memoryPlan().total, models: [policy] };
  const reference = await loadModel(options.modelDir, { ...common, trainable: false });
  const objective = new DpoObjective(policy, new ModelReference(reference), 'cpu', { beta: 0.1, lossType: 'sigmoid', labelSmoothing: 0 });
  return { policy, objective: objective as Objective<SftItem | PreferencePair>, planned: policy.memoryPlan().total + reference.memoryPlan().total, models: [policy, reference] };
}

const OPTIMIZER = { lr: 1e-5, beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: 0, maxGradNorm: 1 };

export async function runRankStep(options: RankStepOptions, ranks: Ranks): Promise<RankMeasurement> {
  const preset = PRESETS[options.preset];
  const { policy, objective, planned, models } = await buildStep(options, ranks);
  try {
    const vocab = policy.config.vocabSize;
    // The same seed on every rank: every rank makes the same global batch and takes its rows.
    const next = uniformSampler(1);
    const stepsS: number[] = [];
    const reduceS: number[] = [];
    const losses: number[] = [];
    for (let step = 0; step < options.warmup + options.steps; step++) {
      const batch = options.mode === 'sft' ? sftBatch(preset.sequences, preset.seqLen, vocab, next) : dpoBatch(preset.sequences, preset.seqLen, preset.promptLen, vocab, next);
      const micro = [batch as (SftItem | PreferencePair)[]];
      const start = performance.now();
      await policy.zeroGrad();
      const part = await objective.accumulate({ global: micro, local: rankShare(micro, ranks) });
      const reduceStart = performance.now();
      const gradSumOfSquares = await reduceGradients(policy, ranks, options.zeroStage);
      const reduce = ranks.size > 1 ? (performance.now() - reduceStart) / 1000 : 0;
      const result = await sumAcrossRanks(part, ranks);
      await stepAndGather(policy, ranks, options.zeroStage, OPTIMIZER, gradSumOfSquares);
      losses.push(result.loss);
      if (step >= options.warmup) {
        stepsS.push((performance.now() - start) / 1000);
        reduceS.push(reduce);
      }
    }
    return {
      rank: ranks.rank,
      step_s: median(stepsS),
      steps_s: stepsS,
      allreduce_s: median(reduceS),
      tokens_per_step: policyTokens(options, rowsOfRank(preset.sequences, ranks.rank, ranks.size)),
      peak_bytes: process.resourceUsage().maxRSS * 1024,
      planned_bytes: planned,
      threads: loadNative('cpu').info().threads,
      losses,
    };
  } finally {
    for (const model of models) model.dispose();
  }
}

/** How rank 0's line of results starts (lib/bench/rank-child.ts). */
export const RESULT_PREFIX = 'rank-bench: ';

/** A measurement as numbers, for Ranks.allGather (every rank's the same length). */
export function packMeasurement(m: RankMeasurement): Float64Array {
  return Float64Array.from([m.rank, m.step_s, m.allreduce_s, m.tokens_per_step, m.peak_bytes, m.planned_bytes, m.threads, ...m.steps_s, ...m.losses]);
}

export function unpackMeasurements(all: Float64Array, ranks: number, steps: number, losses: number): RankMeasurement[] {
  const width = 7 + steps + losses;
  return Array.from({ length: ranks }, (_, r) => {
    const v = Array.from(all.subarray(r * width, (r + 1) * width));
    return {
      rank: v[0]!,
      step_s: v[1]!,
      allreduce_s: v[2]!,
      tokens_per_step: v[3]!,
      peak_bytes: v[4]!,
      planned_bytes: v[5]!,
      threads: v[6]!,
      steps_s: v.slice(7, 7 + steps),
      losses: v.slice(7 + steps),
    };
  });
}
