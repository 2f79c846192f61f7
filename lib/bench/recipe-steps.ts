/**
 * One recipe-shaped optimizer step configuration (lib/bench/recipe-shapes.ts), in this process:
 * the residency the memory plan chooses (lib/bench/residency.ts), the policy (and DPO's frozen
 * reference, or log-probs precomputed by the policy before its first update, which is the
 * reference then), random-token micro-batches of the shape, a warm-up of a few micro-batches and
 * an optimizer step (first-call costs: library heuristics, the host moments' first page faults),
 * then timed steps through the trainer's own objectives, timed by phase:
 *
 *   forward_backward  each micro-batch's policy forward and backward (micro_batches_s: each one);
 *   reference         the frozen reference's log-probs (DPO with the reference in the step);
 *   zero_grad         clearing the gradients;
 *   optimizer         clip and AdamW (with offload_optimizer: the gradient copies down, the host
 *                     AdamW, the weight uploads); optimizer_detail splits it where the model
 *                     reports its own step timings;
 *   other             the rest of the step's wall time: the JS around the calls (collation, the
 *                     DPO loss, dlogp), which the model's device waits for.
 *
 * Every model call returns after its device work has finished (each downloads its results or
 * synchronises its stream), so wall time around a call is the call's time on the device.
 */
import { freemem } from 'node:os';
import { performance } from 'node:perf_hooks';

import { collatePreference } from '../data/collate.js';
import type { PreferencePair } from '../data/dpo-tokenize.js';
import type { SftItem } from '../data/load.js';
import type { TokenBatch } from '../data/batch.js';
import { type MistralConfig, readMistralConfig } from '../model/config.js';
import { uniformSampler } from '../model/init.js';
import { loadModel, type MistralModel, modelMemoryPlan } from '../model/model.js';
import { type BackendAddon, type CudaAddonExtras, loadNative } from '../native.js';
import { completionLogps, DpoObjective, ModelReference, type ObjectiveModel, PrecomputedReference, type ReferenceLogps, SftObjective } from '../train/objectives.js';
import type { Objective } from '../train/loop.js';
import type { BenchPrecision, PresetName } from './presets.js';
import {
  checkTargets,
  datasheetPeak,
  documentsPerMicroBatch,
  recipeStepFlops,
  type RecipePresetName,
  type RecipeReference,
  type RecipeShape,
  type RecipeStepFlops,
  type TargetCheck,
  tokensPerMicroBatch,
} from './recipe-shapes.js';
import { chooseResidency, describeResidency, type Residency, type ResidencyChoice } from './residency.js';
import { deviceMemoryTracker, median } from './step-bench.js';

/** A matmul peak MFU is measured against, TFLOP/s, and how it was obtained. */
export interface MeasuredTflops {
  tflops: number;
  how: string;
}

export interface RecipeStepOptions {
  preset: RecipePresetName;
  /** The bench preset whose model runs (mistral-7b; another for a scaled-down run). */
  model: PresetName;
  shape: RecipeShape;
  /** The model or the shape differs from the preset's: a scaled-down run. */
  shapeOverridden: boolean;
  /** DPO's reference source; null for SFT. */
  reference: RecipeReference | null;
  device: 'cpu' | 'cuda';
  precision: BenchPrecision;
  /** Timed optimizer steps (the median is reported). */
  steps: number;
  /** Micro-batches of the untimed warm-up step (0: none). */
  warmupMicroBatches: number;
  modelDir: string;
  /** The measured matmul peak; null on a GPU: measured here when the CUDA addon can, else no measured MFU. */
  measuredPeak: MeasuredTflops | null;
}

export interface RecipePhases {
  forward_backward: number;
  reference: number;
  zero_grad: number;
  optimizer: number;
  other: number;
}

export interface RecipeTimedStep {
  step_s: number;
  phases_s: RecipePhases;
  /** Each micro-batch's policy forward + backward, in order. */
  micro_batches_s: number[];
  /** The model's own timings of its optimizer step, where it reports them. */
  optimizer_detail: Record<string, number> | null;
  loss: number;
}

