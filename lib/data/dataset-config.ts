/**
 * Which rows train and which evaluate, from the recipe's keys (TRL and alignment-handbook names):
 *
 * - `dataset_name` (a file or an HF dataset folder) with `dataset_train_split` /
 *   `dataset_test_split` (`train` / `test`); a folder without the test split has no eval rows.
 *   `dataset_config` picks a config subfolder when the folder has one.
 * - older handbook: `dataset_mixer: {path: fraction}` with `dataset_splits` (default
 *   `[train, test]`): of every split whose name contains `train`, the first `fraction` of rows
 *   (`int(fraction * n)`); splits containing `test` whole; then train and test each shuffled with
 *   seed 42 (handbook `mix_datasets`).
 * - current handbook: `dataset_mixture: {datasets: [{id, config, split, columns, weight}], seed,
 *   test_split_size}`: each dataset's split (default `train`), only `columns` kept when given, a
 *   seeded random `weight` fraction of its rows; all concatenated; `test_split_size` (a fraction
 *   below 1 or a row count) carved off as the test set with `seed`.
 *
 * Subsets and shuffles are seeded (lib/data/shuffle.ts) but not numpy's: the same seed picks the
 * same rows on every run here, not the rows `datasets` would pick. Rows stream from the readers;
 * a subset needs the row count first (Parquet metadata, or a pass), never a second copy of the rows.
 */
import { existsSync, statSync } from 'node:fs';
import { join } from 'node:path';

import { UsageError } from '../errors.js';
import { countRows, listSplits, readRows, type SourceRow } from './readers.js';
import { seededPermutation } from './shuffle.js';

export interface DatasetMixtureEntry {
  id: string;
  /** A Hub dataset's branch, tag or commit (resolved by lib/hub before planning). */
  revision?: string | null;
  config?: string | null;
  split?: string | null;
  columns?: string[] | null;
  weight?: number | null;
}

export interface DataConfig {
  dataset_name?: string | null;
  dataset_config?: string | null;
  dataset_train_split?: string | null;
  dataset_test_split?: string | null;
  dataset_mixer?: Record<string, number> | null;
  dataset_splits?: string | string[] | null;
  dataset_mixture?: { datasets: DatasetMixtureEntry[]; seed?: number | null; test_split_size?: number | null } | null;
}

/** Which of a source's rows are used. */
export type RowSelection =
  | { kind: 'all' }
  /** The first int(fraction * n) rows (dataset_mixer). */
  | { kind: 'head'; fraction: number }
  /** int(fraction * n) rows drawn with a seeded shuffle, kept in file order (dataset_mixture weight). */
  | { kind: 'sample'; fraction: number; seed: number };

export interface DatasetSource {
  path: string;
  split?: string;
  columns: string[] | null;
  selection: RowSelection;
}

export interface DatasetPlan {
  train: DatasetSource[];
  test: DatasetSource[];
  /** Shuffle each loaded set with this seed (dataset_mixer), or keep file order. */
  shuffleSeed: number | null;
  /** Carve the test set off the training rows (dataset_mixture test_split_size). */
  testSplit: { size: number; seed: number } | null;
}

const HANDBOOK_MIXER_SEED = 42;

export function planDatasets(config: DataConfig): DatasetPlan {
  const forms = [config.dataset_mixture ? 'dataset_mixture' : null, config.dataset_mixer ? 'dataset_mixer' : null].filter(Boolean);
  if (forms.length > 1) throw new UsageError('set one of dataset_mixture and dataset_mixer, not both');
  if (config.dataset_mixture) return mixturePlan(config.dataset_mixture);
  if (config.dataset_mixer) return mixerPlan(config.dataset_mixer, config.dataset_splits);
  if (config.dataset_name) return namePlan(config);
  throw new UsageError('no dataset: set dataset_name (a file or dataset folder), dataset_mixture or dataset_mixer');
}

function namePlan(config: DataConfig): DatasetPlan {
  const path = withConfig(config.dataset_name!, config.dataset_config);
  if (!existsSync(path)) throw new UsageError(`dataset_name: ${path}: no such file or folder`);
  const all: RowSelection = { kind: 'all' };
  if (!statSync(path).isDirectory()) return { train: [{ path, columns: null, selection: all }], test: [], shuffleSeed: null, testSplit: null };
  const trainSplit = config.dataset_train_split ?? 'train';
  const testSplit = config.dataset_test_split ?? 'test';
  const splits = listSplits(path);
  const test = splits.includes(testSplit) ? [{ path, split: testSplit, columns: null, selection: all }] : [];
  return { train: [{ path, split: trainSplit, columns: null, selection: all }], test, shuffleSeed: null, testSplit: null };
}

