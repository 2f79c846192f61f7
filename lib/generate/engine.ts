/**
 * The generation engine: sequences join and leave a running batch at token boundaries
 * (continuous batching) over the model's KvCache (native/model/generation.h). Each step is one
 * native extend call: prompts waiting to start are prefilled first (fresh prompts of any length
 * together, in chunks of at most maxTokens tokens), otherwise every running sequence advances by
 * one token. Tokens are sampled on the host (lib/model/sampling.ts), each sequence with its own
 * seed and settings. A sequence ends at a stop token, a stop string, max_new_tokens or the
 * context, or when its AbortSignal fires; its slot is then free for the next one.
 */
import type { HfTokenizer } from '../data/tokenizer.js';
import { UsageError, ZnError } from '../errors.js';
import { generationMemory, type MistralModel } from '../model/model.js';
import { sampleTokens, type TokenSampling } from '../model/sampling.js';
import { CompletionText } from './text.js';
import { topLogprobs, type TokenLogprob } from './top-logprobs.js';

export type { TokenLogprob } from './top-logprobs.js';

export type FinishReason = 'stop' | 'length';

/**
 * What a stream yields: each new token with the text it adds (possibly empty: text waits while it
 * may still be part of a character or a stop string), and at the end any text still held back
 * (token null).
 */
export interface GeneratedToken {
  token: number | null;
  /** log p(token) under the model (before any sampling processor); null with token. */
  logprob: number | null;
  /** The request's topLogprobs most likely tokens at this step (same raw distribution); [] when it asks for none. */
  top: TokenLogprob[];
  text: string;
}

export interface Completion {
  text: string;
  tokenIds: number[];
  logprobs: number[];
  /** Per token, the most likely alternatives (empty lists unless the request asked for topLogprobs). */
  topLogprobs: TokenLogprob[][];
  finishReason: FinishReason;
  promptTokens: number;
}

export interface SequenceRequest {
  promptIds: number[];
  sampling: TokenSampling;
  maxNewTokens: number;
  stopTokenIds: readonly number[];
  stop: readonly string[];
  /** Most likely tokens to report per step, with their log-probabilities (default 0). */
  topLogprobs?: number;
  signal?: AbortSignal;
}

export interface EngineOptions {
  /** Sequences decoded at once (KvCache slots). */
  maxSequences: number;
  /** Positions a sequence may reach, prompt included (default: max_position_embeddings). */
  maxContext?: number;
}

/** One sequence's state, from its request to its last token. */
class Sequence {
  slot = -1;
  /** Prompt tokens not yet given to the model. */
  pending: number[];
  readonly history: number[];
  readonly text: CompletionText;
  readonly generated: number[] = [];
  readonly logprobs: number[] = [];
  readonly topLogprobs: TokenLogprob[][] = [];
  finishReason: FinishReason | null = null;
  error: unknown = null;
  /** Tokens (and the end) waiting for the stream's consumer. */
  readonly queue: GeneratedToken[] = [];
  wake: (() => void) | null = null;

  constructor(
    readonly request: SequenceRequest,
    tokenizer: HfTokenizer,
  ) {
    this.pending = [...request.promptIds];
    this.history = [...request.promptIds];
    this.text = new CompletionText(tokenizer, request.stop);
  }

  get done(): boolean {
    return this.finishReason !== null || this.error !== null;
  }

  notify(): void {
    const wake = this.wake;
    this.wake = null;
    wake?.();
  }
}

export class GenerationEngine {
  private readonly waiting: Sequence[] = [];
  /** Every step's logits land here: [maxSequences x vocab], allocated once. */
  private readonly logits: Float32Array;
  private readonly running: Sequence[] = [];
  private pumping = false;

  private constructor(
    readonly model: MistralModel,
    readonly tokenizer: HfTokenizer,
    readonly maxSequences: number,
    readonly maxContext: number,
    /** Bytes of the KvCache (and the GPU's per-call arrays), planned before allocating. */
    readonly cacheBytes: number,
  ) {
    this.logits = new Float32Array(maxSequences * model.config.vocabSize);
  }

  /** The cache's plan, as the trainer prints its memory plan. */
  get cachePlan(): string {
    const c = this.model.config;
    const positions = Math.min(c.slidingWindow ?? this.maxContext, this.maxContext);
    const mib = (this.cacheBytes / 2 ** 20).toFixed(1);
    return `generation cache: ${mib} MiB (${this.maxSequences} sequences x ${positions} positions x ${c.numHiddenLayers} layers of keys and values; context ${this.maxContext})`;
  }

