/**
 * `zephyr-native generate` on two tiny random models: prompts from every row shape, skipped rows
 * reported with file and row, two models' completions per row equal to Generator.generate called
 * directly (greedy), resume (--max_rows; Ctrl-C in the first and in the last model's pass; a stop
 * with rows in flight; torn lines) giving the file an uninterrupted sampled run writes, the loop
 * generate -> rate -> binarize -> dpo, and bad input refused with nothing written.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';

import { writeLlama2TokenizerFolder } from '../lib/data/llama2-tokenizer.js';
import { HfTokenizer } from '../lib/data/tokenizer.js';
import { type GenerateProgress, generateFile } from '../lib/generate/generate-file.js';
import { Generator } from '../lib/generate/generate.js';
import { mistralConfig, writeRandomModel } from '../lib/model/init.js';
import { loadModel } from '../lib/model/model.js';
import { packageRoot } from '../lib/native.js';
import { type JudgeRequest, JudgeServer } from './support/judge-server.js';

const cli = join(packageRoot(), 'dist', 'lib', 'cli', 'main.js');
const work = mkdtempSync(join(tmpdir(), 'zn-generate-'));
after(() => rmSync(work, { recursive: true, force: true }));

const models = [join(work, 'model-a'), join(work, 'model-b')];
const modelFlags = models.flatMap((dir) => ['--model_name_or_path', dir]);
const prompts = join(work, 'prompts.jsonl');
const SAMPLED = ['--do_sample', '--temperature', '0.9', '--top_p', '0.95', '--seed', '7', '--num_return_sequences', '2', '--max_new_tokens', '5'];

/** One row of each shape generate reads, and rows it skips. */
const ROWS = [
  { prompt: 'Write a haiku about rain', prompt_id: 'p0', messages: [{ role: 'user', content: 'Write a haiku about rain' }, { role: 'assistant', content: 'Drops.' }] },
  { messages: [{ role: 'user', content: 'Hi' }, { role: 'assistant', content: 'Hello' }, { role: 'user', content: 'Tell me a joke' }] },
  { instruction: 'Explain DPO', models: [], completions: [] },
  { prompt: 'Which is better?', chosen: [{ role: 'user', content: 'Which is better?' }, { role: 'assistant', content: 'A' }], rejected: [{ role: 'user', content: 'Which is better?' }, { role: 'assistant', content: 'B' }] },
  { title: 'no prompt here' },
  { messages: [{ role: 'assistant', content: 'I speak first' }] },
  { messages: [{ role: 'system', content: 'Be brief.' }, { role: 'user', content: 'Summarise Zephyr' }, { role: 'assistant', content: 'A chat model.' }] },
  { prompt: 'word '.repeat(300) },
  { prompt: [{ role: 'user', content: 'Name a colour' }], chosen: [{ role: 'assistant', content: 'Red' }], rejected: [{ role: 'assistant', content: 'Blue' }] },
];
/** The conversations the usable rows ask for, in order. */
const CONVERSATIONS = [
  [{ role: 'user', content: 'Write a haiku about rain' }],
  ROWS[1].messages!,
  [{ role: 'user', content: 'Explain DPO' }],
  [{ role: 'user', content: 'Which is better?' }],
  [{ role: 'system', content: 'Be brief.' }, { role: 'user', content: 'Summarise Zephyr' }],
  [{ role: 'user', content: 'Name a colour' }],
];

interface CliResult {
  status: number | null;
  stderr: string;
}

/** Runs the CLI without blocking the event loop; `interrupt` sends SIGINT once stderr matches it. */
function runCli(args: string[], interrupt?: RegExp): Promise<CliResult> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [cli, ...args], { stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    let sent = false;
    child.stderr.setEncoding('utf8').on('data', (chunk: string) => {
      stderr += chunk;
      if (interrupt && !sent && interrupt.test(stderr)) {
        sent = true;
        child.kill('SIGINT');
      }
    });
    child.on('close', (status) => resolve({ status, stderr }));
  });
}

function readJsonl(path: string): Record<string, any>[] {
  return readFileSync(path, 'utf8')
    .split('\n')
    .filter((line) => line.trim() !== '')
    .map((line) => JSON.parse(line));
}

function writeJsonl(path: string, rows: object[]): void {
  writeFileSync(path, rows.map((row) => `${JSON.stringify(row)}\n`).join(''));
}

