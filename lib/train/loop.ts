/**
 * The training loop shared by SFT and DPO, with HF Trainer's bookkeeping: epochs or max_steps,
 * gradient accumulation, the learning-rate schedule, clipping, logging every `logging_steps`,
 * evaluation, checkpoints every `save_steps`, exact resume, and a stop on an AbortSignal (after
 * the current step, with a checkpoint) or a non-finite loss. It installs no process signal
 * handlers: the CLI turns SIGINT/SIGTERM into an abort (lib/cli/train-commands.ts).
 *
 * What differs between SFT and DPO (how a micro-batch becomes a loss and per-token gradients)
 * lives in an Objective.
 *
 * Data parallel (Ranks, lib/model/ranks.ts): every rank walks the single-process order with
 * micro-batches of per_device_train_batch_size x ranks rows and takes rows rank, rank + ranks,
 * ... of each, so the steps do not depend on the number of ranks; after the last micro-batch the
 * gradients, the loss and the metrics are summed across the ranks (before clipping: grad_norm is
 * the global one) and every rank takes the same optimizer step. The ranks evaluate a share of the
 * held-out batches each and sum; rank 0 alone logs and writes files, the others wait for it at a
 * barrier. With zero_stage 1 or 2 (lib/train/zero.ts)
 * each rank steps its shard of the optimizer state and the weights are all-gathered after; a
 * checkpoint then holds every rank's optimizer shard file beside rank 0's files.
 */
import { EventEmitter } from 'node:events';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

import { seededPermutation } from '../data/shuffle.js';
import { ZnError } from '../errors.js';
import { type Ranks, SINGLE_RANK } from '../model/ranks.js';
import {
  type CheckpointableModel,
  type Cursor,
  findCheckpoint,
  optimizerShardFile,
  prepareShardedCheckpoint,
  readCheckpoint,
  removeUnfinishedCheckpoints,
  saveCheckpoint,
  type ZephyrState,
} from './checkpoint.js';
import type { TrainingValues } from './config.js';
import { lrAt, type ScheduleConfig } from './schedule.js';
import { type LogEntry, MetricsStream, type StateFields, writeTrainerState } from './state.js';
import { type DataParallelModel, effectiveZeroStage, reduceGradients, stepAndGather, type ZeroStage } from './zero.js';

export interface OptimizerSettings {
  beta1: number;
  beta2: number;
  eps: number;
  weightDecay: number;
  maxGradNorm: number;
}

/** The model operations the loop needs (the native model implements them). */
export interface LoopModel extends CheckpointableModel, DataParallelModel {
  zeroGrad(): Promise<void>;
  /** ZeRO: this rank's optimizer shard file. */
  saveOptimizerShard(file: string): Promise<void>;
  loadCheckpoint(dir: string): Promise<void>;
}

/**
 * What a rank computed of one step. Each field is this rank's part: summed across the ranks it is
 * the step's value (one rank: the value itself).
 */
export interface StepResult {
  /** The step's loss as HF logs it (sum over its micro-batches of their share). */
  loss: number;
  /** Per-micro-batch metric means, averaged at logging time as TRL does (the same keys on every rank). */
  metrics: Record<string, number>[];
  tokens: number;
}

/** One optimizer step's micro-batches: the whole step's, and this rank's rows of each. */
export interface StepBatches<Example> {
  /** The micro-batches one process with per_device_train_batch_size x ranks would take. */
  global: Example[][];
  /** This rank's rows of each (rank, rank + ranks, ...; the same arrays with one rank); a last, short micro-batch may leave a rank none. */
  local: Example[][];
}

export interface Objective<Example> {
  /** Forward and backward over this rank's rows of one optimizer step, normalised by the whole step; gradients accumulate. */
  accumulate(step: StepBatches<Example>): Promise<StepResult>;
  /** The evaluation's metric names (without the eval_ prefix), the same on every rank. */
  readonly evalMetrics: readonly string[];
  /** Sums of every evalMetrics metric over some held-out batches (a rank's share of them); see EvalTotals. */
  evaluate(batches: Example[][]): Promise<EvalTotals>;
}

