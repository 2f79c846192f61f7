/**
 * `serve` through the official OpenAI client (npm `openai`), on loopback, every wait bounded:
 * chat and completions, streaming and not, n > 1, stop strings, seeds, usage; greedy text equals
 * the Generator's for the same request; OpenAI error JSON for bad input, 401, 429; a client that
 * leaves mid-stream frees its place and does not disturb another; 16 concurrent greedy requests
 * against one (ratio printed).
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { connect } from 'node:net';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';

import OpenAI from 'openai';

import { writeLlama2TokenizerFolder } from '../lib/data/llama2-tokenizer.js';
import { HfTokenizer } from '../lib/data/tokenizer.js';
import { Generator } from '../lib/generate/generate.js';
import { mistralConfig, writeRandomModel } from '../lib/model/init.js';
import { loadModel } from '../lib/model/model.js';
import { packageRoot } from '../lib/native.js';
import { createServer, type ZephyrServer } from '../lib/serve/server.js';
import { streamThenLeave } from './support/openai-streams.js';

const work = mkdtempSync(join(tmpdir(), 'zn-serve-'));
const modelDir = join(work, 'model');
after(() => rmSync(work, { recursive: true, force: true }));

const MESSAGES = [{ role: 'user' as const, content: 'Name three colours.' }];

function client(server: ZephyrServer, apiKey = 'unused'): OpenAI {
  return new OpenAI({ baseURL: `${server.url}/v1`, apiKey, maxRetries: 0, timeout: 30_000 });
}

async function post(server: ZephyrServer, route: string, body: string, headers: Record<string, string> = {}) {
  const response = await fetch(`${server.url}${route}`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...headers },
    body,
    signal: AbortSignal.timeout(30_000),
  });
  return { status: response.status, headers: response.headers, json: (await response.json()) as { error: { message: string; type: string; param: string | null; code: string | null } } };
}

describe('serve', { timeout: 180_000 }, () => {
  let server: ZephyrServer;
  let openai: OpenAI;
  let reference: Generator;
  const logLines: string[] = [];

  before(async () => {
    writeLlama2TokenizerFolder(join(work, 'tokenizer'));
    const config = mistralConfig({
      vocab_size: 32000, hidden_size: 32, intermediate_size: 48, num_hidden_layers: 2, num_attention_heads: 4,
      num_key_value_heads: 2, max_position_embeddings: 256, sliding_window: 64, tie_word_embeddings: false,
      bos_token_id: 1, eos_token_id: 2, initializer_range: 0.5,
    });
    await writeRandomModel(modelDir, config, { seed: 5, tokenizerDir: join(work, 'tokenizer') });
    // The reference runs on a model of its own: a Generator owns its model's KvCache.
    reference = await Generator.create(await loadModel(modelDir, { maxTokens: 64 }), HfTokenizer.fromFolder(modelDir), { batchSize: 4 });
    server = await createServer(modelDir, { port: 0, servedModelName: 'tiny', maxBatch: 8, maxQueue: 32, log: (line) => logLines.push(line) });
    openai = client(server);
  });
  after(async () => {
    await server?.close();
    reference?.engine.model.dispose();
  });

  it('answers a greedy chat with the Generator\'s text and counts its tokens', async () => {
    const [[expected]] = await reference.generate([MESSAGES], { maxNewTokens: 20, doSample: false });
    const answer = await openai.chat.completions.create({ model: 'tiny', messages: MESSAGES, max_tokens: 20, temperature: 0 });
    assert.equal(answer.object, 'chat.completion');
    assert.equal(answer.choices[0].message.content, expected.text);
    assert.equal(answer.choices[0].finish_reason, expected.finishReason);
    assert.deepEqual(answer.usage, {
      prompt_tokens: reference.promptIds(MESSAGES).length,
      completion_tokens: expected.tokenIds.length,
      total_tokens: reference.promptIds(MESSAGES).length + expected.tokenIds.length,
    });
    assert.match(logLines.at(-1)!, /^POST \/v1\/chat\/completions 200 prompt_tokens=\d+ completion_tokens=\d+ [\d.]+ms$/);
    assert.ok(!logLines.at(-1)!.includes('colours'), 'the prompt stays out of the log');
  });

  it('streams the same text in OpenAI chunks with usage last, and logprobs per token', async () => {
    const plain = await openai.chat.completions.create({ model: 'tiny', messages: MESSAGES, max_tokens: 20, temperature: 0, logprobs: true });
    const stream = await openai.chat.completions.create({
      model: 'tiny', messages: MESSAGES, max_tokens: 20, temperature: 0, stream: true, stream_options: { include_usage: true }, logprobs: true,
    });
    let text = '';
    let finish: string | null = null;
    let usage: OpenAI.CompletionUsage | null | undefined;
    const logprobs: number[] = [];
    for await (const chunk of stream) {
      assert.equal(chunk.object, 'chat.completion.chunk');
      if (chunk.usage) usage = chunk.usage;
      for (const choice of chunk.choices) {
        text += choice.delta.content ?? '';
        finish = choice.finish_reason ?? finish;
        for (const entry of choice.logprobs?.content ?? []) logprobs.push(entry.logprob);
      }
    }
    assert.equal(text, plain.choices[0].message.content);
    assert.equal(finish, plain.choices[0].finish_reason);
    assert.deepEqual(usage, plain.usage);
    const expectedLogprobs = plain.choices[0].logprobs!.content!.map((entry) => entry.logprob);
    assert.equal(expectedLogprobs.length, plain.usage!.completion_tokens);
    assert.deepEqual(logprobs, expectedLogprobs);
  });

  it('gives n completions, the same ones again for the same seed', async () => {
    const ask = () => openai.chat.completions.create({ model: 'tiny', messages: MESSAGES, max_tokens: 12, temperature: 1, n: 3, seed: 42 });
    const [first, second] = await Promise.all([ask(), ask()]);
    assert.deepEqual(first.choices.map((c) => c.index), [0, 1, 2]);
    assert.deepEqual(second.choices.map((c) => c.message.content), first.choices.map((c) => c.message.content));
    assert.equal(first.usage!.completion_tokens, first.choices.length > 0 ? second.usage!.completion_tokens : 0);
  });

  it('ends a completion before its stop string', async () => {
    const full = await openai.completions.create({ model: 'tiny', prompt: 'Once upon a time', max_tokens: 24, temperature: 0 });
    const text = full.choices[0].text;
    assert.ok(text.length >= 6, `a long enough text to cut: ${JSON.stringify(text)}`);
    const stop = text.slice(4, 6);
    const cut = await openai.completions.create({ model: 'tiny', prompt: 'Once upon a time', max_tokens: 24, temperature: 0, stop: [stop] });
    assert.equal(cut.choices[0].text, text.slice(0, text.indexOf(stop)));
    assert.equal(cut.choices[0].finish_reason, 'stop');
  });

  it('takes a completions prompt as token ids, and refuses empty, out-of-vocabulary and several prompts', async () => {
    const prompt = 'Once upon a time';
    const ids = reference.promptIds(prompt);
    const byText = await openai.completions.create({ model: 'tiny', prompt, max_tokens: 8, temperature: 0 });
    const byIds = await openai.completions.create({ model: 'tiny', prompt: ids, max_tokens: 8, temperature: 0 });
    assert.equal(byIds.choices[0].text, byText.choices[0].text);
    assert.equal(byIds.usage!.prompt_tokens, ids.length);
    const cases: [unknown, string][] = [[[], 'prompt'], [[[]], 'prompt[0]'], [[1, 99_999_999], 'prompt'], [['a', 'b'], 'unsupported_parameter'], [[-1], 'prompt[0]']];
    for (const [body, expected] of cases) {
      const answer = await post(server, '/v1/completions', JSON.stringify({ prompt: body }));
      assert.equal(answer.status, 400, JSON.stringify(body));
      assert.ok(answer.json.error.param === expected || answer.json.error.code === expected, `${JSON.stringify(body)}: ${JSON.stringify(answer.json.error)}`);
    }
  });

  it('answers bad requests with OpenAI error JSON', async () => {
    const badJson = await post(server, '/v1/chat/completions', '{"messages": [');
    assert.equal(badJson.status, 400);
    assert.equal(badJson.json.error.type, 'invalid_request_error');
    const wrongType = await post(server, '/v1/chat/completions', JSON.stringify({ messages: MESSAGES, max_tokens: '5' }));
    assert.equal(wrongType.status, 400);
    assert.equal(wrongType.json.error.param, 'max_tokens');
    const badRole = await post(server, '/v1/chat/completions', JSON.stringify({ messages: [{ role: 'wizard', content: 'hi' }] }));
    assert.equal(badRole.json.error.param, 'messages[0].role');
    await assert.rejects(
      openai.chat.completions.create({ model: 'tiny', messages: MESSAGES, n: 1000 }),
      (error: unknown) => error instanceof OpenAI.BadRequestError && error.param === 'n',
    );
    await assert.rejects(
      openai.completions.create({ model: 'tiny', prompt: 'word '.repeat(400) }),
      (error: unknown) => error instanceof OpenAI.BadRequestError && error.code === 'context_length_exceeded',
    );
    await assert.rejects(openai.chat.completions.create({ model: 'other', messages: MESSAGES }), OpenAI.NotFoundError);
    const models = await openai.models.list();
    assert.deepEqual(models.data.map((m) => m.id), ['tiny']);
  });

  it('knows every field OpenAI defines: a wrong type is a 400 naming it, an unknown field a 400 as OpenAI words it', async () => {
    // The request fields of openai@6's ChatCompletionCreateParams and CompletionCreateParams.
    const openaiChat = [
      'messages', 'model', 'audio', 'frequency_penalty', 'function_call', 'functions', 'logit_bias', 'logprobs', 'max_completion_tokens',
      'max_tokens', 'metadata', 'modalities', 'moderation', 'n', 'parallel_tool_calls', 'prediction', 'presence_penalty', 'prompt_cache_key',
      'prompt_cache_options', 'prompt_cache_retention', 'reasoning_effort', 'response_format', 'safety_identifier', 'seed', 'service_tier',
      'stop', 'store', 'stream', 'stream_options', 'temperature', 'tool_choice', 'tools', 'top_logprobs', 'top_p', 'user', 'verbosity',
      'web_search_options',
    ];
    const openaiCompletions = [
      'model', 'prompt', 'best_of', 'echo', 'frequency_penalty', 'logit_bias', 'logprobs', 'max_tokens', 'n', 'presence_penalty', 'seed',
      'stop', 'stream', 'stream_options', 'suffix', 'temperature', 'top_p', 'user',
    ];
    const routes = [
      { route: '/v1/chat/completions', fields: openaiChat, body: { messages: MESSAGES } },
      { route: '/v1/completions', fields: openaiCompletions, body: { prompt: 'hi' } },
    ];
    for (const { route, fields, body } of routes) {
      for (const field of fields) {
        // A value no form of the field takes: objects where the field takes none, else a number.
        const objectLike = ['messages', 'audio', 'function_call', 'logit_bias', 'metadata', 'moderation', 'prediction', 'prompt_cache_options',
          'response_format', 'stream_options', 'tool_choice', 'web_search_options'].includes(field);
        const wrong = objectLike ? 7 : field === 'functions' || field === 'tools' || field === 'modalities' ? 'x' : { wrong: true };
        const answer = await post(server, route, JSON.stringify({ ...body, [field]: wrong }));
        assert.equal(answer.status, 400, `${route} ${field}: ${JSON.stringify(answer.json)}`);
        assert.equal(answer.json.error.type, 'invalid_request_error');
        assert.equal(answer.json.error.param, field, `${route} ${field}: ${answer.json.error.message}`);
      }
      const unknown = await post(server, route, JSON.stringify({ ...body, max_tokens: 1, frobnicate: 1 }));
      assert.equal(unknown.status, 400);
      assert.equal(unknown.json.error.message, 'Unrecognized request argument supplied: frobnicate');
      assert.equal(unknown.json.error.param, 'frobnicate');
    }
    const nested = await post(server, '/v1/chat/completions', JSON.stringify({ messages: [{ role: 'user', content: 'hi', mood: 'ok' }] }));
    assert.equal(nested.json.error.param, 'messages[0].mood');
    const streamOption = await post(server, '/v1/chat/completions', JSON.stringify({ messages: MESSAGES, stream_options: { include_usage: 'yes' } }));
    assert.equal(streamOption.json.error.param, 'stream_options.include_usage');
    // Fields that change nothing here, and neutral values of unsupported ones, are accepted.
    const neutral = await openai.chat.completions.create({
      model: 'tiny', messages: [{ role: 'user', content: 'hi', name: 'ann' }], max_tokens: 2, user: 'u', metadata: { k: 'v' }, store: false,
      parallel_tool_calls: true, tool_choice: 'none', response_format: { type: 'text' }, service_tier: 'auto', frequency_penalty: 0,
      presence_penalty: 0, logit_bias: {}, tools: [], prompt_cache_key: 'p', safety_identifier: 's', verbosity: 'medium',
    });
    assert.equal(neutral.choices.length, 1);
    for (const [field, value] of [['tools', [{ type: 'function', function: { name: 'f' } }]], ['logit_bias', { 5: 10 }], ['response_format', { type: 'json_object' }], ['reasoning_effort', 'low']] as const) {
      const answer = await post(server, '/v1/chat/completions', JSON.stringify({ messages: MESSAGES, [field]: value }));
      assert.equal(answer.status, 400, field);
      assert.equal(answer.json.error.param, field);
      assert.equal(answer.json.error.code, 'unsupported_parameter');
    }
    const topWithout = await post(server, '/v1/chat/completions', JSON.stringify({ messages: MESSAGES, top_logprobs: 2 }));
    assert.equal(topWithout.json.error.param, 'top_logprobs');
  });

  it('answers malformed bodies, truncated bodies and huge values with an HTTP answer', async () => {
    const hi = '"messages":[{"role":"user","content":"hi"}]';
    const cases: [string, number, string | null][] = [
      ['null', 400, null], ['[]', 400, null], ['{"messages":"hi"}', 400, 'messages'], ['{"messages":[]}', 400, 'messages'],
      [`{${hi},"stop":[""]}`, 400, 'stop[0]'], [`{${hi},"n":1.5}`, 400, 'n'], [`{${hi},"seed":-1}`, 400, 'seed'],
      [`{${hi},"temperature":1e308}`, 400, 'temperature'], [`{${hi},"max_tokens":1e308}`, 200, null],
      ['{"messages":[{"role":"user","content":[{"type":"image_url"}]}]}', 400, 'messages[0].content[0]'],
    ];
    for (const [body, status, param] of cases) {
      const answer = await post(server, '/v1/chat/completions', body);
      assert.equal(answer.status, status, body);
      if (status === 400) assert.equal(answer.json.error.param, param, body);
    }
    const { connect } = await import('node:net');
    const statusLine = await new Promise<string>((resolve, reject) => {
      const socket = connect(Number(new URL(server.url).port), '127.0.0.1', () => {
        socket.write('POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{"prompt":');
        setTimeout(() => socket.end(), 50);
      });
      let reply = '';
      socket.on('data', (data) => (reply += data));
      socket.on('close', () => resolve(reply.split('\r\n')[0]));
      socket.on('error', reject);
      socket.setTimeout(10_000, () => reject(new Error('no answer to a truncated body within 10 s')));
    });
    assert.equal(statusLine, 'HTTP/1.1 400 Bad Request');
    assert.equal((await fetch(`${server.url}/health`)).status, 200);
  });

  it('answers 200 randomly mutated and truncated bodies with a well-formed HTTP answer', async () => {
    let state = 12345;
    const random = (n: number) => ((state = (state * 1103515245 + 12345) % 2 ** 31), state % n);
    const values: unknown[] = [null, true, false, -1, 0, 1, 2, 1.5, 17, 1e308, -1e308, '', 'x', 'x'.repeat(5000), [], [1], [''], ['a', 'b'], {}, { a: 1 }, { type: 'text' }, [{ role: 'user' }]];
    const fields = ['model', 'messages', 'temperature', 'top_p', 'n', 'stop', 'seed', 'stream', 'stream_options', 'logprobs', 'top_logprobs',
      'frequency_penalty', 'logit_bias', 'tools', 'response_format', 'user', 'metadata', 'top_k', 'min_p', 'repetition_penalty', 'prompt', 'echo', 'frobnicate'];
    for (let i = 0; i < 200; i++) {
      const route = random(2) === 0 ? '/v1/chat/completions' : '/v1/completions';
      const body: Record<string, unknown> = route === '/v1/completions' ? { prompt: 'hi', max_tokens: 2 } : { messages: [{ role: 'user', content: 'hi' }], max_tokens: 2 };
      for (let k = 0, count = 1 + random(3); k < count; k++) body[fields[random(fields.length)]] = values[random(values.length)];
      if (random(4) === 0) body.messages = [{ role: values[random(values.length)], content: values[random(values.length)] }];
      let text = JSON.stringify(body);
      if (random(5) === 0) text = text.slice(0, random(text.length));
      const response = await fetch(`${server.url}${route}`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: text, signal: AbortSignal.timeout(30_000) });
      const raw = await response.text();
      const what = `${route} ${text.slice(0, 300)} -> ${response.status} ${raw.slice(0, 300)}`;
      if (response.headers.get('content-type')?.startsWith('text/event-stream')) {
        assert.equal(response.status, 200, what);
        assert.ok(raw.endsWith('data: [DONE]\n\n'), what);
        continue;
      }
      const json = JSON.parse(raw) as { choices?: unknown[]; error?: { message: string; type: string } };
      if (response.status === 200) assert.ok(Array.isArray(json.choices) && json.choices.length > 0, what);
      else {
        assert.ok([400, 404].includes(response.status), what);
        assert.ok(json.error && json.error.message.length > 0 && ['invalid_request_error', 'not_found_error'].includes(json.error.type), what);
      }
    }
    assert.equal((await fetch(`${server.url}/health`)).status, 200);
  });

  it('lets a client leave mid-stream while another completes', async () => {
    const [[expected]] = await reference.generate([MESSAGES], { maxNewTokens: 40, doSample: false });
    const leaver = streamThenLeave(openai, 'tiny');
    const stayer = openai.chat.completions.create({ model: 'tiny', messages: MESSAGES, max_tokens: 40, temperature: 0 });
    assert.equal(await leaver, 3);
    const deadline = Date.now() + 10_000;
    while (!logLines.some((line) => line.includes('(client gone)'))) {
      assert.ok(Date.now() < deadline, 'the server did not see the client leave within 10 s');
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
    assert.equal((await stayer).choices[0].message.content, expected.text);
  });

  it('prints how much 16 concurrent greedy requests gain over one', async () => {
    const ask = () => openai.completions.create({ model: 'tiny', prompt: 'Count:', max_tokens: 32, temperature: 0 });
    let start = performance.now();
    const one = await ask();
    const single = performance.now() - start;
    start = performance.now();
    const many = await Promise.all(Array.from({ length: 16 }, ask));
    const concurrent = performance.now() - start;
    for (const answer of many) assert.equal(answer.choices[0].text, one.choices[0].text);
    console.log(`serve: 16 concurrent greedy requests took ${(concurrent / single).toFixed(2)}x one request (${single.toFixed(0)} ms vs ${concurrent.toFixed(0)} ms, max_batch 8)`);
  });

  describe('limits', () => {
    let guarded: ZephyrServer;
    before(async () => {
      guarded = await createServer(await loadModel(modelDir, { maxTokens: 64 }), {
        port: 0, servedModelName: 'tiny', apiKey: 'sesame', maxBatch: 1, maxQueue: 0, log: null, requestTimeoutMs: 1500,
      });
    });
    after(async () => guarded?.close());

    it('needs the API key on every route but /health', async () => {
      assert.equal((await fetch(`${guarded.url}/health`)).status, 200);
      await assert.rejects(client(guarded, 'wrong').models.list(), OpenAI.AuthenticationError);
      const noKey = await post(guarded, '/v1/completions', JSON.stringify({ prompt: 'hi' }));
      assert.equal(noKey.status, 401);
      assert.equal(noKey.json.error.code, 'invalid_api_key');
      assert.equal((await client(guarded, 'sesame').models.list()).data[0].id, 'tiny');
    });

    it('answers 429 with Retry-After when the queue is full, and frees a left stream\'s place', async () => {
      const keyed = client(guarded, 'sesame');
      const leaving = new AbortController();
      const stream = await keyed.completions.create({ model: 'tiny', prompt: 'Long story:', max_tokens: 200, temperature: 0, stream: true }, { signal: leaving.signal });
      const iterator = stream[Symbol.asyncIterator]();
      await iterator.next();
      const busy = await post(guarded, '/v1/completions', JSON.stringify({ prompt: 'hi', max_tokens: 2 }), { authorization: 'Bearer sesame' });
      assert.equal(busy.status, 429);
      assert.equal(busy.headers.get('retry-after'), '1');
      assert.equal(busy.json.error.type, 'rate_limit_error');
      leaving.abort();
      await iterator.next().catch(() => {});
      // The aborted sequence leaves at its next token: within a bounded wait the place is free.
      const deadline = Date.now() + 10_000;
      for (;;) {
        const next = await post(guarded, '/v1/completions', JSON.stringify({ prompt: 'hi', max_tokens: 2 }), { authorization: 'Bearer sesame' });
        if (next.status === 200) break;
        assert.equal(next.status, 429);
        assert.ok(Date.now() < deadline, 'the left stream\'s place was not freed within 10 s');
        await new Promise((resolve) => setTimeout(resolve, 20));
      }
    });

    it('answers a stalled sender 408 and closes it within the request timeout, serving others meanwhile', async () => {
      const { hostname, port } = new URL(guarded.url);
      const socket = connect(Number(port), hostname);
      await once(socket, 'connect');
      const started = Date.now();
      let answer = '';
      socket.on('data', (chunk: Buffer) => (answer += chunk.toString('latin1')));
      // Headers promise 200 bytes of body; 15 arrive, then nothing.
      socket.write('POST /v1/completions HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer sesame\r\nContent-Type: application/json\r\nContent-Length: 200\r\n\r\n{"prompt": "hi"');
      assert.equal((await fetch(`${guarded.url}/health`)).status, 200);
      await once(socket, 'close');
      assert.match(answer, /^HTTP\/1\.1 408/);
      assert.ok(Date.now() - started < 10_000, `closed after ${Date.now() - started} ms (request timeout 1.5 s)`);
      assert.equal((await fetch(`${guarded.url}/health`)).status, 200);
    });

    it('refuses a non-loopback host without a key unless insecure', async () => {
      await assert.rejects(createServer(modelDir, { host: '0.0.0.0', port: 0 }), /--api_key/);
    });
  });

  it('`zephyr-native serve` judges for `rate`, and on SIGTERM finishes the request in flight and exits 0', async () => {
    // A long context: the judge's rubric prompt is longer than the other tests' model holds.
    const judgeDir = join(work, 'judge');
    await writeRandomModel(judgeDir, mistralConfig({
      vocab_size: 32000, hidden_size: 32, intermediate_size: 48, num_hidden_layers: 2, num_attention_heads: 4,
      num_key_value_heads: 2, max_position_embeddings: 4096, sliding_window: 64, tie_word_embeddings: false,
      bos_token_id: 1, eos_token_id: 2, initializer_range: 0.5,
    }), { seed: 6, tokenizerDir: join(work, 'tokenizer') });
    const cli = join(packageRoot(), 'dist', 'lib', 'cli', 'main.js');
    const serve = spawn(process.execPath, [cli, 'serve', '--model_name_or_path', judgeDir, '--port', '0', '--served_model_name', 'judge', '--shutdown_timeout', '20'], { stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    serve.stderr.setEncoding('utf8').on('data', (text: string) => (stderr += text));
    const killer = setTimeout(() => serve.kill('SIGKILL'), 120_000);
    try {
      const deadline = Date.now() + 60_000;
      while (!/ at (http:\/\/\S+)\/v1/.test(stderr)) {
        assert.ok(Date.now() < deadline && serve.exitCode === null, `serve did not start: ${stderr}`);
        await new Promise((resolve) => setTimeout(resolve, 50));
      }
      const url = / at (http:\/\/\S+)\/v1/.exec(stderr)![1];

      const input = join(work, 'rate-input.jsonl');
      const output = join(work, 'rate-output.jsonl');
      writeFileSync(input, [0, 1].map((i) => JSON.stringify({ instruction: `Say ${i}.`, completions: [{ model: 'a', response: `${i}` }, { model: 'b', response: 'no' }] })).join('\n') + '\n');
      const rate = spawn(process.execPath, [cli, 'rate', '--input', input, '--output', output, '--judge_url', `${url}/v1`, '--judge_model', 'judge', '--max_tokens', '8', '--max_retries', '0'], { stdio: ['ignore', 'ignore', 'pipe'] });
      let rateErr = '';
      rate.stderr.setEncoding('utf8').on('data', (text: string) => (rateErr += text));
      const [rateCode] = await once(rate, 'exit');
      // A random model's answers are no ratings: the rows come back invalid, but every request was answered.
      assert.equal(rateCode, 0, rateErr);
      assert.equal(readFileSync(output, 'utf8').trim().split('\n').length, 2);
      assert.match(stderr, /POST \/v1\/chat\/completions 200 /);

      const inFlight = await fetch(`${url}/v1/completions`, {
        method: 'POST', headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ model: 'judge', prompt: 'Tell a story.', max_tokens: 300, temperature: 0, stream: true }),
        signal: AbortSignal.timeout(60_000),
      });
      const reader = inFlight.body!.getReader();
      let events = new TextDecoder().decode((await reader.read()).value);
      serve.kill('SIGTERM');
      for (let part = await reader.read(); !part.done; part = await reader.read()) events += new TextDecoder().decode(part.value);
      assert.ok(events.endsWith('data: [DONE]\n\n'), 'the stream in flight ran to its end');
      assert.match(events, /"finish_reason":"(stop|length)"/);
      const [code] = await once(serve, 'exit');
      assert.equal(code, 0, stderr);
    } finally {
      clearTimeout(killer);
      if (serve.exitCode === null) serve.kill('SIGKILL');
    }
  });
});
