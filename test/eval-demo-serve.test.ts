/**
 * `zephyr-native eval` on the demo's own models with `zephyr-native serve` as the judge: the demo
 * runs in miniature (a one-layer model, a few steps per stage, through runDemo itself), then the
 * eval CLI has its trained SFT and SFT+DPO models answer the demo's held-out questions (two per category) while the
 * serve CLI, on 127.0.0.1 at a free port, serves the trained SFT model as the judge. A model this
 * small rarely writes "[[N]]", so most judgments are unreadable: what is checked is that every
 * answer got a judgment (rated, or recorded with score -1 after one re-ask, as eval promises),
 * that the files are FastChat's, and that results.json is what the judgment file says.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';

import { runDemo, type DemoResult } from '../lib/demo/demo.js';
import { packageRoot } from '../lib/native.js';

const cli = join(packageRoot(), 'dist', 'lib', 'cli', 'main.js');
const work = mkdtempSync(join(tmpdir(), 'zn-eval-demo-serve-'));
after(() => rmSync(work, { recursive: true, force: true }));

/** The smallest shape that still runs every demo stage (the vocabulary stays the tokenizer's). */
const TINY = { hidden_size: 32, intermediate_size: 64, num_hidden_layers: 1, num_attention_heads: 2, num_key_value_heads: 1, head_dim: 16 };
/** The eval's answering models, as --model_id names them, with their demo names. */
const ANSWERING: [string, string][] = [['demo-sft', 'sft'], ['demo-sft-dpo', 'sft+dpo']];
const JUDGE = 'demo-judge';

function readJsonl(path: string): Record<string, any>[] {
  return readFileSync(path, 'utf8').split('\n').filter((line) => line.trim() !== '').map((line) => JSON.parse(line));
}

/** Optimizer steps a stage's run took (trainer_state.json, as HF Trainer writes it). */
function trainedSteps(dir: string): number {
  return JSON.parse(readFileSync(join(dir, 'trainer_state.json'), 'utf8')).global_step;
}

const mean = (values: number[]) => (values.length ? values.reduce((a, b) => a + b, 0) / values.length : null);