function mixerPlan(mixer: Record<string, number>, splitsValue: string | string[] | null | undefined): DatasetPlan {
  const splits = splitsValue === null || splitsValue === undefined ? ['train', 'test'] : Array.isArray(splitsValue) ? splitsValue : [splitsValue];
  const plan: DatasetPlan = { train: [], test: [], shuffleSeed: HANDBOOK_MIXER_SEED, testSplit: null };
  for (const [path, fraction] of Object.entries(mixer)) {
    if (typeof fraction !== 'number' || !(fraction >= 0 && fraction <= 1)) {
      throw new UsageError(`dataset_mixer: ${path}: the fraction must be a number in [0, 1], found ${JSON.stringify(fraction)}`);
    }
    for (const split of splits) {
      if (split.includes('train')) plan.train.push({ path, split, columns: null, selection: { kind: 'head', fraction } });
      else if (split.includes('test')) plan.test.push({ path, split, columns: null, selection: { kind: 'all' } });
      else throw new UsageError(`dataset_splits: '${split}' is neither a train nor a test split (the name must contain 'train' or 'test')`);
    }
  }
  return plan;
}

function mixturePlan(mixture: NonNullable<DataConfig['dataset_mixture']>): DatasetPlan {
  if (!Array.isArray(mixture.datasets) || mixture.datasets.length === 0) {
    throw new UsageError('dataset_mixture.datasets: expected a non-empty list of {id, config, split, columns, weight}');
  }
  const seed = mixture.seed ?? 0;
  const train = mixture.datasets.map((entry, i): DatasetSource => {
    const where = `dataset_mixture.datasets[${i}]`;
    for (const key of Object.keys(entry)) {
      if (!['id', 'revision', 'config', 'split', 'columns', 'weight'].includes(key)) throw new UsageError(`${where}: unknown key '${key}'`);
    }
    if (typeof entry.id !== 'string' || entry.id === '') throw new UsageError(`${where}.id: expected a dataset path`);
    if (entry.columns !== undefined && entry.columns !== null && !(Array.isArray(entry.columns) && entry.columns.every((c) => typeof c === 'string'))) {
      throw new UsageError(`${where}.columns: expected a list of column names`);
    }
    const weight = entry.weight ?? null;
    if (weight !== null && !(typeof weight === 'number' && weight >= 0 && weight <= 1)) {
      throw new UsageError(`${where}.weight: expected a number in [0, 1], found ${JSON.stringify(weight)}`);
    }
    const path = withConfig(entry.id, entry.config);
    const selection: RowSelection = weight === null ? { kind: 'all' } : { kind: 'sample', fraction: weight, seed };
    return { path, split: entry.split ?? 'train', columns: entry.columns ?? null, selection };
  });
  const size = mixture.test_split_size ?? null;
  if (size !== null && !(typeof size === 'number' && size > 0 && (size < 1 || Number.isInteger(size)))) {
    throw new UsageError(`dataset_mixture.test_split_size: expected a fraction in (0, 1) or a row count, found ${JSON.stringify(size)}`);
  }
  return { train, test: [], shuffleSeed: null, testSplit: size === null ? null : { size, seed } };
}

/** A dataset folder's config subfolder (`default`, ...) when it has one. */
function withConfig(path: string, config: string | null | undefined): string {
  if (!config) return path;
  const sub = join(path, config);
  return existsSync(sub) && statSync(sub).isDirectory() ? sub : path;
}

function readSource(source: DatasetSource): AsyncGenerator<SourceRow> {
  return readRows(source.path, source.split === undefined ? {} : { split: source.split });
}

/** The rows of `sources`, in order, each source's selection and column projection applied. */
export async function* planRows(sources: DatasetSource[]): AsyncGenerator<SourceRow> {
  for (const source of sources) {
    const keep = await selectedIndices(source);
    let position = 0;
    for await (const row of readSource(source)) {
      const index = position++;
      if (keep !== null && !keep.has(index)) continue;
      yield source.columns === null ? row : { ...row, row: project(row.row, source.columns) };
    }
  }
}

/** The row positions a selection keeps (null: all), after a counting pass when it needs one. */
async function selectedIndices(source: DatasetSource): Promise<Set<number> | null> {
  const selection = source.selection;
  if (selection.kind === 'all') return null;
  const count = await countRows(source.path, source.split === undefined ? {} : { split: source.split });
  const keep = Math.floor(selection.fraction * count);
  if (selection.kind === 'head') return new Set(Array.from({ length: keep }, (_, i) => i));
  return new Set(seededPermutation(count, selection.seed).slice(0, keep));
}

function project(row: Record<string, unknown>, columns: string[]): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const column of columns) if (column in row) out[column] = row[column];
  return out;
}

/** How many rows `planRows(sources)` yields. */
export async function countPlanRows(sources: DatasetSource[]): Promise<number> {
  let total = 0;
  for (const source of sources) {
    const all = await countRows(source.path, source.split === undefined ? {} : { split: source.split });
    total += source.selection.kind === 'all' ? all : Math.floor(source.selection.fraction * all);
  }
  return total;
}

/**
 * The positions (in `planRows` order) of the rows that form the test set, sized as HF's
 * train_test_split(test_size) sizes it: ceil(fraction * n), or a row count.
 */
export function testRowPositions(total: number, size: number, seed: number): Set<number> {
  const testCount = size < 1 ? Math.ceil(size * total) : size;
  if (testCount >= total) throw new UsageError(`dataset_mixture.test_split_size ${size} leaves no training rows out of ${total}`);
  return new Set(seededPermutation(total, seed, 1).slice(0, testCount));
}