export interface RecipeStepResult {
  kind: 'recipe-step';
  preset: RecipePresetName;
  model: PresetName;
  mode: RecipeShape['mode'];
  reference: RecipeReference | null;
  device: 'cpu' | 'cuda';
  card: string;
  precision: BenchPrecision;
  shape: RecipeShape & { tokens_per_micro_batch: number; documents_per_micro_batch: number };
  shape_overridden: boolean;
  residency: ResidencyChoice;
  warmup_micro_batches: number;
  steps: RecipeTimedStep[];
  step_s: number;
  steps_s: number[];
  policy_tokens_per_step: number;
  tokens_per_s: number;
  flops: RecipeStepFlops;
  achieved_tflops: number;
  peak: { measured_tflops: number | null; measured_how: string | null; datasheet_tflops: number | null; datasheet_card: string };
  mfu_measured: number | null;
  mfu_datasheet: number | null;
  /** Mean seconds per timed step by phase. */
  phases_s: RecipePhases;
  /** (other + an offloaded optimizer's host part) / step: the time the model's device waits for the host. */
  host_share: number;
  /** The precomputed reference log-probs' time, before the steps (not part of a step). */
  precompute_s: number | null;
  memory: {
    /** GPU: device memory taken (free before the models, less the lowest free after a step); null on the CPU. */
    device_peak_bytes: number | null;
    device_planned_bytes: number;
    host_rss_peak_bytes: number;
    host_planned_bytes: number;
  };
  targets: TargetCheck[];
  losses: number[];
  threads: number;
}

const SOURCE = { file: '<bench>', index: 0 };

/** Token ids in [3, vocab): never BOS/EOS/UNK. */
function randomIds(count: number, vocab: number, next: () => number): Int32Array {
  const ids = new Int32Array(count);
  for (let i = 0; i < count; i++) ids[i] = 3 + Math.floor(next() * (vocab - 3));
  return ids;
}

type MicroBatch = SftItem[] | PreferencePair[];

function microBatch(shape: RecipeShape, vocab: number, next: () => number): MicroBatch {
  if (shape.mode === 'sft') {
    return Array.from({ length: shape.rows }, () => ({ inputIds: randomIds(shape.seqLen, vocab, next), labels: null, source: SOURCE }));
  }
  return Array.from({ length: shape.rows }, () => ({
    promptIds: randomIds(shape.promptLen, vocab, next),
    chosenIds: randomIds(shape.seqLen - shape.promptLen, vocab, next),
    rejectedIds: randomIds(shape.seqLen - shape.promptLen, vocab, next),
    source: SOURCE,
  }));
}

function stepBatches(shape: RecipeShape, count: number, vocab: number, next: () => number): MicroBatch[] {
  return Array.from({ length: count }, () => microBatch(shape, vocab, next));
}

/** Wall time of each model call, by phase; a micro-batch ends with its backward. */
class PhaseClock {
  forwardBackward = 0;
  reference = 0;
  microBatches: number[] = [];
  private current = 0;

  reset(): void {
    this.forwardBackward = 0;
    this.reference = 0;
    this.microBatches = [];
    this.current = 0;
  }

  async time<T>(phase: 'policy' | 'policy-end' | 'reference', call: () => Promise<T>): Promise<T> {
    const start = performance.now();
    try {
      return await call();
    } finally {
      const seconds = (performance.now() - start) / 1000;
      if (phase === 'reference') {
        this.reference += seconds;
      } else {
        this.forwardBackward += seconds;
        this.current += seconds;
        if (phase === 'policy-end') {
          this.microBatches.push(this.current);
          this.current = 0;
        }
      }
    }
  }

