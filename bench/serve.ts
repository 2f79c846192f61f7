/**
 * `npm run bench:serve -- [--preset small|tiny] [--device cpu|cuda] [--dtype f32|bf16]
 *                         [--clients 1,8,32,64] [--duration 20] [--max-tokens 32] [--max-batch 32]
 *                         [--memory-requests 1000] [--json FILE] [--cache-dir DIR]`
 *
 * `zephyr-native serve` under load: the CLI serves the preset's model folder (from the model
 * cache) in a process of its own; for each client count, that many clients stream chat
 * completions back to back for --duration seconds (each request a prompt of its own, greedy,
 * --max-tokens new tokens, usage included), parsing every server-sent event. Reported per
 * client count: requests/s, generated tokens/s, time to first token (request sent -> first
 * chunk with text) and latency (-> `data: [DONE]`) at p50 and p99, and every response checked
 * complete and well-formed (one id, a finish_reason, usage, [DONE]). Then --memory-requests
 * sequential requests with the server's RSS (/proc) after the first tenth and at the end.
 * Prints a Markdown table; --json writes the figures, the machine and the settings.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { parseArgs } from 'node:util';

import { defaultBenchCacheDir, ensureBenchModel } from '../lib/bench/model-cache.js';
import { PRESETS, type BenchPrecision, type PresetName } from '../lib/bench/presets.js';
import { choice, count, machineInfo, markdown, mib, ourVersions } from '../lib/bench/run.js';
import { writeJsonAtomic } from '../lib/io/atomic.js';
import { packageRoot } from '../lib/native.js';

interface RequestTiming {
  ttft_ms: number;
  latency_ms: number;
  tokens: number;
}

interface LevelResult {
  clients: number;
  requests: number;
  malformed: number;
  seconds: number;
  requests_per_s: number;
  tokens_per_s: number;
  ttft_p50_ms: number;
  ttft_p99_ms: number;
  latency_p50_ms: number;
  latency_p99_ms: number;
}

/** The q-quantile by the nearest-rank rule (p99 of 50 samples is the largest). */
function quantile(values: number[], q: number): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1))];
}

