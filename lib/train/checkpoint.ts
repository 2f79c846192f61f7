/**
 * Checkpoints: `output_dir/checkpoint-<step>/` holds the f32 master weights (so a resumed run
 * continues bit for bit), the AdamW moments, trainer_state.json (HF format, with log_history)
 * and zephyr_state.json (data cursor, schedule, seed). A checkpoint is written into a temporary
 * folder, every file fsynced, then renamed into place: a run killed at any instant leaves the
 * previous checkpoints intact, and a half-written one is never mistaken for a checkpoint.
 *
 * The moments are one process's `optimizer.safetensors`, or, from ZeRO ranks (lib/train/zero.ts),
 * one file per rank, `optimizer-rank-<r>-of-<N>.safetensors` (5 digits each; slices of the
 * parameters with their offsets, native/model/optimizer_state.h), which every rank writes into
 * the temporary folder before rank 0 completes and publishes it. Either kind resumes on any
 * number of ranks at any zero_stage: each rank reads the parts of the files its range overlaps.
 * In bf16 mode the shard files carry the f32 master too (no rank holds it whole), and the
 * weights file holds the bf16 weights widened.
 */
import { existsSync, mkdirSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';

import { ZnError } from '../errors.js';
import { fsyncDir, publishDir, writeJsonAtomic } from '../io/atomic.js';
import type { LogEntry, StateFields } from './state.js';
import { writeTrainerState } from './state.js';

/** Where training stands: enough to continue exactly. */
export interface Cursor {
  globalStep: number;
  epoch: number;
  /** Micro-batches of `epoch` already consumed. */
  microBatch: number;
  tokensSeen: number;
}

export interface ZephyrState {
  format: 1;
  stage: string;
  cursor: Cursor;
  seed: number;
  maxSteps: number;
  /** Sum of the per-step losses so far (for train_loss at the end). */
  lossSum: number;
  /** Rows of one micro-batch across every rank, which the cursor counts in (absent before data parallel: not checked). */
  microBatchRows?: number;
  /** ZeRO checkpoints: the stage, and how many optimizer shard files the folder holds. */
  zeroStage?: number;
  optimizerShards?: number;
}

export const OPTIMIZER_FILE = 'optimizer.safetensors';
const SHARD_FILE = /^optimizer-rank-(\d{5})-of-(\d{5})\.safetensors$/;

/** Rank r's optimizer shard file name in a ZeRO checkpoint. */
export function optimizerShardFile(rank: number, ranks: number): string {
  const five = (n: number) => String(n).padStart(5, '0');
  return `optimizer-rank-${five(rank)}-of-${five(ranks)}.safetensors`;
}

/**
 * The optimizer state files of a checkpoint: its optimizer.safetensors, or its complete set of
 * rank shard files (every rank 0..N-1 of one N), else an error naming what is missing.
 */
export function optimizerFiles(dir: string): string[] {
  if (existsSync(join(dir, OPTIMIZER_FILE))) return [join(dir, OPTIMIZER_FILE)];
  const shards = readdirSync(dir)
    .map((name) => ({ name, match: SHARD_FILE.exec(name) }))
    .filter((entry) => entry.match)
    .map((entry) => ({ name: entry.name, rank: Number(entry.match![1]), of: Number(entry.match![2]) }));
  if (shards.length === 0) throw new ZnError(`${dir}: no optimizer state (neither ${OPTIMIZER_FILE} nor optimizer-rank-*-of-*.safetensors)`);
  const ranks = shards[0].of;
  if (shards.some((s) => s.of !== ranks)) throw new ZnError(`${dir}: optimizer shard files of different rank counts (${[...new Set(shards.map((s) => s.of))].join(', ')})`);
  const missing = Array.from({ length: ranks }, (_, r) => r).filter((r) => !shards.some((s) => s.rank === r));
  if (missing.length > 0) throw new ZnError(`${dir}: lacks the optimizer shard file of rank ${missing.join(', ')} (of ${ranks}): ${optimizerShardFile(missing[0], ranks)}`);
  return shards.sort((a, b) => a.rank - b.rank).map((s) => join(dir, s.name));
}

/**
 * The temporary folder of a ZeRO checkpoint, which every rank writes its shard into: the same
 * name on every rank, created afresh by rank 0 (`leader`); the others only learn its path.
 */
export function prepareShardedCheckpoint(outputDir: string, step: number, leader: boolean): string {
  const temp = join(outputDir, `.checkpoint-${step}.tmp-ranks`);
  if (leader) {
    mkdirSync(outputDir, { recursive: true });
    rmSync(temp, { recursive: true, force: true });
    mkdirSync(temp);
  }
  return temp;
}

/** What a checkpoint needs from the model. */
export interface CheckpointableModel {
  saveCheckpointWeights(dir: string): Promise<void>;
  saveOptimizerState(file: string): Promise<void>;
}

const CHECKPOINT = /^checkpoint-(\d+)$/;

export function listCheckpoints(outputDir: string): { step: number; dir: string }[] {
  if (!existsSync(outputDir)) return [];
  return readdirSync(outputDir)
    .map((name) => ({ match: CHECKPOINT.exec(name), name }))
    .filter((entry) => entry.match && existsSync(join(outputDir, entry.name, 'zephyr_state.json')))
    .map((entry) => ({ step: Number(entry.match![1]), dir: join(outputDir, entry.name) }))
    .sort((a, b) => a.step - b.step);
}

/** Removes leftovers of checkpoints that were being written when a run died. */
export function removeUnfinishedCheckpoints(outputDir: string): void {
  if (!existsSync(outputDir)) return;
  for (const name of readdirSync(outputDir)) {
    if (name.startsWith('.checkpoint-') && name.includes('.tmp')) rmSync(join(outputDir, name), { recursive: true, force: true });
  }
}

export async function saveCheckpoint(
  outputDir: string,
  model: CheckpointableModel,
  state: ZephyrState,
  trainerState: StateFields,
  saveTotalLimit: number | null,
  /** A ZeRO checkpoint's temporary folder (prepareShardedCheckpoint), already holding every rank's optimizer shard. */
  prepared?: string,
): Promise<string> {
  mkdirSync(outputDir, { recursive: true });
  const name = `checkpoint-${state.cursor.globalStep}`;
  let temp = prepared;
  if (!temp) {
    temp = join(outputDir, `.${name}.tmp-${process.pid}`);
    rmSync(temp, { recursive: true, force: true });
    mkdirSync(temp);
  }
  await model.saveCheckpointWeights(temp);
  if (!prepared) await model.saveOptimizerState(join(temp, OPTIMIZER_FILE));
  writeTrainerState(temp, trainerState);
  writeJsonAtomic(join(temp, 'zephyr_state.json'), state);
  fsyncDir(temp);
  const finalDir = join(outputDir, name);
  publishDir(temp, finalDir);
  rotateCheckpoints(outputDir, saveTotalLimit);
  return finalDir;
}

function rotateCheckpoints(outputDir: string, limit: number | null): void {
  if (limit === null || limit <= 0) return;
  const all = listCheckpoints(outputDir);
  for (const old of all.slice(0, Math.max(0, all.length - limit))) rmSync(old.dir, { recursive: true, force: true });
}

export interface LoadedCheckpoint {
  dir: string;
  state: ZephyrState;
  logHistory: LogEntry[];
}

/** `resume_from_checkpoint`: a folder, true for the latest in output_dir, or false / null for none. */
export function findCheckpoint(outputDir: string, resume: string | boolean | null): string | null {
  if (resume === null || resume === false) return null;
  if (resume === true) {
    const latest = listCheckpoints(outputDir).pop();
    if (!latest) throw new ZnError(`resume_from_checkpoint: no checkpoint-<step> folder in ${outputDir}`);
    return latest.dir;
  }
  if (!existsSync(join(resume, 'zephyr_state.json'))) {
    throw new ZnError(`resume_from_checkpoint: ${resume} is not a zephyr-native checkpoint (no zephyr_state.json)`);
  }
  return resume;
}

export function readCheckpoint(dir: string): LoadedCheckpoint {
  const read = (file: string): unknown => {
    try {
      return JSON.parse(readFileSync(join(dir, file), 'utf8'));
    } catch (error) {
      throw new ZnError(`${join(dir, file)}: ${(error as Error).message}`);
    }
  };
  const state = read('zephyr_state.json') as ZephyrState;
  if (state.format !== 1 || !state.cursor) throw new ZnError(`${join(dir, 'zephyr_state.json')}: unknown format`);
  const trainer = read('trainer_state.json') as { log_history?: LogEntry[] };
  return { dir, state, logHistory: trainer.log_history ?? [] };
}
