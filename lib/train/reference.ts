/**
 * DPO's reference log-probs: a frozen model run beside the policy, or (precompute_ref_log_probs)
 * values computed once up front, cached on disk, with the reference model freed before training.
 */
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, statSync } from 'node:fs';
import { join, resolve } from 'node:path';

import { collatePreference } from '../data/collate.js';
import type { PreferencePair } from '../data/dpo-tokenize.js';
import { writeFileAtomic } from '../io/atomic.js';
import { readMistralConfig } from '../model/config.js';
import { locateWeights } from '../model/folder.js';
import { loadModel, type MistralModel, type ModelOptions } from '../model/model.js';
import { baseFolderOf, weightFilesOf } from '../model/peft.js';
import { logMemoryPlan } from './memory-plan.js';
import { completionLogps, ModelReference, PrecomputedReference, type ReferenceLogps } from './objectives.js';

export interface ReferenceSource {
  /** The reference model folder. */
  dir: string;
  /** Options of the policy; the reference is loaded frozen, without gradient checkpointing. */
  modelOptions: ModelOptions;
  precompute: boolean;
  /** Pairs per reference call when precomputing. */
  batchSize: number;
  /** Where precomputed log-probs are cached. */
  cacheDir: string;
  /** What the tokenization depended on beyond the pairs' ids (part of the cache key). */
  tokenization: string;
  /**
   * The policy, when before its first step it is the reference (LoRA without
   * ref_model_name_or_path: the starting adapter, or a fresh one whose B is zero): precomputed
   * log-probs then come from it, and no second copy of the base is ever loaded.
   */
  initialPolicy?: MistralModel;
}

/** The reference, and the model that holds its memory (null once precomputed: freed). */
export interface BuiltReference {
  reference: ReferenceLogps;
  model: MistralModel | null;
}

export async function buildReference(source: ReferenceSource, sets: PreferencePair[][], log: (line: string) => void): Promise<BuiltReference> {
  if (source.precompute) return { reference: await precomputeReference(source, sets.flat(), log), model: null };
  logMemoryPlan(log, 'reference', readMistralConfig(baseFolderOf(source.dir)), { ...source.modelOptions, trainable: false });
  const model = await loadFrozen(source);
  return { reference: new ModelReference(model), model };
}

function loadFrozen(source: ReferenceSource): Promise<MistralModel> {
  return loadModel(source.dir, { ...source.modelOptions, trainable: false, gradientCheckpointing: false });
}

/** A cache key for reference log-probs: the reference weights (name, size, mtime) and the data. */
function referenceCacheKey(source: ReferenceSource, pairs: PreferencePair[]): string {
  const hash = createHash('sha256');
  for (const file of weightFilesOf(source.dir, (dir) => locateWeights(dir).files)) {
    const stat = statSync(file);
    hash.update(`${resolve(file)}:${stat.size}:${stat.mtimeMs}\n`);
  }
  hash.update(`${source.tokenization}\n`);
  for (const pair of pairs) {
    hash.update(pair.promptIds);
    hash.update(pair.chosenIds);
    hash.update(pair.rejectedIds);
  }
  return hash.digest('hex').slice(0, 32);
}

async function precomputeReference(source: ReferenceSource, all: PreferencePair[], log: (line: string) => void): Promise<PrecomputedReference> {
  const file = join(source.cacheDir, `ref-logps-${referenceCacheKey(source, all)}.json`);
  const table = new Map<PreferencePair, { chosen: number; rejected: number }>();
  if (existsSync(file)) {
    const cached = JSON.parse(readFileSync(file, 'utf8')) as { chosen: number[]; rejected: number[] };
    if (cached.chosen.length === all.length) {
      all.forEach((pair, i) => table.set(pair, { chosen: cached.chosen[i], rejected: cached.rejected[i] }));
      log(`reference log-probs: read from cache ${file}`);
      return new PrecomputedReference(table);
    }
  }
  log(`reference log-probs: computing for ${all.length} pairs${source.initialPolicy ? ' with the policy before its first step' : ''} (cached in ${file})`);
  const reference = source.initialPolicy ?? (await loadFrozen(source));
  const chosen: number[] = [];
  const rejected: number[] = [];
  try {
    for (let i = 0; i < all.length; i += source.batchSize) {
      const pairs = all.slice(i, i + source.batchSize);
      const batch = collatePreference(pairs);
      const sums = completionLogps(batch, await reference.logprobs(batch));
      pairs.forEach((pair, j) => {
        table.set(pair, { chosen: sums.chosen[j], rejected: sums.rejected[j] });
        chosen.push(sums.chosen[j]);
        rejected.push(sums.rejected[j]);
      });
    }
  } finally {
    // What precomputing is for: training runs without the reference's memory.
    if (reference !== source.initialPolicy) reference.dispose();
  }
  mkdirSync(source.cacheDir, { recursive: true });
  writeFileAtomic(file, JSON.stringify({ chosen, rejected }));
  return new PrecomputedReference(table);
}
