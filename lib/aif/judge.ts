/**
 * A client for an OpenAI-compatible `/v1/chat/completions` endpoint that survives a flaky
 * server: each attempt has a timeout; 429, 5xx, timeouts and network errors are retried with
 * exponential backoff and full jitter (wait = random * min(maxDelay, base * 2^attempt)), or
 * exactly what the server's `Retry-After` says when it sends one. 401/403/404 mean the whole
 * run is misconfigured (key, model or URL) and stop it; other 4xx reject only this request.
 * The API key goes into the Authorization header and nowhere else: no message, log or error
 * ever contains it.
 */
import { ZnError } from '../errors.js';
import type { ChatTurn } from './rubric.js';

export interface JudgeOptions {
  /** Base URL (`https://host/v1`) or the full `.../chat/completions` URL. */
  url: string;
  model: string;
  apiKey?: string;
  /** Per-attempt limit in ms, headers and body together (default 120 s). */
  timeoutMs?: number;
  /** Retries after the first attempt (default 6). */
  maxRetries?: number;
  /** Backoff base and cap in ms (defaults 1 s and 60 s). */
  backoffBaseMs?: number;
  backoffMaxMs?: number;
  /** Longest `Retry-After` honoured, in ms (default 10 min); longer waits are cut to this. */
  retryAfterMaxMs?: number;
  temperature?: number;
  maxTokens?: number;
  /** Source of jitter in [0, 1) (default Math.random). */
  random?: () => number;
  /** Called before each retry's wait. */
  onRetry?: (event: { attempt: number; delayMs: number; reason: string }) => void;
}

/** The run cannot go on (bad key, unknown model, wrong URL). */
export class JudgeConfigError extends ZnError {
  override name = 'JudgeConfigError';
}

/** Retries ran out for one request (the server stayed unavailable). */
export class JudgeUnavailableError extends ZnError {
  override name = 'JudgeUnavailableError';
}

/** The server refused this request for good (a 4xx other than 401/403/404/408/429). */
export class JudgeRejectedError extends ZnError {
  override name = 'JudgeRejectedError';
}

/** Where an OpenAI-compatible server answers chat completions, from what users type. */
export function chatCompletionsUrl(url: string): string {
  const trimmed = url.replace(/\/+$/, '');
  if (/\/chat\/completions$/.test(trimmed)) return trimmed;
  if (/\/v\d+$/.test(trimmed)) return `${trimmed}/chat/completions`;
  return `${trimmed}/v1/chat/completions`;
}

/** The judge's API key from ZN_JUDGE_API_KEY, else OPENAI_API_KEY (undefined when neither is set). */
export function judgeApiKeyFromEnv(env: NodeJS.ProcessEnv = process.env): string | undefined {
  return env.ZN_JUDGE_API_KEY || env.OPENAI_API_KEY || undefined;
}

interface Attempt {
  /** The answer text, or undefined when the attempt should be retried. */
  text?: string;
  retryReason?: string;
  retryAfterMs?: number;
}

export class JudgeClient {
  readonly endpoint: string;
  requests = 0;
  retries = 0;

  constructor(private readonly options: JudgeOptions) {
    this.endpoint = chatCompletionsUrl(options.url);
    try {
      new URL(this.endpoint);
    } catch {
      throw new JudgeConfigError(`judge URL '${options.url}' is not a valid URL`);
    }
  }

  /**
   * The assistant's text for `messages`. A 200 whose body is not a chat completion returns the
   * raw body, so the caller's parser rejects it and keeps it as evidence.
   */
  async complete(messages: ChatTurn[], signal?: AbortSignal): Promise<string> {
    const maxRetries = this.options.maxRetries ?? 6;
    for (let attempt = 0; ; attempt++) {
      signal?.throwIfAborted();
      const result = await this.attempt(messages, signal);
      if (result.text !== undefined) return result.text;
      if (attempt >= maxRetries) {
        throw new JudgeUnavailableError(`judge ${this.endpoint}: gave up after ${attempt + 1} attempts (last: ${result.retryReason})`);
      }
      const delayMs = this.delay(attempt, result.retryAfterMs);
      this.retries++;
      this.options.onRetry?.({ attempt: attempt + 1, delayMs, reason: result.retryReason! });
      await sleep(delayMs, signal);
    }
  }