/** `zephyr-native serve` on a free port; resolves with its URL once it listens with the model loaded. */
async function startServer(args: string[]): Promise<{ child: ChildProcess; url: string; log: () => string }> {
  const cli = join(packageRoot(), 'dist', 'lib', 'cli', 'main.js');
  const child = spawn(process.execPath, [cli, 'serve', '--port', '0', ...args], { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr!.setEncoding('utf8').on('data', (text: string) => (stderr += text));
  const url = await new Promise<string>((resolveUrl, reject) => {
    const check = setInterval(() => {
      const found = / at (http:\/\/\S+)\/v1/.exec(stderr);
      if (found) {
        clearInterval(check);
        resolveUrl(found[1]);
      } else if (child.exitCode !== null) {
        clearInterval(check);
        reject(new Error(`serve exited (${child.exitCode}) before listening:\n${stderr}`));
      }
    }, 50);
  });
  return { child, url, log: () => stderr };
}

/** The server's resident memory now (Linux /proc; null elsewhere). */
function rssOf(pid: number): number | null {
  try {
    const kib = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1];
    return kib === undefined ? null : Number(kib) * 1024;
  } catch {
    return null;
  }
}

/** One streamed chat completion, timed; throws when the stream is not complete and well-formed. */
async function streamOnce(url: string, content: string, maxTokens: number): Promise<RequestTiming> {
  const start = performance.now();
  const response = await fetch(`${url}/v1/chat/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ messages: [{ role: 'user', content }], max_tokens: maxTokens, temperature: 0, stream: true, stream_options: { include_usage: true } }),
  });
  if (response.status !== 200 || !response.body) throw new Error(`HTTP ${response.status}: ${await response.text()}`);
  let ttft = -1;
  let buffer = '';
  let done = false;
  let finish: string | null = null;
  let tokens = -1;
  const ids = new Set<string>();
  const decoder = new TextDecoder();
  for await (const bytes of response.body) {
    buffer += decoder.decode(bytes, { stream: true });
    let end: number;
    while ((end = buffer.indexOf('\n\n')) >= 0) {
      const event = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      if (!event.startsWith('data: ')) throw new Error(`not a server-sent data event: ${JSON.stringify(event)}`);
      const data = event.slice(6);
      if (data === '[DONE]') {
        done = true;
        continue;
      }
      const chunk = JSON.parse(data) as { id: string; choices: { delta: { content?: string }; finish_reason: string | null }[]; usage?: { completion_tokens: number } | null };
      ids.add(chunk.id);
      if (chunk.usage) tokens = chunk.usage.completion_tokens;
      for (const choice of chunk.choices) {
        if (ttft < 0 && choice.delta.content) ttft = performance.now() - start;
        finish = choice.finish_reason ?? finish;
      }
    }
  }
  if (!done || buffer !== '' || finish === null || tokens < 0 || ids.size !== 1) {
    throw new Error(`incomplete stream (done ${done}, finish ${finish}, usage ${tokens}, ids ${ids.size})`);
  }
  const latency = performance.now() - start;
  return { ttft_ms: ttft < 0 ? latency : ttft, latency_ms: latency, tokens };
}

/** `clients` clients streaming back to back until `seconds` have passed (each finishes the request it is in). */
async function level(url: string, clients: number, seconds: number, maxTokens: number): Promise<LevelResult> {
  const timings: RequestTiming[] = [];
  let malformed = 0;
  const start = performance.now();
  const deadline = start + seconds * 1000;
  await Promise.all(
    Array.from({ length: clients }, async (_, c) => {
      for (let r = 0; performance.now() < deadline; r++) {
        try {
          timings.push(await streamOnce(url, `Client ${c}, request ${r}: describe item number ${c * 1000 + r} in a few words.`, maxTokens));
        } catch (error) {
          malformed++;
          console.error(`client ${c} request ${r}: ${(error as Error).message}`);
        }
      }
    }),
  );
  const elapsed = (performance.now() - start) / 1000;
  const ttft = timings.map((t) => t.ttft_ms);
  const latency = timings.map((t) => t.latency_ms);
  const round = (x: number, digits = 1) => Number(x.toFixed(digits));
  return {
    clients,
    requests: timings.length,
    malformed,
    seconds: round(elapsed, 2),
    requests_per_s: round(timings.length / elapsed, 2),
    tokens_per_s: round(timings.reduce((sum, t) => sum + t.tokens, 0) / elapsed),
    ttft_p50_ms: round(quantile(ttft, 0.5)),
    ttft_p99_ms: round(quantile(ttft, 0.99)),
    latency_p50_ms: round(quantile(latency, 0.5)),
    latency_p99_ms: round(quantile(latency, 0.99)),
  };
}

/** `requests` sequential short requests; the server's RSS after the first tenth and at the end. */
async function memoryRun(url: string, pid: number, requests: number): Promise<{ requests: number; rss_after_tenth: number | null; rss_end: number | null }> {
  let rssAfterTenth: number | null = null;
  for (let i = 0; i < requests; i++) {
    const response = await fetch(`${url}/v1/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ prompt: `Request ${i}:`, max_tokens: 4, temperature: 0 }),
    });
    if (response.status !== 200) throw new Error(`memory run request ${i}: HTTP ${response.status}: ${await response.text()}`);
    await response.json();
    if (i + 1 === Math.ceil(requests / 10)) rssAfterTenth = rssOf(pid);
  }
  return { requests, rss_after_tenth: rssAfterTenth, rss_end: rssOf(pid) };
}

