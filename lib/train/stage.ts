/**
 * One training stage (dSFT or dDPO) from a resolved configuration: tokenizer and data, the
 * memory plan printed before anything large is allocated, the policy (and for DPO the frozen
 * reference or its precomputed log-probs), the loop, and the final Hugging Face model folder.
 */
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, statSync } from 'node:fs';
import { join, resolve } from 'node:path';

import { type DataConfig } from '../data/dataset-config.js';
import { DEFAULT_DPO_OPTIONS, type PreferencePair } from '../data/dpo-tokenize.js';
import { loadDpoData, loadSftData, type LoadedData, type SftItem } from '../data/load.js';
import { DEFAULT_SFT_OPTIONS } from '../data/sft-examples.js';
import { HfTokenizer } from '../data/tokenizer.js';
import { collatePreference } from '../data/collate.js';
import { UsageError, ZnError } from '../errors.js';
import { writeFileAtomic } from '../io/atomic.js';
import { readMistralConfig } from '../model/config.js';
import { locateWeights } from '../model/folder.js';
import { loadModel, type MistralModel, modelMemoryPlan, type ModelOptions } from '../model/model.js';
import { type Device, loadNative, type MemoryPlan } from '../native.js';
import type { KeyName, Stage } from './config.js';
import { type LoopModel, type LoopResult, type LoopSettings, runLoop, TrainingEvents } from './loop.js';
import { completionLogps, DpoObjective, ModelReference, PrecomputedReference, SftObjective, type ReferenceLogps } from './objectives.js';
import { progressReporter, type ProgressReporter } from './progress.js';
import { warmupSteps } from './schedule.js';
import { totalSteps } from './loop.js';

export type StageValues = Record<KeyName, unknown>;

export interface StageRunOptions {
  events?: TrainingEvents;
  signal?: AbortSignal;
  progress?: 'auto' | 'silent';
}

export interface StageResult extends LoopResult {
  stage: Stage;
  outputDir: string;
}

const str = (v: unknown): string | null => (typeof v === 'string' ? v : null);
const num = (v: unknown, fallback: number): number => (typeof v === 'number' ? v : fallback);

function require_(values: StageValues, key: KeyName, stage: Stage): string {
  const value = str(values[key]);
  if (!value) throw new UsageError(`${stage}: '${key}' is required`);
  return value;
}

export function resolveDevice(values: StageValues): 'cpu' | 'cuda' {
  if (values.use_cpu === true) return 'cpu';
  const device = (values.device ?? 'auto') as Device;
  if (device === 'auto') {
    const addon = loadNative('auto');
    return addon.info().backend === 'cuda' && typeof addon.Model === 'function' ? 'cuda' : 'cpu';
  }
  return device;
}

function formatBytes(bytes: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let value = bytes;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit++;
  }
  return `${value.toFixed(unit === 0 ? 0 : 1)} ${units[unit]}`;
}

export function describeMemoryPlan(label: string, plan: MemoryPlan): string {
  return (
    `memory plan (${label}): weights ${formatBytes(plan.weights)}, grads ${formatBytes(plan.grads)}, ` +
    `optimizer ${formatBytes(plan.optimizer)}, activations ${formatBytes(plan.activations)}, ` +
    `logits chunks ${formatBytes(plan.logitsChunks)}; total ${formatBytes(plan.total)}` +
    (plan.host > 0 ? `; host (offloaded optimizer) ${formatBytes(plan.host)}` : '')
  );
}

/** The most tokens any micro-batch can hold: the `batchSize` longest items together. */
function maxTokensPerBatch(lengths: number[], batchSize: number): number {
  const sorted = [...lengths].sort((a, b) => b - a);
  return Math.max(1, sorted.slice(0, batchSize).reduce((a, b) => a + b, 0));
}

function dataConfig(values: StageValues): DataConfig {
  return {
    dataset_name: str(values.dataset_name),
    dataset_config: str(values.dataset_config),
    dataset_train_split: str(values.dataset_train_split),
    dataset_test_split: str(values.dataset_test_split),
    dataset_mixer: values.dataset_mixer as DataConfig['dataset_mixer'],
    dataset_splits: values.dataset_splits as DataConfig['dataset_splits'],
    dataset_mixture: values.dataset_mixture as DataConfig['dataset_mixture'],
  };
}

