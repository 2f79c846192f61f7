/**
 * `zephyr-native data inspect` end to end: counts, skipped rows by reason with file and row, a
 * length histogram, one example with its loss-carrying tokens marked; --strict and usage errors.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';

import { writeLlama2TokenizerFolder } from '../lib/data/llama2-tokenizer.js';
import { packageRoot } from '../lib/native.js';

const cli = join(packageRoot(), 'dist', 'lib', 'cli', 'main.js');
const run = (...args: string[]) => spawnSync(process.execPath, [cli, 'data', 'inspect', ...args], { encoding: 'utf8', env: { ...process.env, NO_COLOR: '1' } });

const msg = (role: string, content: string) => ({ role, content });
let work = '';
let chats = '';
let prefs = '';

before(() => {
  work = mkdtempSync(join(tmpdir(), 'zn-data-cli-'));
  chats = join(work, 'chats.jsonl');
  const rows = [
    { messages: [msg('user', 'Name a color.'), msg('assistant', 'Blue.')] },
    { messages: [msg('user', 'Hi'), msg('user', 'again')] },
    { messages: [msg('user', 'Count to three.'), msg('assistant', 'One, two, three.'), msg('user', 'Thanks'), msg('assistant', 'Welcome.')] },
  ];
  writeFileSync(chats, rows.map((row) => JSON.stringify(row)).join('\n'));
  prefs = join(work, 'prefs.jsonl');
  const pair = { chosen: [msg('user', 'Capital of France?'), msg('assistant', 'Paris.')], rejected: [msg('user', 'Capital of France?'), msg('assistant', 'Lyon.')] };
  writeFileSync(prefs, JSON.stringify(pair));
});

after(() => rmSync(work, { recursive: true, force: true }));

describe('data inspect', () => {
  it('SFT: counts, skipped rows with file and row, histogram, and the example with loss marked', () => {
    const result = run('--dataset_name', chats);
    assert.equal(result.status, 0, result.stderr);
    const out = result.stdout;
    assert.match(out, /mode sft/);
    assert.match(out, /chat template: Zephyr \(the tokenizer has none\)/);
    assert.match(out, /train: 3 rows read, 2 used, 1 skipped/);
    assert.ok(out.includes(`${chats}: row 1: field 'messages[1].role': expected 'assistant', found 'user'`), out);
    assert.match(out, /example length \(tokens\): min \d+, max \d+/);
    // Loss on every token by default: everything after the first token is marked.
    assert.match(out, /<\|user\|>\n?\[\[|<\[\[\|user\|>/);
  });

  it('SFT with --assistant_only_loss marks only what the assistant wrote', () => {
    const result = run('--dataset_name', chats, '--assistant_only_loss', '--example', '1');
    assert.equal(result.status, 0, result.stderr);
    const example = result.stdout.slice(result.stdout.indexOf('inside [[ ]]:') + 'inside [[ ]]:'.length);
    const marked = [...example.matchAll(/\[\[([\s\S]*?)\]\]/g)].map((m) => m[1]);
    assert.deepEqual(marked, ['One, two, three.</s> ', 'Welcome.</s> ']);
  });

  it('DPO is detected from chosen/rejected; both completions are shown with their loss tokens', () => {
    const result = run('--dataset_name', prefs);
    assert.equal(result.status, 0, result.stderr);
    assert.match(result.stdout, /mode dpo/);
    assert.match(result.stdout, /--- chosen\n<\|user\|>\nCapital of France\?<\/s> \n<\|assistant\|>\n\[\[Paris\.<\/s> \n\]\]/);
    assert.match(result.stdout, /--- rejected\n[\s\S]*\[\[Lyon\.<\/s> \n\]\]/);
  });

  it('shows which tokenizer pipeline runs and why: a model folder (config.json) differs from its tokenizer files alone', () => {
    const tokenizerDir = join(work, 'tokenizer');
    const modelDir = join(work, 'model');
    writeLlama2TokenizerFolder(tokenizerDir);
    writeLlama2TokenizerFolder(modelDir);
    writeFileSync(join(modelDir, 'config.json'), JSON.stringify({ model_type: 'mistral' }));
    const pipeline = (...args: string[]) => {
      const result = run('--dataset_name', chats, ...args);
      assert.equal(result.status, 0, result.stderr);
      return result.stdout.split('\n').find((line) => line.startsWith('tokenizer pipeline: '));
    };
    assert.equal(
      pipeline('--model_name_or_path', modelDir),
      "tokenizer pipeline: TokenizersBackend, tokenizer.json as written; because config.json's model_type 'mistral' registers TokenizersBackend, which transformers uses over tokenizer_config.json's tokenizer_class LlamaTokenizer",
    );
    assert.equal(
      pipeline('--model_name_or_path', tokenizerDir),
      "tokenizer pipeline: LlamaTokenizer, rebuilt from vocab and merges, Metaspace prepend always; because tokenizer_config.json's tokenizer_class is LlamaTokenizer (no config.json)",
    );
    assert.match(pipeline()!, /^tokenizer pipeline: LlamaTokenizer, rebuilt/);
  });

  it('--strict fails at the first bad row with file, row and field', () => {
    const result = run('--dataset_name', chats, '--strict');
    assert.equal(result.status, 1);
    assert.match(result.stderr, /chats\.jsonl: row 1: field 'messages\[1\]\.role'/);
  });

  it('usage errors exit 2', () => {
    assert.equal(run('--dataset_name', join(work, 'missing.jsonl')).status, 2);
    assert.equal(run('--dataset_name', chats, '--max_length', '0').status, 2);
  });
});
