/**
 * The random-init model folder of a preset (weights, config.json and the Llama-2 tokenizer, so
 * transformers and TRL load the very same folder), written once under a cache directory and
 * reused. The folder name carries a hash of the config, the stored dtype and the initialiser's
 * version, so a changed preset never reuses stale weights; a folder appears only complete
 * (written aside, then renamed into place). GPU-only presets are stored in bfloat16 (Mistral-7B:
 * 14.5 GB instead of 29), as their checkpoints are.
 */
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { writeLlama2TokenizerFolder } from '../data/llama2-tokenizer.js';
import { publishDir } from '../io/atomic.js';
import { mistralConfig, writeRandomModel } from '../model/init.js';
import type { BenchPreset } from './presets.js';

export function defaultBenchCacheDir(): string {
  return join(tmpdir(), 'zephyr-native-bench');
}

/** Bumped when writeRandomModel draws different values for the same seed. */
const INIT_VERSION = 2;

export async function ensureBenchModel(preset: BenchPreset, cacheDir: string = defaultBenchCacheDir()): Promise<string> {
  const dtype = preset.gpuOnly ? 'bfloat16' : 'float32';
  const hash = createHash('sha256').update(JSON.stringify({ model: preset.model, dtype, init: INIT_VERSION })).digest('hex').slice(0, 12);
  const dir = join(cacheDir, `${preset.name}-${hash}`);
  if (existsSync(join(dir, 'config.json'))) return dir;
  mkdirSync(cacheDir, { recursive: true });
  const temp = mkdtempSync(join(cacheDir, `.${preset.name}-`));
  try {
    await writeRandomModel(temp, mistralConfig(preset.model), { seed: 0, dtype });
    writeLlama2TokenizerFolder(temp);
    if (existsSync(join(dir, 'config.json'))) rmSync(temp, { recursive: true, force: true });
    else publishDir(temp, dir);
  } catch (error) {
    rmSync(temp, { recursive: true, force: true });
    throw error;
  }
  return dir;
}