  policy(model: MistralModel): ObjectiveModel {
    return {
      forward: (batch: TokenBatch) => this.time('policy', () => model.forward(batch)),
      logprobs: (batch: TokenBatch) => this.time('policy', () => model.logprobs(batch)),
      backward: (dlogp: Float32Array) => this.time('policy-end', () => model.backward(dlogp)),
      forwardBackward: (batch: TokenBatch, dlogp: Float32Array) => this.time('policy-end', () => model.forwardBackward(batch, dlogp)),
    };
  }

  referenceModel(model: MistralModel): ObjectiveModel {
    const refuse = () => Promise.reject(new Error('the reference only scores'));
    return { forward: refuse, backward: refuse, forwardBackward: refuse, logprobs: (batch: TokenBatch) => this.time('reference', () => model.logprobs(batch)) };
  }
}

/** Device memory free now (GPU), or available host memory (CPU). */
function freeBytes(device: 'cpu' | 'cuda'): number {
  return device === 'cuda' ? (loadNative('cuda').info().freeMemory ?? 0) : freemem();
}

/** The reference log-probs of every pair, from the policy before its first update (it is the reference then). */
async function precomputeReference(policy: MistralModel, batches: PreferencePair[][]): Promise<ReferenceLogps> {
  const table = new Map<PreferencePair, { chosen: number; rejected: number }>();
  for (const pairs of batches) {
    const batch = collatePreference(pairs);
    const sums = completionLogps(batch, await policy.logprobs(batch));
    pairs.forEach((pair, i) => table.set(pair, { chosen: sums.chosen[i]!, rejected: sums.rejected[i]! }));
  }
  return new PrecomputedReference(table);
}

/** The measured GEMM peak on a GPU: the CUDA addon's, when it has the function. */
async function measuredGpuPeak(): Promise<MeasuredTflops | null> {
  const addon = loadNative('cuda') as BackendAddon & CudaAddonExtras;
  if (typeof addon.measureGemmPeak !== 'function') return null;
  const peak = await addon.measureGemmPeak({});
  return { tflops: peak.tflops, how: `bf16 GEMM ${peak.shape} (${peak.impl}) measured in the step's process` };
}

const ADAMW = { lr: 1e-6, beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: 0, maxGradNorm: 1 };

interface Models {
  policy: MistralModel;
  reference: MistralModel | null;
  residency: ResidencyChoice;
}

type ResidencyOptions = Pick<RecipeStepOptions, 'device' | 'precision' | 'shape' | 'reference'>;

/** The models' common options: planned for one micro-batch's tokens. */
function commonModelOptions(options: ResidencyOptions) {
  return { device: options.device, dtype: options.precision, maxTokens: tokensPerMicroBatch(options.shape) } as const;
}

/**
 * The residency the memory plan chooses for this step on this machine now (the reference, when
 * it runs in the step, takes its share first); throws listing every plan when none fits.
 */
export function planResidency(config: MistralConfig, options: ResidencyOptions): ResidencyChoice {
  const common = commonModelOptions(options);
  const withReferenceModel = options.shape.mode === 'dpo' && options.reference === 'model';
  return chooseResidency({
    device: options.device,
    planOf: (r: Residency) => modelMemoryPlan(config, { ...common, trainable: true, ...r }),
    referenceBytes: withReferenceModel ? modelMemoryPlan(config, { ...common, trainable: false }).total : 0,
    freeBytes: freeBytes(options.device),
    freeHostBytes: freemem(),
  });
}

async function loadModels(options: RecipeStepOptions): Promise<Models> {
  const common = commonModelOptions(options);
  const withReferenceModel = options.shape.mode === 'dpo' && options.reference === 'model';
  const residency = planResidency(readMistralConfig(options.modelDir), options);
  console.error(`residency (chosen by the memory plan): ${describeResidency(residency)}`);
  const policy = await loadModel(options.modelDir, {
    ...common,
    trainable: true,
    gradientCheckpointing: residency.gradientCheckpointing,
    offloadOptimizer: residency.offloadOptimizer,
    profileSteps: true,
  });
  const reference = withReferenceModel ? await loadModel(options.modelDir, { ...common, trainable: false }) : null;
  return { policy, reference, residency };
}

