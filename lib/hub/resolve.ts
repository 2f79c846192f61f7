/**
 * Paths or Hub ids -> local folders. A value that is an existing path is used as it is; one that
 * looks like `org/name` is a Hub repository, read from the shared cache when the cache has what
 * zephyr-native needs (no network at all then), else downloaded into it (lib/hub/download.ts).
 * With HF_HUB_OFFLINE set, a repository missing from the cache is an error, never a request.
 */
import { existsSync, readdirSync } from 'node:fs';
import { join } from 'node:path';

import { listSplits } from '../data/readers.js';
import { ZnError } from '../errors.js';
import { locateWeights } from '../model/folder.js';
import { cachedSnapshot, repoCacheDir } from './cache.js';
import { downloadRepo } from './download.js';
import { type HubEnvironment, hubEnvironment } from './environment.js';
import { fnmatchRegExp, type Selection } from './file-selection.js';
import { type ProgressMode, transferReporter } from './progress.js';
import { describeRepo, hubRepoOf, type RepoRef } from './repo-id.js';

export interface ResolveOptions {
  /** A branch, tag or commit (model_revision, a mixture entry's revision); default main. */
  revision?: string | null;
  env?: HubEnvironment;
  progress?: ProgressMode;
  fetch?: typeof fetch;
}

export interface DatasetResolveOptions extends ResolveOptions {
  /** Splits to fetch; the first ones, up to `requiredSplits`, must exist. */
  splits?: string[];
  /** How many of `splits` (from the start) must be in the cache for it to count as complete. */
  requiredSplits?: number;
  config?: string | null;
  /** fnmatch patterns of the files wanted, instead of splits (e.g. FastChat's question.jsonl). */
  include?: string[];
}

function hasTokenizer(dir: string, noExist: string): boolean {
  return ['tokenizer.json', 'tokenizer.model', 'tokenizer_config.json'].some((name) => existsSync(join(dir, name))) || existsSync(join(noExist, 'tokenizer_config.json'));
}

function hasWeights(dir: string): boolean {
  if (existsSync(join(dir, 'adapter_config.json'))) return existsSync(join(dir, 'adapter_model.safetensors'));
  try {
    locateWeights(dir);
    return true;
  } catch {
    return false;
  }
}

/** Whether a cached model snapshot has config, weights and tokenizer (or knows it has no tokenizer). */
function modelComplete(dir: string, noExist: string): boolean {
  const config = existsSync(join(dir, 'config.json')) || existsSync(join(dir, 'adapter_config.json'));
  return config && hasWeights(dir) && (existsSync(join(dir, 'adapter_config.json')) || hasTokenizer(dir, noExist));
}

function datasetFolder(dir: string, config: string | null | undefined): string {
  return config && existsSync(join(dir, config)) ? join(dir, config) : dir;
}

function datasetComplete(dir: string, options: DatasetResolveOptions): boolean {
  let splits: string[];
  try {
    splits = listSplits(datasetFolder(dir, options.config));
  } catch {
    return false;
  }
  const required = (options.splits ?? []).slice(0, options.requiredSplits ?? options.splits?.length ?? 0);
  return splits.length > 0 && required.every((split) => splits.includes(split));
}

function hasMatchingFile(dir: string, include: string[]): boolean {
  const patterns = include.map(fnmatchRegExp);
  return readdirSync(dir, { recursive: true, encoding: 'utf8' }).some((path) => patterns.some((pattern) => pattern.test(path)));
}

async function resolveRepo(repo: RepoRef, selection: Omit<Selection, 'type'>, complete: (dir: string, noExist: string) => boolean, options: ResolveOptions): Promise<string> {
  const env = options.env ?? hubEnvironment();
  const cached = cachedSnapshot(env.cacheDir, repo);
  const noExist = cached ? join(repoCacheDir(env.cacheDir, repo), '.no_exist', cached.commit) : '';
  if (cached && complete(cached.dir, noExist)) return cached.dir;
  if (env.offline) {
    const state = cached ? `the cached snapshot ${cached.dir} lacks files zephyr-native needs` : `it is neither a local folder nor in the cache ${env.cacheDir}`;
    throw new ZnError(`${describeRepo(repo)}: HF_HUB_OFFLINE is set and ${state}; download it first (zephyr-native download ${repo.id}${repo.type === 'dataset' ? ' --repo_type dataset' : ''}) or unset HF_HUB_OFFLINE`);
  }
  const reporter = transferReporter(options.progress ?? 'auto', 'download');
  try {
    const result = await downloadRepo(repo, selection, { env, ...(options.fetch ? { fetch: options.fetch } : {}), onProgress: (p) => reporter.update(p), onFile: (f, b) => reporter.file(f, b) });
    return result.dir;
  } finally {
    reporter.stop();
  }
}

/** A model folder: the path itself, or a Hub model's snapshot folder in the cache. */
export async function resolveModelPath(value: string, options: ResolveOptions = {}): Promise<string> {
  const repo = hubRepoOf(value, 'model', options.revision);
  return repo ? resolveRepo(repo, {}, modelComplete, options) : value;
}

/** A dataset file or folder: the path itself, or a Hub dataset's snapshot folder in the cache. */
export async function resolveDatasetPath(value: string, options: DatasetResolveOptions = {}): Promise<string> {
  const repo = hubRepoOf(value, 'dataset', options.revision);
  if (!repo) return value;
  if (options.include) return resolveRepo(repo, { include: options.include }, (dir) => hasMatchingFile(dir, options.include!), options);
  return resolveRepo(repo, { splits: options.splits ?? null, config: options.config ?? null }, (dir) => datasetComplete(dir, options), options);
}
