/**
 * OpenAI response pieces: chat and completions log-probs, usage, and the server-sent event
 * lines a stream is made of. Log-probs are the engine's (log softmax of the raw logits); the
 * token strings and bytes come from ./token-strings.ts.
 */
import type { Completion, TokenLogprob } from '../generate/engine.js';
import type { TokenString, TokenStrings } from './token-strings.js';

export interface ChatTokenLogprob extends TokenString {
  logprob: number;
  top_logprobs: (TokenString & { logprob: number })[];
}

/** One token's entry of a chat choice's `logprobs.content`: the token, and its `top` alternatives (most likely first). */
export function chatTokenLogprob(strings: TokenStrings, id: number, logprob: number, top: readonly TokenLogprob[]): ChatTokenLogprob {
  return {
    ...strings.of(id),
    logprob,
    top_logprobs: top.map((alt) => ({ ...strings.of(alt.token), logprob: alt.logprob })),
  };
}

/** A chat choice's `logprobs` for these tokens. */
export function chatLogprobs(strings: TokenStrings, tokenIds: readonly number[], logprobs: readonly number[], tops: readonly TokenLogprob[][]) {
  return { content: tokenIds.map((id, t) => chatTokenLogprob(strings, id, logprobs[t], tops[t] ?? [])), refusal: null };
}

export interface CompletionLogprobs {
  tokens: string[];
  token_logprobs: number[];
  top_logprobs: Record<string, number>[];
  text_offset: number[];
}

/**
 * A completions choice's `logprobs`: per token its text, log-prob, the `logprobs` most likely
 * tokens by text plus the sampled one (OpenAI: "up to logprobs+1 elements"; tokens that read the
 * same keep the likelier one), and its offset in the completion's text, counted from `offset`
 * (a stream's earlier chunks).
 */
export function completionLogprobs(
  strings: TokenStrings,
  tokenIds: readonly number[],
  logprobs: readonly number[],
  tops: readonly TokenLogprob[][],
  offset = 0,
): CompletionLogprobs {
  const tokens = tokenIds.map((id) => strings.of(id).token);
  const textOffset = tokens.map((t) => ((offset += t.length), offset - t.length));
  const topLogprobs = tokenIds.map((id, t) => {
    const entry: Record<string, number> = {};
    for (const alt of tops[t] ?? []) {
      const text = strings.of(alt.token).token;
      if (!(text in entry)) entry[text] = alt.logprob;
    }
    if (!(tokens[t] in entry)) entry[tokens[t]] = logprobs[t];
    return entry;
  });
  return { tokens, token_logprobs: [...logprobs], top_logprobs: topLogprobs, text_offset: textOffset };
}

export function usageOf(promptTokens: number, completions: readonly Completion[]) {
  const completionTokens = completions.reduce((sum, c) => sum + c.tokenIds.length, 0);
  return { prompt_tokens: promptTokens, completion_tokens: completionTokens, total_tokens: promptTokens + completionTokens };
}

/** One server-sent event carrying a JSON chunk. */
export function sseEvent(data: unknown): string {
  return `data: ${JSON.stringify(data)}\n\n`;
}

export const SSE_DONE = 'data: [DONE]\n\n';
