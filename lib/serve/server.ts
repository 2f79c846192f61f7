/**
 * `serve`: OpenAI's chat completions and completions API over the generation engine. Every
 * request's sequences join the engine's running batch (continuous batching: lib/generate/engine.ts)
 * and leave it when they end or their client goes away. Fastify parses the JSON; ./requests.ts
 * checks it against OpenAI's fields and translates it; ./responses.ts shapes the answers. Everything
 * a client can get wrong is an OpenAI error JSON (./api-error.ts), never a crash. A prompt is
 * tokenized once per request, whatever its n. A bounded number of sequences may be in flight
 * (max_batch running + max_queue waiting); beyond it, 429 with Retry-After.
 */
import { randomUUID, timingSafeEqual } from 'node:crypto';
import type { AddressInfo } from 'node:net';
import { createServer as createHttpServer, type ServerResponse } from 'node:http';

import Fastify, { type FastifyError, type FastifyInstance, type FastifyReply, type FastifyRequest } from 'fastify';

import { HfTokenizer } from '../data/tokenizer.js';
import { UsageError } from '../errors.js';
import type { Completion, GeneratedToken, SequenceRequest } from '../generate/engine.js';
import { Generator } from '../generate/generate.js';
import { loadModel, type MistralModel, type ModelDType } from '../model/model.js';
import type { Device } from '../native.js';
import { ApiError, badRequest } from './api-error.js';
import { chatCall, completionCall, type GenerationCall } from './requests.js';
import { chatLogprobs, chatTokenLogprob, completionLogprobs, sseEvent, SSE_DONE, usageOf } from './responses.js';
import { TokenStrings } from './token-strings.js';

export interface ServeOptions {
  /** Default 127.0.0.1. A host other than loopback needs apiKey or insecure. */
  host?: string;
  /** Default 8000; 0 picks a free port. */
  port?: number;
  /** The model name clients send and /v1/models lists (default: the folder's name). */
  servedModelName?: string;
  /** When set, every route but /health needs `Authorization: Bearer <apiKey>`. */
  apiKey?: string;
  /** Allow a non-loopback host without an API key. */
  insecure?: boolean;
  /** Sequences decoded at once (default 8). */
  maxBatch?: number;
  /** Sequences that may wait for a place in the batch (default 64); more get 429. */
  maxQueue?: number;
  /** Completions one request may ask for (n; default 16, at most maxBatch + maxQueue). */
  maxN?: number;
  /** Positions a sequence may reach, prompt included (default max_position_embeddings). */
  maxContext?: number;
  /** Loading a folder: backend and dtype (default cpu, f32). */
  device?: Device;
  dtype?: ModelDType;
  /** The tokenizer (default: the model folder's). */
  tokenizer?: HfTokenizer;
  /** Put the prompt into the access log (default false). */
  logPrompts?: boolean;
  /** Where the access-log lines go (default stderr; null: nowhere). */
  log?: ((line: string) => void) | null;
  /** close(): how long requests in flight may take to finish before they are cut (default 30 s). */
  shutdownTimeoutMs?: number;
  /** Slow senders: a request must arrive whole within this (default 60 s), else 408 and the connection closes. */
  requestTimeoutMs?: number;
}

export interface ZephyrServer {
  /** http://host:port */
  readonly url: string;
  readonly address: AddressInfo;
  readonly servedModelName: string;
  /** The generation cache's plan (bytes, sequences, positions), as `serve` prints it at start. */
  readonly cachePlan: string;
  /** Stop accepting, let requests in flight finish (bounded), free the model if it was loaded here. */
  close(): Promise<void>;
}

const LOOPBACK = /^(localhost|127(\.\d{1,3}){3}|::1|::ffff:127(\.\d{1,3}){3})$/;

interface RequestRecord {
  start: number;
  promptTokens: number;
  completionTokens: number;
  prompt: string | null;
}

