/**
 * The generation engine over the KvCache: greedy decoding equals the argmax continuation that
 * full forwards over the whole sequence give (prompts longer than the sliding window, so the
 * rolling buffer wraps; more prompts than slots, so sequences join as others leave; prompts
 * longer than maxTokens, prefilled in chunks); sampling is deterministic per seed and does not
 * depend on the batch; streams give the text piece by piece; stop strings, abort and bad input.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';

import { IGNORE_INDEX } from '../lib/data/batch.js';
import { writeLlama2TokenizerFolder } from '../lib/data/llama2-tokenizer.js';
import { HfTokenizer } from '../lib/data/tokenizer.js';
import { UsageError } from '../lib/errors.js';
import { GenerationEngine, type SequenceRequest } from '../lib/generate/engine.js';
import { Generator } from '../lib/generate/generate.js';
import { mistralConfig, writeRandomModel } from '../lib/model/init.js';
import { loadModel, type MistralModel } from '../lib/model/model.js';

const work = mkdtempSync(join(tmpdir(), 'zn-engine-'));
after(() => rmSync(work, { recursive: true, force: true }));

const VOCAB = 32000;
const GREEDY = { temperature: 0, topK: 0, topP: 1, minP: 0, repetitionPenalty: 1, seed: 0 };

function argmax(values: Float32Array): number {
  let best = 0;
  for (let i = 1; i < values.length; i++) if (values[i] > values[best]) best = i;
  return best;
}

/** The greedy continuation by full forwards over the whole sequence, one token at a time. */
async function referenceGreedy(model: MistralModel, prompt: number[], newTokens: number): Promise<number[]> {
  const sequence = [...prompt];
  for (let i = 0; i < newTokens; i++) {
    const logits = await model.nextTokenLogits({
      inputIds: Int32Array.from(sequence),
      positionIds: Int32Array.from(sequence, (_, t) => t),
      targets: new Int32Array(sequence.length).fill(IGNORE_INDEX),
      cuSeqlens: Int32Array.from([0, sequence.length]),
    });
    sequence.push(argmax(logits));
  }
  return sequence.slice(prompt.length);
}

function prompt(length: number, seed: number): number[] {
  return Array.from({ length }, (_, i) => 3 + ((seed * 7919 + i * 104729) % (VOCAB - 3)));
}

function request(promptIds: number[], overrides: Partial<SequenceRequest> = {}): SequenceRequest {
  return { promptIds, sampling: GREEDY, maxNewTokens: 10, stopTokenIds: [], stop: [], ...overrides };
}