function loopSettings(stage: Stage, values: StageValues, outputDir: string): LoopSettings {
  const loggingSteps = num(values.logging_steps, 10);
  return {
    stage,
    outputDir,
    seed: num(values.seed, 42),
    numTrainEpochs: num(values.num_train_epochs, 3),
    maxSteps: num(values.max_steps, -1),
    batchSize: num(values.per_device_train_batch_size, 8),
    evalBatchSize: num(values.per_device_eval_batch_size, 8),
    gradientAccumulationSteps: num(values.gradient_accumulation_steps, 1),
    schedule: { type: values.lr_scheduler_type as LoopSettings['schedule']['type'], peakLr: num(values.learning_rate, 0), warmupSteps: 0 },
    optimizer: {
      beta1: num(values.adam_beta1, 0.9),
      beta2: num(values.adam_beta2, 0.999),
      eps: num(values.adam_epsilon, 1e-8),
      weightDecay: num(values.weight_decay, 0),
      maxGradNorm: num(values.max_grad_norm, 1),
    },
    loggingSteps,
    loggingFirstStep: values.logging_first_step === true,
    evalStrategy: values.eval_strategy as LoopSettings['evalStrategy'],
    evalSteps: num(values.eval_steps, loggingSteps),
    saveStrategy: values.save_strategy as LoopSettings['saveStrategy'],
    saveSteps: num(values.save_steps, 500),
    saveTotalLimit: typeof values.save_total_limit === 'number' ? values.save_total_limit : null,
    resumeFromCheckpoint: values.resume_from_checkpoint,
  };
}

/** The model as the loop drives it: checkpoints hold f32 master weights and AdamW moments. */
function loopModel(model: MistralModel): LoopModel {
  return {
    zeroGrad: () => model.zeroGrad(),
    clipAndStep: (o) => model.clipAndStep({ lr: o.lr, beta1: o.beta1, beta2: o.beta2, eps: o.eps, weightDecay: o.weightDecay, maxGradNorm: o.maxGradNorm }),
    saveCheckpointWeights: (dir) => model.save(dir, { dtype: 'float32' }),
    saveOptimizerState: (file) => model.saveOptimizerState(file),
    loadCheckpoint: async (dir) => {
      await model.loadWeights(locateWeights(dir).files);
      await model.loadOptimizerState(join(dir, 'optimizer.safetensors'));
    },
  };
}

/** A cache key for reference log-probs: the reference weights (name, size, mtime) and the data. */
function referenceCacheKey(refDir: string, pairs: PreferencePair[], values: StageValues): string {
  const hash = createHash('sha256');
  for (const file of locateWeights(refDir).files) {
    const stat = statSync(file);
    hash.update(`${resolve(file)}:${stat.size}:${stat.mtimeMs}\n`);
  }
  hash.update(`${values.max_length}:${values.max_prompt_length}\n`);
  for (const pair of pairs) {
    hash.update(pair.promptIds);
    hash.update(pair.chosenIds);
    hash.update(pair.rejectedIds);
  }
  return hash.digest('hex').slice(0, 32);
}

async function precomputeReference(
  refDir: string,
  sets: PreferencePair[][],
  options: ModelOptions,
  batchSize: number,
  values: StageValues,
  cacheDir: string,
  progress: ProgressReporter,
): Promise<PrecomputedReference> {
  const all = sets.flat();
  const key = referenceCacheKey(refDir, all, values);
  const file = join(cacheDir, `ref-logps-${key}.json`);
  const table = new Map<PreferencePair, { chosen: number; rejected: number }>();
  if (existsSync(file)) {
    const cached = JSON.parse(readFileSync(file, 'utf8')) as { chosen: number[]; rejected: number[] };
    if (cached.chosen.length === all.length) {
      all.forEach((pair, i) => table.set(pair, { chosen: cached.chosen[i], rejected: cached.rejected[i] }));
      progress.message(`reference log-probs: read from cache ${file}`);
      return new PrecomputedReference(table);
    }
  }
  progress.message(`reference log-probs: computing for ${all.length} pairs (cached in ${file})`);
  const reference = await loadModel(refDir, { ...options, trainable: false, gradientCheckpointing: false });
  const chosen: number[] = [];
  const rejected: number[] = [];
  try {
    for (let i = 0; i < all.length; i += batchSize) {
      const pairs = all.slice(i, i + batchSize);
      const batch = collatePreference(pairs);
      const sums = completionLogps(batch, await reference.logprobs(batch));
      pairs.forEach((pair, j) => {
        table.set(pair, { chosen: sums.chosen[j], rejected: sums.rejected[j] });
        chosen.push(sums.chosen[j]);
        rejected.push(sums.rejected[j]);
      });
    }
  } finally {
    reference.dispose();  // what precomputing is for: training runs without the reference's memory
  }
  mkdirSync(cacheDir, { recursive: true });
  writeFileAtomic(file, JSON.stringify({ chosen, rejected }));
  return new PrecomputedReference(table);
}

function itemLength(item: SftItem): number {
  return item.inputIds.length;
}

