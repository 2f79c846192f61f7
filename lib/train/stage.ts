/**
 * One training stage (dSFT or dDPO) from a resolved configuration, as a sequence of steps:
 * resolve the sources (model folder, device, tokenizer), load the data, plan the loop, build the
 * policy, build the reference (DPO), build the objective, run the loop, save the model folder.
 *
 * Under `mpirun -n N` every rank runs the stage on its share of each step (lib/train/loop.ts);
 * rank 0 alone holds the output lock, resolves Hub ids first, reports, writes checkpoints and
 * the model folder, and pushes to the Hub. A rank that fails aborts the whole job, naming itself.
 */
import { existsSync, mkdirSync, rmSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';

import { writeFileAtomic } from '../io/atomic.js';

import type { DataConfig } from '../data/dataset-config.js';
import type { PreferencePair } from '../data/dpo-tokenize.js';
import { loadDpoData, loadSftData, type LoadedData, type SftItem } from '../data/load.js';
import { DEFAULT_SFT_OPTIONS } from '../data/sft-examples.js';
import { HfTokenizer } from '../data/tokenizer.js';
import { UsageError, ZnError } from '../errors.js';
import { type MistralConfig, readMistralConfig } from '../model/config.js';
import { locateWeights } from '../model/folder.js';
import { type ComputeDevice, computeDevice, loadModel, type MistralModel, type ModelDType, type ModelOptions } from '../model/model.js';
import { ADAPTER_WEIGHTS_FILE, adapterBaseFolder, checkLoraSettings, isAdapterFolder, type LoraSettings, readAdapterFolder, savedModuleParameters } from '../model/peft.js';
import { listCheckpoints, optimizerFiles } from './checkpoint.js';
import type { Stage, StageConfig, TrainingValues } from './config.js';
import { logMemoryPlan } from './memory-plan.js';
import { type LoopModel, type LoopResult, type LoopSettings, type Objective, runLoop, totalSteps, TrainingEvents } from './loop.js';
import { AdaptersOffReference, DpoObjective, type ReferenceLogps, SftObjective } from './objectives.js';
import { progressReporter, type ProgressReporter } from './progress.js';
import { type BuiltReference, buildReference } from './reference.js';
import { closeReporters, openReporters, type Reporter } from './report-to.js';
import { warmupSteps } from './schedule.js';
import { resolveHubInputs } from './hub-inputs.js';
import { HubPusher } from './hub-push.js';
import { lockOutput } from '../io/output-lock.js';
import { gradientTransport, type NcclGradientSum, openNcclGradientSum } from '../model/gradient-sum.js';
import { openRanks, type Ranks } from '../model/ranks.js';
import { shardOption, zeroStage } from './zero.js';

export interface StageRunOptions {
  events?: TrainingEvents;
  signal?: AbortSignal;
  progress?: 'auto' | 'silent';
}

export interface StageResult extends LoopResult {
  stage: Stage;
  outputDir: string;
}

/** What a stage trains from and where it writes, resolved from its configuration. */
export interface StageSources {
  stage: Stage;
  /** model_name_or_path: a model folder, or a PEFT adapter folder whose adapter training continues. */
  modelDir: string;
  /** The folder holding config.json and the base weights: modelDir, or an adapter folder's base. */
  baseDir: string;
  /** LoRA's settings: use_peft's for a fresh adapter, or the adapter folder's; null: full training. */
  lora: LoraSettings | null;
  /** use_peft on a full model: the adapters start fresh (PEFT's initialisation). */
  freshAdapter: boolean;
  /** DPO's frozen reference: ref_model_name_or_path, else the initial policy's folder. */
  refDir: string;
  outputDir: string;
  device: ComputeDevice;
  dtype: ModelDType;
  modelConfig: MistralConfig;
  tokenizer: HfTokenizer;
  /** The recipe's `chat_template`, which replaced the tokenizer's (saved with the model). */
  chatTemplate: string | null;
}

/** A stage's examples: SFT items or preference pairs, with the stage they belong to. */
export type StageData = { stage: 'sft'; data: LoadedData<SftItem> } | { stage: 'dpo'; data: LoadedData<PreferencePair> };

type Example = SftItem | PreferencePair;

function required(values: TrainingValues, key: 'model_name_or_path' | 'output_dir', stage: Stage): string {
  const value = values[key];
  if (!value) throw new UsageError(`${stage}: '${key}' is required`);
  return value;
}

/** The handbook sets `tokenizer.chat_template` from the recipe's `chat_template`; so does this. */
function tokenizerWithTemplate(tokenizer: HfTokenizer, template: string | null): HfTokenizer {
  return template ? tokenizer.withChatTemplate(template) : tokenizer;
}

export function resolveSources({ stage, values }: StageConfig): StageSources {
  const modelDir = required(values, 'model_name_or_path', stage);
  const outputDir = required(values, 'output_dir', stage);
  const device = values.use_cpu ? 'cpu' : computeDevice(values.device);
  const adapter = isAdapterFolder(modelDir) ? readAdapterFolder(modelDir) : null;
  const baseDir = adapter ? adapterBaseFolder(adapter) : modelDir;
  const modelConfig = readMistralConfig(baseDir);
  const lora = adapter ? readAdapterFolder(modelDir, modelConfig.numHiddenLayers).lora : freshLora(values, stage);
  if (lora) savedModuleParameters(lora, modelConfig, adapter ? join(modelDir, 'adapter_config.json') : `${stage}: lora_modules_to_save`);
  // An adapter folder written by PEFT may hold no tokenizer: the base's then.
  const tokenizerDir = existsSync(join(modelDir, 'tokenizer.json')) || existsSync(join(modelDir, 'tokenizer.model')) ? modelDir : baseDir;
  return {
    stage,
    modelDir,
    baseDir,
    lora,
    freshAdapter: lora !== null && adapter === null,
    refDir: values.ref_model_name_or_path ?? modelDir,
    outputDir,
    device,
    dtype: (values.bf16 ?? device === 'cuda') ? 'bf16' : 'f32',
    modelConfig,
    tokenizer: tokenizerWithTemplate(HfTokenizer.fromFolder(tokenizerDir), values.chat_template),
    chatTemplate: values.chat_template,
  };
}

/** use_peft's adapter settings (TRL's ModelConfig keys), or null without use_peft. */
function freshLora(values: TrainingValues, stage: Stage): LoraSettings | null {
  if (!values.use_peft) return null;
  const targets = values.lora_target_modules;
  const saved = values.lora_modules_to_save;
  return checkLoraSettings(
    {
      rank: values.lora_r,
      alpha: values.lora_alpha,
      rslora: values.use_rslora,
      // PEFT's default targets for Mistral (TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING).
      targetModules: targets === null ? ['q_proj', 'v_proj'] : Array.isArray(targets) ? targets : [targets],
      dropout: values.lora_dropout,
      modulesToSave: saved === null ? [] : Array.isArray(saved) ? saved : [saved],
    },
    stage,
  );
}

function dataConfig(values: TrainingValues): DataConfig {
  return {
    dataset_name: values.dataset_name,
    dataset_config: values.dataset_config,
    dataset_train_split: values.dataset_train_split,
    dataset_test_split: values.dataset_test_split,
    dataset_mixer: values.dataset_mixer as DataConfig['dataset_mixer'],
    dataset_splits: values.dataset_splits,
    dataset_mixture: values.dataset_mixture as DataConfig['dataset_mixture'],
  };
}

export async function loadStageData({ stage, values }: StageConfig, sources: StageSources, log: (line: string) => void): Promise<StageData> {
  const maxLength = values.max_length;
  const loaded: StageData =
    stage === 'sft'
      ? {
          stage,
          data: await loadSftData(
            dataConfig(values),
            sources.tokenizer,
            { ...DEFAULT_SFT_OPTIONS, maxLength, packing: values.packing, assistantOnlyLoss: values.assistant_only_loss },
            { log },
          ),
        }
      : { stage, data: await loadDpoData(dataConfig(values), sources.tokenizer, { maxLength, maxPromptLength: values.max_prompt_length }, { log }) };
  if (loaded.data.train.length === 0) throw new ZnError(`${stage}: no usable training rows (see the summary above)`);
  return loaded;
}

/** The most tokens any micro-batch can hold: the `batchSize` longest items together. */
function maxTokensPerBatch(lengths: number[], batchSize: number): number {
  const sorted = [...lengths].sort((a, b) => b - a);
  return Math.max(1, sorted.slice(0, batchSize).reduce((a, b) => a + b, 0));
}

/** The tokens the model must plan activations for: the largest training or evaluation micro-batch. */
function plannedTokens({ stage, data }: StageData, batchSize: number): number {
  if (stage === 'sft') return maxTokensPerBatch([...data.train, ...data.test].map((item) => item.inputIds.length), batchSize);
  const all = [...data.train, ...data.test];
  const chosen = all.map((p) => p.promptIds.length + p.chosenIds.length);
  const rejected = all.map((p) => p.promptIds.length + p.rejectedIds.length);
  return maxTokensPerBatch(chosen, batchSize) + maxTokensPerBatch(rejected, batchSize);
}

/** HF Trainer's bookkeeping for this stage: steps, schedule, optimizer, logging, checkpoints. */
export function loopSettings({ stage, values }: StageConfig, outputDir: string, trainExamples: number, worldSize = 1): LoopSettings {
  const settings: LoopSettings = {
    stage,
    outputDir,
    seed: values.seed,
    numTrainEpochs: values.num_train_epochs,
    maxSteps: values.max_steps,
    batchSize: values.per_device_train_batch_size,
    evalBatchSize: values.per_device_eval_batch_size,
    gradientAccumulationSteps: values.gradient_accumulation_steps,
    schedule: { type: values.lr_scheduler_type, peakLr: values.learning_rate, warmupSteps: 0 },
    optimizer: {
      beta1: values.adam_beta1,
      beta2: values.adam_beta2,
      eps: values.adam_epsilon,
      weightDecay: values.weight_decay,
      maxGradNorm: values.max_grad_norm,
    },
    loggingSteps: values.logging_steps,
    loggingFirstStep: values.logging_first_step,
    evalStrategy: values.eval_strategy,
    evalSteps: values.eval_steps ?? values.logging_steps,
    evalOnStart: values.eval_on_start,
    saveStrategy: values.save_strategy,
    saveSteps: values.save_steps,
    saveTotalLimit: values.save_total_limit,
    resumeFromCheckpoint: values.resume_from_checkpoint,
    worldSize,
    zeroStage: zeroStage(values.zero_stage),
  };
  const total = totalSteps(trainExamples, settings);
  settings.schedule.warmupSteps = warmupSteps(total, { warmup_steps: values.warmup_steps, warmup_ratio: values.warmup_ratio });
  return settings;
}

export function policyOptions({ values }: StageConfig, sources: StageSources, maxTokens: number, ranks: Pick<Ranks, 'rank' | 'size' | 'localRank'> = { rank: 0, size: 1, localRank: 0 }): ModelOptions {
  return {
    // Ranks sum whole gradient buffers; an untied embedding's by-rows gradient is not one.
    ...(ranks.size > 1 ? { denseEmbeddingGradient: true } : {}),
    // ZeRO: this rank's shard of the optimizer state only.
    ...shardOption(zeroStage(values.zero_stage), ranks),
    // GPU ranks: one GPU each, by LOCAL_RANK (the reference model takes the same options).
    ...(ranks.size > 1 && sources.device === 'cuda' ? { cudaDevice: ranks.localRank } : {}),
    device: sources.device,
    dtype: sources.dtype,
    maxTokens,
    gradientCheckpointing: values.gradient_checkpointing,
    offloadOptimizer: values.offload_optimizer,
    trainable: true,
    // The seed draws a fresh adapter's A and, for any adapter, lora_dropout's masks.
    ...(sources.lora ? { loraSeed: values.seed } : {}),
    ...(sources.freshAdapter ? { lora: sources.lora! } : {}),
  };
}

/** The policy: the model folder, or an adapter folder's base with its adapters (training them on). */
export function buildPolicy(sources: StageSources, options: ModelOptions): Promise<MistralModel> {
  return loadModel(sources.modelDir, options);
}

/**
 * The policy as the loop drives it: checkpoints hold f32 master weights (with LoRA: the adapter
 * folder, the base being unchanged) and AdamW moments.
 */
function loopModel(model: MistralModel, sources: StageSources, nccl: NcclGradientSum | null): LoopModel {
  return {
    zeroGrad: () => model.zeroGrad(),
    gradientBuffers: () => model.gradientBuffers(),
    ...(nccl ? { sumGradientsItself: () => nccl.sum(), reduceScatterItself: () => nccl.reduceScatter(), allGatherItself: () => nccl.allGather() } : {}),
    clipAndStep: (o) =>
      model.clipAndStep({
        lr: o.lr, beta1: o.beta1, beta2: o.beta2, eps: o.eps, weightDecay: o.weightDecay, maxGradNorm: o.maxGradNorm,
        ...(o.gradSumOfSquares === undefined ? {} : { gradSumOfSquares: o.gradSumOfSquares }),
      }),
    gradientShardCounts: () => model.gradientShardCounts(),
    shardGradSumOfSquares: () => model.shardGradSumOfSquares(),
    weightSegments: () => model.weightSegments(),
    saveOptimizerShard: (file) => model.saveOptimizerShard(file),
    saveCheckpointWeights: (dir) => (sources.lora ? model.saveAdapter(dir, sources.baseDir) : model.save(dir, { dtype: 'float32' })),
    saveOptimizerState: (file) => model.saveOptimizerState(file),
    loadCheckpoint: async (dir) => {
      if (sources.lora) {
        await model.loadAdapters([join(dir, ADAPTER_WEIGHTS_FILE)]);
      } else {
        await model.loadWeights(locateWeights(dir).files);
      }
      const files = optimizerFiles(dir);
      await model.loadOptimizerState(files.length === 1 ? files[0] : files);
    },
  };
}

/**
 * DPO's reference log-probs (a frozen model, or precomputed), and the model holding its memory.
 * A fresh adapter's reference is the policy with its adapters off (TRL: the same weights without
 * the adapter), so one copy of the base serves both; a policy that starts from an adapter folder
 * has that folder (base + starting adapter, frozen) as its reference, so the first loss is log 2.
 * With precompute_ref_log_probs a LoRA policy computes them itself before its first step (it is
 * the reference then), so no second copy of the base is loaded even for a moment.
 * With modules_to_save the policy's saved modules move too, so switching its adapters off is not
 * the base (TRL's disable_adapter() also switches PEFT's saved-module copies off): a fresh
 * adapter's reference is then the base folder, loaded frozen.
 */
export async function buildStageReference({ values }: StageConfig, sources: StageSources, data: LoadedData<PreferencePair>, policy: MistralModel, policyModelOptions: ModelOptions, log: (line: string) => void): Promise<BuiltReference> {
  const savesModules = (sources.lora?.modulesToSave ?? []).length > 0;
  if (sources.freshAdapter && !savesModules && !values.ref_model_name_or_path && !values.precompute_ref_log_probs) {
    log('reference: the policy with its adapters off (one copy of the base)');
    return { reference: new AdaptersOffReference(policy), model: null };
  }
  const { lora: _lora, loraSeed: _seed, shard: _shard, ...options } = policyModelOptions;
  return buildReference(
    {
      dir: sources.refDir,
      modelOptions: options,
      precompute: values.precompute_ref_log_probs,
      batchSize: values.per_device_eval_batch_size,
      cacheDir: join(sources.outputDir, 'cache'),
      tokenization: `${values.max_length}:${values.max_prompt_length}`,
      ...(sources.lora && !values.ref_model_name_or_path ? { initialPolicy: policy } : {}),
    },
    [data.train, data.test],
    log,
  );
}

/** SFT's token-mean loss, or DPO's loss of the policy against the reference. */
export function buildObjective({ stage, values }: StageConfig, sources: StageSources, policy: MistralModel, reference: ReferenceLogps | null): Objective<Example> {
  if (stage === 'sft') return new SftObjective(policy);
  if (!reference) throw new ZnError('dpo: the objective needs a reference');
  return new DpoObjective(policy, reference, sources.device, { beta: values.beta, lossType: values.loss_type, labelSmoothing: values.label_smoothing });
}

async function runTrainingLoop(
  policy: LoopModel,
  objective: Objective<Example>,
  { data }: StageData,
  settings: LoopSettings,
  progress: ProgressReporter,
  reporters: Reporter[],
  options: StageRunOptions,
  ranks: Ranks,
): Promise<LoopResult> {
  const events = options.events ?? new TrainingEvents();
  progress.start(totalSteps(data.train.length, settings), settings.stage);
  events.on('log', (entry) => progress.log(entry));
  for (const reporter of reporters) events.on('log', (entry) => reporter.log(entry));
  events.on('checkpoint', (dir) => progress.message(`checkpoint: ${dir}`));
  try {
    return await runLoop<Example>(policy, objective, data.train, data.test, settings, events, options.signal, ranks);
  } finally {
    progress.stop();
  }
}

/**
 * The trained policy as an HF model folder, in the training dtype; a recipe's chat_template goes
 * with it as `chat_template.jinja` (which transformers 5, and this package, read first).
 */
async function saveModel(policy: MistralModel, sources: StageSources): Promise<void> {
  if (sources.lora) {
    await policy.saveAdapter(sources.outputDir, sources.baseDir);
  } else {
    await policy.save(sources.outputDir, { dtype: sources.dtype === 'bf16' ? 'bfloat16' : 'float32' });
  }
  if (sources.chatTemplate) writeFileAtomic(join(sources.outputDir, 'chat_template.jinja'), sources.chatTemplate);
}

/**
 * `overwrite_output_dir: true` (transformers before 5.0): start afresh. The checkpoints an earlier
 * run left are deleted rather than resumed from or mixed with this run's (save_total_limit would
 * count them); an explicit resume_from_checkpoint still wins, as it did in transformers.
 */
function clearEarlierCheckpoints({ values }: StageConfig, outputDir: string, log: (line: string) => void): void {
  if (!values.overwrite_output_dir || values.resume_from_checkpoint) return;
  const earlier = listCheckpoints(outputDir);
  for (const { dir } of earlier) rmSync(dir, { recursive: true, force: true });
  if (earlier.length > 0) log(`overwrite_output_dir: removed ${earlier.length} checkpoint(s) of an earlier run in ${outputDir}`);
}

/** The run's settings as the integrations record them (W&B run config, TensorBoard `args`). */
function runConfig({ stage, values }: StageConfig): Record<string, unknown> {
  return { stage, ...values };
}

/** A stage as a process runs it: one rank's part of it under mpirun, else the whole stage. */
export async function runStage(config: StageConfig, options: StageRunOptions = {}): Promise<StageResult> {
  const ranks = openRanks(config.values.ddp_timeout);
  if (ranks.size === 1) return runLeaderStage(config, options, ranks);
  try {
    return ranks.isLeader ? await runLeaderStage(config, options, ranks) : await runFollowerStage(config, options, ranks);
  } catch (error) {
    // The other ranks would wait for this one in their next collective: end the job now.
    return ranks.abort(`${config.stage}: ${(error as Error).message}`);
  }
}

/**
 * Rank 0 (or the only process): output_dir locked for the stage's life (one writer), Hub ids
 * resolved to cached folders, the training, then push_to_hub.
 */
async function runLeaderStage(config: StageConfig, options: StageRunOptions, ranks: Ranks): Promise<StageResult> {
  const outputDir = required(config.values, 'output_dir', config.stage);
  const log = (line: string): void => void process.stderr.write(`${line}\n`);
  mkdirSync(dirname(resolve(outputDir)), { recursive: true });
  const lock = lockOutput(outputDir, { what: 'output_dir', log });
  try {
    const resolved = await resolveHubInputs(config, options.progress === 'silent' ? 'silent' : 'auto');
    await ranks.barrier('rank 0 resolving Hub ids');
    if (ranks.size > 1) log(`data parallel: ${ranks.size} ranks over MPI, ${ranks.size} x per_device_train_batch_size rows per micro-batch; rank 0 logs and writes`);
    const pusher = config.values.push_to_hub ? new HubPusher(config.values, outputDir, log) : null;
    const events = options.events ?? new TrainingEvents();
    if (pusher) events.on('checkpoint', (dir) => pusher.checkpoint(dir));
    const result = await runResolvedStage(resolved, { ...options, events }, ranks);
    await pusher?.finish(!result.stoppedEarly);
    return result;
  } finally {
    lock.release();
  }
}

/** Ranks 1..N-1: the same training, silent, writing nothing; Hub ids resolve from the cache rank 0 filled. */
async function runFollowerStage(config: StageConfig, options: StageRunOptions, ranks: Ranks): Promise<StageResult> {
  await ranks.barrier('rank 0 resolving Hub ids');
  const resolved = await resolveHubInputs(config, 'silent');
  return runResolvedStage(resolved, { ...options, progress: 'silent' }, ranks);
}

async function runResolvedStage(config: StageConfig, options: StageRunOptions, ranks: Ranks): Promise<StageResult> {
  const progress = progressReporter(options.progress ?? 'auto');
  const log = (line: string): void => progress.message(line);
  for (const notice of config.notices) log(notice);
  const sources = resolveSources(config);
  zeroStage(config.values.zero_stage);  // refused before the data loads
  // Opened first: a W&B run that cannot open (no key) fails the stage before data or models load.
  const reporters = ranks.isLeader ? await openReporters(config.values, sources.outputDir, runConfig(config), log) : [];
  try {
    return await trainStage(config, sources, reporters, progress, options, ranks);
  } finally {
    await closeReporters(reporters);
  }
}

async function trainStage(
  config: StageConfig,
  sources: StageSources,
  reporters: Reporter[],
  progress: ProgressReporter,
  options: StageRunOptions,
  ranks: Ranks,
): Promise<StageResult> {
  const { stage } = config;
  const log = (line: string): void => progress.message(line);
  const loaded = await loadStageData(config, sources, log);
  const settings = loopSettings(config, sources.outputDir, loaded.data.train.length, ranks.size);
  const maxTokens = plannedTokens(loaded, Math.max(settings.batchSize, settings.evalBatchSize));
  const modelOptions = policyOptions(config, sources, maxTokens, ranks);
  const perRank = ranks.size > 1 ? `, per rank (${ranks.size} ranks, zero_stage ${settings.zeroStage})` : '';
  logMemoryPlan(log, `policy, ${stage}, ${sources.dtype}, ${maxTokens} tokens per micro-batch${perRank}`, sources.modelConfig, modelOptions);
  // The models are freed when the stage ends, however it ends: the garbage collector does not see
  // their memory, and a pipeline's next stage needs it (a 7B policy holds tens of GiB).
  const owned: MistralModel[] = [];
  const own = (model: MistralModel): void => void owned.push(model);
  try {
    const policy = await buildPolicy(sources, modelOptions);
    own(policy);
    const nccl = gradientTransport(sources.device, ranks) === 'nccl' ? await openNcclGradientSum(policy, ranks, config.values.ddp_timeout) : null;
    if (nccl) log(`data parallel: gradients summed by NCCL on GPU ${ranks.localRank} of this node; MPI carries the rest`);
    let reference: ReferenceLogps | null = null;
    if (loaded.stage === 'dpo') {
      // Precomputed reference log-probs: rank 0 computes and caches them, the others read its cache.
      const shared = config.values.precompute_ref_log_probs && ranks.size > 1;
      if (shared && !ranks.isLeader) await ranks.barrier('rank 0 precomputing the reference log-probs');
      const built = await buildStageReference(config, sources, loaded.data, policy, modelOptions, log);
      if (shared && ranks.isLeader) await ranks.barrier('rank 0 precomputing the reference log-probs');
      if (built.model) own(built.model);
      reference = built.reference;
    }
    const objective = buildObjective(config, sources, policy, reference);
    if (ranks.isLeader) clearEarlierCheckpoints(config, sources.outputDir, log);
    await ranks.barrier('rank 0 clearing earlier checkpoints');
    const started = Date.now();
    const result = await runTrainingLoop(loopModel(policy, sources, nccl), objective, loaded, settings, progress, reporters, options, ranks);
    // Only here: after an error the job is aborted (Ranks.abort), and finalizing NCCL would wait for ranks that are gone.
    await nccl?.close();
    if (result.stoppedEarly) {
      log(`${stage}: stopped at step ${result.globalStep}; resume from the last checkpoint in ${sources.outputDir}`);
    } else {
      if (ranks.isLeader) await saveModel(policy, sources);
      await ranks.barrier('the model folder, which rank 0 writes');
      log(`${stage}: ${result.globalStep} steps in ${((Date.now() - started) / 1000).toFixed(1)} s; model written to ${sources.outputDir}`);
    }
    return { ...result, stage, outputDir: sources.outputDir };
  } finally {
    for (const model of owned) model.dispose();
  }
}