describe('generation engine', () => {
  let model: MistralModel;
  let tokenizer: HfTokenizer;
  before(async () => {
    writeLlama2TokenizerFolder(join(work, 'tokenizer'));
    const config = mistralConfig({
      vocab_size: VOCAB, hidden_size: 32, intermediate_size: 48, num_hidden_layers: 2, num_attention_heads: 4,
      num_key_value_heads: 2, max_position_embeddings: 96, sliding_window: 8, tie_word_embeddings: false,
      bos_token_id: 1, eos_token_id: 2, initializer_range: 0.5,
    });
    await writeRandomModel(join(work, 'model'), config, { seed: 11, tokenizerDir: join(work, 'tokenizer') });
    model = await loadModel(join(work, 'model'), { maxTokens: 64 });
    tokenizer = HfTokenizer.fromFolder(join(work, 'model'));
  });

  it('greedy equals full forwards token for token, past the window, with more prompts than slots', async () => {
    const engine = await GenerationEngine.create(model, tokenizer, { maxSequences: 2 });
    const prompts = [prompt(13, 1), prompt(3, 2), prompt(21, 3), prompt(9, 4)];
    const completions = await Promise.all(prompts.map((p) => engine.complete(request(p, { maxNewTokens: 12 }))));
    for (const [i, p] of prompts.entries()) {
      assert.deepEqual(completions[i].tokenIds, await referenceGreedy(model, p, 12), `prompt ${i}`);
      assert.equal(completions[i].finishReason, 'length');
      assert.equal(completions[i].promptTokens, p.length);
    }
  });

  it('the cache is bounded by the window: 2 x layers x sequences x min(window, context) x kv heads x head dim x 4 bytes', async () => {
    const engine = await GenerationEngine.create(model, tokenizer, { maxSequences: 3 });
    // 2 layers, 2 kv heads of head_dim 32 / 4 = 8, window 8 (of a 96-token context), f32.
    assert.equal(engine.cacheBytes, 2 * 2 * 3 * 8 * 2 * 8 * 4);
    assert.match(engine.cachePlan, /generation cache: 0\.0 MiB \(3 sequences x 8 positions x 2 layers/);
  });

  it('a prompt longer than maxTokens is prefilled in chunks and decodes the same', async () => {
    const small = await loadModel(join(work, 'model'), { maxTokens: 16 });
    const engine = await GenerationEngine.create(small, tokenizer, { maxSequences: 2 });
    const long = prompt(40, 5);
    const [a, b] = await Promise.all([engine.complete(request(long, { maxNewTokens: 6 })), engine.complete(request(prompt(12, 6), { maxNewTokens: 6 }))]);
    assert.deepEqual(a.tokenIds, await referenceGreedy(model, long, 6));
    assert.deepEqual(b.tokenIds, await referenceGreedy(model, prompt(12, 6), 6));
  });

  it('sampling: a seed gives the same tokens alone or batched; seeds differ; logprobs are the model\'s', async () => {
    const engine = await GenerationEngine.create(model, tokenizer, { maxSequences: 4 });
    const sampling = { temperature: 1.3, topK: 0, topP: 0.95, minP: 0, repetitionPenalty: 1.1, seed: 42 };
    const alone = await engine.complete(request(prompt(7, 7), { sampling, maxNewTokens: 10 }));
    const batched = await Promise.all([
      engine.complete(request(prompt(5, 8), { sampling: { ...sampling, seed: 1 } })),
      engine.complete(request(prompt(7, 7), { sampling, maxNewTokens: 10 })),
      engine.complete(request(prompt(7, 7), { sampling: { ...sampling, seed: 43 }, maxNewTokens: 10 })),
    ]);
    assert.deepEqual(batched[1].tokenIds, alone.tokenIds);
    assert.notDeepEqual(batched[2].tokenIds, alone.tokenIds, 'another seed draws other tokens');
    // logprob of the first token = log softmax of the prompt's next-token logits.
    const p = prompt(7, 7);
    const logits = await model.nextTokenLogits({
      inputIds: Int32Array.from(p), positionIds: Int32Array.from(p, (_, t) => t),
      targets: new Int32Array(p.length).fill(IGNORE_INDEX), cuSeqlens: Int32Array.from([0, p.length]),
    });
    let max = -Infinity;
    for (const x of logits) max = Math.max(max, x);
    let sum = 0;
    for (const x of logits) sum += Math.exp(x - max);
    const expected = logits[alone.tokenIds[0]] - max - Math.log(sum);
    assert.ok(Math.abs(alone.logprobs[0] - expected) < 1e-4, `${alone.logprobs[0]} vs ${expected}`);
  });

  it('streams text deltas that add up to the completion; a stop string ends the text before it', async () => {
    const generator = await Generator.create(model, tokenizer, { batchSize: 2 });
    const conversation = [{ role: 'user' as const, content: 'Tell me something.' }];
    let streamed = '';
    const stream = generator.stream(conversation, { maxNewTokens: 24, doSample: false, stopTokenIds: [] });
    let result = await stream.next();
    while (!result.done) {
      streamed += result.value.text;
      result = await stream.next();
    }
    const full = result.value;
    assert.equal(streamed, full.text);
    // Decoded piece by piece, the text is the whole decode of the tokens.
    assert.equal(full.text, tokenizer.decode(full.tokenIds, { skipSpecialTokens: true }));
    assert.ok(full.text.length > 8, `a long enough text to cut: ${JSON.stringify(full.text)}`);
    const stop = full.text.slice(4, 7);
    const [[cut]] = await generator.generate([conversation], { maxNewTokens: 24, doSample: false, stopTokenIds: [], stop: [stop] });
    assert.equal(cut.finishReason, 'stop');
    assert.equal(cut.text, full.text.slice(0, full.text.indexOf(stop)));
  });

  it('an aborted stream ends with the abort reason and frees its slot', async () => {
    const engine = await GenerationEngine.create(model, tokenizer, { maxSequences: 1 });
    const controller = new AbortController();
    const stream = engine.stream(request(prompt(6, 9), { maxNewTokens: 50, signal: controller.signal }));
    await stream.next();
    controller.abort(new Error('stopped by the test'));
    await assert.rejects(async () => {
      for (;;) if ((await stream.next()).done) break;
    }, /stopped by the test/);
    // The one slot is free again.
    const next = await engine.complete(request(prompt(4, 10), { maxNewTokens: 3 }));
    assert.equal(next.tokenIds.length, 3);
  });

  it('bad input is a UsageError naming the option', async () => {
    const engine = await GenerationEngine.create(model, tokenizer, { maxSequences: 1 });
    await assert.rejects(engine.complete(request([])), (e: unknown) => e instanceof UsageError && /prompt is empty/.test(e.message));
    await assert.rejects(engine.complete(request(prompt(96, 1))), /the context holds 96/);
    const generator = await Generator.create(model, tokenizer, { batchSize: 1 });
    const conversation = [{ role: 'user' as const, content: 'hi' }];
    await assert.rejects(generator.generate([conversation], { topP: 0 }), /top_p must be in \(0, 1\], got 0/);
    await assert.rejects(generator.generate([conversation], { temperature: -1 }), /temperature must be >= 0/);
    await assert.rejects(generator.generate([conversation], { stop: [''] }), /stop string must be a non-empty string/);
    await assert.rejects(GenerationEngine.create(model, tokenizer, { maxSequences: 100 }), /maxTokens >= 100/);
  });
});
