/**
 * Which files of a Hub repository zephyr-native needs, so a download fetches only those:
 *
 * - a model: config.json, generation_config.json, the tokenizer files, the safetensors weights
 *   (model.safetensors, or the index and its shards) and a PEFT adapter's two files; never
 *   pickled `.bin`/`.pt` weights (a repository that has only those is refused);
 * - a dataset: the data files (.parquet, .jsonl, .json) of the requested splits, laid out as
 *   the readers find splits (`data/<split>-00000-of-00003.parquet`, `<split>*.jsonl`, under a
 *   config folder when one is named); all splits when none is named.
 *
 * `--include` patterns replace those defaults; they match as huggingface_hub's allow_patterns
 * (Python's fnmatch, where `*` also matches `/`).
 */
import { posix } from 'node:path';

import { ZnError } from '../errors.js';
import { DATA_EXTENSIONS } from '../data/readers.js';
import { SINGLE_WEIGHTS_FILE, TOKENIZER_FILES, WEIGHTS_INDEX_FILE } from '../model/folder.js';
import type { RepoType } from './repo-id.js';

/** Model files read when present; a download marks the ones a revision lacks in .no_exist/. */
export const OPTIONAL_MODEL_FILES = ['generation_config.json', ...TOKENIZER_FILES];
const MODEL_FILES = new Set(['config.json', ...OPTIONAL_MODEL_FILES, 'adapter_config.json', 'adapter_model.safetensors']);
const SHARD = /^model-\d{5}-of-\d{5}\.safetensors$/;
const PICKLED = /\.(bin|pt|pth|ckpt|pkl|pickle)$/;

export interface Selection {
  type: RepoType;
  /** fnmatch patterns; when given they replace the defaults. */
  include?: string[] | null;
  /** Dataset splits to fetch (all when empty or absent). */
  splits?: string[] | null;
  /** A dataset config: its folder's files are preferred when the repository has one. */
  config?: string | null;
}

/** Python's fnmatch.translate for `*`, `?`, `[...]` and `[!...]`; `*` crosses `/`. */
export function fnmatchRegExp(pattern: string): RegExp {
  let source = '';
  for (let i = 0; i < pattern.length; i++) {
    const c = pattern[i]!;
    if (c === '*') source += '.*';
    else if (c === '?') source += '.';
    else if (c === '[') {
      const end = pattern.indexOf(']', i + 2);
      if (end < 0) source += '\\[';
      else {
        let body = pattern.slice(i + 1, end);
        if (body.startsWith('!')) body = `^${body.slice(1)}`;
        source += `[${body.replace(/\\/g, '\\\\')}]`;
        i = end;
      }
    } else source += c.replace(/[.+^${}()|\\/]/g, '\\$&');
  }
  return new RegExp(`^${source}$`, 's');
}

/** The split a data file belongs to, named as lib/data/readers.ts names it, or null. */
function dataFileSplit(path: string): { dir: string; split: string } | null {
  const name = posix.basename(path);
  const ext = DATA_EXTENSIONS.find((e) => name.endsWith(e));
  if (!ext || name.startsWith('.')) return null;
  const split = name.slice(0, name.length - ext.length).split('-')[0]!;
  return /^\w+(\.\w+)*$/.test(split) ? { dir: posix.dirname(path), split } : null;
}

function selectModelFiles(paths: string[]): string[] {
  const wanted = paths.filter((path) => MODEL_FILES.has(path));
  if (paths.includes(SINGLE_WEIGHTS_FILE)) return [...wanted, SINGLE_WEIGHTS_FILE];
  const shards = paths.filter((path) => SHARD.test(path));
  if (paths.includes(WEIGHTS_INDEX_FILE)) return [...wanted, WEIGHTS_INDEX_FILE, ...shards];
  return wanted;
}

function selectDatasetFiles(paths: string[], splits: string[], config: string | null): string[] {
  const data = paths.map((path) => ({ path, where: dataFileSplit(path) })).filter((f) => f.where !== null);
  // A named config's folder wins; otherwise data/ or the top level, as the readers look.
  const configDirs = config ? [config, `${config}/data`] : [];
  const inConfig = data.filter((f) => configDirs.includes(f.where!.dir));
  const candidates = inConfig.length > 0 ? inConfig : data.filter((f) => f.where!.dir === 'data' || f.where!.dir === '.');
  const dataDir = candidates.some((f) => f.where!.dir.endsWith('data')) ? candidates.filter((f) => f.where!.dir.endsWith('data')) : candidates;
  return dataDir.filter((f) => splits.length === 0 || splits.includes(f.where!.split)).map((f) => f.path);
}

/** The files to download out of a repository's file list (paths relative to its root). */
export function selectFiles(paths: string[], selection: Selection, repoName: string): string[] {
  const safe = paths.filter((path) => !PICKLED.test(path));
  if (selection.include && selection.include.length > 0) {
    const patterns = selection.include.map(fnmatchRegExp);
    return safe.filter((path) => patterns.some((pattern) => pattern.test(path)));
  }
  if (selection.type === 'dataset') return selectDatasetFiles(safe, selection.splits ?? [], selection.config ?? null);
  const files = selectModelFiles(safe);
  const hasWeights = files.some((f) => f === SINGLE_WEIGHTS_FILE || f === WEIGHTS_INDEX_FILE || f === 'adapter_model.safetensors');
  if (!hasWeights && paths.some((path) => PICKLED.test(path))) {
    throw new ZnError(
      `${repoName}: the repository has only pickled PyTorch weights (${paths.filter((p) => PICKLED.test(p)).slice(0, 3).join(', ')}), ` +
        'which zephyr-native never loads (unpickling can run arbitrary code); use a repository with safetensors weights',
    );
  }
  return files;
}
