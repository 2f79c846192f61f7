/**
 * `npm run bench:hot-paths -- [--time 500] [--json FILE]`
 *
 * The TypeScript hot paths, timed with tinybench (each task run for --time ms after its
 * warm-up; mean, p50 and p99 per operation and operations/s):
 * - tokenizer: encode a templated chat of about 1,000 characters, decode 256 ids, and the
 *   streaming text decoder (lib/generate/text.ts) over 64 tokens with a stop string;
 * - data loading: read 500 UltraChat-style rows from a .jsonl and a .parquet file written here;
 * - sampling: resolve request options over generation_config defaults, the JS side of
 *   sampleTokens for 32 rows (columns, histories; greedy, so the native part is one argmax a
 *   row) and the top-5 log-prob pass over one 32,000-token row (only for requests asking top_logprobs);
 * - serve: a chat request body from JSON text to engine options (parse, schema check,
 *   translation, option resolution) and SSE chunk formatting (plain, and with 5 top logprobs).
 * The Llama-2 tokenizer (lib/data/llama2-tokenizer.ts) and all inputs are made here; no model.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { parseArgs } from 'node:util';

import { Bench } from 'tinybench';

import { markdown } from '../lib/bench/run.js';
import { chatTemplateOf } from '../lib/data/load.js';
import { writeLlama2TokenizerFolder } from '../lib/data/llama2-tokenizer.js';
import { readRows } from '../lib/data/readers.js';
import { HfTokenizer } from '../lib/data/tokenizer.js';
import { writeRows } from '../lib/data/writers.js';
import { promptIds } from '../lib/generate/generate.js';
import { resolveGeneration } from '../lib/generate/options.js';
import { CompletionText } from '../lib/generate/text.js';
import { topLogprobs } from '../lib/generate/top-logprobs.js';
import { writeJsonAtomic } from '../lib/io/atomic.js';
import { sampleTokens } from '../lib/model/sampling.js';
import { chatCall } from '../lib/serve/requests.js';
import { chatTokenLogprob, sseEvent } from '../lib/serve/responses.js';
import { TokenStrings } from '../lib/serve/token-strings.js';

const VOCAB = 32000;

/** A deterministic stream of numbers in [0, 1) (xorshift), so every run times the same inputs. */
function random(seed: number): () => number {
  let state = seed >>> 0 || 1;
  return () => {
    state ^= state << 13;
    state ^= state >>> 17;
    state ^= state << 5;
    return (state >>> 0) / 2 ** 32;
  };
}

function ultraChatRows(count: number): object[] {
  return Array.from({ length: count }, (_, i) => {
    const prompt = `Question ${i}: how do tides work, and why are there two a day in most places?`;
    return {
      prompt,
      prompt_id: `id-${i}`,
      messages: [
        { role: 'user', content: prompt },
        { role: 'assistant', content: 'The Moon pulls the near side of the ocean more than the Earth, and the Earth more than the far side. '.repeat(3) },
      ],
    };
  });
}

async function countAll(path: string): Promise<number> {
  let rows = 0;
  for await (const _ of readRows(path)) rows++;
  return rows;
}

