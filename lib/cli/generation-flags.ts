/**
 * The sampling flags `generate` and `chat` share, with transformers' generate names. A flag left
 * out keeps the model folder's generation_config.json value (lib/generate/options.ts).
 */
import type { Argv } from 'yargs';

import type { GenerationOptions } from '../generate/options.js';

export interface GenerationFlags {
  max_new_tokens?: number;
  do_sample?: boolean;
  temperature?: number;
  top_k?: number;
  top_p?: number;
  min_p?: number;
  repetition_penalty?: number;
  seed?: number;
}

export function withGenerationFlags<T>(yargs: Argv<T>, seedHelp: string): Argv<T & GenerationFlags> {
  return yargs
    .option('max_new_tokens', { type: 'number', describe: 'New tokens at most (default: generation_config.json, else 512)' })
    .option('do_sample', { type: 'boolean', describe: 'Sample instead of greedy (default: generation_config.json; a --temperature above 0 samples)' })
    .option('temperature', { type: 'number', describe: 'Sampling temperature (0: greedy; default: generation_config.json, else 1)' })
    .option('top_k', { type: 'number', describe: 'Keep the k most likely tokens; 0 keeps all (default 50)' })
    .option('top_p', { type: 'number', describe: 'Nucleus sampling: the smallest set of tokens with this probability, in (0, 1] (default 1)' })
    .option('min_p', { type: 'number', describe: 'Drop tokens below min_p x the most likely one, in [0, 1] (default 0)' })
    .option('repetition_penalty', { type: 'number', describe: 'Penalty > 0 on tokens already in the sequence (default 1: none)' })
    .option('seed', { type: 'number', describe: seedHelp }) as Argv<T & GenerationFlags>;
}

/** The sampling flags given, as GenerationOptions (the others stay undefined: the folder's defaults apply). */
export function generationOptions(args: GenerationFlags): GenerationOptions {
  return {
    maxNewTokens: args.max_new_tokens,
    doSample: args.do_sample,
    temperature: args.temperature,
    topK: args.top_k,
    topP: args.top_p,
    minP: args.min_p,
    repetitionPenalty: args.repetition_penalty,
    seed: args.seed,
  };
}
