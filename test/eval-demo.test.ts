/**
 * The demo's judged ablation: its rule-based judge reads eval's built-in single-answer prompt and
 * rates answers by the teacher's rules, and eval scores pre-written answers of four "models" per
 * task category (no model folder: the answers are already in model_answer/, judged as `--model_id` beyond the folders).
 */
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';

import { ruleBasedJudge, ruleBasedRating } from '../lib/demo/judge.js';
import { heldOutTasks, type Task } from '../lib/demo/teacher.js';
import { evaluate } from '../lib/eval/evaluate.js';

const work = mkdtempSync(join(tmpdir(), 'zn-eval-demo-'));
after(() => rmSync(work, { recursive: true, force: true }));

describe('the demo judge', () => {
  const tasks = heldOutTasks(3, 4);

  it('held-out tasks: the same for a seed, every category equally', () => {
    assert.deepEqual(heldOutTasks(3, 4), tasks);
    const counts = new Map<string, number>();
    for (const task of tasks) counts.set(task.category, (counts.get(task.category) ?? 0) + 1);
    assert.deepEqual([...counts], [['addition', 3], ['reversing', 3], ['capitals', 3], ['counting', 3], ['sorting', 3]]);
  });

  it('rates 10 for the teacher\'s answer, 5 for the result worded otherwise, 3 for the form alone, 1 else', () => {
    const sum: Task = { category: 'addition', prompt: 'What is 12 + 5?', answer: '12 + 5 = 17.', key: '17', nearMiss: '12 + 5 = 18.' };
    assert.equal(ruleBasedRating(sum, ' 12 + 5 = 17.\n'), 10);
    assert.equal(ruleBasedRating(sum, 'It is 17'), 5);
    assert.equal(ruleBasedRating(sum, 'It is 170'), 1);
    assert.equal(ruleBasedRating(sum, '12 + 5 = 18.'), 3);
    assert.equal(ruleBasedRating(sum, ''), 1);
    const reverse: Task = { category: 'reversing', prompt: 'Reverse the word "tiger".', answer: '"tiger" reversed is "regit".', key: 'regit', nearMiss: '' };
    assert.equal(ruleBasedRating(reverse, '"tiger" reversed is "tiger".'), 3);
    assert.equal(ruleBasedRating(reverse, 'regit'), 5);
  });

  it('scores models through eval by category', async () => {
    const out = join(work, 'eval');
    mkdirSync(join(out, 'model_answer'), { recursive: true });
    const questions = join(work, 'questions.jsonl');
    writeFileSync(questions, tasks.map((task, i) => `${JSON.stringify({ question_id: i + 1, category: task.category, turns: [task.prompt], reference: [task.answer] })}\n`).join(''));
    const answer: Record<string, (task: Task) => string> = { right: (t) => t.answer, loose: (t) => `well: ${t.key}`, wrong: () => 'no idea' };
    for (const [id, respond] of Object.entries(answer)) {
      const rows = tasks.map((task, i) => ({ question_id: i + 1, answer_id: `${id}-${i}`, model_id: id, choices: [{ index: 0, turns: [respond(task)] }], tstamp: 0 }));
      writeFileSync(join(out, 'model_answer', `${id}.jsonl`), rows.map((row) => `${JSON.stringify(row)}\n`).join(''));
    }
    const report = await evaluate({
      models: [],
      answered: Object.keys(answer),
      questions,
      outputDir: out,
      judge: ruleBasedJudge(tasks),
    });
    const expected: Record<string, number> = { right: 10, loose: 5, wrong: 1 };
    for (const [id, score] of Object.entries(expected)) {
      const result = report.results.models[id] as { overall: number; categories: Record<string, number>; counts: { failed: number } };
      assert.equal(result.overall, score, id);
      assert.deepEqual(Object.values(result.categories), [score, score, score, score, score], id);
      assert.equal(result.counts.failed, 0);
    }
    const rows = readFileSync(join(out, 'model_judgment', 'rule-based-judge_single.jsonl'), 'utf8').trim().split('\n').map((line) => JSON.parse(line));
    assert.equal(rows.length, 3 * tasks.length);
    assert.ok(rows.every((row) => row.judge[1] === 'single-v1'), 'the demo categories are judged with the general prompt');
  });
});
