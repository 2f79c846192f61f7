/**
 * One step-benchmark configuration, in this process: a random-init model folder of the preset,
 * random-token micro-batches of its shape, and warm-up + timed optimizer steps through the
 * trainer's own objectives (SftObjective; DpoObjective against a frozen reference model), so a
 * step does exactly the trainer's work: zeroGrad, forward, (reference log-probs,) backward,
 * grad-norm clip and AdamW. With `peft` the policy is fresh LoRA adapters over the frozen base,
 * and DPO's reference is the policy with its adapters off (AdaptersOffReference, as the trainer
 * does for use_peft on a full model): one copy of the base. lib/bench/run.ts runs each
 * configuration in its own child process, so peak RSS is that configuration's alone.
 */
import { performance } from 'node:perf_hooks';

import type { PreferencePair } from '../data/dpo-tokenize.js';
import type { SftItem } from '../data/load.js';
import type { TokenBatch } from '../data/batch.js';
import { uniformSampler } from '../model/init.js';
import { loadModel, type MistralModel } from '../model/model.js';
import { loadNative, type Device } from '../native.js';
import { AdaptersOffReference, DpoObjective, ModelReference, type ObjectiveModel, type ReferenceLogps, SftObjective } from '../train/objectives.js';
import type { Objective } from '../train/loop.js';
import { benchLoraSettings, type BenchMode, type BenchPeft, type BenchPrecision, type PresetName, PRESETS, policyTokensPerStep } from './presets.js';

export interface StepBenchOptions {
  preset: PresetName;
  mode: BenchMode;
  precision: BenchPrecision;
  /** Timed steps (the median is reported). */
  steps: number;
  /** Untimed steps first (page faults, packing buffers, thread start). */
  warmup: number;
  device: Device;
  /** The preset's random-init HF folder (lib/bench/model-cache.ts). */
  modelDir: string;
  /** LoRA settings (BENCH_PEFT) for adapter training; null: full fine-tuning. */
  peft: BenchPeft | null;
}

/** Mean seconds per timed step in each part of the step. */
export interface StepPhases {
  forward: number;
  backward: number;
  reference: number;
  optimizer: number;
  other: number;
}

export interface StepMeasurement {
  preset: PresetName;
  mode: BenchMode;
  implementation: 'zephyr-native';
  precision: BenchPrecision;
  device: Device;
  /** LoRA's r, alpha and targets when the step trains adapters; null for full fine-tuning. */
  peft: BenchPeft | null;
  step_s: number;
  steps_s: number[];
  tokens_per_step: number;
  tokens_per_s: number;
  /** Max RSS of the process (CPU); on the GPU, the most device memory the step took (free memory before the models, less its lowest value after a step). */
  peak_bytes: number;
  /** The model memory plans (policy + reference model, if any): weights, grads, optimizer, activations. */
  planned_bytes: number;
  threads: number;
  phases_s: StepPhases;
  /** Loss of every step, warm-up included (a sanity check: ln(vocab) for SFT, ln 2 for DPO's first). */
  losses: number[];
}

/** Token ids in [3, vocab): never BOS/EOS/UNK, so nothing special-cases them. */
function randomIds(count: number, vocab: number, next: () => number): Int32Array {
  const ids = new Int32Array(count);
  for (let i = 0; i < count; i++) ids[i] = 3 + Math.floor(next() * (vocab - 3));
  return ids;
}

const SOURCE = { file: '<bench>', index: 0 };

export function sftBatch(sequences: number, seqLen: number, vocab: number, next: () => number): SftItem[] {
  return Array.from({ length: sequences }, () => ({ inputIds: randomIds(seqLen, vocab, next), labels: null, source: SOURCE }));
}

export function dpoBatch(pairs: number, seqLen: number, promptLen: number, vocab: number, next: () => number): PreferencePair[] {
  return Array.from({ length: pairs }, () => ({
    promptIds: randomIds(promptLen, vocab, next),
    chosenIds: randomIds(seqLen - promptLen, vocab, next),
    rejectedIds: randomIds(seqLen - promptLen, vocab, next),
    source: SOURCE,
  }));
}

/** The model calls objectives make, each adding its wall time to a phase. */
function timed(model: MistralModel, phases: StepPhases, logprobsPhase: keyof StepPhases): ObjectiveModel & { setAdaptersEnabled(enabled: boolean): void } {
  const time = async <T>(phase: keyof StepPhases, call: () => Promise<T>): Promise<T> => {
    const start = performance.now();
    try {
      return await call();
    } finally {
      phases[phase] += (performance.now() - start) / 1000;
    }
  };
  return {
    forward: (batch: TokenBatch) => time('forward', () => model.forward(batch)),
    logprobs: (batch: TokenBatch) => time(logprobsPhase, () => model.logprobs(batch)),
    backward: (dlogp: Float32Array) => time('backward', () => model.backward(dlogp)),
    // SFT's one-call forward and backward: all of it counts as backward (phases_s.forward is 0).
    forwardBackward: (batch: TokenBatch, dlogp: Float32Array) => time('backward', () => model.forwardBackward(batch, dlogp)),
    setAdaptersEnabled: (enabled: boolean) => model.setAdaptersEnabled(enabled),
  };
}