function sameSecret(given: string, expected: string): boolean {
  const a = Buffer.from(given);
  const b = Buffer.from(expected);
  return a.length === b.length && timingSafeEqual(a, b);
}

function checkCount(name: string, value: number, min: number): void {
  if (!Number.isSafeInteger(value) || value < min) throw new UsageError(`serve: ${name} must be an integer >= ${min}, got ${value}`);
}

/** The request parameter a generation UsageError names ("generation: top_p must be ..."). */
function paramOf(message: string): string | null {
  const name = /^generation: (?:a )?(\w+)/.exec(message)?.[1];
  const renamed: Record<string, string> = { max_new_tokens: 'max_tokens', num_return_sequences: 'n' };
  return name === undefined ? null : (renamed[name] ?? name);
}

export async function createServer(modelOrDir: string | MistralModel, options: ServeOptions = {}): Promise<ZephyrServer> {
  const host = options.host ?? '127.0.0.1';
  const apiKey = options.apiKey || undefined;
  if (!LOOPBACK.test(host) && !apiKey && !options.insecure) {
    throw new UsageError(`serve: --host ${host} is reachable from other machines; give --api_key (or ZN_SERVE_API_KEY), or --insecure to serve it without a key`);
  }
  const maxBatch = options.maxBatch ?? 8;
  const maxQueue = options.maxQueue ?? 64;
  checkCount('max_batch', maxBatch, 1);
  checkCount('max_queue', maxQueue, 0);
  const maxN = Math.min(options.maxN ?? 16, maxBatch + maxQueue);
  const dir = typeof modelOrDir === 'string' ? modelOrDir : modelOrDir.dir;
  const servedModelName = options.servedModelName ?? (dir.replace(/[\\/]+$/, '').split(/[\\/]/).pop() || 'model');
  const log = options.log === undefined ? (line: string) => process.stderr.write(`${line}\n`) : options.log;
  const created = Math.floor(Date.now() / 1000);

  let generator: Generator | null = null;
  let model: MistralModel | null = typeof modelOrDir === 'string' ? null : modelOrDir;
  let sequencesInFlight = 0;
  const shutdown = new AbortController();
  const records = new WeakMap<FastifyRequest, RequestRecord>();

  // Slow senders: the whole request must arrive within requestTimeout (the response may take
  // longer). Node checks that deadline every connectionsCheckingInterval (30 s by default), so a
  // shorter timeout is checked often enough to hold.
  const requestTimeout = options.requestTimeoutMs ?? 60_000;
  const app: FastifyInstance = Fastify({
    logger: false,
    bodyLimit: 8 * 1024 * 1024,
    return503OnClosing: true,
    serverFactory: (handler) =>
      createHttpServer({ requestTimeout, connectionsCheckingInterval: Math.min(30_000, Math.max(50, requestTimeout / 4)) }, handler),
  });

  app.setErrorHandler((error: FastifyError | ApiError, _request, reply) => {
    if (error instanceof ApiError) return reply.code(error.status).headers(error.headers).send(error.body);
    const status = error.statusCode && error.statusCode >= 400 && error.statusCode < 500 ? error.statusCode : 500;
    const type = status === 500 ? 'server_error' : 'invalid_request_error';
    const message = status === 500 ? `internal error: ${error.message}` : error.message;
    return reply.code(status).send(new ApiError(status, message, type, null, error.code ?? null).body);
  });
  app.setNotFoundHandler((request, reply) => {
    const error = new ApiError(404, `no route ${request.method} ${request.url.split('?')[0]}`, 'not_found_error', null, 'not_found');
    return reply.code(404).send(error.body);
  });

  app.addHook('onRequest', async (request, reply) => {
    const record: RequestRecord = { start: performance.now(), promptTokens: 0, completionTokens: 0, prompt: null };
    records.set(request, record);
    reply.raw.once('close', () => {
      if (!log) return;
      const ms = (performance.now() - record.start).toFixed(1);
      const route = request.routeOptions.url ?? request.url.split('?')[0];
      const cut = reply.raw.writableFinished ? '' : ' (client gone)';
      const prompt = options.logPrompts && record.prompt !== null ? ` prompt=${JSON.stringify(record.prompt)}` : '';
      log(`${request.method} ${route} ${reply.raw.statusCode}${cut} prompt_tokens=${record.promptTokens} completion_tokens=${record.completionTokens} ${ms}ms${prompt}`);
    });
    if (!apiKey || request.url === '/health') return;
    const given = /^Bearer (.+)$/.exec(request.headers.authorization ?? '')?.[1];
    if (given === undefined || !sameSecret(given, apiKey)) {
      throw new ApiError(401, 'invalid or missing API key (Authorization: Bearer <key>)', 'authentication_error', null, 'invalid_api_key');
    }
  });

  app.get('/health', async (_request, reply) => (generator ? { status: 'ok' } : reply.code(503).send({ status: 'loading' })));
  app.get('/v1/models', async () => ({ object: 'list', data: [{ id: servedModelName, object: 'model', created, owned_by: 'zephyr-native' }] }));

  /** The request's prompt ids and engine requests, with a place in the batch (or an ApiError). */
  function admit(request: FastifyRequest, body: { model?: unknown }, call: GenerationCall, promptParam: string): { promptTokens: number; requests: SequenceRequest[] } {
    if (!generator) throw new ApiError(503, 'the model is still loading', 'server_error', null, 'loading', { 'Retry-After': '5' });
    if (body.model !== undefined && body.model !== servedModelName) {
      throw new ApiError(404, `the model ${JSON.stringify(body.model)} does not exist; this server serves ${JSON.stringify(servedModelName)}`, 'not_found_error', 'model', 'model_not_found');
    }
    if (call.n > maxN) throw badRequest(`n must be at most ${maxN}, got ${call.n}`, 'n');
    // Tokenized once: the n sequences share the prompt's ids.
    let promptIds: number[];
    const input = call.input;
    if (typeof input === 'object' && 'tokenIds' in input) {
      promptIds = input.tokenIds;
      const vocab = generator.engine.model.config.vocabSize;
      const bad = promptIds.findIndex((id) => id >= vocab);
      if (bad >= 0) throw badRequest(`prompt: token ${bad} is ${promptIds[bad]}, outside the vocabulary [0, ${vocab})`, promptParam);
    } else {
      try {
        promptIds = generator.promptIds(input);
      } catch (error) {
        throw badRequest(`${promptParam}: cannot render the prompt: ${(error as Error).message}`, promptParam);
      }
    }
    let requests: SequenceRequest[];
    try {
      requests = generator.sequenceRequests(promptIds, call.options);
    } catch (error) {
      if (error instanceof UsageError) throw badRequest(error.message.replace(/^generation: /, ''), paramOf(error.message));
      throw error;
    }
    const promptTokens = promptIds.length;
    if (promptTokens === 0) throw badRequest(`${promptParam}: the prompt is empty`, promptParam);
    const maxContext = generator.engine.maxContext;
    if (promptTokens >= maxContext) {
      throw badRequest(`the prompt has ${promptTokens} tokens; this model's context holds ${maxContext}, leaving no room for an answer`, promptParam, 'context_length_exceeded');
    }
    if (sequencesInFlight + call.n > maxBatch + maxQueue) {
      throw new ApiError(429, `the server is busy (${sequencesInFlight} sequences in flight, room for ${maxBatch + maxQueue}); retry later`, 'rate_limit_error', null, 'server_busy', { 'Retry-After': '1' });
    }
    const record = records.get(request)!;
    record.promptTokens = promptTokens;
    record.prompt = JSON.stringify(call.input);
    return { promptTokens, requests };
  }

  /** The request's n streams, ended by the client leaving or by shutdown's last resort. */
  async function run(
    request: FastifyRequest,
    reply: FastifyReply,
    requests: SequenceRequest[],
    onToken: (index: number, token: GeneratedToken) => void,
  ): Promise<Completion[]> {
    const engine = generator!.engine;
    const client = new AbortController();
    const onClose = (): void => {
      if (!reply.raw.writableFinished) client.abort(new Error('the client went away'));
    };
    reply.raw.once('close', onClose);
    const signal = AbortSignal.any([client.signal, shutdown.signal]);
    const record = records.get(request)!;
    sequencesInFlight += requests.length;
    try {
      // allSettled: the count of sequences in flight drops only once every one has left the batch.
      const settled = await Promise.allSettled(
        requests.map(async (sequence, index) => {
          const tokens = engine.stream({ ...sequence, signal });
          for (;;) {
            const next = await tokens.next();
            if (next.done) return next.value;
            if (next.value.token !== null) record.completionTokens++;
            onToken(index, next.value);
          }
        }),
      );
      const failed = settled.find((s): s is PromiseRejectedResult => s.status === 'rejected');
      if (failed) throw failed.reason;
      return settled.map((s) => (s as PromiseFulfilledResult<Completion>).value);
    } finally {
      sequencesInFlight -= requests.length;
      reply.raw.off('close', onClose);
    }
  }

  let strings: TokenStrings | null = null;

  /** Server-sent events in OpenAI's chunk format, ending with `data: [DONE]`. */
  async function streamEvents(
    request: FastifyRequest,
    reply: FastifyReply,
    call: GenerationCall,
    admitted: { promptTokens: number; requests: SequenceRequest[] },
    chunk: (choices: unknown[], usage?: unknown) => unknown,
    first: ((index: number) => unknown) | null,
    piece: (index: number, token: GeneratedToken) => unknown,
    last: (index: number, reason: string) => unknown,
  ): Promise<void> {
    reply.hijack();
    const raw: ServerResponse = reply.raw;
    raw.writeHead(200, { 'Content-Type': 'text/event-stream', 'Cache-Control': 'no-cache', Connection: 'keep-alive' });
    const send = (data: unknown): void => {
      if (!raw.writableEnded && !raw.destroyed) raw.write(sseEvent(data));
    };
    const usageField = call.includeUsage ? { usage: null } : {};
    if (first) for (let i = 0; i < call.n; i++) send({ ...(chunk([first(i)]) as object), ...usageField });
    try {
      const completions = await run(request, reply, admitted.requests, (index, token) => {
        if (token.text !== '' || (call.logprobs && token.token !== null)) send({ ...(chunk([piece(index, token)]) as object), ...usageField });
      });
      completions.forEach((completion, index) => send({ ...(chunk([last(index, completion.finishReason)]) as object), ...usageField }));
      if (call.includeUsage) send(chunk([], usageOf(admitted.promptTokens, completions)));
    } catch (error) {
      if (raw.destroyed) return;
      const apiError = new ApiError(500, `generation failed: ${(error as Error).message}`, 'server_error');
      send(apiError.body);
    }
    if (!raw.destroyed) raw.end(SSE_DONE);
  }

  app.post('/v1/chat/completions', async (request, reply) => {
    const call = chatCall(request.body);
    const admitted = admit(request, request.body as { model?: unknown }, call, 'messages');
    const id = `chatcmpl-${randomUUID().replaceAll('-', '')}`;
    const base = { id, created: Math.floor(Date.now() / 1000), model: servedModelName, system_fingerprint: null };
    const tokens = strings!;
    if (call.stream) {
      const chunk = (choices: unknown[], usage?: unknown) => ({ ...base, object: 'chat.completion.chunk', choices, ...(usage ? { usage } : {}) });
      return streamEvents(
        request, reply, call, admitted, chunk,
        (index) => ({ index, delta: { role: 'assistant', content: '' }, logprobs: null, finish_reason: null }),
        (index, token) => ({
          index,
          delta: { content: token.text },
          logprobs: call.logprobs ? { content: token.token === null ? [] : [chatTokenLogprob(tokens, token.token, token.logprob!, token.top)], refusal: null } : null,
          finish_reason: null,
        }),
        (index, reason) => ({ index, delta: {}, logprobs: null, finish_reason: reason }),
      );
    }
    const completions = await run(request, reply, admitted.requests, () => {});
    return {
      ...base,
      object: 'chat.completion',
      choices: completions.map((c, index) => ({
        index,
        message: { role: 'assistant', content: c.text, refusal: null },
        logprobs: call.logprobs ? chatLogprobs(tokens, c.tokenIds, c.logprobs, c.topLogprobs) : null,
        finish_reason: c.finishReason,
      })),
      usage: usageOf(admitted.promptTokens, completions),
    };
  });

  app.post('/v1/completions', async (request, reply) => {
    const call = completionCall(request.body);
    const admitted = admit(request, request.body as { model?: unknown }, call, 'prompt');
    const id = `cmpl-${randomUUID().replaceAll('-', '')}`;
    const base = { id, object: 'text_completion', created: Math.floor(Date.now() / 1000), model: servedModelName, system_fingerprint: null };
    const tokens = strings!;
    if (call.stream) {
      const chunk = (choices: unknown[], usage?: unknown) => ({ ...base, choices, ...(usage ? { usage } : {}) });
      // text_offset counts from the start of each choice's completion, across its chunks.
      const offsets = new Array<number>(call.n).fill(0);
      return streamEvents(
        request, reply, call, admitted, chunk, null,
        (index, token) => {
          let logprobs = null;
          if (call.logprobs && token.token !== null) {
            logprobs = completionLogprobs(tokens, [token.token], [token.logprob!], [token.top], offsets[index]);
            offsets[index] += logprobs.tokens[0].length;
          }
          return { index, text: token.text, logprobs, finish_reason: null };
        },
        (index, reason) => ({ index, text: '', logprobs: null, finish_reason: reason }),
      );
    }
    const completions = await run(request, reply, admitted.requests, () => {});
    return {
      ...base,
      choices: completions.map((c, index) => ({
        index,
        text: c.text,
        logprobs: call.logprobs ? completionLogprobs(tokens, c.tokenIds, c.logprobs, c.topLogprobs) : null,
        finish_reason: c.finishReason,
      })),
      usage: usageOf(admitted.promptTokens, completions),
    };
  });

  await app.listen({ host, port: options.port ?? 8000 });
  try {
    const tokenizer = options.tokenizer ?? HfTokenizer.fromFolder(dir);
    model ??= await loadModel(dir, { device: options.device, dtype: options.dtype, maxTokens: Math.max(maxBatch, 2048) });
    generator = await Generator.create(model, tokenizer, { batchSize: maxBatch, maxContext: options.maxContext });
    strings = new TokenStrings(tokenizer);
  } catch (error) {
    await app.close();
    if (typeof modelOrDir === 'string') model?.dispose();
    throw error;
  }
  const address = app.server.address() as AddressInfo;
  const urlHost = address.family === 'IPv6' ? `[${address.address}]` : address.address;

  let closing: Promise<void> | null = null;
  const close = async (): Promise<void> => {
    const closed = app.close();
    const timeoutMs = options.shutdownTimeoutMs ?? 30_000;
    let timer: NodeJS.Timeout | undefined;
    const late = await Promise.race([
      closed.then(() => false),
      new Promise<boolean>((resolve) => (timer = setTimeout(() => resolve(true), timeoutMs))),
    ]);
    clearTimeout(timer);
    if (late) {
      shutdown.abort(new Error('the server is shutting down'));
      app.server.closeAllConnections();
      await closed;
    }
    // Sequences end at a token boundary; the engine's loop is idle once none is in flight.
    while (sequencesInFlight > 0) await new Promise((resolve) => setTimeout(resolve, 10));
    if (typeof modelOrDir === 'string') model?.dispose();
  };
  return {
    url: `http://${urlHost}:${address.port}`,
    address,
    servedModelName,
    cachePlan: generator.engine.cachePlan,
    close: () => (closing ??= close()),
  };
}
