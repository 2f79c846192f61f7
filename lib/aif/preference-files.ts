/**
 * Where binarized pairs go. `--output x.jsonl` or `x.parquet` is one file. Any other path is a
 * Hugging Face dataset folder, laid out as HuggingFaceH4/ultrafeedback_binarized is:
 * `data/train_prefs-00000-of-00001.parquet` (and `data/test_prefs-00000-of-00001.parquet` with a
 * test split), which the readers load by split name. Older train_prefs/test_prefs shards in
 * that folder are removed once the new ones are in place, so a rerun never mixes two runs.
 */
import { mkdirSync, readdirSync, rmSync } from 'node:fs';
import { extname, join } from 'node:path';

import { writeRows } from '../data/writers.js';
import { UsageError } from '../errors.js';
import { PREFERENCE_COLUMNS, type PreferenceRow, splitTrainTest } from './binarize.js';

export type PreferenceFormat = 'parquet' | 'jsonl';

export interface PreferenceOutput {
  /** Files written, with their row counts, in the order written. */
  files: { path: string; split: string; rows: number }[];
}

export const TRAIN_SPLIT = 'train_prefs';
export const TEST_SPLIT = 'test_prefs';

/** True when `path` names one data file rather than a dataset folder. */
export function isSingleFile(path: string): boolean {
  return ['.jsonl', '.parquet'].includes(extname(path).toLowerCase());
}

export async function writePreferences(
  output: string,
  pairs: PreferenceRow[],
  options: { testSize?: number; seed?: number; format?: PreferenceFormat } = {},
): Promise<PreferenceOutput> {
  const testSize = options.testSize ?? 0;
  const columns = PREFERENCE_COLUMNS;
  if (isSingleFile(output)) {
    if (testSize > 0) {
      throw new UsageError(`--test_size needs a dataset folder as --output (got the file ${output}); see README "binarize"`);
    }
    const { rows } = await writeRows(output, pairs, { columns });
    return { files: [{ path: output, split: TRAIN_SPLIT, rows }] };
  }
  const format = options.format ?? 'parquet';
  const { train, test } = splitTrainTest(pairs, testSize, options.seed ?? 42);
  const dataDir = join(output, 'data');
  mkdirSync(dataDir, { recursive: true });
  const files: PreferenceOutput['files'] = [];
  const parts: [string, PreferenceRow[]][] = test.length > 0 ? [[TRAIN_SPLIT, train], [TEST_SPLIT, test]] : [[TRAIN_SPLIT, train]];
  for (const [split, rows] of parts) {
    const path = join(dataDir, `${split}-00000-of-00001.${format}`);
    const written = await writeRows(path, rows, { columns });
    files.push({ path, split, rows: written.rows });
  }
  removeStaleShards(dataDir, new Set(files.map((f) => f.path)));
  return { files };
}

function removeStaleShards(dataDir: string, keep: Set<string>): void {
  for (const name of readdirSync(dataDir)) {
    const path = join(dataDir, name);
    const ours = name.startsWith(`${TRAIN_SPLIT}-`) || name.startsWith(`${TEST_SPLIT}-`);
    if (ours && /\.(parquet|jsonl|json)$/.test(name) && !keep.has(path)) rmSync(path, { force: true });
  }
}