export async function main(argv: string[]): Promise<void> {
  const { values } = parseArgs({
    args: argv,
    options: {
      preset: { type: 'string', default: 'small' },
      device: { type: 'string', default: 'cpu' },
      dtype: { type: 'string', default: 'f32' },
      clients: { type: 'string', default: '1,8,32,64' },
      duration: { type: 'string', default: '20' },
      'max-tokens': { type: 'string', default: '32' },
      'max-batch': { type: 'string', default: '32' },
      'memory-requests': { type: 'string', default: '1000' },
      json: { type: 'string' },
      'cache-dir': { type: 'string', default: defaultBenchCacheDir() },
    },
  });
  const preset: PresetName = choice('preset', values.preset!, ['tiny', 'small', 'mistral-7b'] as const);
  const device = choice('device', values.device!, ['cpu', 'cuda'] as const);
  const precision: BenchPrecision = choice('dtype', values.dtype!, ['f32', 'bf16'] as const);
  const clientCounts = values.clients!.split(',').map((c) => count('clients', c.trim(), 1));
  const seconds = count('duration', values.duration!, 1);
  const maxTokens = count('max-tokens', values['max-tokens']!, 1);
  const maxBatch = count('max-batch', values['max-batch']!, 1);
  const memoryRequests = count('memory-requests', values['memory-requests']!, 0);
  if (PRESETS[preset].gpuOnly && device !== 'cuda') throw new Error(`--preset ${preset} runs on the GPU only (--device cuda)`);

  const modelDir = await ensureBenchModel(PRESETS[preset], resolve(values['cache-dir']!));
  const maxClients = Math.max(...clientCounts);
  const server = await startServer([
    '--model_name_or_path', modelDir, '--max_batch', String(maxBatch), '--max_queue', String(maxClients + 8),
    '--device', device, '--dtype', precision, '--max_context', '1024',
  ]);
  console.error(`serving ${modelDir} at ${server.url} (max_batch ${maxBatch}, ${device} ${precision})`);
  const results: LevelResult[] = [];
  let memory: Awaited<ReturnType<typeof memoryRun>> | null = null;
  try {
    await streamOnce(server.url, 'Warm up.', maxTokens);
    for (const clients of clientCounts) {
      console.error(`${clients} clients for ${seconds} s ...`);
      const result = await level(server.url, clients, seconds, maxTokens);
      console.error(`result: ${JSON.stringify(result)}`);
      results.push(result);
    }
    if (memoryRequests > 0) {
      console.error(`${memoryRequests} sequential requests (server RSS) ...`);
      memory = await memoryRun(server.url, server.child.pid!, memoryRequests);
    }
  } finally {
    server.child.kill('SIGTERM');
    await new Promise((done) => server.child.once('exit', done));
  }

  console.log(
    markdown(
      ['clients', 'requests', 'malformed', 'requests/s', 'tokens/s', 'TTFT p50 ms', 'TTFT p99 ms', 'latency p50 ms', 'latency p99 ms'],
      results.map((r) => [r.clients, r.requests, r.malformed, r.requests_per_s, r.tokens_per_s, r.ttft_p50_ms, r.ttft_p99_ms, r.latency_p50_ms, r.latency_p99_ms].map(String)),
    ),
  );
  console.log(`\n${preset} preset, ${device} ${precision}, max_batch ${maxBatch}, ${maxTokens} new tokens a request (greedy, streamed), ${seconds} s per client count`);
  if (memory) {
    const show = (bytes: number | null) => (bytes === null ? 'not measured' : mib(bytes));
    console.log(`server RSS over ${memory.requests} sequential requests: ${show(memory.rss_after_tenth)} after the first tenth, ${show(memory.rss_end)} at the end`);
  }
  if (values.json) {
    writeJsonAtomic(resolve(values.json), {
      results,
      memory,
      machine: machineInfo(null),
      versions: ourVersions(),
      settings: { preset, device, precision, clients: clientCounts, duration_s: seconds, max_tokens: maxTokens, max_batch: maxBatch, preset_shape: PRESETS[preset].model },
    });
    console.error(`wrote ${values.json}`);
  }
  const malformed = results.reduce((sum, r) => sum + r.malformed, 0);
  if (malformed > 0) throw new Error(`${malformed} responses were incomplete or malformed`);
}

main(process.argv.slice(2)).catch((error: Error) => {
  console.error(`bench:serve: ${error.message}`);
  process.exitCode = 1;
});