/**
 * Evaluation sums: metric = sum / count once every rank's are added (each loss: the batches'
 * means weighted by their rows, as transformers' evaluation loop; DPO's other metrics: the
 * batches' means, as DPOTrainer averages them).
 */
export type EvalTotals = Record<string, { sum: number; count: number }>;

/**
 * The evaluation's metrics from every rank's totals: the ranks evaluate batches round-robin
 * (batch i on rank i mod ranks), so N ranks take about 1/N of the time of one.
 */
export async function evalMetricsAcrossRanks(names: readonly string[], totals: EvalTotals, ranks: Ranks): Promise<Record<string, number>> {
  const values = Float64Array.from(names.flatMap((k) => [totals[k]?.sum ?? 0, totals[k]?.count ?? 0]));
  await ranks.allReduceSum([values], "the evaluation's sums");
  return Object.fromEntries(names.map((k, i) => [k, values[2 * i] / Math.max(1, values[2 * i + 1])]));
}

/** Rank r's evaluation batches: every ranks-th from r (all of them with one rank). */
export function rankEvalBatches<T>(batches: T[][], ranks: Pick<Ranks, 'rank' | 'size'>): T[][] {
  return batches.filter((_, i) => i % ranks.size === ranks.rank);
}

export interface LoopSettings {
  stage: string;
  outputDir: string;
  seed: number;
  numTrainEpochs: number;
  maxSteps: number;
  batchSize: number;
  evalBatchSize: number;
  gradientAccumulationSteps: number;
  schedule: Omit<ScheduleConfig, 'totalSteps'>;
  optimizer: OptimizerSettings;
  loggingSteps: number;
  loggingFirstStep: boolean;
  evalStrategy: TrainingValues['eval_strategy'];
  evalSteps: number;
  /** eval_on_start: evaluate before the first step too. */
  evalOnStart: boolean;
  saveStrategy: TrainingValues['save_strategy'];
  saveSteps: number;
  saveTotalLimit: number | null;
  resumeFromCheckpoint: TrainingValues['resume_from_checkpoint'];
  /** Data-parallel ranks (1: one process); a micro-batch holds batchSize x worldSize rows in all. */
  worldSize: number;
  /** zero_stage (lib/train/zero.ts); no effect with one rank. */
  zeroStage: ZeroStage;
}

export interface LoopEvents {
  log: [LogEntry];
  checkpoint: [string];
}

export class TrainingEvents extends EventEmitter<LoopEvents> {}

export interface LoopResult {
  globalStep: number;
  trainLoss: number;
  logHistory: LogEntry[];
  stoppedEarly: boolean;
}

/** The order examples are visited in an epoch: a seeded permutation, a new one each epoch. */
export function epochOrder(n: number, seed: number, epoch: number): number[] {
  return seededPermutation(n, seed, epoch);
}

/** HF Trainer: update steps per epoch = ceil(micro-batches / accumulation). */
export function stepsPerEpoch(examples: number, batchSize: number, accumulation: number): number {
  return Math.ceil(Math.ceil(examples / batchSize) / accumulation);
}

/** Rows of one micro-batch across every rank (HF: per_device_train_batch_size x world size). */
export function globalBatchSize(settings: Pick<LoopSettings, 'batchSize' | 'worldSize'>): number {
  return settings.batchSize * settings.worldSize;
}

export function totalSteps(examples: number, settings: Pick<LoopSettings, 'maxSteps' | 'numTrainEpochs' | 'batchSize' | 'gradientAccumulationSteps' | 'worldSize'>): number {
  if (settings.maxSteps > 0) return settings.maxSteps;
  return Math.ceil(settings.numTrainEpochs * stepsPerEpoch(examples, globalBatchSize(settings), settings.gradientAccumulationSteps));
}

