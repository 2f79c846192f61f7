/**
 * A freshly initialised MistralForCausalLM as a Hugging Face folder, initialised as transformers'
 * `_init_weights` does: linear and embedding weights ~ N(0, initializer_range) (the pad token's
 * embedding row zeroed), RMSNorm weights 1. Used by the built-in demo and the benchmarks, which
 * cannot download a model.
 */
import { copyFileSync, existsSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';

import { writeFileAtomic } from '../io/atomic.js';
import { loadNative, type SafetensorsTensorData } from '../native.js';
import { mistralConfigJson, parseMistralConfig, stringifyConfigJson, type MistralConfig } from './config.js';
import { generationConfigFromModel, SAFETENSORS_METADATA, SINGLE_WEIGHTS_FILE, TOKENIZER_FILES } from './folder.js';
import { mistralParameterShapes } from './parameters.js';

/** Uniform draws in (0, 1) from a seeded 32-bit PRNG (mulberry32). */
export function uniformSampler(seed: number): () => number {
  let a = seed >>> 0;
  return (): number => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return (((t ^ (t >>> 14)) >>> 0) + 0.5) / 4294967296;
  };
}

/** Config fields as a config.json would carry them (snake_case), validated by the config reader. */
export function mistralConfig(fields: Record<string, unknown>): MistralConfig {
  return parseMistralConfig({ model_type: 'mistral', architectures: ['MistralForCausalLM'], ...fields }, 'generated config');
}

/** bf16 bit patterns of 1.0: the norm weights' initial value. */
const BF16_ONE = 0x3f80;

export interface RandomModelOptions {
  seed?: number;
  /** A folder whose tokenizer files are copied in. */
  tokenizerDir?: string;
  /** Stored dtype (default float32); bfloat16 halves a large model's file and its memory here. */
  dtype?: 'float32' | 'bfloat16';
}

/**
 * Writes the folder. The normal draws are native and counter-based (native/core/random.h): one
 * stream per parameter, so Mistral-7B's 7.24 G draws take seconds, not JavaScript's minutes.
 */
export async function writeRandomModel(dir: string, config: MistralConfig, options: RandomModelOptions = {}): Promise<void> {
  mkdirSync(dir, { recursive: true });
  const addon = loadNative('cpu');
  const bf16 = options.dtype === 'bfloat16';
  const tensors: SafetensorsTensorData[] = [];
  for (const [stream, { name, shape }] of mistralParameterShapes(config).entries()) {
    const count = shape.reduce((a, b) => a * b, 1);
    let data: Float32Array | Uint16Array;
    if (name.endsWith('norm.weight')) {
      data = bf16 ? new Uint16Array(count).fill(BF16_ONE) : new Float32Array(count).fill(1);
    } else {
      const draw = { count, seed: options.seed ?? 0, stream, std: config.initializerRange };
      data = bf16 ? await addon.randomNormal({ ...draw, dtype: 'bf16' }) : await addon.randomNormal(draw);
      if (name === 'model.embed_tokens.weight' && config.padTokenId !== null) {
        data.fill(0, config.padTokenId * config.hiddenSize, (config.padTokenId + 1) * config.hiddenSize);
      }
    }
    tensors.push(bf16 ? { name, dtype: 'BF16', shape, data: data as Uint16Array } : { name, dtype: 'F32', shape, data: data as Float32Array });
  }
  await addon.writeSafetensors({ path: join(dir, SINGLE_WEIGHTS_FILE), tensors, metadata: { ...SAFETENSORS_METADATA } });
  writeFileAtomic(join(dir, 'config.json'), `${stringifyConfigJson(mistralConfigJson(config, bf16 ? 'bfloat16' : 'float32'))}\n`);
  writeFileAtomic(join(dir, 'generation_config.json'), `${JSON.stringify(generationConfigFromModel(config), null, 2)}\n`);
  if (options.tokenizerDir) {
    for (const file of TOKENIZER_FILES) {
      const source = join(options.tokenizerDir, file);
      if (existsSync(source)) copyFileSync(source, join(dir, file));
    }
  }
}
