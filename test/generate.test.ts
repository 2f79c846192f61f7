import assert from 'node:assert/strict';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { before, describe, it } from 'node:test';

import { IGNORE_INDEX, type TokenBatch } from '../lib/data/batch.js';
import { chatTemplateOf } from '../lib/data/load.js';
import { writeLlama2TokenizerFolder } from '../lib/data/llama2-tokenizer.js';
import { HfTokenizer } from '../lib/data/tokenizer.js';
import { greedyChat } from '../lib/generate/generate.js';
import { mistralConfig, writeRandomModel } from '../lib/model/init.js';
import { loadModel, type MistralModel } from '../lib/model/model.js';

const work = mkdtempSync(join(tmpdir(), 'zn-generate-'));

function twoDocuments(lengths: number[], targetsAtEnd: number[] | null): TokenBatch {
  const total = lengths.reduce((a, b) => a + b, 0);
  const batch: TokenBatch = {
    inputIds: Int32Array.from({ length: total }, (_, i) => 3 + ((i * 7919) % 31990)),
    positionIds: new Int32Array(total),
    targets: new Int32Array(total).fill(IGNORE_INDEX),
    cuSeqlens: new Int32Array(lengths.length + 1),
  };
  let offset = 0;
  lengths.forEach((length, d) => {
    for (let t = 0; t < length; t++) batch.positionIds[offset + t] = t;
    offset += length;
    batch.cuSeqlens[d + 1] = offset;
    if (targetsAtEnd) batch.targets[offset - 1] = targetsAtEnd[d];
  });
  return batch;
}

describe('next-token logits and greedy decoding', () => {
  let model: MistralModel;
  before(async () => {
    writeLlama2TokenizerFolder(join(work, 'tokenizer'));
    const config = mistralConfig({
      vocab_size: 32000, hidden_size: 32, intermediate_size: 48, num_hidden_layers: 2, num_attention_heads: 4,
      num_key_value_heads: 2, max_position_embeddings: 128, sliding_window: 8, tie_word_embeddings: false,
      bos_token_id: 1, eos_token_id: 2, initializer_range: 0.5,
    });
    await writeRandomModel(join(work, 'model'), config, { seed: 5, tokenizerDir: join(work, 'tokenizer') });
    model = await loadModel(join(work, 'model'));
  });

  it('logits agree with the fused log-prob path: logit[v] - logsumexp = log p(v)', async () => {
    const lengths = [13, 21];
    const logits = await model.nextTokenLogits(twoDocuments(lengths, null));
    assert.equal(logits.length, 2 * 32000);
    for (const candidates of [[5, 31999], [1234, 2]]) {
      const logp = await model.logprobs(twoDocuments(lengths, candidates));
      candidates.forEach((v, d) => {
        const row = logits.subarray(d * 32000, (d + 1) * 32000);
        let max = -Infinity;
        for (const x of row) max = Math.max(max, x);
        let sum = 0;
        for (const x of row) sum += Math.exp(x - max);
        const expected = row[v] - max - Math.log(sum);
        const got = logp[lengths.slice(0, d + 1).reduce((a, b) => a + b, 0) - 1];
        assert.ok(Math.abs(got - expected) <= 1e-4 * Math.max(1, Math.abs(expected)), `doc ${d} token ${v}: ${got} vs ${expected}`);
      });
    }
  });

  it('greedy decoding produces the argmax continuation, prompt by prompt', async () => {
    const tokenizer = HfTokenizer.fromFolder(join(work, 'model'));
    const template = chatTemplateOf(tokenizer);
    const together = await greedyChat(model, tokenizer, template, ['What is 2 + 2?', 'Reverse "abc".'], 6);
    const alone = await greedyChat(model, tokenizer, template, ['Reverse "abc".'], 6);
    assert.equal(together.length, 2);
    // Packed documents never see each other: decoding a prompt alone gives the same text.
    assert.equal(together[1], alone[0]);
  });
});