before(async () => {
  writeLlama2TokenizerFolder(join(work, 'tokenizer'));
  const config = mistralConfig({
    vocab_size: 32000, hidden_size: 32, intermediate_size: 48, num_hidden_layers: 2, num_attention_heads: 4,
    num_key_value_heads: 2, max_position_embeddings: 256, sliding_window: 16, tie_word_embeddings: false,
    bos_token_id: 1, eos_token_id: 2, initializer_range: 0.5,
  });
  await writeRandomModel(models[0], config, { seed: 1, tokenizerDir: join(work, 'tokenizer') });
  await writeRandomModel(models[1], config, { seed: 2, tokenizerDir: join(work, 'tokenizer') });
  writeJsonl(prompts, ROWS);
});

describe('generate', () => {
  it('writes raw UltraFeedback rows with both models\' completions, equal to Generator.generate (greedy)', async () => {
    const output = join(work, 'greedy.jsonl');
    const result = await runCli(['generate', ...modelFlags, '--dataset_name', prompts, '--output', output, '--max_new_tokens', '6', '--batch_size', '3', '--device', 'cpu']);
    assert.equal(result.status, 0, result.stderr);
    const rows = readJsonl(output);
    assert.equal(rows.length, CONVERSATIONS.length);
    assert.deepEqual(rows.map((row) => row.instruction), ['Write a haiku about rain', 'Tell me a joke', 'Explain DPO', 'Which is better?', 'Summarise Zephyr', 'Name a colour']);
    assert.deepEqual(rows.map((row) => row.messages), [undefined, CONVERSATIONS[1], undefined, undefined, CONVERSATIONS[4], undefined]);
    for (const row of rows) {
      assert.deepEqual(Object.keys(row).filter((key) => key !== 'messages'), ['instruction', 'completions']);
      assert.deepEqual(row.completions.map((c: any) => c.model), ['model-a', 'model-b']);
      for (const completion of row.completions) {
        assert.deepEqual(Object.keys(completion), ['model', 'response', 'token_ids', 'finish_reason']);
        assert.ok(['stop', 'length'].includes(completion.finish_reason));
      }
    }
    for (const [k, dir] of models.entries()) {
      const model = await loadModel(dir);
      try {
        const generator = await Generator.create(model, HfTokenizer.fromFolder(dir), { batchSize: 2 });
        const direct = await generator.generate(CONVERSATIONS, { maxNewTokens: 6, doSample: false });
        rows.forEach((row, i) => {
          const [completion] = direct[i];
          assert.deepEqual(row.completions[k].token_ids, completion.tokenIds, `row ${i}, model ${k}`);
          assert.equal(row.completions[k].response, completion.text);
          assert.equal(row.completions[k].finish_reason, completion.finishReason);
        });
      } finally {
        model.dispose();
      }
    }
    assert.match(result.stderr, /generate: 9 rows read, 6 used, 3 skipped/);
    assert.match(result.stderr, /prompts\.jsonl: row 4: field 'prompt': no 'prompt', 'instruction' or 'messages'/);
    assert.match(result.stderr, /prompts\.jsonl: row 5: field 'messages\[0\]\.role': expected 'user', found 'assistant'/);
    assert.match(result.stderr, /prompts\.jsonl: row 7: field 'prompt': \d+ tokens; model-a holds 256 positions/);
    assert.match(result.stderr, /this run: 6 rows written, 12 completions, \d+ new tokens/);
    assert.ok(!existsSync(`${output}.parts`), 'the parts folder is removed when every row is written');

    const again = await runCli(['generate', ...modelFlags, '--dataset_name', prompts, '--output', output, '--max_new_tokens', '6', '--device', 'cpu']);
    assert.equal(again.status, 0, again.stderr);
    assert.match(again.stderr, /6 rows already in the output/);
    assert.match(again.stderr, /this run: 0 rows written, 0 completions/);
    assert.equal(readJsonl(output).length, 6);

    const strict = await runCli(['generate', ...modelFlags, '--dataset_name', prompts, '--output', join(work, 'strict.jsonl'), '--strict', '--device', 'cpu']);
    assert.equal(strict.status, 1);
    assert.match(strict.stderr, /prompts\.jsonl: row 4: field 'prompt': no 'prompt', 'instruction' or 'messages' \(no_prompt; --strict/);
    assert.ok(!existsSync(join(work, 'strict.jsonl')));
  });

  it('resumes to the file an uninterrupted sampled run writes: after --max_rows, Ctrl-C in either model\'s pass and torn lines', async () => {
    const many = join(work, 'many.jsonl');
    writeJsonl(many, Array.from({ length: 16 }, (_, i) => ({ prompt: `question number ${i}` })));
    const args = (output: string, ...extra: string[]) => ['generate', ...modelFlags, '--dataset_name', many, '--output', output, ...SAMPLED, '--device', 'cpu', ...extra];
    const whole = join(work, 'whole.jsonl');
    assert.equal((await runCli(args(whole, '--batch_size', '2'))).status, 0);
    const expected = readFileSync(whole, 'utf8');
    assert.equal(readJsonl(whole).length, 16);
    assert.ok(readJsonl(whole).every((row) => row.completions.length === 4));

    const cut = join(work, 'cut.jsonl');
    // Another batch size: a sequence's tokens do not depend on the batch it decodes in.
    assert.equal((await runCli(args(cut, '--max_rows', '5', '--batch_size', '5'))).status, 0);
    assert.equal(readJsonl(cut).length, 5);
    const rest = await runCli(args(cut));
    assert.equal(rest.status, 0, rest.stderr);
    assert.match(rest.stderr, /5 rows already in the output/);
    assert.equal(readFileSync(cut, 'utf8'), expected);

    // Ctrl-C as the first model loads: nothing in the output; as the last one loads: the first
    // model's completions are all in the parts folder. Then a crash tears a line of each file.
    for (const [where, pattern] of [['first', /loading model 1\/2/], ['last', /loading model 2\/2/]] as const) {
      const stopped = join(work, `stopped-${where}.jsonl`);
      const first = await runCli(args(stopped), pattern);
      assert.equal(first.status, 130, first.stderr);
      assert.match(first.stderr, /stopped before every row was written .*run the same command again to continue/);
      // The signal may land a little after the model loaded: some rows may be done.
      const written = existsSync(stopped) ? readFileSync(stopped, 'utf8') : '';
      assert.ok(expected.startsWith(written), 'the output holds whole rows, a prefix of the full file');
      if (where === 'first') assert.equal(written, '');
      const part = join(`${stopped}.parts`, 'model-0.jsonl');
      const partRows = existsSync(part) ? readJsonl(part).length : 0;
      assert.ok(where === 'first' ? partRows < 16 : partRows === 16, `${partRows} rows in ${part}`);
      if (where === 'last') {
        const tear = (path: string, keep: number, text: string) => {
          const lines = text.split('\n');
          writeFileSync(path, `${lines.slice(0, keep).join('\n')}\n${lines[keep].slice(0, 20)}`);
        };
        tear(part, 7, readFileSync(part, 'utf8'));
        tear(stopped, 3, expected);
      }
      const resumed = await runCli(args(stopped));
      assert.equal(resumed.status, 0, resumed.stderr);
      assert.equal(readFileSync(stopped, 'utf8'), expected, `resumed after a stop in the ${where} model's pass`);
      assert.ok(!existsSync(`${stopped}.parts`));
    }

    // Stopped while rows are in flight (the library's signal, as Ctrl-C aborts it): those rows
    // are finished and written, then the run ends; the next run completes the same file.
    for (const [k, after] of [[0, 3], [1, 2]]) {
      const stopped = join(work, `in-flight-${k}.jsonl`);
      const stop = new AbortController();
      const options = {
        models,
        output: stopped,
        generation: { doSample: true, temperature: 0.9, topP: 0.95, seed: 7, numReturnSequences: 2, maxNewTokens: 5 },
        batchSize: 4,
        device: 'cpu' as const,
      };
      const onProgress = (p: GenerateProgress) => {
        if (p.modelIndex === k && p.done === after) stop.abort();
      };
      const stats = await generateFile(many, { ...options, signal: stop.signal, onProgress });
      assert.equal(stats.stopped, true);
      const partRows = readJsonl(join(`${stopped}.parts`, 'model-0.jsonl')).length;
      const outRows = existsSync(stopped) ? readJsonl(stopped).length : 0;
      // batch 4 with 2 completions a row: 4 rows in flight; those started before the stop finish.
      if (k === 0) assert.deepEqual([partRows, outRows], [after + 3, 0]);
      else assert.deepEqual([partRows, outRows, stats.written], [16, after + 3, after + 3]);
      assert.ok(expected.startsWith(existsSync(stopped) ? readFileSync(stopped, 'utf8') : ''));
      const resumed = await generateFile(many, options);
      assert.equal(resumed.stopped, false);
      assert.equal(readFileSync(stopped, 'utf8'), expected);
    }

    const other = await runCli(args(cut).map((arg) => (arg === many ? prompts : arg)));
    assert.equal(other.status, 1);
    assert.match(other.stderr, /cut\.jsonl: row 0 is not this run's row 0 \(instruction "question number 0", expected "Write a haiku about rain"\)/);
  });

  it('closes the loop: generate -> rate -> binarize -> dpo', async () => {
    const generated = join(work, 'loop-generated.jsonl');
    const rated = join(work, 'loop-rated.jsonl');
    const prefs = join(work, 'loop-prefs.jsonl');
    const gen = await runCli(['generate', ...modelFlags, '--dataset_name', prompts, '--output', generated, ...SAMPLED, '--device', 'cpu']);
    assert.equal(gen.status, 0, gen.stderr);
    // The judge likes the first response best, then less and less.
    const server = await new JudgeServer((request: JudgeRequest) => ({
      kind: 'answer',
      text: JSON.stringify({ ratings: request.responses.map((_, i) => ({ response: i + 1, rating: Math.max(1, 5 - i), rationale: 'scripted' })) }),
    })).start();
    try {
      const rate = await runCli(['rate', '--input', generated, '--output', rated, '--judge_url', server.url, '--judge_model', 'judge-test', '--timeout', '10']);
      assert.equal(rate.status, 0, rate.stderr);
    } finally {
      await server.close();
    }
    const ratedRows = readJsonl(rated);
    assert.equal(ratedRows.length, 6);
    assert.ok(ratedRows.every((row) => row.completions.every((c: any) => c.annotations.helpfulness.Rating !== 'N/A')));
    const binarize = await runCli(['binarize', '--input', rated, '--output', prefs]);
    assert.equal(binarize.status, 0, binarize.stderr);
    const pairs = readJsonl(prefs);
    assert.equal(pairs.length, 6);
    const byInstruction = new Map(readJsonl(generated).map((row) => [row.instruction, row]));
    for (const pair of pairs) assert.equal(pair.chosen[1].content, byInstruction.get(pair.prompt)!.completions[0].response);
    const dpo = await runCli([
      'dpo', '--model_name_or_path', models[0], '--dataset_name', prefs, '--output_dir', join(work, 'loop-dpo'), '--use_cpu', 'true',
      '--bf16', 'false', '--max_steps', '1', '--per_device_train_batch_size', '2', '--max_length', '64', '--learning_rate', '1e-3',
      '--save_strategy', 'no', '--logging_steps', '1',
    ]);
    assert.equal(dpo.status, 0, dpo.stderr);
    assert.ok(existsSync(join(work, 'loop-dpo', 'model.safetensors')));
  });

  it('bad input: a clear error, a non-zero exit and nothing written', async () => {
    const output = join(work, 'bad.jsonl');
    const noPrompts = join(work, 'no-prompts.jsonl');
    writeJsonl(noPrompts, [{ title: 'x' }, { messages: [] }]);
    const cases: [string[], number, RegExp][] = [
      [['--dataset_name', noPrompts], 1, /no-prompts\.jsonl: no usable prompt in 2 rows \(1 x no_prompt, 1 x empty_conversation\); e\.g\. .*row 0/],
      [['--dataset_name', prompts, '--top_p', '0'], 2, /usage: generation: top_p must be in \(0, 1\], got 0/],
      [['--dataset_name', prompts, '--temperature', '-1'], 2, /usage: generation: temperature must be >= 0, got -1/],
      [['--dataset_name', prompts, '--model_name_or_path', join(work, 'missing-model')], 1, /missing-model: no such model folder/],
      [['--dataset_name', join(work, 'missing.jsonl')], 1, /missing\.jsonl: no such file or folder/],
    ];
    for (const [extra, status, message] of cases) {
      const result = await runCli(['generate', ...modelFlags, '--output', output, '--device', 'cpu', ...extra]);
      assert.equal(result.status, status, `${extra.join(' ')}: ${result.stderr}`);
      assert.match(result.stderr, message);
      assert.ok(!existsSync(output), `${extra.join(' ')} wrote nothing`);
      assert.ok(!existsSync(`${output}.parts`));
    }
  });
});