/** The model's own timings of its last optimizer step: the parts that apply to it. */
function optimizerDetail(policy: MistralModel): Record<string, number> | null {
  const profile = policy.stepProfile();
  if (!profile) return null;
  return Object.fromEntries(Object.entries(profile).filter(([, seconds]) => seconds > 0));
}

export async function runRecipeStep(options: RecipeStepOptions): Promise<RecipeStepResult> {
  const { shape } = options;
  const deviceMemory = deviceMemoryTracker(options.device);
  const { policy, reference, residency } = await loadModels(options);
  const clock = new PhaseClock();
  const next = uniformSampler(1);
  const vocab = policy.config.vocabSize;
  const warmup = stepBatches(shape, options.warmupMicroBatches, vocab, next);
  const timed = Array.from({ length: options.steps }, () => stepBatches(shape, shape.microBatches, vocab, next));

  let objective: Objective<SftItem> | Objective<PreferencePair>;
  let precomputeS: number | null = null;
  if (shape.mode === 'sft') {
    objective = new SftObjective(clock.policy(policy));
  } else {
    let referenceLogps: ReferenceLogps;
    if (reference) {
      referenceLogps = new ModelReference(clock.referenceModel(reference));
    } else {
      const start = performance.now();
      referenceLogps = await precomputeReference(policy, [...warmup, ...timed.flat()] as PreferencePair[][]);
      precomputeS = (performance.now() - start) / 1000;
      deviceMemory.sample();
    }
    objective = new DpoObjective(clock.policy(policy), referenceLogps, options.device, { beta: 0.1, lossType: 'sigmoid', labelSmoothing: 0 });
  }
  const accumulate = (batches: MicroBatch[]) => (objective as Objective<SftItem | PreferencePair>).accumulate({ global: batches, local: batches });

  const losses: number[] = [];
  if (warmup.length > 0) {
    await policy.zeroGrad();
    losses.push((await accumulate(warmup)).loss);
    await policy.clipAndStep(ADAMW);
    deviceMemory.sample();
  }
  const steps: RecipeTimedStep[] = [];
  for (const batches of timed) {
    clock.reset();
    const start = performance.now();
    await policy.zeroGrad();
    const zeroGrad = (performance.now() - start) / 1000;
    const { loss } = await accumulate(batches);
    const optimizerStart = performance.now();
    await policy.clipAndStep(ADAMW);
    const optimizer = (performance.now() - optimizerStart) / 1000;
    const stepS = (performance.now() - start) / 1000;
    deviceMemory.sample();
    losses.push(loss);
    const accounted = clock.forwardBackward + clock.reference + zeroGrad + optimizer;
    steps.push({
      step_s: stepS,
      phases_s: { forward_backward: clock.forwardBackward, reference: clock.reference, zero_grad: zeroGrad, optimizer, other: Math.max(0, stepS - accounted) },
      micro_batches_s: clock.microBatches,
      optimizer_detail: optimizerDetail(policy),
      loss,
    });
  }

  const plans = { policy: policy.memoryPlan(), reference: reference?.memoryPlan().total ?? 0 };
  const info = loadNative(options.device).info();
  policy.dispose();
  reference?.dispose();
  // After the models are freed: the GEMM's operands need room.
  const measuredPeak = options.measuredPeak ?? (options.device === 'cuda' ? await measuredGpuPeak() : null);
  return summarize({
    options,
    config: readMistralConfig(options.modelDir),
    residency,
    steps,
    losses,
    precomputeS,
    measuredPeak,
    deviceName: options.device === 'cuda' ? (info.deviceName ?? '') : 'cpu',
    threads: info.threads,
    memory: {
      device_peak_bytes: options.device === 'cuda' ? deviceMemory.peak() : null,
      device_planned_bytes: plans.policy.total + plans.reference,
      host_rss_peak_bytes: process.resourceUsage().maxRSS * 1024,
      host_planned_bytes: plans.policy.host,
    },
  });
}

