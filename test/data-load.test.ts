/**
 * Loading datasets as the recipes name them: folders laid out like HuggingFaceH4/ultrachat_200k
 * and HuggingFaceH4/ultrafeedback_binarized (data/<split>-0000k-of-0000n.parquet, the Hub's
 * column names and nesting) load by split; dataset_mixer and dataset_mixture select the rows
 * they should; bad rows are counted by reason with file and row, or stop loading with --strict.
 */
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';

import { planDatasets } from '../lib/data/dataset-config.js';
import type { PreferencePair } from '../lib/data/dpo-tokenize.js';
import { loadLlama2Tokenizer } from '../lib/data/llama2-tokenizer.js';
import { loadDpoData, loadSftData } from '../lib/data/load.js';
import { DEFAULT_SFT_OPTIONS, type SftExample } from '../lib/data/sft-examples.js';
import type { HfTokenizer } from '../lib/data/tokenizer.js';
import { writeRows } from '../lib/data/writers.js';
import { UsageError, ZnError } from '../lib/errors.js';

const msg = (role: string, content: string) => ({ content, role }); // the Hub's field order

function ultrachatRows(n: number, tag: string) {
  return Array.from({ length: n }, (_, i) => {
    const prompt = `${tag} question ${i}: tell me about ${'the sea '.repeat(i % 3)}`;
    return { prompt, prompt_id: `${tag}-${i}`, messages: [msg('user', prompt), msg('assistant', `answer ${i}`), msg('user', 'thanks'), msg('assistant', 'you are welcome')] };
  });
}

function ultrafeedbackRows(n: number, tag: string) {
  return Array.from({ length: n }, (_, i) => {
    const prompt = `${tag} prompt ${i}`;
    const chosen = [msg('user', prompt), msg('assistant', `a good answer ${i}`)];
    const rejected = [msg('user', prompt), msg('assistant', `a weak answer ${i}`)];
    return { prompt, prompt_id: `${tag}-${i}`, chosen, rejected, messages: chosen, score_chosen: 8.5, score_rejected: 4 };
  });
}

let work = '';
let tokenizer: HfTokenizer;
let ultrachat = '';
let ultrafeedback = '';
const sftOptions = { ...DEFAULT_SFT_OPTIONS, maxLength: 256 };
const dpoOptions = { maxLength: 256, maxPromptLength: null };

before(async () => {
  work = mkdtempSync(join(tmpdir(), 'zn-data-load-'));
  tokenizer = loadLlama2Tokenizer();
  ultrachat = join(work, 'ultrachat_200k');
  mkdirSync(join(ultrachat, 'data'), { recursive: true });
  const train = ultrachatRows(30, 'train');
  // Row 4 of the second shard has a user turn after a user turn; row 7 lacks messages.
  const shard2 = train.slice(15).map((row, i) => (i === 4 ? { ...row, messages: [msg('user', 'a'), msg('user', 'b')] } : row));
  const { messages: _dropped, ...noMessages } = shard2[7];
  shard2[7] = noMessages as (typeof shard2)[number];
  await writeRows(join(ultrachat, 'data', 'train_sft-00000-of-00002.parquet'), train.slice(0, 15));
  await writeRows(join(ultrachat, 'data', 'train_sft-00001-of-00002.parquet'), shard2);
  await writeRows(join(ultrachat, 'data', 'test_sft-00000-of-00001.parquet'), ultrachatRows(6, 'test'));
  await writeRows(join(ultrachat, 'data', 'train_gen-00000-of-00001.parquet'), ultrachatRows(3, 'gen'));
  ultrafeedback = join(work, 'ultrafeedback_binarized');
  mkdirSync(join(ultrafeedback, 'data'), { recursive: true });
  const prefs = ultrafeedbackRows(20, 'train');
  prefs[2] = { ...prefs[2], rejected: prefs[2].chosen };
  await writeRows(join(ultrafeedback, 'data', 'train_prefs-00000-of-00001.parquet'), prefs);
  await writeRows(join(ultrafeedback, 'data', 'test_prefs-00000-of-00001.parquet'), ultrafeedbackRows(5, 'test'));
});

