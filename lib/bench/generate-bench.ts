/**
 * One generation-benchmark configuration, in this process: the preset's random-init folder
 * through the GenerationEngine, greedy, `batch` fixed prompts of `promptTokens` tokens submitted
 * together, each decoding exactly `newTokens` tokens (no stop tokens). Prefill is timed from the
 * submission to the last sequence's first token (time to first token of the batch), decode from
 * there to the last token. bench/generate.ts runs each configuration in its own child process
 * (lib/bench/generate-child.ts), so peak RSS is that configuration's alone; bench/peer_generate.py
 * measures transformers' generate the same way.
 */
import { performance } from 'node:perf_hooks';

import { HfTokenizer } from '../data/tokenizer.js';
import { GenerationEngine } from '../generate/engine.js';
import { DEFAULT_MAX_TOKENS, loadModel } from '../model/model.js';
import { loadNative } from '../native.js';
import type { BenchPrecision, PresetName } from './presets.js';
import { deviceMemoryTracker } from './step-bench.js';

export type GenerateDevice = 'cpu' | 'cuda';

export interface GenerateBenchOptions {
  preset: PresetName;
  device: GenerateDevice;
  precision: BenchPrecision;
  batch: number;
  promptTokens: number;
  newTokens: number;
  /** The preset's random-init HF folder (lib/bench/model-cache.ts). */
  modelDir: string;
}

/** One row of the report; both implementations fill it the same way. */
export interface GenerateMeasurement {
  preset: PresetName;
  implementation: 'zephyr-native' | 'transformers';
  device: GenerateDevice;
  precision: BenchPrecision;
  batch: number;
  prompt_tokens: number;
  new_tokens: number;
  /** batch x prompt_tokens / prefill seconds. */
  prefill_tokens_per_s: number;
  /** batch x (new_tokens - 1) / decode seconds (the first new token belongs to the prefill). */
  decode_tokens_per_s: number;
  /** Max RSS of the process (CPU); on the GPU, device memory taken (free before the model, less the lowest free seen). */
  peak_bytes: number;
  prefill_s: number;
  decode_s: number;
  threads: number;
}

/**
 * The benchmark's prompts: token t of prompt b, the same formula in bench/peer_generate.py, so
 * both sides decode the very same batch (ids 3 and up: no BOS/EOS/UNK).
 */
export function benchPrompt(index: number, length: number, vocab: number): number[] {
  return Array.from({ length }, (_, t) => 3 + ((index * 7919 + t * 104729) % (vocab - 3)));
}

const GREEDY = { temperature: 0, topK: 0, topP: 1, minP: 0, repetitionPenalty: 1, seed: 0 };

export async function runGenerateBench(options: GenerateBenchOptions): Promise<GenerateMeasurement> {
  const { batch, promptTokens, newTokens } = options;
  const memory = deviceMemoryTracker(options.device);
  // The whole batch's prompts in one prefill call where the default plan allows.
  const maxTokens = Math.max(batch, Math.min(DEFAULT_MAX_TOKENS, batch * promptTokens));
  const model = await loadModel(options.modelDir, { device: options.device, dtype: options.precision, maxTokens });
  const engine = await GenerationEngine.create(model, HfTokenizer.fromFolder(options.modelDir), { maxSequences: batch, maxContext: promptTokens + newTokens });
  const vocab = model.config.vocabSize;
  const request = (promptIds: number[], maxNewTokens: number) => ({ promptIds, sampling: GREEDY, maxNewTokens, stopTokenIds: [], stop: [] });
  // Warm-up, the same batch with 2 new tokens: threads started, pages touched, one-off costs paid.
  await Promise.all(Array.from({ length: batch }, (_, b) => engine.complete(request(benchPrompt(b, promptTokens, vocab), 2))));

  const start = performance.now();
  const firstTokens: number[] = [];
  const generated = await Promise.all(
    Array.from({ length: batch }, async (_, b) => {
      let count = 0;
      for await (const token of engine.stream(request(benchPrompt(b, promptTokens, vocab), newTokens))) {
        if (token.token === null) continue;
        if (count === 0) {
          firstTokens.push(performance.now());
          memory.sample();
        }
        count++;
      }
      return count;
    }),
  );
  const end = performance.now();
  memory.sample();
  if (generated.some((count) => count !== newTokens)) throw new Error(`generate bench: expected ${newTokens} tokens per sequence, got ${generated}`);
  const prefillS = (Math.max(...firstTokens) - start) / 1000;
  const decodeS = (end - Math.max(...firstTokens)) / 1000;
  return {
    preset: options.preset,
    implementation: 'zephyr-native',
    device: options.device,
    precision: options.precision,
    batch,
    prompt_tokens: promptTokens,
    new_tokens: newTokens,
    prefill_tokens_per_s: (batch * promptTokens) / prefillS,
    decode_tokens_per_s: newTokens > 1 ? (batch * (newTokens - 1)) / decodeS : 0,
    peak_bytes: options.device === 'cuda' ? memory.peak() : process.resourceUsage().maxRSS * 1024,
    prefill_s: prefillS,
    decode_s: decodeS,
    threads: loadNative(options.device).info().threads,
  };
}
