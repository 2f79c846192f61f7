/**
 * `serve`'s log-probs through the official OpenAI client against transformers: chat `logprobs` +
 * `top_logprobs` and completions `logprobs: N`, streaming and not, greedy and sampled at
 * temperature 0.7 (the reported values stay the raw distribution's: log_softmax of the logits,
 * before temperature, as OpenAI and vLLM report them). The reference is transformers'
 * MistralForCausalLM (f32) on the served folder with log_softmax in float64
 * (test/serve_reference.py), along the same token paths. Also the token strings and bytes OpenAI
 * shows (`▁the` is " the", a lone byte is `bytes:\xe2`).
 */
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
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
import { TokenStrings } from '../lib/serve/token-strings.js';
import { referencePython, runPython } from './support/python.js';

const K = 5;
/** f32 forwards (ours and transformers') agree to about 1e-6 of the logits' scale; log-probs here are O(10). */
const TOLERANCE = 1e-4;
const MESSAGES = [{ role: 'user' as const, content: 'Name three colours.' }];
const { python, skipReason } = referencePython(['torch', 'transformers', 'safetensors']);

interface ReferencePath {
  chosen: number[];
  top: [number, number][][];
}

const work = mkdtempSync(join(tmpdir(), 'zn-serve-logprobs-'));
const modelDir = join(work, 'model');
after(() => rmSync(work, { recursive: true, force: true }));

function near(actual: number, expected: number, what: string): void {
  assert.ok(Math.abs(actual - expected) <= TOLERANCE, `${what}: ${actual} vs transformers' ${expected}`);
}

/**
 * One step's alternatives against the reference's K + 1 best: the values in order, and the tokens
 * wherever the reference's neighbours are further apart than the tolerance (a near-tie may
 * order either way).
 */
function checkTop(strings: TokenStrings, tokens: string[], values: number[], reference: [number, number][], what: string): void {
  assert.equal(tokens.length, K, `${what}: ${K} alternatives`);
  for (let i = 0; i < K; i++) {
    near(values[i], reference[i][1], `${what} top ${i}`);
    const gapBefore = i === 0 ? Infinity : reference[i - 1][1] - reference[i][1];
    const gapAfter = reference[i][1] - reference[i + 1][1];
    if (Math.min(gapBefore, gapAfter) > 2 * TOLERANCE) assert.equal(tokens[i], strings.of(reference[i][0]).token, `${what} top ${i} token`);
  }
}

const CHAT = { model: 'tiny', messages: MESSAGES, max_tokens: 10, temperature: 0.7, seed: 11, n: 2, logprobs: true, top_logprobs: K } as const;
const COMPLETION = { model: 'tiny', prompt: 'Once upon a time', max_tokens: 10, temperature: 0, logprobs: 3 } as const;

type CompletionLogprobs = { tokens: string[]; token_logprobs: number[]; top_logprobs: Record<string, number>[]; text_offset: number[] };

