/**
 * OpenAI request bodies: their JSON schemas (checked by the HTTP layer before a handler runs, no
 * type coercion: a string where a number belongs is a 400) and their translation into a
 * generation input and options. Fields OpenAI defines that change nothing here (user, metadata,
 * ...) are accepted and ignored; ones that would change the answer and are not implemented
 * (top_logprobs > 0, penalties, tools) are a 400 naming them.
 */
import type { ChatMessage } from '../data/chat-template.js';
import type { GenerationInput, RequestOptions } from '../generate/generate.js';
import { badRequest } from './api-error.js';

const nullable = (schema: Record<string, unknown>) => ({ anyOf: [schema, { type: 'null' }] });
const maxTokens = nullable({ type: 'integer', minimum: 1 });

/** Sampling fields shared by both endpoints (top_k, min_p, repetition_penalty as vLLM names them). */
const samplingProperties = {
  model: { type: 'string' },
  max_tokens: maxTokens,
  temperature: nullable({ type: 'number', minimum: 0, maximum: 2 }),
  top_p: nullable({ type: 'number', exclusiveMinimum: 0, maximum: 1 }),
  top_k: nullable({ type: 'integer', minimum: -1 }),
  min_p: nullable({ type: 'number', minimum: 0, maximum: 1 }),
  repetition_penalty: nullable({ type: 'number', exclusiveMinimum: 0 }),
  n: nullable({ type: 'integer', minimum: 1 }),
  stop: { anyOf: [{ type: 'string' }, { type: 'array', items: { type: 'string', minLength: 1 }, maxItems: 16 }, { type: 'null' }] },
  seed: nullable({ type: 'integer', minimum: 0, maximum: Number.MAX_SAFE_INTEGER }),
  stream: nullable({ type: 'boolean' }),
  stream_options: nullable({ type: 'object', properties: { include_usage: { type: 'boolean' } } }),
  frequency_penalty: nullable({ type: 'number', minimum: -2, maximum: 2 }),
  presence_penalty: nullable({ type: 'number', minimum: -2, maximum: 2 }),
} as const;

const contentPart = { type: 'object', required: ['type'], properties: { type: { type: 'string' }, text: { type: 'string' } } };

export const chatCompletionSchema = {
  type: 'object',
  required: ['messages'],
  properties: {
    ...samplingProperties,
    max_completion_tokens: maxTokens,
    messages: {
      type: 'array',
      minItems: 1,
      items: {
        type: 'object',
        required: ['role'],
        properties: {
          role: { type: 'string', enum: ['system', 'developer', 'user', 'assistant'] },
          content: { anyOf: [{ type: 'string' }, { type: 'array', items: contentPart }, { type: 'null' }] },
        },
      },
    },
    logprobs: nullable({ type: 'boolean' }),
    top_logprobs: nullable({ type: 'integer', minimum: 0, maximum: 20 }),
  },
} as const;

export const completionSchema = {
  type: 'object',
  required: ['prompt'],
  properties: {
    ...samplingProperties,
    prompt: { type: 'string', minLength: 1 },
    logprobs: nullable({ type: 'integer', minimum: 0, maximum: 5 }),
    echo: nullable({ type: 'boolean' }),
  },
} as const;

interface SamplingBody {
  model?: string;
  max_tokens?: number | null;
  temperature?: number | null;
  top_p?: number | null;
  top_k?: number | null;
  min_p?: number | null;
  repetition_penalty?: number | null;
  n?: number | null;
  stop?: string | string[] | null;
  seed?: number | null;
  stream?: boolean | null;
  stream_options?: { include_usage?: boolean } | null;
  frequency_penalty?: number | null;
  presence_penalty?: number | null;
  tools?: unknown;
}

export interface ChatCompletionBody extends SamplingBody {
  max_completion_tokens?: number | null;
  messages: { role: string; content?: string | { type: string; text?: string }[] | null }[];
  logprobs?: boolean | null;
  top_logprobs?: number | null;
}

export interface CompletionBody extends SamplingBody {
  prompt: string;
  logprobs?: number | null;
  echo?: boolean | null;
}

/** What a handler runs: the input, its options, and how to answer. */
export interface GenerationCall {
  input: GenerationInput;
  options: RequestOptions;
  n: number;
  stream: boolean;
  includeUsage: boolean;
  logprobs: boolean;
}

function unsupported(param: string, what: string): never {
  throw badRequest(`${param}: ${what} is not supported by this server`, param, 'unsupported_parameter');
}

function samplingOptions(body: SamplingBody, maxNewTokens: number | null | undefined): RequestOptions {
  if (body.frequency_penalty) unsupported('frequency_penalty', 'a non-zero frequency_penalty');
  if (body.presence_penalty) unsupported('presence_penalty', 'a non-zero presence_penalty');
  if (body.tools !== undefined && body.tools !== null) unsupported('tools', 'tool calling');
  const stop = body.stop === undefined || body.stop === null ? undefined : typeof body.stop === 'string' ? [body.stop] : body.stop;
  if (stop?.some((s) => s.length === 0)) throw badRequest('stop: a stop string must not be empty', 'stop');
  return {
    maxNewTokens: maxNewTokens ?? undefined,
    temperature: body.temperature ?? undefined,
    topP: body.top_p ?? undefined,
    // vLLM's top_k -1 means "all", transformers' 0.
    topK: body.top_k === undefined || body.top_k === null ? undefined : Math.max(0, body.top_k),
    minP: body.min_p ?? undefined,
    repetitionPenalty: body.repetition_penalty ?? undefined,
    stop,
    seed: body.seed ?? undefined,
  };
}

function messageText(content: ChatCompletionBody['messages'][number]['content'], index: number): string {
  if (content === undefined || content === null) return '';
  if (typeof content === 'string') return content;
  return content
    .map((part, p) => {
      if (part.type !== 'text' || typeof part.text !== 'string') unsupported(`messages[${index}].content[${p}]`, `a content part of type ${JSON.stringify(part.type)}`);
      return part.text;
    })
    .join('');
}

export function chatCall(body: ChatCompletionBody): GenerationCall {
  if (body.top_logprobs) unsupported('top_logprobs', 'top_logprobs > 0');
  const messages: ChatMessage[] = body.messages.map((m, i) => ({ role: m.role === 'developer' ? 'system' : m.role, content: messageText(m.content, i) }));
  return {
    input: messages,
    options: samplingOptions(body, body.max_completion_tokens ?? body.max_tokens),
    n: body.n ?? 1,
    stream: body.stream ?? false,
    includeUsage: body.stream_options?.include_usage ?? false,
    logprobs: body.logprobs ?? false,
  };
}

export function completionCall(body: CompletionBody): GenerationCall {
  if (body.echo) unsupported('echo', 'echo');
  if (body.logprobs) unsupported('logprobs', 'logprobs > 0 (alternatives per token)');
  return {
    input: body.prompt,
    // OpenAI's completions default to 16 new tokens.
    options: samplingOptions(body, body.max_tokens ?? 16),
    n: body.n ?? 1,
    stream: body.stream ?? false,
    includeUsage: body.stream_options?.include_usage ?? false,
    logprobs: body.logprobs === 0,
  };
}