/** Rows rank, rank + ranks, ... of each micro-batch (DistributedSampler's interleaving). */
export function rankShare<Example>(microBatches: Example[][], ranks: Pick<Ranks, 'rank' | 'size'>): Example[][] {
  if (ranks.size === 1) return microBatches;
  return microBatches.map((rows) => rows.filter((_, i) => i % ranks.size === ranks.rank));
}

/** The step's loss, tokens and metrics summed across the ranks (one rank: unchanged). */
export async function sumAcrossRanks(part: StepResult, ranks: Ranks): Promise<StepResult> {
  if (ranks.size === 1) return part;
  const keys = part.metrics.map((record) => Object.keys(record).sort());
  const values = Float64Array.from([part.loss, part.tokens, ...part.metrics.flatMap((record, m) => keys[m].map((k) => record[k]))]);
  await ranks.allReduceSum([values], "the step's loss and metrics");
  let next = 2;
  const metrics = keys.map((names) => Object.fromEntries(names.map((k) => [k, values[next++]])));
  return { loss: values[0], tokens: values[1], metrics };
}

function meanOf(records: Record<string, number>[]): Record<string, number> {
  const sums: Record<string, number> = {};
  for (const record of records) for (const [k, v] of Object.entries(record)) sums[k] = (sums[k] ?? 0) + v;
  return Object.fromEntries(Object.entries(sums).map(([k, v]) => [k, v / records.length]));
}

/**
 * A checkpoint's cursor counts micro-batches of a number of rows (per_device_train_batch_size x
 * ranks); resuming with another number would continue from the wrong example.
 */
function checkMicroBatchRows(dir: string, saved: number | undefined, now: number): void {
  if (saved === undefined || saved === now) return;
  throw new ZnError(
    `${dir} was written with micro-batches of ${saved} rows in all (per_device_train_batch_size x ranks), and this run takes ${now}: ` +
      `resume with per_device_train_batch_size x ranks = ${saved} (e.g. ${saved} on one process)`,
  );
}

