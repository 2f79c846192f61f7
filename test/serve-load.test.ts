/**
 * `serve` under load, on loopback, bounded in count and time (the minute-long version and the
 * TTFT/throughput figures are `npm run bench:serve`): 64 concurrent streaming clients through
 * the OpenAI client, each with a prompt of its own and checking its answer against the
 * Generator's greedy completion of that prompt (nothing lost, cut or mixed up), while one more
 * client is killed mid-stream; then 1,000 sequential requests with the server's heap and RSS
 * measured after a full GC at request 200 and at request 1,000 (flat: a leak of a few KiB a
 * request would show).
 */
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';

import OpenAI from 'openai';

import { writeLlama2TokenizerFolder } from '../lib/data/llama2-tokenizer.js';
import { HfTokenizer } from '../lib/data/tokenizer.js';
import { Generator } from '../lib/generate/generate.js';
import { mistralConfig, writeRandomModel } from '../lib/model/init.js';
import { loadModel } from '../lib/model/model.js';
import { createServer, type ZephyrServer } from '../lib/serve/server.js';
import { streamThenLeave } from './support/openai-streams.js';

setFlagsFromString('--expose-gc');
const gc = runInNewContext('gc') as () => void;

const CLIENTS = 64;
const NEW_TOKENS = 12;
const work = mkdtempSync(join(tmpdir(), 'zn-serve-load-'));
const modelDir = join(work, 'model');
after(() => rmSync(work, { recursive: true, force: true }));

const messagesOf = (client: number) => [{ role: 'user' as const, content: `Client ${client} asks for item ${client * 7}.` }];

function memory(): { heap: number; rss: number } {
  gc();
  gc();
  const usage = process.memoryUsage();
  return { heap: usage.heapUsed, rss: usage.rss };
}

describe('serve under load', { timeout: 180_000 }, () => {
  let server: ZephyrServer;
  let openai: OpenAI;
  let reference: Generator;

  before(async () => {
    writeLlama2TokenizerFolder(join(work, 'tokenizer'));
    const config = mistralConfig({
      vocab_size: 32000, hidden_size: 32, intermediate_size: 48, num_hidden_layers: 2, num_attention_heads: 4,
      num_key_value_heads: 2, max_position_embeddings: 256, sliding_window: 64, tie_word_embeddings: false,
      bos_token_id: 1, eos_token_id: 2, initializer_range: 0.5,
    });
    await writeRandomModel(modelDir, config, { seed: 7, tokenizerDir: join(work, 'tokenizer') });
    reference = await Generator.create(await loadModel(modelDir, { maxTokens: 64 }), HfTokenizer.fromFolder(modelDir), { batchSize: 16 });
    server = await createServer(modelDir, { port: 0, servedModelName: 'tiny', maxBatch: 16, maxQueue: CLIENTS + 8, log: null });
    openai = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: 'unused', maxRetries: 0, timeout: 60_000 });
  });
  after(async () => {
    await server?.close();
    reference?.engine.model.dispose();
  });

  it(`streams ${CLIENTS} concurrent clients their own greedy answers while one is killed mid-stream`, async () => {
    const expected = await reference.generate(Array.from({ length: CLIENTS }, (_, c) => messagesOf(c)), { maxNewTokens: NEW_TOKENS, doSample: false });
    const victim = streamThenLeave(openai, 'tiny');
    const start = performance.now();
    const answers = await Promise.all(
      Array.from({ length: CLIENTS }, async (_, c) => {
        const stream = await openai.chat.completions.create({
          model: 'tiny', messages: messagesOf(c), max_tokens: NEW_TOKENS, temperature: 0, stream: true, stream_options: { include_usage: true },
        });
        const ids = new Set<string>();
        let text = '';
        let finish: string | null = null;
        let usage: OpenAI.CompletionUsage | undefined;
        for await (const chunk of stream) {
          ids.add(chunk.id);
          if (chunk.usage) usage = chunk.usage;
          for (const choice of chunk.choices) {
            assert.equal(choice.index, 0);
            assert.equal(finish, null, `client ${c}: nothing after finish_reason`);
            text += choice.delta.content ?? '';
            finish = choice.finish_reason ?? null;
          }
        }
        return { ids, text, finish, usage };
      }),
    );
    const seconds = (performance.now() - start) / 1000;
    assert.equal(await victim, 3);
    answers.forEach((answer, c) => {
      const [want] = expected[c];
      assert.equal(answer.ids.size, 1, `client ${c}: one completion id across its chunks`);
      assert.equal(answer.text, want.text, `client ${c}: its own greedy answer`);
      assert.equal(answer.finish, want.finishReason, `client ${c}: finish_reason`);
      assert.equal(answer.usage?.completion_tokens, want.tokenIds.length, `client ${c}: usage`);
    });
    assert.equal(new Set(answers.map((a) => [...a.ids][0])).size, CLIENTS, 'every client its own completion id');
    console.log(`serve load: ${CLIENTS} concurrent streaming clients answered in ${seconds.toFixed(2)} s (max_batch 16), one killed mid-stream`);
  });

  it('keeps memory flat across 1,000 sequential requests', async () => {
    const ask = async (i: number) => {
      const answer = await openai.completions.create({ model: 'tiny', prompt: `Request ${i}:`, max_tokens: 1, temperature: 0 });
      assert.equal(answer.choices.length, 1);
    };
    for (let i = 0; i < 200; i++) await ask(i);
    const points = [memory()];
    const start = performance.now();
    for (let i = 200; i < 1000; i++) {
      await ask(i);
      if (i === 599) points.push(memory());
    }
    const seconds = (performance.now() - start) / 1000;
    points.push(memory());
    const mib = (bytes: number) => (bytes / 2 ** 20).toFixed(2);
    console.log(`serve memory at requests 200, 600, 1000 (${seconds.toFixed(1)} s): heap ${points.map((p) => mib(p.heap)).join(', ')} MiB; RSS ${points.map((p) => mib(p.rss)).join(', ')} MiB`);
    // What grows early is the JIT's and the caches' warm-up (token strings: at most the vocabulary);
    // a leak keeps growing: 1.5 MiB over the last 400 requests is 3.8 KiB a request.
    assert.ok(points[2].heap - points[1].heap < 1.5 * 2 ** 20, `the heap grew ${mib(points[2].heap - points[1].heap)} MiB over requests 600-1000`);
    assert.ok(points[2].heap - points[0].heap < 4 * 2 ** 20, `the heap grew ${mib(points[2].heap - points[0].heap)} MiB over requests 200-1000`);
    // RSS also moves with the allocator's free lists and the JIT's code space.
    assert.ok(points[2].rss - points[0].rss < 32 * 2 ** 20, `RSS grew ${mib(points[2].rss - points[0].rss)} MiB over requests 200-1000`);
  });
});