after(() => rmSync(work, { recursive: true, force: true }));

describe('HF dataset folders by split', () => {
  it('ultrachat_200k layout: train_sft from both shards, test_sft as the eval set, bad rows reported with file and row', async () => {
    const lines: string[] = [];
    const data = await loadSftData({ dataset_name: ultrachat, dataset_train_split: 'train_sft', dataset_test_split: 'test_sft' }, tokenizer, sftOptions, {
      log: (line) => lines.push(line),
    });
    assert.equal(data.train.length, 28);
    assert.equal(data.test.length, 6);
    const report = data.reports.train;
    assert.deepEqual([report.read, report.used, report.skippedTotal], [30, 28, 2]);
    const shard = join(ultrachat, 'data', 'train_sft-00001-of-00002.parquet');
    assert.deepEqual(report.skipped.get('role_order')!.examples, [{ file: shard, index: 4, field: 'messages[1].role', detail: "expected 'assistant', found 'user'" }]);
    assert.equal(report.skipped.get('missing_field')!.examples[0].index, 7);
    assert.match(lines[0], /^train: 30 rows read, 28 used, 2 skipped$/);
    assert.ok(lines.some((line) => line.includes(`${shard}: row 4: field 'messages[1].role'`)), lines.join('\n'));
    const first = data.train[0] as SftExample;
    assert.deepEqual(first.source, { file: join(ultrachat, 'data', 'train_sft-00000-of-00002.parquet'), index: 0 });
  });

  it('--strict stops at the first bad row, naming file, row and field', async () => {
    await assert.rejects(
      loadSftData({ dataset_name: ultrachat, dataset_train_split: 'train_sft' }, tokenizer, sftOptions, { strict: true }),
      (error: unknown) => error instanceof ZnError && /train_sft-00001-of-00002\.parquet: row 4: field 'messages\[1\]\.role'.*role_order/.test(error.message),
    );
  });

  it('ultrafeedback_binarized layout: train_prefs pairs, test_prefs eval, chosen == rejected skipped', async () => {
    const data = await loadDpoData({ dataset_name: ultrafeedback, dataset_train_split: 'train_prefs', dataset_test_split: 'test_prefs' }, tokenizer, dpoOptions);
    assert.equal(data.train.length, 19);
    assert.equal(data.test.length, 5);
    assert.equal(data.reports.train.skipped.get('chosen_equals_rejected')!.examples[0].index, 2);
    const pair = data.train[0] as PreferencePair;
    assert.equal(tokenizer.decode(Array.from(pair.promptIds)), '<|user|>\ntrain prompt 0</s> \n<|assistant|>\n');
  });

  it('a folder without the named test split has no eval rows; a missing train split is an error naming the splits', async () => {
    const data = await loadSftData({ dataset_name: ultrachat, dataset_train_split: 'train_gen', dataset_test_split: 'test' }, tokenizer, sftOptions);
    assert.deepEqual([data.train.length, data.test.length], [3, 0]);
    await assert.rejects(loadSftData({ dataset_name: ultrachat, dataset_train_split: 'train' }, tokenizer, sftOptions), /no split 'train'; available: test_sft, train_gen, train_sft/);
  });

  it('a single file is the training set', async () => {
    const file = join(work, 'chats.jsonl');
    writeFileSync(file, ultrachatRows(4, 'f').map((row) => JSON.stringify(row)).join('\n'));
    const data = await loadSftData({ dataset_name: file }, tokenizer, sftOptions);
    assert.deepEqual([data.train.length, data.test.length], [4, 0]);
  });

  it('packing packs the training and eval sets into max_length rows', async () => {
    const data = await loadSftData({ dataset_name: ultrachat, dataset_train_split: 'train_sft', dataset_test_split: 'test_sft' }, tokenizer, { ...sftOptions, packing: true, maxLength: 512 });
    const documents = data.train.reduce((n, row) => n + ('seqLengths' in row ? row.seqLengths.length : 0), 0);
    assert.equal(documents, 28);
    assert.ok(data.train.length < 28);
    assert.ok(data.train.every((row) => row.inputIds.length <= 512));
  });
});