  /** Allocates the model's KvCache for `maxSequences` sequences of up to `maxContext` positions. */
  static async create(model: MistralModel, tokenizer: HfTokenizer, options: EngineOptions): Promise<GenerationEngine> {
    const maxContext = options.maxContext ?? model.config.maxPositionEmbeddings;
    if (!Number.isInteger(options.maxSequences) || options.maxSequences < 1) {
      throw new UsageError(`generation: the batch size must be an integer >= 1, got ${options.maxSequences}`);
    }
    if (options.maxSequences > model.maxTokens) {
      throw new UsageError(`generation: ${options.maxSequences} sequences at once need a model loaded with maxTokens >= ${options.maxSequences} (it has ${model.maxTokens})`);
    }
    if (!Number.isInteger(maxContext) || maxContext < 2) throw new UsageError(`generation: the context must be an integer >= 2, got ${maxContext}`);
    const { device, dtype, maxTokens } = model.options;
    const bytes = generationMemory(model.config, { device, dtype, maxTokens, sequences: options.maxSequences, maxContext });
    await model.startGeneration(options.maxSequences, maxContext);
    return new GenerationEngine(model, tokenizer, options.maxSequences, maxContext, bytes);
  }

  /** Streams one sequence's tokens; the iterator ends with the sequence (see `completion`). */
  async *stream(request: SequenceRequest): AsyncGenerator<GeneratedToken, Completion> {
    const sequence = this.admit(request);
    while (true) {
      while (sequence.queue.length > 0) yield sequence.queue.shift()!;
      if (sequence.error !== null) throw sequence.error;
      if (sequence.done) return this.completion(sequence);
      await new Promise<void>((resolve) => (sequence.wake = resolve));
    }
  }

  /** Runs one sequence to its end. */
  async complete(request: SequenceRequest): Promise<Completion> {
    const tokens = this.stream(request);
    for (;;) {
      const next = await tokens.next();
      if (next.done) return next.value;
    }
  }

  private completion(sequence: Sequence): Completion {
    return {
      text: sequence.text.value,
      tokenIds: [...sequence.generated],
      logprobs: [...sequence.logprobs],
      topLogprobs: [...sequence.topLogprobs],
      finishReason: sequence.finishReason!,
      promptTokens: sequence.request.promptIds.length,
    };
  }

  private admit(request: SequenceRequest): Sequence {
    const prompt = request.promptIds;
    if (prompt.length === 0) throw new UsageError('generation: the prompt is empty');
    if (prompt.length >= this.maxContext) {
      throw new UsageError(`generation: the prompt has ${prompt.length} tokens; the context holds ${this.maxContext} (max_position_embeddings), leaving no room for a new token`);
    }
    const vocab = this.model.config.vocabSize;
    const bad = prompt.findIndex((id) => !Number.isInteger(id) || id < 0 || id >= vocab);
    if (bad >= 0) throw new UsageError(`generation: prompt token ${bad} is ${prompt[bad]}, outside the vocabulary [0, ${vocab})`);
    const top = request.topLogprobs ?? 0;
    if (!Number.isInteger(top) || top < 0) throw new UsageError(`generation: top_logprobs must be an integer >= 0, got ${top}`);
    request.signal?.throwIfAborted();
    const sequence = new Sequence(request, this.tokenizer);
    this.waiting.push(sequence);
    void this.pump();
    return sequence;
  }

  /** Steps while any sequence waits or runs; one pump at a time drives the model. */
  private async pump(): Promise<void> {
    if (this.pumping) return;
    this.pumping = true;
    try {
      while (this.waiting.length > 0 || this.running.length > 0) {
        this.dropAborted();
        this.startWaiting();
        if (this.running.length === 0) break;
        await this.step();
      }
    } catch (error) {
      // A failed model call ends every sequence in flight with the error.
      for (const sequence of [...this.running, ...this.waiting]) this.fail(sequence, error);
    } finally {
      this.pumping = false;
    }
  }

  private dropAborted(): void {
    for (const sequence of [...this.running, ...this.waiting]) {
      if (sequence.request.signal?.aborted) this.fail(sequence, sequence.request.signal.reason);
    }
  }

  private startWaiting(): void {
    while (this.waiting.length > 0) {
      const slot = this.model.acquireSequence();
      if (slot < 0) return;
      const sequence = this.waiting.shift()!;
      sequence.slot = slot;
      this.running.push(sequence);
    }
  }