export interface SummaryInputs {
  options: RecipeStepOptions;
  config: MistralConfig;
  residency: ResidencyChoice;
  steps: RecipeTimedStep[];
  losses: number[];
  precomputeS: number | null;
  measuredPeak: MeasuredTflops | null;
  /** The CUDA device's name, or 'cpu'. */
  deviceName: string;
  threads: number;
  memory: RecipeStepResult['memory'];
}

/**
 * The report row from the timed steps: the median step, tokens/s, achieved TFLOP/s, MFU against
 * the measured peak and against the card's datasheet peak, the mean phases, the host's share and
 * the targets.
 */
export function summarize(input: SummaryInputs): RecipeStepResult {
  const { options, steps } = input;
  const { shape } = options;
  const flops = recipeStepFlops(input.config, shape, options.reference);
  const stepsS = steps.map((s) => s.step_s);
  const stepS = median(stepsS);
  const achieved = flops.flops / stepS / 1e12;
  const datasheet = options.device === 'cuda' ? datasheetPeak(input.deviceName) : { card: 'cpu', tflops: null };
  const mean = (pick: (p: RecipePhases) => number) => steps.reduce((sum, s) => sum + pick(s.phases_s), 0) / steps.length;
  const phases: RecipePhases = {
    forward_backward: mean((p) => p.forward_backward),
    reference: mean((p) => p.reference),
    zero_grad: mean((p) => p.zero_grad),
    optimizer: mean((p) => p.optimizer),
    other: mean((p) => p.other),
  };
  // An offloaded optimizer step is the host's (AdamW and the copies), less the device's grad-norm
  // part where the model times it; a resident one runs on the model's device.
  const clipS = steps.reduce((sum, s) => sum + (s.optimizer_detail?.clip_s ?? 0), 0) / steps.length;
  const hostS = phases.other + (options.device === 'cuda' && input.residency.offloadOptimizer ? phases.optimizer - clipS : 0);
  const hostShare = hostS / mean((p) => p.forward_backward + p.reference + p.zero_grad + p.optimizer + p.other);
  const tokensPerS = flops.policy_tokens / stepS;
  const mfuMeasured = input.measuredPeak ? achieved / input.measuredPeak.tflops : null;
  const mfuDatasheet = datasheet.tflops ? achieved / datasheet.tflops : null;
  return {
    kind: 'recipe-step',
    preset: options.preset,
    model: options.model,
    mode: shape.mode,
    reference: options.reference,
    device: options.device,
    card: options.device === 'cuda' ? input.deviceName : 'cpu',
    precision: options.precision,
    shape: { ...shape, tokens_per_micro_batch: tokensPerMicroBatch(shape), documents_per_micro_batch: documentsPerMicroBatch(shape) },
    shape_overridden: options.shapeOverridden,
    residency: input.residency,
    warmup_micro_batches: options.warmupMicroBatches,
    steps,
    step_s: stepS,
    steps_s: stepsS,
    policy_tokens_per_step: flops.policy_tokens,
    tokens_per_s: tokensPerS,
    flops,
    achieved_tflops: achieved,
    peak: { measured_tflops: input.measuredPeak?.tflops ?? null, measured_how: input.measuredPeak?.how ?? null, datasheet_tflops: datasheet.tflops, datasheet_card: datasheet.card },
    mfu_measured: mfuMeasured,
    mfu_datasheet: mfuDatasheet,
    phases_s: phases,
    host_share: hostShare,
    precompute_s: input.precomputeS,
    memory: input.memory,
    targets: checkTargets({ mode: shape.mode, device: options.device, shapeOverridden: options.shapeOverridden, tokensPerS, mfuDatasheet, hostShare }),
    losses: input.losses,
    threads: input.threads,
  };
}
