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
import { heldOutTasks, listOf, randomTasks, type Task } from '../lib/demo/teacher.js';
import { evaluate } from '../lib/eval/evaluate.js';

const work = mkdtempSync(join(tmpdir(), 'zn-eval-demo-'));
after(() => rmSync(work, { recursive: true, force: true }));

describe('the demo judge', () => {
  const tasks = heldOutTasks(3, 4);

  it('held-out tasks: the same for a seed, every category equally, never a word list it is told was seen', () => {
    assert.deepEqual(heldOutTasks(3, 4), tasks);
    const counts = new Map<string, number>();
    for (const task of tasks) counts.set(task.category, (counts.get(task.category) ?? 0) + 1);
    assert.deepEqual([...counts], [['first', 3], ['last', 3], ['repeating', 3], ['reversing', 3], ['counting', 3]]);
    const lists = tasks.map((task) => listOf(task.prompt)!);
    assert.equal(new Set(lists).size, lists.length, 'no list twice');
    const unseen = heldOutTasks(3, 4, new Set(lists.slice(0, 7)));
    assert.ok(unseen.every((task) => !lists.slice(0, 7).includes(listOf(task.prompt)!)));
  });

  it('the teacher\'s answers are right: first and last word, the list repeated and reversed, the count', () => {
    for (const task of randomTasks(200, 9)) {
      const words = listOf(task.prompt)!.split(' ');
      const expected: Record<string, string> = {
        first: `"${words[0]}" comes first.`,
        last: `"${words.at(-1)}" comes last.`,
        repeating: words.join(' '),
        reversing: words.slice().reverse().join(' '),
        counting: `"${words.join(' ')}" has ${words.length} words.`,
      };
      assert.equal(task.answer, expected[task.category], task.prompt);
      assert.ok(words.length >= 2 && words.length <= 5 && new Set(words).size === words.length, task.prompt);
      assert.notEqual(task.nearMiss, task.answer, task.prompt);
      assert.equal(ruleBasedRating(task, task.nearMiss), 3, `the near miss has the form, not the result: ${task.prompt}`);
    }
  });

  it('rates 10 for the teacher\'s answer, 5 for the result worded otherwise, 3 for the form alone, 1 else', () => {
    const first: Task = { category: 'first', prompt: 'Which word comes first in "tree book ship"?', answer: '"tree" comes first.', key: '"tree"', nearMiss: '"book" comes first.' };
    assert.equal(ruleBasedRating(first, ' "tree" comes first.\n'), 10);
    assert.equal(ruleBasedRating(first, 'The first is "tree".'), 5);
    assert.equal(ruleBasedRating(first, '"book" comes first.'), 3);
    assert.equal(ruleBasedRating(first, 'tree book ship'), 1);
    assert.equal(ruleBasedRating(first, ''), 1);
    const reverse: Task = { category: 'reversing', prompt: 'Reverse the order of "tree book ship".', answer: 'ship book tree', key: 'ship book tree', nearMiss: 'tree book ship' };
    assert.equal(ruleBasedRating(reverse, 'ship book tree'), 10);
    assert.equal(ruleBasedRating(reverse, 'Reversed: ship book tree.'), 5);
    assert.equal(ruleBasedRating(reverse, 'tree book ship'), 3);
    assert.equal(ruleBasedRating(reverse, 'ship book tree star'), 3, 'a longer list is not the result');
    assert.equal(ruleBasedRating(reverse, 'taltaltal'), 1, 'gibberish is not a list of words');
    assert.equal(ruleBasedRating(reverse, 'Reversed: star ship book tree'), 1);
    const count: Task = { category: 'counting', prompt: 'How many words are in "tree book ship"?', answer: '"tree book ship" has 3 words.', key: '3 words', nearMiss: '"tree book ship" has 4 words.' };
    assert.equal(ruleBasedRating(count, 'It has 3 words'), 5);
    assert.equal(ruleBasedRating(count, 'It has 13 words'), 1);
    assert.equal(ruleBasedRating(count, '"tree book ship" has 2 words.'), 3);
  });

  it('scores models through eval by category', async () => {
    const out = join(work, 'eval');
    mkdirSync(join(out, 'model_answer'), { recursive: true });
    const questions = join(work, 'questions.jsonl');
    writeFileSync(questions, tasks.map((task, i) => `${JSON.stringify({ question_id: i + 1, category: task.category, turns: [task.prompt], reference: [task.answer] })}\n`).join(''));
    const answer: Record<string, (task: Task) => string> = { right: (t) => t.answer, loose: (t) => `well: ${t.key}`, wrong: () => 'No idea.' };
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