export async function main(argv: string[]): Promise<void> {
  const { values } = parseArgs({ args: argv, options: { time: { type: 'string', default: '500' }, json: { type: 'string' } } });
  const time = Number(values.time);
  if (!(time > 0)) throw new Error(`--time must be a positive number of milliseconds, got ${values.time}`);
  const work = mkdtempSync(join(tmpdir(), 'zn-hot-paths-'));
  try {
    writeLlama2TokenizerFolder(work);
    const tokenizer = HfTokenizer.fromFolder(work);
    const template = chatTemplateOf(tokenizer);
    const conversation = [
      { role: 'system', content: 'You are a helpful assistant who answers briefly.' },
      { role: 'user', content: 'Explain, in plain words, how a transformer language model turns a prompt into an answer. '.repeat(8) },
    ];
    const ids = promptIds(tokenizer, template, conversation);
    const decodeIds = ids.slice(0, 256);
    const jsonl = join(work, 'rows.jsonl');
    const parquet = join(work, 'rows.parquet');
    await writeRows(jsonl, ultraChatRows(500));
    await writeRows(parquet, ultraChatRows(500));

    const next = random(1);
    const logits = Float32Array.from({ length: 32 * VOCAB }, () => next() * 20 - 10);
    const rows = Array.from({ length: 32 }, (_, r) => ({
      sampling: { temperature: 0, topK: 0, topP: 1, minP: 0, repetitionPenalty: 1, seed: r },
      history: ids.slice(0, 200),
      draw: 10,
    }));
    const firstRow = logits.subarray(0, VOCAB);
    let rowMax = -Infinity;
    for (const x of firstRow) rowMax = Math.max(rowMax, x);
    const firstRowLse = rowMax + Math.log(firstRow.reduce((sum, x) => sum + Math.exp(x - rowMax), 0));
    const strings = new TokenStrings(tokenizer);
    const chatBody = JSON.stringify({
      model: 'zephyr', messages: conversation, max_tokens: 256, temperature: 0.7, top_p: 0.95, seed: 3, n: 1, stream: true,
      stream_options: { include_usage: true }, stop: ['</s>', '\nUser:'], logprobs: true, top_logprobs: 5, user: 'bench',
    });
    const top5 = topLogprobs(firstRow, 5, firstRowLse);
    const chunkBase = { id: 'chatcmpl-0123456789abcdef', object: 'chat.completion.chunk', created: 1_700_000_000, model: 'zephyr', system_fingerprint: null };

    const bench = new Bench({ time, warmup: true });
    bench
      .add('tokenizer: encode a templated chat (~1,000 chars)', () => {
        promptIds(tokenizer, template, conversation);
      })
      .add('tokenizer: decode 256 ids', () => {
        tokenizer.decode(decodeIds, { skipSpecialTokens: true });
      })
      .add('generate: streaming text of 64 tokens (stop string)', () => {
        const text = new CompletionText(tokenizer, ['\nUser:']);
        for (let t = 0; t < 64; t++) text.push(ids[t]);
        text.finish();
      })
      .add('data: read 500 rows of .jsonl', async () => {
        await countAll(jsonl);
      })
      .add('data: read 500 rows of .parquet', async () => {
        await countAll(parquet);
      })
      .add('sampling: resolve request options', () => {
        resolveGeneration({ temperature: 0.7, topP: 0.95, maxNewTokens: 256, seed: 3, stop: ['\nUser:'] }, { topK: 50, maxNewTokens: 512, stopTokenIds: [2] });
      })
      .add('sampling: sampleTokens, 32 greedy rows x 32,000', () => {
        sampleTokens(logits, VOCAB, rows);
      })
      .add('sampling: top-5 log-probs of one 32,000 row', () => {
        topLogprobs(firstRow, 5, firstRowLse);
      })
      .add('serve: chat request JSON -> engine options', () => {
        const call = chatCall(JSON.parse(chatBody));
        resolveGeneration(call.options);
      })
      .add('serve: SSE chat chunk', () => {
        sseEvent({ ...chunkBase, choices: [{ index: 0, delta: { content: ' the' }, logprobs: null, finish_reason: null }] });
      })
      .add('serve: SSE chat chunk with 5 top logprobs', () => {
        const logprobs = { content: [chatTokenLogprob(strings, top5[0].token, top5[0].logprob, top5)], refusal: null };
        sseEvent({ ...chunkBase, choices: [{ index: 0, delta: { content: ' the' }, logprobs, finish_reason: null }] });
      });
    await bench.run();

    const results = bench.tasks.map((task) => {
      const result = task.result as { latency?: { mean: number; p50: number; p99: number; samplesCount?: number; samples?: number[] }; throughput?: { mean: number } };
      if (!result.latency) throw new Error(`${task.name}: no result (${JSON.stringify(task.result)})`);
      return {
        name: task.name,
        mean_us: result.latency.mean * 1000,
        p50_us: result.latency.p50 * 1000,
        p99_us: result.latency.p99 * 1000,
        ops_per_s: 1000 / result.latency.mean,
        samples: task.runs,
      };
    });
    const us = (x: number) => (x >= 100 ? x.toFixed(0) : x.toFixed(2));
    console.log(markdown(['hot path', 'mean µs', 'p50 µs', 'p99 µs', 'ops/s', 'samples'], results.map((r) => [r.name, us(r.mean_us), us(r.p50_us), us(r.p99_us), r.ops_per_s.toFixed(0), String(r.samples)])));
    if (values.json) writeJsonAtomic(resolve(values.json), { results, settings: { time_ms: time } });
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
}

main(process.argv.slice(2)).catch((error: Error) => {
  console.error(`bench:hot-paths: ${error.message}`);
  process.exitCode = 1;
});
