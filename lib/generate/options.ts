/**
 * Generation options, with transformers' names and defaults: the model folder's
 * generation_config.json first (do_sample, temperature, top_k, top_p, min_p,
 * repetition_penalty, max_new_tokens or max_length, eos_token_id), then transformers'
 * GenerationConfig defaults (greedy; top_k 50 and top_p 1 when sampling). Two differences:
 * without max_new_tokens or max_length in the folder, at most 512 new tokens (transformers'
 * max_length 20 counts the prompt and would end most chats before they start); and when neither
 * the request nor the folder says do_sample, a request temperature above 0 samples (OpenAI's
 * convention, which `serve` and the CLI flags follow) where transformers would stay greedy.
 */
import { randomInt } from 'node:crypto';

import { UsageError } from '../errors.js';
import type { TokenSampling } from '../model/sampling.js';

export interface GenerationOptions {
  /** New tokens at most (transformers' max_new_tokens). */
  maxNewTokens?: number;
  /** Sample (true) or take the most likely token (false, greedy). */
  doSample?: boolean;
  temperature?: number;
  topK?: number;
  topP?: number;
  minP?: number;
  repetitionPenalty?: number;
  /** The same seed and request give the same tokens on the same device and thread count. */
  seed?: number;
  /** Tokens that end a completion, beside the model's EOS ids (generation_config.json). */
  stopTokenIds?: number[];
  /** Strings that end a completion; the text stops before the first one. */
  stop?: string[];
  /** Completions per prompt (seeds seed, seed + 1, ...). */
  numReturnSequences?: number;
}

export interface ResolvedGeneration {
  maxNewTokens: number;
  sampling: Omit<TokenSampling, 'seed'>;
  seed: number;
  stopTokenIds: number[];
  stop: string[];
  numReturnSequences: number;
}

export const DEFAULT_MAX_NEW_TOKENS = 512;

function numberField(config: Record<string, unknown>, key: string): number | undefined {
  const value = config[key];
  return typeof value === 'number' && Number.isFinite(value) ? value : undefined;
}

/** GenerationOptions as generation_config.json sets them (the defaults a request overrides). */
export function optionsFromGenerationConfig(config: Record<string, unknown> | null, promptTokens = 0): GenerationOptions {
  if (!config) return {};
  const eos = config.eos_token_id;
  const maxLength = numberField(config, 'max_length');
  return {
    doSample: typeof config.do_sample === 'boolean' ? config.do_sample : undefined,
    temperature: numberField(config, 'temperature'),
    topK: numberField(config, 'top_k'),
    topP: numberField(config, 'top_p'),
    minP: numberField(config, 'min_p'),
    repetitionPenalty: numberField(config, 'repetition_penalty'),
    maxNewTokens: numberField(config, 'max_new_tokens') ?? (maxLength === undefined ? undefined : Math.max(1, maxLength - promptTokens)),
    stopTokenIds: typeof eos === 'number' ? [eos] : Array.isArray(eos) ? eos.filter((id): id is number => typeof id === 'number') : undefined,
  };
}

function check(ok: boolean, message: string): void {
  if (!ok) throw new UsageError(`generation: ${message}`);
}

/**
 * The request's options over the defaults, checked: each bad value is a UsageError naming the
 * option. The stop token ids are the union of both.
 */
export function resolveGeneration(request: GenerationOptions, defaults: GenerationOptions = {}): ResolvedGeneration {
  const pick = <K extends keyof GenerationOptions>(key: K): GenerationOptions[K] => request[key] ?? defaults[key];
  const maxNewTokens = pick('maxNewTokens') ?? DEFAULT_MAX_NEW_TOKENS;
  const temperature = pick('temperature') ?? 1;
  const topK = pick('topK') ?? 50;
  const topP = pick('topP') ?? 1;
  const minP = pick('minP') ?? 0;
  const repetitionPenalty = pick('repetitionPenalty') ?? 1;
  const numReturnSequences = pick('numReturnSequences') ?? 1;
  const doSample = pick('doSample') ?? (request.temperature !== undefined && request.temperature > 0);
  check(Number.isInteger(maxNewTokens) && maxNewTokens >= 1, `max_new_tokens must be an integer >= 1, got ${maxNewTokens}`);
  check(Number.isFinite(temperature) && temperature >= 0, `temperature must be >= 0, got ${temperature}`);
  check(Number.isInteger(topK) && topK >= 0, `top_k must be an integer >= 0, got ${topK}`);
  check(topP > 0 && topP <= 1, `top_p must be in (0, 1], got ${topP}`);
  check(minP >= 0 && minP <= 1, `min_p must be in [0, 1], got ${minP}`);
  check(Number.isFinite(repetitionPenalty) && repetitionPenalty > 0, `repetition_penalty must be > 0, got ${repetitionPenalty}`);
  check(Number.isInteger(numReturnSequences) && numReturnSequences >= 1, `num_return_sequences must be an integer >= 1, got ${numReturnSequences}`);
  const stop = pick('stop') ?? [];
  for (const s of stop) check(typeof s === 'string' && s.length > 0, 'a stop string must be a non-empty string');
  const seed = pick('seed') ?? randomInt(2 ** 48 - 1);
  check(Number.isSafeInteger(seed) && seed >= 0, `seed must be an integer in [0, 2^53), got ${seed}`);
  const greedy = !doSample || temperature === 0;
  return {
    maxNewTokens,
    sampling: { temperature: greedy ? 0 : temperature, topK, topP, minP, repetitionPenalty },
    seed,
    stopTokenIds: [...new Set([...(defaults.stopTokenIds ?? []), ...(request.stopTokenIds ?? [])])],
    stop,
    numReturnSequences,
  };
}