describe('serve log-probs against transformers', { skip: skipReason ?? false, timeout: 180_000 }, () => {
  let generator: Generator;
  let strings: TokenStrings;
  let chat: { answer: OpenAI.ChatCompletion; streamed: OpenAI.ChatCompletionTokenLogprob[][]; paths: number[][]; expected: ReferencePath[] };
  let completion: { answer: OpenAI.Completion; streamed: CompletionLogprobs; path: number[]; expected: ReferencePath };

  // Every request first, then one transformers run over all their token paths (Python's start is most of the time).
  before(async () => {
    writeLlama2TokenizerFolder(join(work, 'tokenizer'));
    const config = mistralConfig({
      vocab_size: 32000, hidden_size: 32, intermediate_size: 48, num_hidden_layers: 2, num_attention_heads: 4,
      num_key_value_heads: 2, max_position_embeddings: 256, sliding_window: 64, tie_word_embeddings: false,
      bos_token_id: 1, eos_token_id: 2, initializer_range: 0.5,
    });
    await writeRandomModel(modelDir, config, { seed: 9, tokenizerDir: join(work, 'tokenizer') });
    const tokenizer = HfTokenizer.fromFolder(modelDir);
    strings = new TokenStrings(tokenizer);
    const server = await createServer(modelDir, { port: 0, servedModelName: 'tiny', maxBatch: 8, log: null });
    const openai = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: 'unused', maxRetries: 0, timeout: 30_000 });
    try {
      const chatAnswer = await openai.chat.completions.create(CHAT);
      const chatStreamed: OpenAI.ChatCompletionTokenLogprob[][] = [[], []];
      for await (const chunk of await openai.chat.completions.create({ ...CHAT, stream: true })) {
        for (const choice of chunk.choices) chatStreamed[choice.index].push(...(choice.logprobs?.content ?? []));
      }
      const completionAnswer = await openai.completions.create(COMPLETION);
      const completionStreamed: CompletionLogprobs = { tokens: [], token_logprobs: [], top_logprobs: [], text_offset: [] };
      for await (const chunk of await openai.completions.create({ ...COMPLETION, stream: true })) {
        const logprobs = chunk.choices[0]?.logprobs;
        if (!logprobs) continue;
        completionStreamed.tokens.push(...logprobs.tokens!);
        completionStreamed.token_logprobs.push(...logprobs.token_logprobs!);
        completionStreamed.top_logprobs.push(...logprobs.top_logprobs!);
        completionStreamed.text_offset.push(...logprobs.text_offset!);
      }
      // The token paths to score: the same requests through a Generator of its own (same seeds, same tokens).
      generator = await Generator.create(await loadModel(modelDir, { maxTokens: 64 }), tokenizer, { batchSize: 4 });
      const [chatPaths] = await generator.generate([MESSAGES], { maxNewTokens: 10, temperature: 0.7, seed: 11, numReturnSequences: 2 });
      const [[completionPath]] = await generator.generate([COMPLETION.prompt], { maxNewTokens: 10, doSample: false });
      const request = join(work, 'request.json');
      const paths = [
        ...chatPaths.map((p) => ({ prompt: generator.promptIds(MESSAGES), completion: p.tokenIds })),
        { prompt: generator.promptIds(COMPLETION.prompt), completion: completionPath.tokenIds },
      ];
      writeFileSync(request, JSON.stringify({ k: K, paths }));
      const expected = JSON.parse(runPython(python!, join(packageRoot(), 'test', 'serve_reference.py'), [modelDir, request])) as ReferencePath[];
      chat = { answer: chatAnswer, streamed: chatStreamed, paths: chatPaths.map((p) => p.tokenIds), expected: expected.slice(0, 2) };
      completion = { answer: completionAnswer, streamed: completionStreamed, path: completionPath.tokenIds, expected: expected[2] };
    } finally {
      await server.close();
    }
  });
  after(() => generator?.engine.model.dispose());

  it('chat: logprob and top_logprobs of every token, sampled at temperature 0.7, streaming and not', () => {
    const { answer, streamed, paths, expected } = chat;
    assert.equal(answer.choices.length, 2);
    let worst = 0;
    answer.choices.forEach((choice, c) => {
      const content = choice.logprobs!.content!;
      assert.deepEqual(streamed[c], content, `choice ${c}: the stream reports what the answer does`);
      assert.deepEqual(content.map((e) => e.token), paths[c].map((id) => strings.of(id).token), `choice ${c}: the tokens`);
      content.forEach((entry, t) => {
        const what = `choice ${c} token ${t}`;
        near(entry.logprob, expected[c].chosen[t], what);
        worst = Math.max(worst, Math.abs(entry.logprob - expected[c].chosen[t]));
        const top = entry.top_logprobs;
        checkTop(strings, top.map((alt) => alt.token), top.map((alt) => alt.logprob), expected[c].top[t], what);
        top.forEach((alt, i) => (worst = Math.max(worst, Math.abs(alt.logprob - expected[c].top[t][i][1]))));
        assert.deepEqual(entry.bytes, strings.of(paths[c][t]).bytes, `${what} bytes`);
        for (const alt of top) if (!alt.token.startsWith('bytes:')) assert.deepEqual(alt.bytes, [...Buffer.from(alt.token, 'utf8')], `${what} bytes of ${alt.token}`);
        const self = top.find((alt) => alt.token === entry.token);
        if (self) assert.equal(self.logprob, entry.logprob, `${what}: the chosen token's two log-probs are one value`);
      });
    });
    console.log(`serve logprobs: largest difference from transformers (f64 log_softmax), chosen tokens and alternatives: ${worst.toExponential(2)}`);
  });

  it('completions: logprobs N gives the N likeliest tokens and the chosen one, streaming and not', () => {
    const { answer, streamed, path, expected } = completion;
    const logprobs = answer.choices[0].logprobs!;
    assert.deepEqual(streamed, logprobs, 'the stream reports what the answer does, offsets counted across chunks');
    assert.deepEqual(logprobs.tokens, path.map((id) => strings.of(id).token));
    let offset = 0;
    logprobs.tokens!.forEach((token, t) => {
      const what = `token ${t}`;
      near(logprobs.token_logprobs![t], expected.chosen[t], what);
      assert.equal(logprobs.text_offset![t], offset, `${what} text_offset`);
      offset += token.length;
      // Greedy: the chosen token is the likeliest, so the dict holds exactly the 3 best (by text).
      const entries = Object.entries(logprobs.top_logprobs![t]).sort((a, b) => b[1] - a[1]);
      const wanted = expected.top[t].slice(0, 3).map(([id, value]) => [strings.of(id).token, value] as const);
      assert.equal(entries.length, new Set(wanted.map(([text]) => text)).size, `${what}: one entry per text`);
      entries.forEach(([text, value], i) => {
        near(value, wanted[i][1], `${what} top ${i}`);
        const tie = Math.abs(wanted[i][1] - (expected.top[t][i + 1]?.[1] ?? -Infinity)) <= 2 * TOLERANCE || (i > 0 && wanted[i - 1][1] - wanted[i][1] <= 2 * TOLERANCE);
        if (!tie) assert.equal(text, wanted[i][0], `${what} top ${i} token`);
      });
      assert.equal(logprobs.top_logprobs![t][token], logprobs.token_logprobs![t], `${what}: the chosen token is in its dict`);
    });
  });

  it('shows tokens as OpenAI does: a word piece with its space, a lone byte as bytes:', () => {
    const tokenizer = generator.tokenizer;
    const the = tokenizer.tokenToId('\u2581the')!;
    assert.deepEqual(strings.of(the), { token: ' the', bytes: [0x20, 0x74, 0x68, 0x65] });
    const byte = tokenizer.tokenToId('<0xE2>')!;
    assert.deepEqual(strings.of(byte), { token: 'bytes:\\xe2', bytes: [0xe2] });
    const newline = tokenizer.tokenToId('<0x0A>')!;
    assert.deepEqual(strings.of(newline), { token: '\n', bytes: [0x0a] });
    assert.deepEqual(strings.of(tokenizer.eosTokenId!), { token: '</s>', bytes: [...Buffer.from('</s>')] });
  });
});
