/**
 * OpenAI request bodies: their JSON schemas and their translation into a generation call.
 *
 * Every field OpenAI's API defines for the endpoint is known here and type-checked (no coercion:
 * a string where a number belongs is a 400 naming the field); a field OpenAI does not define is
 * a 400 "Unrecognized request argument supplied: NAME", as OpenAI answers it. Known fields that
 * change nothing here (user, metadata, store, service_tier, prompt caching, prediction,
 * parallel_tool_calls) are accepted and ignored; ones that would change the answer and are not
 * implemented (penalties, logit_bias, tools, JSON modes, audio, best_of, echo, suffix) are a 400
 * naming them when set to anything but their neutral value. vLLM's sampling extensions top_k,
 * min_p and repetition_penalty are known too.
 */
import { Ajv, type ErrorObject } from 'ajv';

import type { ChatMessage } from '../data/chat-template.js';
import type { GenerationInput, RequestOptions } from '../generate/generate.js';
import { badRequest, type ApiError } from './api-error.js';

const nullable = (schema: Record<string, unknown>) => ({ anyOf: [schema, { type: 'null' }] });
const maxTokens = nullable({ type: 'integer', minimum: 1 });
const anyObject = { type: 'object' };
const stringMap = { type: 'object', additionalProperties: { type: 'string' } };

/** Fields shared by both endpoints (top_k, min_p, repetition_penalty as vLLM names them). */
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
  stream_options: nullable({
    type: 'object',
    additionalProperties: false,
    properties: { include_usage: { type: 'boolean' }, include_obfuscation: { type: 'boolean' } },
  }),
  frequency_penalty: nullable({ type: 'number', minimum: -2, maximum: 2 }),
  presence_penalty: nullable({ type: 'number', minimum: -2, maximum: 2 }),
  logit_bias: nullable({ type: 'object', additionalProperties: { type: 'number', minimum: -100, maximum: 100 } }),
  user: { type: 'string' },
} as const;

const contentPart = { type: 'object', required: ['type'], properties: { type: { type: 'string' }, text: { type: 'string' } } };

const message = {
  type: 'object',
  required: ['role'],
  additionalProperties: false,
  properties: {
    role: { type: 'string', enum: ['system', 'developer', 'user', 'assistant', 'tool', 'function'] },
    content: { anyOf: [{ type: 'string' }, { type: 'array', items: contentPart }, { type: 'null' }] },
    name: { type: 'string' },
    refusal: nullable({ type: 'string' }),
    tool_calls: { type: 'array' },
    tool_call_id: { type: 'string' },
    function_call: nullable(anyObject),
    audio: nullable(anyObject),
  },
};

export const chatCompletionSchema = {
  type: 'object',
  required: ['messages'],
  additionalProperties: false,
  properties: {
    ...samplingProperties,
    messages: { type: 'array', minItems: 1, items: message },
    max_completion_tokens: maxTokens,
    logprobs: nullable({ type: 'boolean' }),
    top_logprobs: nullable({ type: 'integer', minimum: 0, maximum: 20 }),
    audio: nullable(anyObject),
    function_call: { anyOf: [{ type: 'string', enum: ['none', 'auto'] }, anyObject] },
    functions: { type: 'array' },
    metadata: nullable(stringMap),
    modalities: nullable({ type: 'array', items: { type: 'string', enum: ['text', 'audio'] } }),
    moderation: nullable(anyObject),
    parallel_tool_calls: { type: 'boolean' },
    prediction: nullable(anyObject),
    prompt_cache_key: nullable({ type: 'string' }),
    prompt_cache_options: anyObject,
    prompt_cache_retention: nullable({ type: 'string', enum: ['in_memory', '24h'] }),
    reasoning_effort: nullable({ type: 'string', enum: ['none', 'minimal', 'low', 'medium', 'high', 'xhigh'] }),
    response_format: { type: 'object', required: ['type'], properties: { type: { type: 'string', enum: ['text', 'json_object', 'json_schema'] } } },
    safety_identifier: nullable({ type: 'string' }),
    service_tier: nullable({ type: 'string', enum: ['auto', 'default', 'flex', 'scale', 'priority'] }),
    store: nullable({ type: 'boolean' }),
    tool_choice: { anyOf: [{ type: 'string', enum: ['none', 'auto', 'required'] }, anyObject] },
    tools: { type: 'array' },
    verbosity: nullable({ type: 'string', enum: ['low', 'medium', 'high'] }),
    web_search_options: anyObject,
  },
} as const;

const tokenIds = { type: 'array', minItems: 1, items: { type: 'integer', minimum: 0 } };

