import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';

import { binarize } from '../lib/aif/binarize.js';
import { chatCompletionsUrl, JudgeConfigError, parseRetryAfter } from '../lib/aif/judge.js';
import { rate, type RateOptions } from '../lib/aif/rate.js';
import { parseRatings } from '../lib/aif/rubric.js';
import { writeRows } from '../lib/data/writers.js';
import { packageRoot } from '../lib/native.js';
import { type Action, expectedRating, type JudgeRequest, JudgeServer } from './support/judge-server.js';

const cli = join(packageRoot(), 'dist', 'lib', 'cli', 'main.js');
const ASPECTS = ['instruction_following', 'helpfulness', 'honesty', 'truthfulness'];

/** Rows to rate: response k of row i has quality `<q:N>` with a unique best. */
function inputRows(count: number, tag = 'q') {
  return Array.from({ length: count }, (_, i) => ({
    source: 'test',
    instruction: `${tag} instruction ${i}: "é" 🤖`,
    models: ['m0', 'm1', 'm2'],
    completions: [0, 1, 2].map((k) => ({ model: `m${k}`, response: `answer ${k} to ${i} <q:${((i + k) % 3) + 2}>` })),
  }));
}

/** Runs the CLI without blocking the event loop (the scripted judge lives in this process). */
function runCli(args: string[], env: NodeJS.ProcessEnv = process.env): Promise<{ status: number | null; stderr: string }> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [cli, ...args], { env, stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    child.stderr.setEncoding('utf8').on('data', (chunk: string) => (stderr += chunk));
    child.on('close', (status) => resolve({ status, stderr }));
  });
}

function readJsonl(path: string): Record<string, any>[] {
  if (!existsSync(path)) return [];
  return readFileSync(path, 'utf8')
    .split('\n')
    .filter((line) => line.trim() !== '')
    .map((line) => JSON.parse(line));
}

/** The rows of complete lines only: a line being written (or torn by a kill) is not counted. */
function completeRows(path: string): Record<string, any>[] {
  if (!existsSync(path)) return [];
  const text = readFileSync(path, 'utf8');
  return text
    .slice(0, text.lastIndexOf('\n') + 1)
    .split('\n')
    .filter((line) => line.trim() !== '')
    .map((line) => JSON.parse(line));
}

/** Every completion of every row carries the server's expected rating for every aspect. */
function assertRatedCorrectly(row: Record<string, any>): void {
  for (const completion of row.completions) {
    const ratings = ASPECTS.map((aspect) => {
      const annotation = completion.annotations[aspect];
      assert.equal(annotation.Rating, String(expectedRating(completion.response, aspect)), `${aspect} of ${completion.response}`);
      assert.match(annotation.Rationale, new RegExp(`judged ${aspect}`));
      return Number(annotation.Rating);
    });
    assert.equal(completion['fine-grained_score'], ratings.reduce((a, b) => a + b, 0) / 4);
  }
}

describe('rate: answer parsing and HTTP details', () => {
  it('reads JSON (fenced, with prose, trailing commas, bare arrays) and UltraFeedback-style text', () => {
    const expected = [
      { Rating: '4', Rationale: 'fine' },
      { Rating: 'N/A', Rationale: 'n/a here' },
    ];
    const answers = [
      '{"ratings": [{"response": 1, "rating": 4, "rationale": "fine"}, {"response": 2, "rating": "N/A", "rationale": "n/a here"}]}',
      'Sure!\n```json\n{"ratings": [{"response": 2, "rating": "N/A", "rationale": "n/a here"}, {"response": 1, "rating": "4", "rationale": "fine"},]}\n```\nDone.',
      '[{"rating": 4, "rationale": "fine"}, {"rating": "n/a", "rationale": "n/a here"}]',
      '#### Output for Text 1\nRating: 4\nRationale: fine\n\n#### Output for Text 2\nRating: N/A\nRationale: n/a here\n',
      '**Response 1**\nRating: **4**\nRationale: fine\n**Response 2**\nRating: N/A\nRationale: n/a here',
      'My ratings {as asked}:\n```\n{"ratings": [{"response": 1, "rating": 4, "rationale": "fine"}, {"response": 2, "rating": "N/A", "rationale": "n/a here"}]}\n```\n(scale [1-5])',
    ];
    for (const answer of answers) assert.deepEqual(parseRatings(answer, 2), expected, answer);
    const unreadable = [
      'I think they are both good.',
      '{"ratings": [{"response": 1, "rating": 4}]}', // one missing
      '{"ratings": [{"response": 1, "rating": 6}, {"response": 2, "rating": 3}]}', // out of range
      '{"ratings": [{"response": 1, "rating": 4.5}, {"response": 2, "rating": 3}]}', // not an integer
      '{"ratings": [{"response": 1, "rating": 4}, {"response": 1, "rating": 3}]}', // twice
      '{"ratings": [{"response": 1, "rating": 4}, {"response": 3, "rating": 3}]}', // no such response
      '{"ratings": [{"response": 1, "rating": 4}, {"response": 2, "rating": 3}', // cut off
    ];
    for (const answer of unreadable) assert.equal(parseRatings(answer, 2), null, answer);
  });

  it('Retry-After as seconds or an HTTP date; endpoint URLs from what users type', () => {
    assert.equal(parseRetryAfter('3'), 3000);
    assert.equal(parseRetryAfter('0.25'), 250);
    assert.equal(parseRetryAfter('Wed, 21 Oct 2015 07:28:10 GMT', Date.parse('Wed, 21 Oct 2015 07:28:00 GMT')), 10_000);
    assert.equal(parseRetryAfter(null), undefined);
    assert.equal(parseRetryAfter('soon'), undefined);
    assert.equal(chatCompletionsUrl('https://api.example.com/v1/'), 'https://api.example.com/v1/chat/completions');
    assert.equal(chatCompletionsUrl('http://127.0.0.1:8000'), 'http://127.0.0.1:8000/v1/chat/completions');
    assert.equal(chatCompletionsUrl('http://h/openai/v1/chat/completions'), 'http://h/openai/v1/chat/completions');
  });
});

