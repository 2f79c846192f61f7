/**
 * Prompts to completions: what the library, `generate`, `chat` and `serve` call. A conversation
 * (ChatMessage[]) is rendered with the chat template and its generation prompt, no BOS added to
 * the templated text (as in training); a string is raw text, tokenized as transformers'
 * tokenizer(text) does (with the tokenizer's BOS). Options default to the model folder's
 * generation_config.json (lib/generate/options.ts).
 */
import { chatTemplateOf } from '../data/load.js';
import type { ChatMessage, ChatTemplate } from '../data/chat-template.js';
import type { HfTokenizer } from '../data/tokenizer.js';
import { readGenerationConfig } from '../model/folder.js';
import type { MistralModel } from '../model/model.js';
import { GenerationEngine, type Completion, type GeneratedToken, type SequenceRequest } from './engine.js';
import { optionsFromGenerationConfig, resolveGeneration, type GenerationOptions } from './options.js';

export type GenerationInput = string | ChatMessage[];

export interface RequestOptions extends GenerationOptions {
  /** Ends the request at the next token boundary, freeing its sequences' slots. */
  signal?: AbortSignal;
  /** Most likely alternatives to report per token, with their log-probabilities (default 0). */
  topLogprobs?: number;
}

export interface GeneratorOptions {
  /** Sequences decoded at once (default 8). */
  batchSize?: number;
  /** Positions a sequence may reach, prompt included (default max_position_embeddings). */
  maxContext?: number;
  /** The chat template conversations are rendered with (default: the tokenizer's). */
  template?: ChatTemplate;
}

export class Generator {
  private readonly defaults: Record<string, unknown> | null;

  private constructor(
    readonly engine: GenerationEngine,
    readonly tokenizer: HfTokenizer,
    readonly template: ChatTemplate,
  ) {
    this.defaults = readGenerationConfig(engine.model.dir);
  }

  static async create(model: MistralModel, tokenizer: HfTokenizer, options: GeneratorOptions = {}): Promise<Generator> {
    const engine = await GenerationEngine.create(model, tokenizer, { maxSequences: options.batchSize ?? 8, maxContext: options.maxContext });
    return new Generator(engine, tokenizer, options.template ?? chatTemplateOf(tokenizer));
  }

  /** The token ids a prompt or conversation is given to the model as. */
  promptIds(input: GenerationInput): number[] {
    return promptIds(this.tokenizer, this.template, input);
  }

  /** Completions of every input (numReturnSequences each), all decoded together. */
  async generate(inputs: GenerationInput[], options: RequestOptions = {}): Promise<Completion[][]> {
    return Promise.all(inputs.map((input) => Promise.all(this.requests(input, options).map((request) => this.engine.complete(request)))));
  }

  /** One completion's tokens and text as they come; returns the completion. */
  stream(input: GenerationInput, options: RequestOptions = {}): AsyncGenerator<GeneratedToken, Completion> {
    const [request] = this.requests(input, { ...options, numReturnSequences: 1 });
    return this.engine.stream(request);
  }

  private requests(input: GenerationInput, options: RequestOptions): SequenceRequest[] {
    return this.sequenceRequests(this.promptIds(input), options);
  }

  /**
   * The engine's requests for a prompt already tokenized: numReturnSequences of them (seeds seed,
   * seed + 1, ...), options resolved over generation_config.json. A bad option is a UsageError
   * naming it.
   */
  sequenceRequests(promptIds: number[], options: RequestOptions = {}): SequenceRequest[] {
    const eos = this.tokenizer.eosTokenId;
    const defaults = optionsFromGenerationConfig(this.defaults, promptIds.length);
    if (eos !== null) defaults.stopTokenIds = [...(defaults.stopTokenIds ?? []), eos];
    const resolved = resolveGeneration(options, defaults);
    return Array.from({ length: resolved.numReturnSequences }, (_, i) => ({
      promptIds,
      sampling: { ...resolved.sampling, seed: resolved.seed + i },
      maxNewTokens: resolved.maxNewTokens,
      stopTokenIds: resolved.stopTokenIds,
      stop: resolved.stop,
      topLogprobs: options.topLogprobs,
      signal: options.signal,
    }));
  }
}

/**
 * The token ids a prompt or conversation is given to a model as (no model needed: `generate`
 * checks prompt lengths for every model before loading any).
 */
export function promptIds(tokenizer: HfTokenizer, template: ChatTemplate, input: GenerationInput): number[] {
  if (typeof input === 'string') return tokenizer.encode(input, { addSpecialTokens: true });
  const text = template.render(input, { addGenerationPrompt: true });
  return tokenizer.encode(text, { addSpecialTokens: false });
}

/** Greedy completions of user prompts, each a one-message conversation (the demo's samples). */
export async function greedyChat(
  model: MistralModel,
  tokenizer: HfTokenizer,
  template: ChatTemplate,
  prompts: string[],
  maxNewTokens = 32,
): Promise<string[]> {
  const generator = await Generator.create(model, tokenizer, { batchSize: Math.min(prompts.length, model.maxTokens), template });
  const completions = await generator.generate(
    prompts.map((content) => [{ role: 'user', content }]),
    { maxNewTokens, doSample: false },
  );
  return completions.map(([completion]) => completion.text.trim());
}
