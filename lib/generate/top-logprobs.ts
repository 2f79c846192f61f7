/**
 * The most likely tokens of a logits row and their log-probabilities, log softmax(logits)[v]
 * = logits[v] - logsumexp(logits), of the raw logits: before the repetition penalty, temperature
 * and truncation, as OpenAI's `top_logprobs` and vLLM's default raw log-probs report them. The
 * logsumexp comes from the sampler, which already took it (f64 sums) for the sampled token's
 * log-prob; what is left is one k-best scan over the vocabulary, paid only by rows whose request
 * asks for alternatives.
 */

export interface TokenLogprob {
  token: number;
  logprob: number;
}

/**
 * The k largest logits' tokens, most likely first (equal logits: the lower id first, as a stable
 * sort of the vocabulary would give), with their log-probabilities against `lse`, the row's
 * logsumexp.
 */
export function topLogprobs(logits: Float32Array, k: number, lse: number): TokenLogprob[] {
  const count = Math.min(k, logits.length);
  if (count <= 0) return [];
  // A sorted list of at most k candidates: k <= 20, so insertion beats a heap.
  const ids: number[] = [];
  const values: number[] = [];
  for (let v = 0; v < logits.length; v++) {
    const value = logits[v];
    if (ids.length === count && !(value > values[count - 1])) continue;
    if (Number.isNaN(value)) continue;
    let at = ids.length;
    while (at > 0 && values[at - 1] < value) at--;
    ids.splice(at, 0, v);
    values.splice(at, 0, value);
    if (ids.length > count) {
      ids.pop();
      values.pop();
    }
  }
  return ids.map((token, i) => ({ token, logprob: values[i] - lse }));
}