  /** One extend call: prefill chunks if any prompt is pending, else one token for each sequence. */
  private async step(): Promise<void> {
    const prefilling = this.running.filter((s) => s.pending.length > 0);
    const batch = prefilling.length > 0 ? this.prefillChunks(prefilling) : this.running.map((s) => ({ sequence: s, tokens: [s.generated.at(-1)!] }));
    const slots = Int32Array.from(batch, (b) => b.sequence.slot);
    const counts = Int32Array.from(batch, (b) => b.tokens.length);
    const tokens = Int32Array.from(batch.flatMap((b) => b.tokens));
    if (prefilling.length > 0) for (const b of batch) b.sequence.pending = b.sequence.pending.slice(b.tokens.length);
    const vocab = this.model.config.vocabSize;
    const logits = await this.model.extend(slots, counts, tokens, this.logits.subarray(0, batch.length * vocab));
    const ready = batch.map((b, row) => ({ ...b, row })).filter((b) => b.sequence.pending.length === 0);
    if (ready.length === 0) return;
    // Decoding steps sample every row; prefill steps only the prompts they finished.
    let rows = logits;
    if (ready.length < batch.length) {
      rows = new Float32Array(ready.length * vocab);
      ready.forEach((b, i) => rows.set(logits.subarray(b.row * vocab, (b.row + 1) * vocab), i * vocab));
    }
    const sampled = sampleTokens(
      rows,
      vocab,
      ready.map((b) => ({ sampling: b.sequence.request.sampling, history: b.sequence.history, draw: b.sequence.generated.length })),
    );
    ready.forEach((b, i) => {
      const token = sampled.tokens[i];
      const logprob = sampled.logprobs[i];
      const k = b.sequence.request.topLogprobs ?? 0;
      if (k === 0) return this.accept(b.sequence, token, logprob, []);
      // The sampler's log-prob is logits[token] - logsumexp: the alternatives use the same
      // logsumexp, and the sampled token among them reports the very same value.
      const row = rows.subarray(i * vocab, (i + 1) * vocab);
      const top = topLogprobs(row, k, row[token] - logprob).map((alt) => (alt.token === token ? { token, logprob } : alt));
      this.accept(b.sequence, token, logprob, top);
    });
  }

  /**
   * The next prompt chunks within maxTokens: fresh prompts go in a call of their own (they attend
   * over their own keys, any length); a prompt already started continues up to the cache's free
   * rows, or one token a call once its window is full.
   */
  private prefillChunks(prefilling: Sequence[]): { sequence: Sequence; tokens: number[] }[] {
    const fresh = prefilling.filter((s) => s.pending.length === s.request.promptIds.length);
    let budget = this.model.maxTokens;
    const chunks: { sequence: Sequence; tokens: number[] }[] = [];
    if (fresh.length > 0) {
      for (const sequence of fresh) {
        if (budget === 0) break;
        const count = Math.min(sequence.pending.length, budget);
        chunks.push({ sequence, tokens: sequence.pending.slice(0, count) });
        budget -= count;
      }
      return chunks;
    }
    const window = this.model.config.slidingWindow ?? this.maxContext;
    const capacity = Math.min(window, this.maxContext);
    for (const sequence of prefilling) {
      if (budget === 0) break;
      const length = sequence.request.promptIds.length - sequence.pending.length;
      const room = length >= capacity ? 1 : capacity - length;
      const count = Math.min(sequence.pending.length, room, budget);
      chunks.push({ sequence, tokens: sequence.pending.slice(0, count) });
      budget -= count;
    }
    return chunks;
  }

  private accept(sequence: Sequence, token: number, logprob: number, top: TokenLogprob[]): void {
    const { request } = sequence;
    if (request.stopTokenIds.includes(token)) return this.finish(sequence, 'stop');
    sequence.generated.push(token);
    sequence.logprobs.push(logprob);
    sequence.topLogprobs.push(top);
    sequence.history.push(token);
    const text = sequence.text.push(token);
    sequence.queue.push({ token, logprob, top, text });
    if (sequence.text.stopped) return this.finish(sequence, 'stop');
    const positions = request.promptIds.length + sequence.generated.length;
    if (sequence.generated.length >= request.maxNewTokens || positions >= this.maxContext) return this.finish(sequence, 'length');
    sequence.notify();
  }

  private finish(sequence: Sequence, reason: FinishReason): void {
    const rest = sequence.text.finish();
    if (rest) sequence.queue.push({ token: null, logprob: null, top: [], text: rest });
    sequence.finishReason = reason;
    this.leave(sequence);
  }

  private fail(sequence: Sequence, error: unknown): void {
    sequence.error = error ?? new ZnError('generation: the sequence was aborted');
    this.leave(sequence);
  }

  private leave(sequence: Sequence): void {
    const running = this.running.indexOf(sequence);
    if (running >= 0) {
      this.running.splice(running, 1);
      this.model.releaseSequence(sequence.slot);
    }
    const waiting = this.waiting.indexOf(sequence);
    if (waiting >= 0) this.waiting.splice(waiting, 1);
    sequence.notify();
  }
}