export async function runStage(stage: Stage, values: StageValues, options: StageRunOptions = {}): Promise<StageResult> {
  const progress = progressReporter(options.progress ?? 'auto');
  const events = options.events ?? new TrainingEvents();
  const modelDir = require_(values, 'model_name_or_path', stage);
  const outputDir = require_(values, 'output_dir', stage);
  const device = resolveDevice(values);
  const bf16 = values.bf16 === null || values.bf16 === undefined ? device === 'cuda' : values.bf16 === true;
  const config = readMistralConfig(modelDir);
  const tokenizer = HfTokenizer.fromFolder(modelDir);
  if (values.chat_template) throw new UsageError(`${stage}: 'chat_template' overrides are not supported yet; put the template in the tokenizer folder`);
  const log = (line: string): void => progress.message(line);
  const settings = loopSettings(stage, values, outputDir);
  const maxLength = typeof values.max_length === 'number' ? values.max_length : null;

  let data: LoadedData<SftItem> | LoadedData<PreferencePair>;
  let maxTokens: number;
  if (stage === 'sft') {
    data = await loadSftData(
      dataConfig(values),
      tokenizer,
      { ...DEFAULT_SFT_OPTIONS, maxLength, packing: values.packing === true, assistantOnlyLoss: values.assistant_only_loss === true },
      { log },
    );
    const lengths = [...data.train, ...data.test].map(itemLength);
    maxTokens = maxTokensPerBatch(lengths, Math.max(settings.batchSize, settings.evalBatchSize));
  } else {
    data = await loadDpoData(
      dataConfig(values),
      tokenizer,
      { ...DEFAULT_DPO_OPTIONS, maxLength, maxPromptLength: typeof values.max_prompt_length === 'number' ? values.max_prompt_length : null },
      { log },
    );
    const all = [...data.train, ...data.test];
    const chosen = all.map((p) => p.promptIds.length + p.chosenIds.length);
    const rejected = all.map((p) => p.promptIds.length + p.rejectedIds.length);
    const per = Math.max(settings.batchSize, settings.evalBatchSize);
    maxTokens = maxTokensPerBatch(chosen, per) + maxTokensPerBatch(rejected, per);
  }
  if (data.train.length === 0) throw new ZnError(`${stage}: no usable training rows (see the summary above)`);

  const total = totalSteps(data.train.length, settings);
  settings.schedule.warmupSteps = warmupSteps(total, { warmup_steps: num(values.warmup_steps, 0), warmup_ratio: num(values.warmup_ratio, 0) });
  const modelOptions: ModelOptions = {
    device,
    dtype: bf16 ? 'bf16' : 'f32',
    maxTokens,
    gradientCheckpointing: values.gradient_checkpointing === true,
    offloadOptimizer: values.offload_optimizer === true,
  };
  log(describeMemoryPlan(`policy, ${stage}, ${modelOptions.dtype}, ${maxTokens} tokens per micro-batch`, modelMemoryPlan(config, { ...modelOptions, trainable: true })));
  // The models are freed when the stage ends, however it ends: the garbage collector does not see
  // their memory, and a pipeline's next stage needs it (a 7B policy holds tens of GiB).
  const owned: MistralModel[] = [];
  try {
    const policy = await loadModel(modelDir, { ...modelOptions, trainable: true });
    owned.push(policy);

    let objective;
    if (stage === 'sft') {
      objective = new SftObjective(policy);
    } else {
      const refDir = str(values.ref_model_name_or_path) ?? modelDir;
      let reference: ReferenceLogps;
      if (values.precompute_ref_log_probs === true) {
        const sets = [(data as LoadedData<PreferencePair>).train, (data as LoadedData<PreferencePair>).test];
        reference = await precomputeReference(refDir, sets, modelOptions, settings.evalBatchSize, values, join(outputDir, 'cache'), progress);
      } else {
        log(describeMemoryPlan('reference', modelMemoryPlan(readMistralConfig(refDir), { ...modelOptions, trainable: false })));
        const referenceModel = await loadModel(refDir, { ...modelOptions, trainable: false, gradientCheckpointing: false });
        owned.push(referenceModel);
        reference = new ModelReference(referenceModel);
      }
      const lossType = (Array.isArray(values.loss_type) ? values.loss_type : [values.loss_type]) as string[];
      if (lossType.length !== 1) throw new UsageError(`dpo: one loss_type at a time is supported, got ${lossType.join(', ')}`);
      objective = new DpoObjective(policy, reference, loadNative(device), {
        beta: num(values.beta, 0.1),
        lossType: lossType[0] as 'sigmoid' | 'ipo' | 'hinge',
        labelSmoothing: num(values.label_smoothing, 0),
      });
    }

    const started = Date.now();
    progress.start(total, stage);
    events.on('log', (entry) => progress.log(entry));
    events.on('checkpoint', (dir) => progress.message(`checkpoint: ${dir}`));
    let result: LoopResult;
    try {
      result = await runLoop(loopModel(policy), objective as never, data.train as never[], data.test as never[], settings, events, options.signal);
    } finally {
      progress.stop();
    }
    if (!result.stoppedEarly) {
      await policy.save(outputDir, { dtype: bf16 ? 'bfloat16' : 'float32' });
      log(`${stage}: ${result.globalStep} steps in ${((Date.now() - started) / 1000).toFixed(1)} s; model written to ${outputDir}`);
    } else {
      log(`${stage}: stopped at step ${result.globalStep}; a checkpoint was written in ${outputDir}`);
    }
    return { ...result, stage, outputDir };
  } finally {
    for (const model of owned) model.dispose();
  }
}