export const completionSchema = {
  type: 'object',
  required: ['prompt'],
  additionalProperties: false,
  properties: {
    ...samplingProperties,
    // A string, token ids, or a list of either (one prompt per request here).
    prompt: { anyOf: [{ type: 'string', minLength: 1 }, tokenIds, { type: 'array', items: { type: 'string' } }, { type: 'array', items: tokenIds }] },
    logprobs: nullable({ type: 'integer', minimum: 0, maximum: 5 }),
    echo: nullable({ type: 'boolean' }),
    best_of: nullable({ type: 'integer', minimum: 1 }),
    suffix: nullable({ type: 'string' }),
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
  logit_bias?: Record<string, number> | null;
}

interface MessageBody {
  role: string;
  content?: string | { type: string; text?: string }[] | null;
  name?: string;
  tool_calls?: unknown[];
  function_call?: unknown;
  audio?: unknown;
}

export interface ChatCompletionBody extends SamplingBody {
  messages: MessageBody[];
  max_completion_tokens?: number | null;
  logprobs?: boolean | null;
  top_logprobs?: number | null;
  audio?: unknown;
  function_call?: string | object;
  functions?: unknown[];
  modalities?: string[] | null;
  moderation?: unknown;
  reasoning_effort?: string | null;
  response_format?: { type: string };
  tool_choice?: string | object;
  tools?: unknown[];
  verbosity?: string | null;
  web_search_options?: unknown;
}

export interface CompletionBody extends SamplingBody {
  prompt: string | number[] | string[] | number[][];
  logprobs?: number | null;
  echo?: boolean | null;
  best_of?: number | null;
  suffix?: string | null;
}

/** What a handler runs: the input, its options, and how to answer. */
export interface GenerationCall {
  /** A conversation, a text, or token ids given to the model as they are. */
  input: GenerationInput | { tokenIds: number[] };
  options: RequestOptions;
  n: number;
  stream: boolean;
  includeUsage: boolean;
  /** Report each token's log-probability. */
  logprobs: boolean;
  /** Alternatives per token (chat top_logprobs, completions logprobs). */
  topLogprobs: number;
}

const ajv = new Ajv({ coerceTypes: false, allErrors: false, removeAdditional: false, useDefaults: false, strict: false });
const validateChat = ajv.compile<ChatCompletionBody>(chatCompletionSchema);
const validateCompletion = ajv.compile<CompletionBody>(completionSchema);

/** messages[0].role from a schema error's /messages/0/role. */
function paramOfSchemaError(error: ErrorObject): string | null {
  const path = error.instancePath.split('/').filter(Boolean);
  const named = (error.params as { missingProperty?: string; additionalProperty?: string });
  const property = named.missingProperty ?? named.additionalProperty;
  if (property) path.push(property);
  return path.reduce((param, part) => (/^\d+$/.test(part) ? `${param}[${part}]` : param ? `${param}.${part}` : part), '') || null;
}

/**
 * The 400 for a body that fails its schema. A field with several allowed forms (stop: a string,
 * a list or null) fails every branch: the message lists what each branch wanted.
 */
export function schemaError(errors: ErrorObject[]): ApiError {
  const unknown = errors.find((e) => e.keyword === 'additionalProperties');
  if (unknown) {
    const param = paramOfSchemaError(unknown);
    const message = unknown.instancePath === '' ? `Unrecognized request argument supplied: ${param}` : `${param}: unrecognized field`;
    return badRequest(message, param, 'unknown_parameter');
  }
  const anyOf = errors.find((e) => e.keyword === 'anyOf');
  // A value of the right form that fails inside it (stream_options.include_usage) names the inner field.
  const inner = anyOf ? errors.find((e) => e.instancePath.length > anyOf.instancePath.length) : undefined;
  if (inner) return schemaError([inner]);
  const branches = anyOf ? errors.filter((e) => e !== anyOf) : errors.slice(0, 1);
  const param = paramOfSchemaError(anyOf ?? errors[0]);
  const message = [...new Set(branches.map((e) => `${paramOfSchemaError(e) ?? 'the body'} ${e.message ?? 'is invalid'}`))].join(', or ');
  return badRequest(message, param, branches.some((e) => e.keyword === 'type') ? 'invalid_type' : 'invalid_value');
}

function checked<T>(validate: ((body: unknown) => body is T) & { errors?: ErrorObject[] | null }, body: unknown): T {
  if (!validate(body)) throw schemaError(validate.errors ?? []);
  return body;
}

function unsupported(param: string, what: string): never {
  throw badRequest(`${param}: ${what} is not supported by this server`, param, 'unsupported_parameter');
}

const isSet = (value: unknown): boolean =>
  value !== undefined && value !== null && !(Array.isArray(value) && value.length === 0) && !(typeof value === 'object' && Object.keys(value).length === 0);

function samplingOptions(body: SamplingBody, maxNewTokens: number | null | undefined): RequestOptions {
  if (body.frequency_penalty) unsupported('frequency_penalty', 'a non-zero frequency_penalty');
  if (body.presence_penalty) unsupported('presence_penalty', 'a non-zero presence_penalty');
  if (isSet(body.logit_bias)) unsupported('logit_bias', 'logit_bias');
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
    numReturnSequences: body.n ?? undefined,
  };
}