describe('eval on the demo\'s trained models, judged by `zephyr-native serve`', { timeout: 120_000 }, () => {
  let demo: DemoResult;
  let questions: Record<string, any>[];
  let out: string;
  let evalRun: { status: number | null; stdout: string; stderr: string };
  let serveLog = '';

  before(async () => {
    const lines: string[] = [];
    demo = await runDemo({ dir: join(work, 'demo'), scale: 0.04, model: TINY, judgedPerCategory: 2, trainingCurves: false, progress: 'silent', log: (line) => lines.push(line) });
    assert.deepEqual(Object.keys(demo.judged), ['base', 'sft', 'sft+dpo', 'dpo-only'], lines.join('\n'));
    questions = readJsonl(join(demo.evalDir, 'questions.jsonl'));

    const serve = spawn(process.execPath, [cli, 'serve', '--model_name_or_path', demo.models.sft, '--port', '0', '--served_model_name', JUDGE], { stdio: ['ignore', 'ignore', 'pipe'] });
    serve.stderr.setEncoding('utf8').on('data', (text: string) => (serveLog += text));
    try {
      const deadline = Date.now() + 60_000;
      while (!/ at (http:\/\/127\.0\.0\.1:\d+)\/v1/.test(serveLog)) {
        assert.ok(Date.now() < deadline && serve.exitCode === null, `serve did not start: ${serveLog}`);
        await new Promise((resolve) => setTimeout(resolve, 50));
      }
      const url = / at (http:\/\/127\.0\.0\.1:\d+)\/v1/.exec(serveLog)![1];
      out = join(work, 'eval');
      const args = [
        'eval', ...ANSWERING.flatMap(([id, name]) => ['--model_name_or_path', demo.models[name], '--model_id', id]),
        '--questions', join(demo.evalDir, 'questions.jsonl'), '--judge_url', `${url}/v1`, '--judge_model', JUDGE, '--output_dir', out,
        '--max_new_tokens', '12', '--judge_max_tokens', '8', '--max_retries', '0', '--concurrency', '2', '--device', 'cpu',
      ];
      const child = spawn(process.execPath, [cli, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
      let stdout = '';
      let stderr = '';
      child.stdout.setEncoding('utf8').on('data', (chunk: string) => (stdout += chunk));
      child.stderr.setEncoding('utf8').on('data', (chunk: string) => (stderr += chunk));
      const [status] = await once(child, 'close');
      evalRun = { status, stdout, stderr };
    } finally {
      serve.kill('SIGTERM');
      if (serve.exitCode === null) await once(serve, 'exit');
    }
  });

  it('the demo trained real models: SFT and DPO took steps, and DPO changed the SFT weights', () => {
    assert.ok(trainedSteps(demo.models.sft) >= 2, 'SFT steps');
    assert.ok(trainedSteps(demo.models['sft+dpo']) >= 2, 'DPO steps');
    const weights = (name: string) => readFileSync(join(demo.models[name], 'model.safetensors'));
    assert.ok(!weights('sft').equals(weights('sft+dpo')), 'the DPO model differs from the SFT model');
    assert.ok(!weights('base').equals(weights('sft')), 'the SFT model differs from the base model');
  });

  it('eval answered every question with each trained model, in FastChat\'s answer format', () => {
    assert.equal(evalRun.status, 0, evalRun.stderr);
    for (const [id] of ANSWERING) {
      const rows = readJsonl(join(out, 'model_answer', `${id}.jsonl`));
      assert.deepEqual(rows.map((r) => r.question_id), questions.map((q) => q.question_id));
      for (const row of rows) {
        assert.equal(row.model_id, id);
        assert.equal(typeof row.answer_id, 'string');
        assert.equal(typeof row.tstamp, 'number');
        assert.equal(row.choices.length, 1);
        assert.equal(row.choices[0].index, 0);
        assert.equal(row.choices[0].turns.length, 1);
        assert.equal(typeof row.choices[0].turns[0], 'string');
      }
    }
  });

  it('every answer got one judgment from the served model: a rating 1-10, or -1 with the reason after one re-ask', () => {
    const rows = readJsonl(join(out, 'model_judgment', `${JUDGE}_single.jsonl`));
    assert.equal(rows.length, ANSWERING.length * questions.length);
    const keys = new Set(rows.map((r) => `${r.model}/${r.question_id}/${r.turn}`));
    for (const [id] of ANSWERING) for (const q of questions) assert.ok(keys.has(`${id}/${q.question_id}/1`), `${id} q${q.question_id} judged`);
    for (const row of rows) {
      const question = questions.find((q) => q.question_id === row.question_id)!;
      const answer = readJsonl(join(out, 'model_answer', `${row.model}.jsonl`)).find((a) => a.question_id === row.question_id)!.choices[0].turns[0];
      assert.deepEqual(row.judge, [JUDGE, 'single-v1'], 'the demo categories take the general prompt');
      assert.equal(row.turn, 1);
      assert.ok(row.user_prompt.includes(question.turns[0]) && row.user_prompt.includes(answer), 'the judge saw the question and this answer');
      assert.equal(typeof row.judgment, 'string');
      assert.equal(typeof row.tstamp, 'number');
      if (row.score === -1) assert.match(row.failure, /unreadable twice/);
      else assert.ok(Number.isFinite(row.score) && row.score >= 1 && row.score <= 10, `score ${row.score}`);
    }
    // Each readable judgment took one request and each failed one two, all answered by serve.
    const failed = rows.filter((r) => r.score === -1).length;
    const served = serveLog.split('\n').filter((line) => line.includes('POST /v1/chat/completions 200 ')).length;
    assert.equal(served, rows.length + failed, serveLog);
    assert.match(evalRun.stderr, new RegExp(`${failed} recorded as failed`));
  });

  it('results.json is what the judgment file says: means of the readable scores, failures counted', () => {
    const rows = readJsonl(join(out, 'model_judgment', `${JUDGE}_single.jsonl`));
    const results = JSON.parse(readFileSync(join(out, 'results.json'), 'utf8'));
    assert.equal(results.mode, 'single');
    assert.equal(results.judge, JUDGE);
    assert.equal(results.questions, questions.length);
    const categories = [...new Set(questions.map((q) => q.category))];
    assert.deepEqual(results.categories, categories);
    for (const [id] of ANSWERING) {
      const mine = rows.filter((r) => r.model === id);
      const scored = mine.filter((r) => r.score !== -1);
      const r = results.models[id];
      assert.deepEqual(r.counts, { scored: scored.length, failed: mine.length - scored.length, turn1: scored.length, turn2: 0 });
      assert.equal(r.overall, mean(scored.map((row) => row.score)));
      assert.equal(r.turn1, r.overall);
      assert.equal(r.turn2, null);
      for (const category of categories) {
        const inCategory = scored.filter((row) => questions.find((q) => q.question_id === row.question_id)!.category === category);
        assert.equal(r.categories[category], mean(inCategory.map((row) => row.score)), `${id} ${category}`);
      }
    }
  });
});