  private async attempt(messages: ChatTurn[], signal?: AbortSignal): Promise<Attempt> {
    const timeoutMs = this.options.timeoutMs ?? 120_000;
    const timeout = AbortSignal.timeout(timeoutMs);
    const combined = signal ? AbortSignal.any([signal, timeout]) : timeout;
    const headers: Record<string, string> = { 'content-type': 'application/json' };
    if (this.options.apiKey) headers.authorization = `Bearer ${this.options.apiKey}`;
    const body = JSON.stringify({
      model: this.options.model,
      messages,
      temperature: this.options.temperature ?? 0,
      max_tokens: this.options.maxTokens ?? 1024,
    });
    this.requests++;
    let status: number;
    let text: string;
    let retryAfter: string | null;
    try {
      const response = await fetch(this.endpoint, { method: 'POST', headers, body, signal: combined });
      status = response.status;
      retryAfter = response.headers.get('retry-after');
      text = await response.text();
    } catch (error) {
      signal?.throwIfAborted();
      if (timeout.aborted) return { retryReason: `no answer within ${timeoutMs} ms` };
      return { retryReason: `network error: ${networkReason(error)}` };
    }
    if (status === 200) return { text: assistantText(text) };
    const detail = `HTTP ${status}${serverMessage(text)}`;
    if (status === 401 || status === 403) {
      throw new JudgeConfigError(`judge ${this.endpoint} refused the credentials (${detail}); check ZN_JUDGE_API_KEY or OPENAI_API_KEY`);
    }
    if (status === 404) throw new JudgeConfigError(`judge ${this.endpoint}: not found (${detail}); check --judge_url and --judge_model`);
    if (status === 408 || status === 429 || status >= 500) {
      return { retryReason: detail, retryAfterMs: parseRetryAfter(retryAfter) };
    }
    throw new JudgeRejectedError(`judge rejected the request (${detail})`);
  }

  private delay(attempt: number, retryAfterMs: number | undefined): number {
    if (retryAfterMs !== undefined) return Math.min(retryAfterMs, this.options.retryAfterMaxMs ?? 600_000);
    const base = this.options.backoffBaseMs ?? 1000;
    const cap = this.options.backoffMaxMs ?? 60_000;
    const random = this.options.random ?? Math.random;
    return random() * Math.min(cap, base * 2 ** attempt);
  }
}

/** `choices[0].message.content` of a chat completion, or the raw body if it has none. */
function assistantText(body: string): string {
  try {
    const content = JSON.parse(body)?.choices?.[0]?.message?.content;
    if (typeof content === 'string') return content;
  } catch {
    // Not JSON: handed back raw, recorded if it never parses.
  }
  return body;
}

/** A short excerpt of the server's error, for messages (never our request, never headers). */
function serverMessage(body: string): string {
  let message = body;
  try {
    const parsed = JSON.parse(body);
    message = parsed?.error?.message ?? parsed?.message ?? body;
  } catch {
    // plain-text error body
  }
  const oneLine = String(message).replace(/\s+/g, ' ').trim().slice(0, 200);
  return oneLine ? `: ${oneLine}` : '';
}

function networkReason(error: unknown): string {
  const cause = (error as { cause?: { code?: string; message?: string } })?.cause;
  return cause?.code ?? cause?.message ?? (error as Error)?.message ?? String(error);
}

/** `Retry-After` as delta-seconds or an HTTP date, in ms; undefined when absent or unreadable. */
export function parseRetryAfter(value: string | null, now = Date.now()): number | undefined {
  if (value === null || value.trim() === '') return undefined;
  const seconds = Number(value.trim());
  if (Number.isFinite(seconds)) return Math.max(0, seconds * 1000);
  const date = Date.parse(value);
  return Number.isNaN(date) ? undefined : Math.max(0, date - now);
}

function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(signal.reason);
    const timer = setTimeout(() => {
      signal?.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    const onAbort = () => {
      clearTimeout(timer);
      reject(signal!.reason);
    };
    signal?.addEventListener('abort', onAbort, { once: true });
  });
}