describe('dataset mixtures', () => {
  it('dataset_mixer: the first fraction of each train split, test splits whole, both shuffled with seed 42', async () => {
    const config = { dataset_mixer: { [ultrachat]: 0.5 }, dataset_splits: ['train_sft', 'test_sft'] };
    const plan = planDatasets(config);
    assert.equal(plan.shuffleSeed, 42);
    const data = await loadSftData(config, tokenizer, sftOptions);
    // int(0.5 * 30) = 15 rows: the whole first shard, no bad rows among them.
    assert.equal(data.reports.train.read, 15);
    assert.equal(data.train.length, 15);
    assert.equal(data.test.length, 6);
    const indices = (data.train as SftExample[]).map((example) => example.source.index);
    assert.deepEqual([...indices].sort((a, b) => a - b), Array.from({ length: 15 }, (_, i) => i));
    assert.notDeepEqual(indices, Array.from({ length: 15 }, (_, i) => i), 'shuffled');
  });

  it('dataset_mixture: a seeded weight subset, selected columns, test_split_size carved off', async () => {
    const config = {
      dataset_mixture: {
        datasets: [
          { id: ultrachat, config: 'default', split: 'train_sft', columns: ['messages'], weight: 0.5 },
          { id: ultrafeedback, split: 'test_prefs', columns: ['messages'], weight: null },
        ],
        seed: 7,
        test_split_size: 0.1,
      },
    };
    const data = await loadSftData(config, tokenizer, sftOptions);
    const total = data.reports.train.read + data.reports.test.read;
    assert.equal(total, 15 + 5); // int(0.5 * 30) + all 5
    assert.equal(data.reports.test.read, 2); // ceil(0.1 * 20)
    const again = await loadSftData(config, tokenizer, sftOptions);
    const key = (items: unknown[]) => (items as SftExample[]).map((e) => `${e.source.file}:${e.source.index}`);
    assert.deepEqual(key(again.train), key(data.train), 'the same seed picks the same rows');
  });

  it('config mistakes are usage errors that name the key', () => {
    const cases: [object, RegExp][] = [
      [{}, /no dataset/],
      [{ dataset_mixer: { a: 1 }, dataset_mixture: { datasets: [{ id: 'a' }] } }, /one of dataset_mixture and dataset_mixer/],
      [{ dataset_mixer: { [ultrachat]: 1.5 } }, /dataset_mixer: .*fraction must be a number in \[0, 1\]/],
      [{ dataset_mixer: { [ultrachat]: 1 }, dataset_splits: ['validation'] }, /dataset_splits: 'validation'/],
      [{ dataset_mixture: { datasets: [] } }, /dataset_mixture.datasets: expected a non-empty list/],
      [{ dataset_mixture: { datasets: [{ id: ultrachat, fraction: 1 }] } }, /dataset_mixture.datasets\[0\]: unknown key 'fraction'/],
      [{ dataset_mixture: { datasets: [{ id: ultrachat, weight: 2 }] } }, /datasets\[0\].weight/],
      [{ dataset_mixture: { datasets: [{ id: ultrachat }], test_split_size: 0 } }, /test_split_size/],
      [{ dataset_name: join(work, 'nowhere') }, /dataset_name: .*no such file/],
    ];
    for (const [config, pattern] of cases) {
      assert.throws(() => planDatasets(config), (error: unknown) => error instanceof UsageError && pattern.test(error.message), JSON.stringify(config));
    }
  });
});