export async function runLoop<Example>(
  model: LoopModel,
  objective: Objective<Example>,
  train: Example[],
  evalSet: Example[],
  settings: LoopSettings,
  events: TrainingEvents,
  signal?: AbortSignal,
  ranks: Ranks = SINGLE_RANK,
): Promise<LoopResult> {
  if (train.length === 0) throw new ZnError(`${settings.stage}: the training set is empty`);
  if (settings.worldSize !== ranks.size) throw new ZnError(`${settings.stage}: planned for ${settings.worldSize} ranks, running on ${ranks.size}`);
  const leader = ranks.isLeader;
  if (leader) {
    mkdirSync(settings.outputDir, { recursive: true });
    removeUnfinishedCheckpoints(settings.outputDir);
  }
  const microBatchRows = globalBatchSize(settings);
  const microPerEpoch = Math.ceil(train.length / microBatchRows);
  const maxSteps = totalSteps(train.length, settings);
  const schedule: ScheduleConfig = { ...settings.schedule, totalSteps: maxSteps };
  const metricsStream = MetricsStream.inDir(settings.outputDir);

  let cursor: Cursor = { globalStep: 0, epoch: 0, microBatch: 0, tokensSeen: 0 };
  let logHistory: LogEntry[] = [];
  let lossSum = 0;
  const resumeDir = findCheckpoint(settings.outputDir, settings.resumeFromCheckpoint);
  if (resumeDir) {
    const loaded = readCheckpoint(resumeDir);
    if (loaded.state.stage !== settings.stage) throw new ZnError(`${resumeDir} is a ${loaded.state.stage} checkpoint, not ${settings.stage}`);
    checkMicroBatchRows(resumeDir, loaded.state.microBatchRows, microBatchRows);
    await model.loadCheckpoint(resumeDir);
    cursor = loaded.state.cursor;
    logHistory = loaded.logHistory;
    lossSum = loaded.state.lossSum;
    // The metrics stream restarts from what the checkpoint knew.
    if (leader) writeFileSync(join(settings.outputDir, 'metrics.jsonl'), logHistory.map((e) => `${JSON.stringify(e)}\n`).join(''));
  } else if (leader) {
    writeFileSync(join(settings.outputDir, 'metrics.jsonl'), '');
  }

  const firstStep = cursor.globalStep;

  const epochFloat = (): number => cursor.epoch + cursor.microBatch / microPerEpoch;
  const stateFields = (): StateFields => ({
    globalStep: cursor.globalStep,
    epoch: epochFloat(),
    maxSteps,
    numTrainEpochs: settings.maxSteps > 0 ? Math.ceil(maxSteps / stepsPerEpoch(train.length, microBatchRows, settings.gradientAccumulationSteps)) : settings.numTrainEpochs,
    loggingSteps: settings.loggingSteps,
    evalSteps: settings.evalSteps,
    saveSteps: settings.saveSteps,
    trainBatchSize: settings.batchSize,
    tokensSeen: cursor.tokensSeen,
    logHistory,
  });
  const log = (entry: LogEntry): void => {
    logHistory.push(entry);
    if (!leader) return;
    metricsStream.append(entry);
    events.emit('log', entry);
  };
  const zero = effectiveZeroStage(settings.zeroStage, ranks);
  const checkpoint = async (): Promise<void> => {
    // ZeRO: every rank writes its optimizer shard into the folder rank 0 prepared, before rank 0
    // completes and publishes it.
    let prepared: string | undefined;
    if (zero > 0) {
      prepared = prepareShardedCheckpoint(settings.outputDir, cursor.globalStep, leader);
      await ranks.barrier(`rank 0 preparing checkpoint-${cursor.globalStep}`);
      await model.saveOptimizerShard(join(prepared, optimizerShardFile(ranks.rank, ranks.size)));
      await ranks.barrier(`every rank's optimizer shard of checkpoint-${cursor.globalStep}`);
    }
    if (leader) {
      const state: ZephyrState = {
        format: 1, stage: settings.stage, cursor, seed: settings.seed, maxSteps, lossSum, microBatchRows,
        ...(zero > 0 ? { zeroStage: zero, optimizerShards: ranks.size } : {}),
      };
      const dir = await saveCheckpoint(settings.outputDir, model, state, stateFields(), settings.saveTotalLimit, prepared);
      events.emit('checkpoint', dir);
    }
    await ranks.barrier(`checkpoint-${cursor.globalStep}, which rank 0 writes`);
  };
  // Every rank holds the same weights: each evaluates its share of the batches, rank 0 logs the sums.
  const evaluate = async (): Promise<void> => {
    if (evalSet.length === 0) return;
    const batches: Example[][] = [];
    for (let i = 0; i < evalSet.length; i += settings.evalBatchSize) batches.push(evalSet.slice(i, i + settings.evalBatchSize));
    const totals = await objective.evaluate(rankEvalBatches(batches, ranks));
    const metrics = await evalMetricsAcrossRanks(objective.evalMetrics, totals, ranks);
    if (leader) log({ ...Object.fromEntries(Object.entries(metrics).map(([k, v]) => [`eval_${k}`, v])), epoch: epochFloat(), step: cursor.globalStep });
  };

  let order = epochOrder(train.length, settings.seed, cursor.epoch);
  let windowLoss = 0;
  let windowSteps = 0;
  let windowMetrics: Record<string, number>[] = [];
  let stoppedEarly = false;
  const started = Date.now();
  // transformers' eval_on_start: before the first step taken here (also after a resume).
  if (settings.evalOnStart) await evaluate();
  while (cursor.globalStep < maxSteps) {
    // Ranks stop together: a stop request on any of them stops all after the same step.
    if (await ranks.any(signal?.aborted ?? false, 'the stop check before a step')) {
      stoppedEarly = true;
      break;
    }
    // One optimizer step: up to `gradientAccumulationSteps` micro-batches, never across an epoch end.
    const micro: Example[][] = [];
    while (micro.length < settings.gradientAccumulationSteps && cursor.microBatch < microPerEpoch) {
      const begin = cursor.microBatch * microBatchRows;
      micro.push(order.slice(begin, begin + microBatchRows).map((i) => train[i]));
      cursor = { ...cursor, microBatch: cursor.microBatch + 1 };
    }
    await model.zeroGrad();
    const part = await objective.accumulate({ global: micro, local: rankShare(micro, ranks) });
    const gradSumOfSquares = await reduceGradients(model, ranks, zero);
    const result = await sumAcrossRanks(part, ranks);
    if (!Number.isFinite(result.loss)) {
      throw new ZnError(
        `${settings.stage}: non-finite loss (${result.loss}) at step ${cursor.globalStep + 1}; stopped, the last good checkpoint is kept`,
      );
    }
    const lr = lrAt(schedule, cursor.globalStep);
    const { gradNorm } = await stepAndGather(model, ranks, zero, { ...settings.optimizer, lr }, gradSumOfSquares);
    cursor = { ...cursor, globalStep: cursor.globalStep + 1, tokensSeen: cursor.tokensSeen + result.tokens };
    lossSum += result.loss;
    windowLoss += result.loss;
    windowSteps += 1;
    windowMetrics = windowMetrics.concat(result.metrics);
    const epochEnded = cursor.microBatch >= microPerEpoch;

    const logNow =
      cursor.globalStep % settings.loggingSteps === 0 || (settings.loggingFirstStep && cursor.globalStep === 1) || cursor.globalStep === maxSteps;
    if (logNow) {
      log({
        loss: windowLoss / windowSteps,
        grad_norm: gradNorm,
        // transformers 5 logs the rate this update used (read before the scheduler steps).
        learning_rate: lr,
        ...meanOf(windowMetrics),
        // TRL's num_tokens: the input tokens trained on so far (prompts included, no padding).
        num_tokens: cursor.tokensSeen,
        epoch: epochFloat(),
        step: cursor.globalStep,
      });
      windowLoss = 0;
      windowSteps = 0;
      windowMetrics = [];
    }
    if (epochEnded) {
      cursor = { ...cursor, epoch: cursor.epoch + 1, microBatch: 0 };
      order = epochOrder(train.length, settings.seed, cursor.epoch);
    }
    // HF Trainer ends the epoch loop when max_steps stops training mid-epoch, and its epoch-end
    // evaluation still runs (a recipe with eval_strategy: epoch and max_steps evaluates once).
    const epochClosed = epochEnded || cursor.globalStep >= maxSteps;
    if ((settings.evalStrategy === 'steps' && cursor.globalStep % settings.evalSteps === 0) || (settings.evalStrategy === 'epoch' && epochClosed)) {
      await evaluate();
    }
    const saveNow =
      (settings.saveStrategy === 'steps' && cursor.globalStep % settings.saveSteps === 0) || (settings.saveStrategy === 'epoch' && epochEnded);
    if (saveNow && cursor.globalStep < maxSteps) await checkpoint();
  }
  if (stoppedEarly) {
    // A stop before this run's first step has nothing new to save: the checkpoint it resumed
    // from (if any) still holds.
    if (cursor.globalStep > firstStep) await checkpoint();
  } else {
    const runtime = (Date.now() - started) / 1000;
    log({
      train_runtime: runtime,
      train_steps_per_second: cursor.globalStep / Math.max(runtime, 1e-9),
      total_flos: 0,
      train_loss: lossSum / Math.max(1, cursor.globalStep),
      epoch: epochFloat(),
      step: cursor.globalStep,
    });
  }
  if (leader) writeTrainerState(settings.outputDir, stateFields());
  return { globalStep: cursor.globalStep, trainLoss: lossSum / Math.max(1, cursor.globalStep), logHistory, stoppedEarly };
}
