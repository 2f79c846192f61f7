/**
 * Greedy decoding of chat completions: each prompt rendered with the chat template and its
 * generation prompt (no BOS added to templated text, as TRL tokenizes it), then the most likely
 * next token appended until EOS or `maxNewTokens`. All prompts advance together as documents of
 * one packed batch; only [prompts x vocab] logits ever exist.
 */
import { IGNORE_INDEX, type TokenBatch } from '../data/batch.js';
import type { ChatTemplate } from '../data/chat-template.js';
import type { HfTokenizer } from '../data/tokenizer.js';
import type { MistralModel } from './model.js';

function batchOf(sequences: number[][]): TokenBatch {
  const total = sequences.reduce((n, s) => n + s.length, 0);
  const batch: TokenBatch = {
    inputIds: new Int32Array(total),
    positionIds: new Int32Array(total),
    targets: new Int32Array(total).fill(IGNORE_INDEX),
    cuSeqlens: new Int32Array(sequences.length + 1),
  };
  let offset = 0;
  sequences.forEach((sequence, d) => {
    batch.inputIds.set(sequence, offset);
    sequence.forEach((_, t) => (batch.positionIds[offset + t] = t));
    offset += sequence.length;
    batch.cuSeqlens[d + 1] = offset;
  });
  return batch;
}

function argmax(values: Float32Array, begin: number, end: number): number {
  let best = begin;
  for (let i = begin + 1; i < end; i++) if (values[i] > values[best]) best = i;
  return best - begin;
}

export async function greedyChat(
  model: MistralModel,
  tokenizer: HfTokenizer,
  template: ChatTemplate,
  prompts: string[],
  maxNewTokens = 32,
): Promise<string[]> {
  const vocab = model.config.vocabSize;
  const eos = tokenizer.eosTokenId;
  const sequences = prompts.map((prompt) =>
    tokenizer.encode(template.render([{ role: 'user', content: prompt }], { addGenerationPrompt: true }), { addSpecialTokens: false }),
  );
  const completions: number[][] = prompts.map(() => []);
  const active = new Set(prompts.map((_, i) => i));
  for (let step = 0; step < maxNewTokens && active.size > 0; step++) {
    const order = [...active];
    const logits = await model.nextTokenLogits(batchOf(order.map((i) => sequences[i])));
    order.forEach((i, row) => {
      const next = argmax(logits, row * vocab, (row + 1) * vocab);
      if (next === eos) {
        active.delete(i);
        return;
      }
      sequences[i].push(next);
      completions[i].push(next);
    });
  }
  return completions.map((ids) => tokenizer.decode(ids, { skipSpecialTokens: true }).trim());
}