describe('rate: against a scripted judge', () => {
  let dir: string;
  let server: JudgeServer;
  let outputs = 0;
  const fast = (extra: Partial<RateOptions> = {}): RateOptions => ({
    output: join(dir, `out-${outputs++}.jsonl`),
    url: server.url,
    model: 'judge-test',
    apiKey: 'sk-test-secret-123',
    concurrency: 3,
    timeoutMs: 2000,
    maxRetries: 3,
    backoffBaseMs: 5,
    backoffMaxMs: 20,
    random: () => 0.5,
    ...extra,
  });

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'zn-rate-'));
    server = await new JudgeServer().start();
  });
  after(async () => {
    await server.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it('normal answers: every row rated once per aspect, in the raw UltraFeedback shape binarize reads', async () => {
    server.setScript(() => ({ kind: 'answer' }));
    const start = server.requests.length;
    const rows = inputRows(6);
    const options = fast();
    const stats = await rate(rows, options);
    assert.deepEqual(
      { rows: stats.rows, rated: stats.rated, resumed: stats.resumed, failed: stats.failed, requests: stats.requests, retries: stats.retries },
      { rows: 6, rated: 6, resumed: 0, failed: 0, requests: 24, retries: 0 },
    );
    const requests = server.requests.slice(start);
    assert.equal(requests.length, 24);
    assert.ok(requests.every((r) => r.authorization === 'Bearer sk-test-secret-123' && r.model === 'judge-test'));
    for (const row of rows) {
      const mine = requests.filter((r) => r.instruction === row.instruction);
      assert.deepEqual(mine.map((r) => r.aspect).sort(), [...ASPECTS].sort());
      assert.deepEqual(
        mine[0].responses,
        row.completions.map((c) => c.response),
      );
    }
    const written = readJsonl(options.output);
    assert.equal(written.length, 6);
    for (const row of written) assertRatedCorrectly(row);
    const original = rows.find((r) => r.instruction === written[0].instruction)!;
    assert.equal(written[0].source, original.source);
    assert.deepEqual(written[0].models, original.models);
    // binarize picks the completion the judge liked best.
    const { pairs } = await binarize(written, { seed: 1 });
    assert.equal(pairs.length, 6);
    for (const pair of pairs) assert.match(pair.chosen[1].content, /<q:4>/);
  });

  it('a malformed answer is asked again once; twice malformed is recorded as a failure with the raw text', async () => {
    const rows = inputRows(2, 'malformed');
    server.setScript((request: JudgeRequest) => {
      if (request.aspect === 'helpfulness' && request.instruction === rows[0].instruction) {
        return request.reask ? { kind: 'answer' } : { kind: 'answer', text: 'They are all quite nice.' };
      }
      if (request.aspect === 'honesty' && request.instruction === rows[1].instruction) {
        return { kind: 'answer', text: request.reask ? 'still not JSON' : '{"ratings": "garbled' };
      }
      return { kind: 'answer' };
    });
    const options = fast();
    const stats = await rate(rows, options);
    assert.equal(stats.rated, 2);
    assert.equal(stats.reasked, 2);
    assert.equal(stats.aspectFailures, 1);
    assert.equal(stats.requests, 10);
    const written = new Map(readJsonl(options.output).map((row) => [row.instruction, row]));
    assertRatedCorrectly(written.get(rows[0].instruction)!);
    const failed = written.get(rows[1].instruction)!;
    for (const completion of failed.completions) {
      assert.deepEqual(completion.annotations.honesty, {
        Rating: 'N/A',
        Rationale: '',
        Failure: 'unreadable judge answer (asked twice)',
        Raw: ['{"ratings": "garbled', 'still not JSON'],
      });
      const others = ['instruction_following', 'helpfulness', 'truthfulness'].map((a) => Number(completion.annotations[a].Rating));
      assert.equal(completion['fine-grained_score'], others.reduce((a, b) => a + b, 0) / 3);
    }
    // binarize leaves the failed aspect out of the mean (the N/A rule) and still makes the pair.
    const { pairs, stats: binarized } = await binarize([failed]);
    assert.equal(pairs.length, 1);
    assert.equal(binarized.ratings.not_available, 3);
  });

  it('429 with Retry-After waits what the server says; 500s are retried with backoff', async () => {
    const rows = inputRows(1, 'flaky');
    let refused = 0;
    let broken = 0;
    server.setScript((request) => {
      if (request.aspect === 'helpfulness' && refused < 1) {
        refused++;
        return { kind: 'error', status: 429, retryAfter: '0.3' };
      }
      if (request.aspect === 'truthfulness' && broken < 2) {
        broken++;
        return { kind: 'error', status: broken === 1 ? 500 : 503 };
      }
      return { kind: 'answer' };
    });
    const start = server.requests.length;
    // Backoff alone would wait about 3 ms here: a wait of 300 ms can only come from Retry-After.
    const options = fast();
    const began = Date.now();
    const stats = await rate(rows, options);
    assert.equal(stats.rated, 1);
    assert.equal(stats.retries, 3);
    const helpfulness = server.requests.slice(start).filter((r) => r.aspect === 'helpfulness');
    assert.equal(helpfulness.length, 2);
    const waited = helpfulness[1].at - helpfulness[0].at;
    assert.ok(waited >= 290 && waited < 2000, `waited ${waited} ms after Retry-After: 0.3`);
    assert.ok(Date.now() - began < 5000);
    assertRatedCorrectly(readJsonl(options.output)[0]);
  });

  it('a hanging request times out and is retried; a judge that stays down leaves the row for the next run', async () => {
    const rows = inputRows(3, 'hang');
    let hung = 0;
    server.setScript((request) => {
      if (request.instruction === rows[0].instruction && request.aspect === 'honesty' && hung < 1) {
        hung++;
        return { kind: 'hang' };
      }
      if (request.instruction === rows[2].instruction) return { kind: 'error', status: 503 };
      return { kind: 'answer' };
    });
    const options = fast({ timeoutMs: 150, maxRetries: 2 });
    const stats = await rate(rows, options);
    assert.equal(hung, 1);
    assert.equal(stats.rated, 2);
    assert.equal(stats.failed, 1);
    assert.match(stats.examples[0], /^row 2: judge .* gave up after 3 attempts \(last: HTTP 503: scripted 503\)/);
    assert.deepEqual(readJsonl(options.output).map((r) => r.instruction).sort(), [rows[0].instruction, rows[1].instruction].sort());
    // The judge is back: the same command rates only the missing row.
    server.setScript(() => ({ kind: 'answer' }));
    const start = server.requests.length;
    const again = await rate(rows, options);
    assert.deepEqual({ rated: again.rated, resumed: again.resumed, failed: again.failed }, { rated: 1, resumed: 2, failed: 0 });
    assert.ok(server.requests.slice(start).every((r) => r.instruction === rows[2].instruction));
    const written = readJsonl(options.output);
    assert.equal(written.length, 3);
    for (const row of written) assertRatedCorrectly(row);
  });

  it('a bad key stops the run with a message that does not contain the key', async () => {
    server.setScript((): Action => ({ kind: 'error', status: 401, body: '{"error":{"message":"Incorrect API key provided"}}' }));
    const options = fast({ apiKey: 'sk-very-secret-key' });
    await assert.rejects(rate(inputRows(4, 'auth'), options), (error: unknown) => {
      assert.ok(error instanceof JudgeConfigError);
      assert.match(error.message, /refused the credentials \(HTTP 401: Incorrect API key provided\)/);
      assert.doesNotMatch(error.message, /sk-very-secret-key/);
      return true;
    });
    assert.deepEqual(readJsonl(options.output), []);
  });

  it('the CLI killed mid-run (SIGKILL) and run again: no row lost, none rated twice', async () => {
    const rows = inputRows(24, 'kill');
    const input = join(dir, 'kill-input.parquet');
    await writeRows(input, rows);
    const output = join(dir, 'kill-output.jsonl');
    server.setScript(() => ({ kind: 'answer', delayMs: 25 }));
    const args = ['rate', '--input', input, '--output', output, '--judge_url', server.url, '--judge_model', 'judge-test', '--concurrency', '2', '--timeout', '5'];
    const env = { ...process.env, ZN_JUDGE_API_KEY: 'sk-cli-secret-456' };
    const firstStart = server.requests.length;
    const child = spawn(process.execPath, [cli, ...args], { env, stdio: ['ignore', 'ignore', 'pipe'] });
    let childStderr = '';
    child.stderr.setEncoding('utf8').on('data', (chunk: string) => (childStderr += chunk));
    const exited = new Promise<NodeJS.Signals | null>((resolve) => child.on('exit', (_code, signal) => resolve(signal)));
    // Kill once a few rows are on disk and more are in flight.
    while (completeRows(output).length < 5) {
      assert.equal(child.exitCode, null, `the first run ended before it could be killed: ${childStderr}`);
      await new Promise((resolve) => setTimeout(resolve, 10));
    }
    // One writer per output: a second run on the same output stops at once, naming the first
    // (held up by a slow judge meanwhile, so it is still running).
    server.setScript(() => ({ kind: 'answer', delayMs: 5000 }));
    const second = await runCli(args, env);
    assert.equal(child.exitCode, null, `the first run ended before the second started: ${childStderr}`);
    assert.equal(second.status, 1);
    assert.equal(second.stderr.trim().split('\n').pop(), `zephyr-native: --output ${output} is being written by another process ${child.pid} (\`zephyr-native ${args.join(' ')}\`, started ${JSON.parse(readFileSync(`${output}.lock`, 'utf8')).started}); wait for it to finish or stop it (lock file ${output}.lock)`);
    child.kill('SIGKILL');
    assert.equal(await exited, 'SIGKILL');
    const afterKill = readFileSync(output, 'utf8');
    const savedRows = completeRows(output);
    assert.ok(savedRows.length >= 5 && savedRows.length < rows.length, `${savedRows.length} rows saved before the kill`);
    const saved = new Set(savedRows.map((r) => r.instruction));
    const firstRun = server.requests.slice(firstStart);
    assert.ok(firstRun.length < rows.length * 4, 'the first run was not killed mid-run');

    server.setScript(() => ({ kind: 'answer', delayMs: 25 }));
    const secondStart = server.requests.length;
    const resumed = await runCli(args, env);
    assert.equal(resumed.status, 0, resumed.stderr);
    assert.match(resumed.stderr, new RegExp(`^--output ${output}: taking over the lock of process ${child.pid} \\(.*\\), which is no longer running$`, 'm'));
    assert.ok(!existsSync(`${output}.lock`), 'the lock is released when the run ends');
    assert.match(resumed.stderr, new RegExp(`rate: 24 rows: ${rows.length - saved.size} rated, ${saved.size} already in the output, 0 failed`));
    assert.doesNotMatch(resumed.stderr, /sk-cli-secret-456/);
    // Non-TTY progress is plain text lines, no bar drawing or escape codes.
    assert.match(resumed.stderr, /^rate: \d+\/24 rows \(\d+%\), [\d.]+ rows\/s, ETA \S+, failed 0, retries 0$/m);
    assert.doesNotMatch(resumed.stderr, /\u001b\[|█/);

    const secondRun = server.requests.slice(secondStart);
    assert.ok(secondRun.every((r) => !saved.has(r.instruction)), 'a row saved before the kill was asked for again');
    const final = readJsonl(output);
    assert.ok(readFileSync(output, 'utf8').startsWith(afterKill.slice(0, afterKill.lastIndexOf('\n') + 1)));
    assert.deepEqual(
      final.map((r) => r.instruction).sort(),
      rows.map((r) => r.instruction).sort(),
    );
    for (const row of final) assertRatedCorrectly(row);
    // A third run has nothing left to do.
    const thirdStart = server.requests.length;
    const third = await runCli(args, env);
    assert.equal(third.status, 0, third.stderr);
    assert.equal(server.requests.length, thirdStart);
    assert.equal(readJsonl(output).length, rows.length);
  });

  it('CLI usage errors exit 2', async () => {
    const input = join(dir, 'usage.jsonl');
    writeFileSync(input, `${JSON.stringify(inputRows(1)[0])}\n`);
    const base = ['rate', '--input', input, '--judge_url', server.url, '--judge_model', 'm'];
    for (const extra of [['--output', join(dir, 'x.parquet')], ['--output', join(dir, 'x.jsonl'), '--concurrency', '0'], []]) {
      const result = await runCli([...base, ...extra]);
      assert.equal(result.status, 2, result.stderr);
      assert.match(result.stderr, /^zephyr-native: usage: /);
    }
  });
});