function messageText(content: MessageBody['content'], index: number): string {
  if (content === undefined || content === null) return '';
  if (typeof content === 'string') return content;
  return content
    .map((part, p) => {
      if (part.type !== 'text' || typeof part.text !== 'string') unsupported(`messages[${index}].content[${p}]`, `a content part of type ${JSON.stringify(part.type)}`);
      return part.text;
    })
    .join('');
}

function chatMessage(m: MessageBody, i: number): ChatMessage {
  if (m.role === 'tool' || m.role === 'function') unsupported(`messages[${i}].role`, `a ${m.role} message`);
  if (isSet(m.tool_calls)) unsupported(`messages[${i}].tool_calls`, 'tool calls');
  if (isSet(m.function_call)) unsupported(`messages[${i}].function_call`, 'function calls');
  if (isSet(m.audio)) unsupported(`messages[${i}].audio`, 'audio');
  const role = m.role === 'developer' ? 'system' : m.role;
  // The name goes to the chat template as transformers' apply_chat_template passes it (most templates ignore it).
  return m.name === undefined ? { role, content: messageText(m.content, i) } : { role, content: messageText(m.content, i), name: m.name };
}

/** Fields that would change a chat answer and are not implemented: a 400 naming the first one set. */
function refuseUnsupportedChat(body: ChatCompletionBody): void {
  if (isSet(body.tools)) unsupported('tools', 'tool calling');
  if (body.tool_choice !== undefined && body.tool_choice !== 'none' && body.tool_choice !== 'auto') unsupported('tool_choice', 'a tool_choice other than "none" or "auto"');
  if (isSet(body.functions)) unsupported('functions', 'function calling');
  if (body.function_call !== undefined && body.function_call !== 'none' && body.function_call !== 'auto') unsupported('function_call', 'function calling');
  if (body.response_format !== undefined && body.response_format.type !== 'text') unsupported('response_format', `response_format ${JSON.stringify(body.response_format.type)}`);
  if (isSet(body.audio) || body.modalities?.includes('audio')) unsupported(isSet(body.audio) ? 'audio' : 'modalities', 'audio output');
  if (isSet(body.reasoning_effort)) unsupported('reasoning_effort', 'reasoning_effort (this model does not reason)');
  if (isSet(body.verbosity) && body.verbosity !== 'medium') unsupported('verbosity', `verbosity ${JSON.stringify(body.verbosity)}`);
  if (isSet(body.moderation)) unsupported('moderation', 'moderation');
  if (isSet(body.web_search_options)) unsupported('web_search_options', 'web search');
}

/** A chat completions body (parsed JSON) checked and translated; every fault is a 400 ApiError naming its field. */
export function chatCall(json: unknown): GenerationCall {
  const body = checked(validateChat, json);
  refuseUnsupportedChat(body);
  const top = body.top_logprobs ?? 0;
  if (top > 0 && !body.logprobs) throw badRequest('top_logprobs: logprobs must be true when top_logprobs is used', 'top_logprobs');
  return {
    input: body.messages.map(chatMessage),
    options: { ...samplingOptions(body, body.max_completion_tokens ?? body.max_tokens), topLogprobs: top },
    n: body.n ?? 1,
    stream: body.stream ?? false,
    includeUsage: body.stream_options?.include_usage ?? false,
    logprobs: body.logprobs ?? false,
    topLogprobs: top,
  };
}

function completionPrompt(prompt: CompletionBody['prompt']): string | { tokenIds: number[] } {
  if (typeof prompt === 'string') return prompt;
  if (prompt.length === 0) throw badRequest('prompt: the prompt is empty', 'prompt');
  if (typeof prompt[0] === 'number') return { tokenIds: prompt as number[] };
  if (prompt.length !== 1) unsupported('prompt', `a list of ${prompt.length} prompts (send one prompt per request)`);
  const [only] = prompt as (string | number[])[];
  if (only.length === 0) throw badRequest('prompt: the prompt is empty', 'prompt');
  return typeof only === 'string' ? only : { tokenIds: only };
}

/** A completions body (parsed JSON) checked and translated; every fault is a 400 ApiError naming its field. */
export function completionCall(json: unknown): GenerationCall {
  const body = checked(validateCompletion, json);
  if (body.echo) unsupported('echo', 'echo');
  if (isSet(body.suffix)) unsupported('suffix', 'suffix');
  if (isSet(body.best_of) && body.best_of !== 1) unsupported('best_of', 'best_of > 1');
  const logprobs = body.logprobs ?? null;
  return {
    input: completionPrompt(body.prompt),
    // OpenAI's completions default to 16 new tokens.
    options: { ...samplingOptions(body, body.max_tokens ?? 16), topLogprobs: logprobs ?? 0 },
    n: body.n ?? 1,
    stream: body.stream ?? false,
    includeUsage: body.stream_options?.include_usage ?? false,
    logprobs: logprobs !== null,
    topLogprobs: logprobs ?? 0,
  };
}
