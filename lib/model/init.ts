/**
 * A freshly initialised MistralForCausalLM as a Hugging Face folder, initialised as transformers'
 * `_init_weights` does: linear and embedding weights ~ N(0, initializer_range) (the pad token's
 * embedding row zeroed), RMSNorm weights 1. Used by the built-in demo and the benchmarks, which
 * cannot download a model.
 */
import { copyFileSync, existsSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';

import { writeFileAtomic } from '../io/atomic.js';
import { loadNative } from '../native.js';
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

/** N(0, 1) draws: the Box-Muller transform of uniformSampler's draws. */
function normalSampler(seed: number): () => number {
  const uniform = uniformSampler(seed);
  return () => Math.sqrt(-2 * Math.log(uniform())) * Math.cos(2 * Math.PI * uniform());
}

/** Config fields as a config.json would carry them (snake_case), validated by the config reader. */
export function mistralConfig(fields: Record<string, unknown>): MistralConfig {
  return parseMistralConfig({ model_type: 'mistral', architectures: ['MistralForCausalLM'], ...fields }, 'generated config');
}

export async function writeRandomModel(dir: string, config: MistralConfig, options: { seed?: number; tokenizerDir?: string } = {}): Promise<void> {
  mkdirSync(dir, { recursive: true });
  const normal = normalSampler(options.seed ?? 0);
  const tensors = mistralParameterShapes(config).map(({ name, shape }) => {
    const data = new Float32Array(shape.reduce((a, b) => a * b, 1));
    if (name.endsWith('norm.weight')) {
      data.fill(1);
    } else {
      for (let i = 0; i < data.length; i++) data[i] = normal() * config.initializerRange;
      if (name === 'model.embed_tokens.weight' && config.padTokenId !== null) {
        data.fill(0, config.padTokenId * config.hiddenSize, (config.padTokenId + 1) * config.hiddenSize);
      }
    }
    return { name, dtype: 'F32' as const, shape, data };
  });
  await loadNative('cpu').writeSafetensors({ path: join(dir, SINGLE_WEIGHTS_FILE), tensors, metadata: { ...SAFETENSORS_METADATA } });
  writeFileAtomic(join(dir, 'config.json'), `${stringifyConfigJson(mistralConfigJson(config, 'float32'))}\n`);
  writeFileAtomic(join(dir, 'generation_config.json'), `${JSON.stringify(generationConfigFromModel(config), null, 2)}\n`);
  if (options.tokenizerDir) {
    for (const file of TOKENIZER_FILES) {
      const source = join(options.tokenizerDir, file);
      if (existsSync(source)) copyFileSync(source, join(dir, file));
    }
  }
}
