/**
 * `zephyr-native chat` as a user runs it. On a pipe: each answer equals Generator.generate of the
 * same conversation (the first exchange included in the second), /reset, /system, /exit and a
 * full context. In a terminal (tmux gives it a pseudo-terminal): the prompt, a streamed answer,
 * Ctrl-C stopping a long answer without ending the program, /exit. Bad flags exit 2.
 */
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { after, before, describe, it } from 'node:test';

import type { ChatMessage } from '../lib/data/chat-template.js';
import { writeLlama2TokenizerFolder } from '../lib/data/llama2-tokenizer.js';
import { HfTokenizer } from '../lib/data/tokenizer.js';
import { Generator, type RequestOptions } from '../lib/generate/generate.js';
import { mistralConfig, writeRandomModel } from '../lib/model/init.js';
import { loadModel } from '../lib/model/model.js';
import { packageRoot } from '../lib/native.js';

const cli = join(packageRoot(), 'dist', 'lib', 'cli', 'main.js');
const work = mkdtempSync(join(tmpdir(), 'zn-chat-'));
const modelDir = join(work, 'model');
after(() => rmSync(work, { recursive: true, force: true }));

const WAIT_MS = 60_000;

function chat(input: string, ...args: string[]) {
  return spawnSync(process.execPath, [cli, 'chat', '--model_name_or_path', modelDir, ...args], { input, encoding: 'utf8', timeout: WAIT_MS });
}

let generator: Generator;

/** What chat should answer to a conversation, from the library. */
async function expected(conversation: ChatMessage[], options: RequestOptions): Promise<string> {
  const [[completion]] = await generator.generate([conversation], options);
  return completion.text;
}

before(async () => {
  writeLlama2TokenizerFolder(join(work, 'tokenizer'));
  const config = mistralConfig({
    vocab_size: 32000, hidden_size: 32, intermediate_size: 48, num_hidden_layers: 2, num_attention_heads: 4,
    num_key_value_heads: 2, max_position_embeddings: 8192, sliding_window: 8, tie_word_embeddings: false,
    bos_token_id: 1, eos_token_id: 2, initializer_range: 0.5,
  });
  await writeRandomModel(modelDir, config, { seed: 11, tokenizerDir: join(work, 'tokenizer') });
  const model = await loadModel(modelDir);
  generator = await Generator.create(model, HfTokenizer.fromFolder(modelDir), { batchSize: 1 });
});

describe('chat on a pipe', () => {
  it('answers each line, keeping the conversation: each answer then a blank line', async () => {
    const result = chat('hello there\nhow are you?\n', '--max_new_tokens', '12');
    assert.equal(result.status, 0, result.stderr);
    const first = await expected([{ role: 'user', content: 'hello there' }], { maxNewTokens: 12 });
    const second = await expected(
      [{ role: 'user', content: 'hello there' }, { role: 'assistant', content: first }, { role: 'user', content: 'how are you?' }],
      { maxNewTokens: 12 },
    );
    assert.ok(first.length > 0 && second !== first);
    assert.equal(result.stdout, `${first}\n\n${second}\n\n`);
  });

  it('/reset keeps the system message, /system replaces it, /exit ends; unknown commands send nothing', async () => {
    const input = 'hello\n/reset\nhello\n/nonsense\n\n/system You answer briefly.\nhi\n/exit\nnot read\n';
    const result = chat(input, '--max_new_tokens', '8', '--system', 'You are a pirate.');
    assert.equal(result.status, 0, result.stderr);
    const pirate = await expected([{ role: 'system', content: 'You are a pirate.' }, { role: 'user', content: 'hello' }], { maxNewTokens: 8 });
    const brief = await expected([{ role: 'system', content: 'You answer briefly.' }, { role: 'user', content: 'hi' }], { maxNewTokens: 8 });
    assert.equal(result.stdout, `${pirate}\n\n${pirate}\n\n${brief}\n\n`);
    assert.match(result.stderr, /unknown command \/nonsense/);
  });

  it('a full context is reported with /reset, and a message that no longer fits gets an empty answer', () => {
    const result = chat('hello there\nand then?\n', '--max_context', '40', '--max_new_tokens', '100');
    assert.equal(result.status, 0, result.stderr);
    const answers = result.stdout.split('\n\n');
    assert.equal(answers.length, 3, result.stdout);
    assert.ok(answers[0].length > 0);
    assert.equal(answers[1], '');
    assert.match(result.stderr, /^chat: the conversation fills the context \(40 tokens\): \/reset to start again$/m);
    assert.match(result.stderr, /^chat: the conversation with this message needs \d+ tokens, the context holds 40: the message was not sent/m);
  });
});