/**
 * Device memory taken on a GPU: free memory before any model, less the lowest free memory seen
 * after each step (the models' arenas and the libraries' workspaces; the CUDA context already
 * exists when the first reading is taken). A no-op on the CPU.
 */
export function deviceMemoryTracker(device: Device): { sample(): void; peak(): number } {
  if (device !== 'cuda') return { sample: () => {}, peak: () => 0 };
  const addon = loadNative('cuda');
  const free = () => addon.info().freeMemory ?? 0;
  const before = free();
  let lowest = before;
  return {
    sample: () => {
      lowest = Math.min(lowest, free());
    },
    peak: () => before - lowest,
  };
}

export function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = sorted.length >> 1;
  return sorted.length % 2 ? sorted[mid]! : (sorted[mid - 1]! + sorted[mid]!) / 2;
}

export async function runStepBench(options: StepBenchOptions): Promise<StepMeasurement> {
  const preset = PRESETS[options.preset];
  const policyTokens = policyTokensPerStep(preset, options.mode);
  const deviceMemory = deviceMemoryTracker(options.device);
  const modelOptions = { device: options.device, dtype: options.precision, maxTokens: policyTokens } as const;
  const policy = await loadModel(options.modelDir, {
    ...modelOptions,
    trainable: true,
    gradientCheckpointing: preset.gradientCheckpointing,
    // The adapters' optimizer state is small: nothing worth moving to the host.
    offloadOptimizer: preset.offloadOptimizer && !options.peft,
    ...(options.peft ? { lora: benchLoraSettings(options.peft) } : {}),
  });
  const vocab = policy.config.vocabSize;
  const phases: StepPhases = { forward: 0, backward: 0, reference: 0, optimizer: 0, other: 0 };
  let planned = policy.memoryPlan().total;

  let objective: Objective<SftItem> | Objective<PreferencePair>;
  let makeBatch: (next: () => number) => SftItem[] | PreferencePair[];
  if (options.mode === 'sft') {
    objective = new SftObjective(timed(policy, phases, 'forward'));
    makeBatch = (next) => sftBatch(preset.sequences, preset.seqLen, vocab, next);
  } else {
    let reference: ReferenceLogps;
    if (options.peft) {
      reference = new AdaptersOffReference(timed(policy, phases, 'reference'));
    } else {
      const referenceModel = await loadModel(options.modelDir, { ...modelOptions, trainable: false });
      planned += referenceModel.memoryPlan().total;
      reference = new ModelReference(timed(referenceModel, phases, 'reference'));
    }
    objective = new DpoObjective(timed(policy, phases, 'forward'), reference, options.device, {
      beta: 0.1,
      lossType: 'sigmoid',
      labelSmoothing: 0,
    });
    makeBatch = (next) => dpoBatch(preset.sequences, preset.seqLen, preset.promptLen, vocab, next);
  }

  const next = uniformSampler(1);
  const stepsS: number[] = [];
  const losses: number[] = [];
  for (let step = 0; step < options.warmup + options.steps; step++) {
    const batch = makeBatch(next);
    const timedStep = step >= options.warmup;
    const before = { ...phases };
    const start = performance.now();
    const optimizerStart = performance.now();
    await policy.zeroGrad();
    let optimizer = (performance.now() - optimizerStart) / 1000;
    const result = await (objective as Objective<SftItem | PreferencePair>).accumulate({ global: [batch], local: [batch] });
    const stepStart = performance.now();
    await policy.clipAndStep({ lr: 1e-5, beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: 0, maxGradNorm: 1 });
    optimizer += (performance.now() - stepStart) / 1000;
    const seconds = (performance.now() - start) / 1000;
    losses.push(result.loss);
    deviceMemory.sample();
    if (timedStep) {
      stepsS.push(seconds);
      phases.optimizer += optimizer;
      const accounted = phases.forward - before.forward + (phases.backward - before.backward) + (phases.reference - before.reference) + optimizer;
      phases.other += seconds - accounted;
    } else {
      Object.assign(phases, before);
    }
  }
  const stepS = median(stepsS);
  const perStep = (x: number) => x / options.steps;
  return {
    preset: options.preset,
    mode: options.mode,
    implementation: 'zephyr-native',
    precision: options.precision,
    device: options.device,
    peft: options.peft,
    step_s: stepS,
    steps_s: stepsS,
    tokens_per_step: policyTokens,
    tokens_per_s: policyTokens / stepS,
    peak_bytes: options.device === 'cuda' ? deviceMemory.peak() : process.resourceUsage().maxRSS * 1024,
    planned_bytes: planned,
    threads: loadNative(options.device).info().threads,
    phases_s: {
      forward: perStep(phases.forward),
      backward: perStep(phases.backward),
      reference: perStep(phases.reference),
      optimizer: perStep(phases.optimizer),
      other: perStep(phases.other),
    },
    losses,
  };
}