describe('chat: bad input', () => {
  it('is listed in --help', () => {
    const result = spawnSync(process.execPath, [cli, '--help'], { encoding: 'utf8' });
    assert.match(result.stdout, /zephyr-native chat\b/);
  });

  it('--top_p 0 is a usage error, one line, exit 2', () => {
    const result = chat('hello\n', '--top_p', '0');
    assert.equal(result.status, 2);
    assert.equal(result.stderr.trim().split('\n').length, 1, result.stderr);
    assert.match(result.stderr, /top_p must be in \(0, 1\], got 0/);
    assert.equal(result.stdout, '');
  });

  it('a missing model folder is a usage error naming it', () => {
    const missing = join(work, 'no-such-model');
    const result = spawnSync(process.execPath, [cli, 'chat', '--model_name_or_path', missing], { input: '', encoding: 'utf8' });
    assert.equal(result.status, 2);
    assert.equal(result.stderr.trim(), `zephyr-native: usage: --model_name_or_path: no such model folder: ${missing}`);
  });
});

function hasTmux(): boolean {
  return spawnSync('tmux', ['-V'], { encoding: 'utf8' }).status === 0;
}

describe('chat in a terminal (tmux)', { skip: hasTmux() ? false : 'tmux is not installed (apt-get install -y tmux)' }, () => {
  const socket = `zn-chat-test-${process.pid}`;
  const session = 'chat';
  const tmux = (...args: string[]): string => execFileSync('tmux', ['-L', socket, ...args], { encoding: 'utf8' });
  /** The whole pane, wrapped lines joined, trailing blank lines dropped. */
  const screen = (): string => tmux('capture-pane', '-p', '-J', '-S', '-', '-t', session).trimEnd();
  async function waitFor(what: string, test: (text: string) => boolean): Promise<string> {
    const deadline = Date.now() + WAIT_MS;
    for (;;) {
      const text = screen();
      if (test(text)) return text;
      if (Date.now() > deadline) assert.fail(`timed out waiting for ${what}; the terminal shows:\n${text.slice(-2000)}`);
      await sleep(200);
    }
  }
  const atPrompt = (text: string): boolean => /\n>$/.test(text);
  async function startChat(flags: string[]): Promise<void> {
    spawnSync('tmux', ['-L', socket, 'kill-session', '-t', session]);
    const command = [process.execPath, cli, 'chat', '--model_name_or_path', modelDir, ...flags].map((a) => `'${a}'`).join(' ');
    tmux('new-session', '-d', '-s', session, '-x', '120', '-y', '40', `${command}; echo "chat exited $?"; sleep 600`);
    await waitFor('the banner and the prompt', (text) => text.includes('Ctrl-C stops an answer') && atPrompt(text));
  }
  after(() => spawnSync('tmux', ['-L', socket, 'kill-server']));

  it('streams an answer, Ctrl-C stops it and prompts again, /exit quits with 0', { timeout: 5 * WAIT_MS }, async () => {
    const flags = ['--max_new_tokens', '4000', '--do_sample', '--seed', '1'];
    // The answer's first tokens, as the library samples them with the same seed.
    const start = await expected([{ role: 'user', content: 'hello' }], { maxNewTokens: 8, doSample: true, seed: 1 });
    const prefix = /^[\x20-\x7e]*/.exec(start)![0].slice(0, 30);
    assert.ok(prefix.length >= 3, `the fixture's answer should start with printable text, got ${JSON.stringify(start)}`);

    await startChat(flags);

    tmux('send-keys', '-t', session, '-l', 'hello');
    tmux('send-keys', '-t', session, 'Enter');
    await waitFor('the answer', (text) => text.includes(`> hello\n${prefix}`));
    tmux('send-keys', '-t', session, 'C-c');
    const stopped = await waitFor('the stopped answer and a new prompt', (text) => /\n\[stopped\]\n>$/.test(text));
    assert.doesNotMatch(stopped, /chat exited/);

    tmux('send-keys', '-t', session, '-l', '/reset');
    tmux('send-keys', '-t', session, 'Enter');
    await waitFor('the reset', (text) => /\[conversation reset\]\n>$/.test(text));

    tmux('send-keys', '-t', session, '-l', '/exit');
    tmux('send-keys', '-t', session, 'Enter');
    await waitFor('the exit', (text) => /chat exited 0$/.test(text));
  });

  for (const key of ['C-c', 'C-d']) {
    it(`${key} at the prompt quits with 0`, { timeout: 3 * WAIT_MS }, async () => {
      await startChat(['--max_new_tokens', '4']);
      tmux('send-keys', '-t', session, key);
      await waitFor('the exit', (text) => /chat exited 0$/.test(text));
    });
  }
});
