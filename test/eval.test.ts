/**
 * `zephyr-native eval` end to end on two tiny random models against a scripted MT-Bench judge on
 * 127.0.0.1 (test/support/mt-judge-server.ts: it rates from markers in the questions, so the
 * expected scores come from the question file, not from our output): FastChat's answer and
 * judgment files read back by their field names, scores averaged as FastChat's show_result does,
 * unreadable judgments recorded and counted, resume after a kill, pairwise in both orders,
 * `--judge_prompts` in FastChat's format, the radar chart's SVG and PNG, and bad questions refused
 * with file, line and field.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { cpSync, existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { inflateSync } from 'node:zlib';

import { JudgeClient, JudgeRejectedError, JudgeUnavailableError } from '../lib/aif/judge.js';
import type { ChatTurn } from '../lib/aif/rubric.js';
import { writeLlama2TokenizerFolder } from '../lib/data/llama2-tokenizer.js';
import { ZnError } from '../lib/errors.js';
import { HfTokenizer } from '../lib/data/tokenizer.js';
import { categoryTemperature } from '../lib/eval/answers.js';
import { evaluate, prepareEval } from '../lib/eval/evaluate.js';
import { fillTemplate } from '../lib/eval/judge-prompts.js';
import { parsePairVerdict, parseRating } from '../lib/eval/verdicts.js';
import { Generator } from '../lib/generate/generate.js';
import { loadModel } from '../lib/model/model.js';
import { createServer } from '../lib/serve/server.js';
import { readQuestions } from '../lib/eval/questions.js';
import { mistralConfig, writeRandomModel } from '../lib/model/init.js';
import { packageRoot } from '../lib/native.js';
import { MtJudgeServer } from './support/mt-judge-server.js';
import { referencePython, runPython } from './support/python.js';

const cli = join(packageRoot(), 'dist', 'lib', 'cli', 'main.js');
/** FastChat's show_result.py restated with pandas: the reference for averages and win rates. */
const showResult = join(packageRoot(), 'test', 'support', 'fastchat_show_result.py');
const pandas = referencePython(['pandas']);
const work = mkdtempSync(join(tmpdir(), 'zn-eval-'));
after(() => rmSync(work, { recursive: true, force: true }));
const models = [join(work, 'alpha'), join(work, 'beta')];

/** Questions: each turn carries the rating the scripted judge gives it. */
const QUESTIONS = [
  { question_id: 81, category: 'writing', turns: ['Write a poem. <score:8>', 'Make it shorter. <score:6>'] },
  { question_id: 82, category: 'writing', turns: ['Write a limerick. <score:4>', 'Now a haiku. <score:bad>'] },
  { question_id: 111, category: 'math', turns: ['What is 2 + 3? <score:3>', 'And times 4? <score:late-7>'], reference: ['5', '20'] },
  { question_id: 112, category: 'math', turns: ['What is 9 - 4? <score:10>', 'Halve it. <score:2>'] },
  { question_id: 151, category: 'humanities', turns: ['Who was Kant? <score:9>', 'And Hegel? <score:1>'] },
];

interface CliResult {
  status: number | null;
  stdout: string;
  stderr: string;
}

function runCli(args: string[], onStart?: (kill: () => void) => void): Promise<CliResult> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [cli, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (chunk: string) => (stdout += chunk));
    child.stderr.setEncoding('utf8').on('data', (chunk: string) => (stderr += chunk));
    child.on('close', (status) => resolve({ status, stdout, stderr }));
    onStart?.(() => child.kill('SIGKILL'));
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

const mean = (values: number[]) => values.reduce((a, b) => a + b, 0) / values.length;

/** The scripted judge's rating of a turn, from the question file (null: unreadable twice). */
function scriptedScore(question: (typeof QUESTIONS)[number], turn: number): number | null {
  const tag = /<score:([\w-]+)>/.exec(question.turns[turn - 1])![1];
  if (tag === 'bad') return null;
  return Number(tag.replace('late-', ''));
}

/** A PNG's width and height, after inflating its pixels and checking their size (RGBA, 8 bits). */
function decodePng(bytes: Buffer): { width: number; height: number } {
  assert.deepEqual([...bytes.subarray(0, 8)], [137, 80, 78, 71, 13, 10, 26, 10], 'PNG signature');
  let offset = 8;
  let width = 0;
  let height = 0;
  let colorType = -1;
  const idat: Buffer[] = [];
  while (offset < bytes.length) {
    const length = bytes.readUInt32BE(offset);
    const type = bytes.toString('latin1', offset + 4, offset + 8);
    const data = bytes.subarray(offset + 8, offset + 8 + length);
    if (type === 'IHDR') {
      width = data.readUInt32BE(0);
      height = data.readUInt32BE(4);
      colorType = data[9];
    }
    if (type === 'IDAT') idat.push(data);
    offset += 12 + length;
  }
  const channels = colorType === 6 ? 4 : colorType === 2 ? 3 : 0;
  assert.ok(channels > 0, `color type ${colorType}`);
  assert.equal(inflateSync(Buffer.concat(idat)).length, height * (1 + width * channels));
  return { width, height };
}

/**
 * The radar chart's SVG: a label per model (legend) and category, and per model one closed
 * polygon whose vertices lie at score / max of the radius (210 px) along the category's spoke.
 */
function assertRadar(svgText: string, expected: Record<string, Record<string, number>>, max: number): void {
  assert.match(svgText, /^<svg[\s\S]*<\/svg>$/);
  const texts = [...svgText.matchAll(/<text[^>]*>([^<]*)<\/text>/g)].map((m) => m[1]);
  const categories = Object.keys(Object.values(expected)[0]);
  for (const name of [...Object.keys(expected), ...categories]) assert.ok(texts.includes(name), `radar chart has a label '${name}' (labels: ${texts.join(', ')})`);
  for (const [model, scores] of Object.entries(expected)) {
    const path = new RegExp(`<path aria-label="${model}"[^>]*d="M([^"]*)Z"`).exec(svgText);
    assert.ok(path, `a polygon for ${model}`);
    const radii = path[1].split('L').map((point) => Math.hypot(...point.split(',').map(Number)));
    assert.deepEqual(radii.map((r) => Math.round((r / 210) * max * 100) / 100), categories.map((c) => Math.round(scores[c] * 100) / 100), model);
  }
}

let judge: MtJudgeServer;
before(async () => {
  writeLlama2TokenizerFolder(join(work, 'tokenizer'));
  for (const [i, dir] of models.entries()) {
    const config = mistralConfig({
      vocab_size: 32000, hidden_size: 32, intermediate_size: 48, num_hidden_layers: 2, num_attention_heads: 4,
      num_key_value_heads: 2, max_position_embeddings: 256, sliding_window: 64, tie_word_embeddings: true,
      bos_token_id: 1, eos_token_id: 2, initializer_range: 0.5,
    });
    await writeRandomModel(dir, config, { seed: 11 + i, tokenizerDir: join(work, 'tokenizer') });
  }
  writeJsonl(join(work, 'questions.jsonl'), QUESTIONS);
  judge = await new MtJudgeServer().start();
});
after(() => judge?.close());

/** What evalArgs asks for, as the library's options (the judge through the `rate` client, as the CLI). */
function libraryOptions(outputDir: string) {
  const client = new JudgeClient({ url: judge.url, model: 'judge-x', maxRetries: 0 });
  return {
    models: models.map((path) => ({ path, id: basename(path) })),
    questions: join(work, 'questions.jsonl'),
    outputDir,
    judge: { model: 'judge-x', complete: (messages: ChatTurn[], signal?: AbortSignal) => client.complete(messages, signal) },
    concurrency: 2,
    answering: { maxNewTokens: 6, device: 'cpu' as const },
  };
}

/** A fresh output folder holding the single run's answers, so only judging runs (no model loads). */
function withAnswers(name: string): string {
  const out = join(work, name);
  cpSync(join(work, 'single', 'model_answer'), join(out, 'model_answer'), { recursive: true });
  return out;
}

function evalArgs(outputDir: string, extra: string[] = []): string[] {
  return [
    'eval', ...models.flatMap((dir) => ['--model_name_or_path', dir]), '--questions', join(work, 'questions.jsonl'),
    '--judge_url', judge.url, '--judge_model', 'judge-x', '--output_dir', outputDir, '--max_new_tokens', '6', '--device', 'cpu', '--concurrency', '2', ...extra,
  ];
}

describe('eval: single-answer grading', () => {
  const out = join(work, 'single');
  let result: CliResult;
  before(async () => {
    result = await runCli(evalArgs(out));
  });

  it('writes FastChat answer files: every turn answered, ids, one row per question in order', () => {
    assert.equal(result.status, 0, result.stderr);
    for (const id of ['alpha', 'beta']) {
      const rows = readJsonl(join(out, 'model_answer', `${id}.jsonl`));
      assert.deepEqual(rows.map((r) => r.question_id), QUESTIONS.map((q) => q.question_id));
      for (const row of rows) {
        assert.equal(row.model_id, id);
        assert.equal(typeof row.answer_id, 'string');
        assert.equal(typeof row.tstamp, 'number');
        assert.equal(row.choices.length, 1);
        assert.equal(row.choices[0].index, 0);
        assert.equal(row.choices[0].turns.length, 2);
        for (const turn of row.choices[0].turns) assert.equal(typeof turn, 'string');
      }
    }
  });

  it('writes FastChat judgments with the scripted ratings, failures as -1 with a reason', () => {
    const rows = readJsonl(join(out, 'model_judgment', 'judge-x_single.jsonl'));
    assert.equal(rows.length, 2 * QUESTIONS.length * 2);
    for (const row of rows) {
      const question = QUESTIONS.find((q) => q.question_id === row.question_id)!;
      const expected = scriptedScore(question, row.turn);
      assert.equal(row.score, expected ?? -1, `${row.model} q${row.question_id} t${row.turn}`);
      if (expected === null) assert.match(row.failure, /unreadable twice/);
      assert.equal(row.judge[0], 'judge-x');
      const reference = question.category === 'math' && question.reference;
      assert.equal(row.judge[1], `${reference ? 'single-math-v1' : 'single-v1'}${row.turn === 2 ? '-multi-turn' : ''}`);
      assert.ok(row.user_prompt.includes(question.turns[row.turn - 1]));
      if (row.turn === 2) assert.ok(row.user_prompt.includes(question.turns[0]), 'turn 2 is judged with the whole conversation');
      if (reference) assert.ok(row.user_prompt.includes(question.reference![0]));
      assert.equal(typeof row.judgment, 'string');
      assert.equal(typeof row.tstamp, 'number');
    }
    const late = rows.find((r) => r.question_id === 111 && r.turn === 2)!;
    assert.equal(late.score, 7);
    assert.equal(late.first_judgment, 'I would give it a good score.');
  });

  it('averages as FastChat: scores -1 left out, overall over both turns, per turn, per category', () => {
    const results = JSON.parse(readFileSync(join(out, 'results.json'), 'utf8'));
    const scored = QUESTIONS.flatMap((q) => [1, 2].map((turn) => ({ q, turn, score: scriptedScore(q, turn) }))).filter((s) => s.score !== null) as { q: (typeof QUESTIONS)[number]; turn: number; score: number }[];
    for (const id of ['alpha', 'beta']) {
      const r = results.models[id];
      assert.equal(r.overall, mean(scored.map((s) => s.score)));
      assert.equal(r.turn1, mean(scored.filter((s) => s.turn === 1).map((s) => s.score)));
      assert.equal(r.turn2, mean(scored.filter((s) => s.turn === 2).map((s) => s.score)));
      for (const category of ['writing', 'math', 'humanities']) {
        assert.equal(r.categories[category], mean(scored.filter((s) => s.q.category === category).map((s) => s.score)));
      }
      assert.deepEqual(r.counts, { scored: 9, failed: 1, turn1: 5, turn2: 4 });
    }
    assert.deepEqual(results.categories, ['writing', 'math', 'humanities']);
    assert.match(result.stdout, /overall\s+5\.56\s+5\.56/);
    assert.match(result.stderr, /2 recorded as failed/);
  });

  it('overall and per-turn scores equal FastChat show_result.py\'s (pandas) on the same judgment file', (t) => {
    if (!pandas.python) return t.skip(pandas.skipReason!);
    const fastchat = JSON.parse(runPython(pandas.python, showResult, ['single', join(out, 'model_judgment', 'judge-x_single.jsonl')]));
    const results = JSON.parse(readFileSync(join(out, 'results.json'), 'utf8'));
    for (const id of ['alpha', 'beta']) {
      for (const key of ['overall', 'turn1', 'turn2']) assert.ok(Math.abs(results.models[id][key] - fastchat[id][key]) < 1e-12, `${id} ${key}: ${results.models[id][key]} vs ${fastchat[id][key]}`);
    }
  });

  it('draws the radar chart: every model and category in the SVG, a PNG that decodes', () => {
    const results = JSON.parse(readFileSync(join(out, 'results.json'), 'utf8'));
    assertRadar(readFileSync(join(out, 'radar.svg'), 'utf8'), { alpha: results.models.alpha.categories, beta: results.models.beta.categories }, 10);
    const { width, height } = decodePng(readFileSync(join(out, 'radar.png')));
    assert.ok(width >= 400 && height >= 400, `${width}x${height}`);
  });

  it('a second run asks nothing again', async () => {
    const before = judge.requests.length;
    const again = await evaluate(libraryOptions(out));
    assert.equal(judge.requests.length, before);
    assert.deepEqual(again.answers.map((a) => [a.model, a.answered, a.resumed]), [['alpha', 0, 5], ['beta', 0, 5]]);
    assert.deepEqual([again.judging.judged, again.judging.resumed], [0, 20]);
    assert.equal(readJsonl(join(out, 'model_judgment', 'judge-x_single.jsonl')).length, 20);
  });
});

describe('eval: resume after a kill', () => {
  it('killed while judging, a rerun judges only what is missing and duplicates nothing', async () => {
    const out = withAnswers('killed');
    const file = join(out, 'model_judgment', 'judge-x_single.jsonl');
    judge.delayMs = 150;
    const first = judge.requests.length;
    await runCli(evalArgs(out, ['--concurrency', '1']), (kill) => {
      const timer = setInterval(() => {
        if (existsSync(file) && readJsonl(file).length >= 3) {
          clearInterval(timer);
          kill();
        }
      }, 20);
    });
    judge.delayMs = 0;
    const judgedBefore = readFileSync(file, 'utf8').split('\n').filter((l) => l.endsWith('}')).length;
    assert.ok(judgedBefore >= 3 && judgedBefore < 20, `${judgedBefore} judgments before the kill`);
    const killedRunRequests = judge.requests.length - first;
    const rerun = await runCli(evalArgs(out));
    assert.equal(rerun.status, 0, rerun.stderr);
    const rows = readJsonl(file);
    const keys = rows.map((r) => `${r.model}/${r.question_id}/${r.turn}`);
    assert.equal(new Set(keys).size, 20);
    assert.equal(rows.length, 20);
    // Judgments written before the kill are not asked again (2 requests each for the reasked ones).
    const rerunRequests = judge.requests.length - first - killedRunRequests;
    assert.ok(rerunRequests <= 20 + 4 - judgedBefore, `${rerunRequests} requests in the rerun`);
  });
});

describe('eval: pairwise against a baseline', () => {
  it('plays both orders, maps A/B back to the models, and counts FastChat win rates', async () => {
    const out = withAnswers('pairwise');
    // The baseline's answers: best on 81 (baseline wins), neutral elsewhere; 82 asks for a tie, 112 a biased judge.
    const questions = QUESTIONS.map((q) => ({ ...q, turns: q.turns.map((t) => t.replace(/<score:[\w-]+>/, '')) }));
    questions[1].turns[0] += ' <tie>';
    questions[3].turns[0] += ' <first>';
    writeJsonl(join(work, 'questions-pair.jsonl'), questions);
    writeJsonl(
      join(out, 'model_answer', 'base.jsonl'),
      questions.map((q) => ({ question_id: q.question_id, answer_id: `b${q.question_id}`, model_id: 'base', choices: [{ index: 0, turns: q.turns.map((_, t) => (q.question_id === 81 ? `answer ${t} <best>` : `answer ${t}`)) }], tstamp: 0 })),
    );
    const start = judge.requests.length;
    const result = await runCli([...evalArgs(out, ['--mode', 'pairwise', '--baseline', 'base']).map((a) => (a.endsWith('questions.jsonl') ? join(work, 'questions-pair.jsonl') : a))]);
    assert.equal(result.status, 0, result.stderr);
    const rows = readJsonl(join(out, 'model_judgment', 'judge-x_pair.jsonl'));
    assert.equal(rows.length, 2 * questions.length * 2);
    assert.equal(judge.requests.length - start, 2 * rows.length, 'every game in both orders');
    for (const row of rows) {
      assert.equal(row.model_2, 'base');
      assert.ok(['alpha', 'beta'].includes(row.model_1));
      assert.deepEqual(row.judge, ['judge-x', row.turn === 1 ? (row.question_id === 111 ? 'pair-math-v1' : 'pair-v2') : row.question_id === 111 ? 'pair-math-v1-multi-turn' : 'pair-v2-multi-turn']);
      // Turn 2's prompt holds turn 1 too, so a question's marker decides both turns.
      const expected: Record<number, [string, string]> = { 81: ['model_2', 'model_2'], 82: ['tie', 'tie'], 112: ['model_1', 'model_2'] };
      assert.deepEqual([row.g1_winner, row.g2_winner], expected[row.question_id] ?? ['tie', 'tie'], `q${row.question_id} t${row.turn}`);
      // g1 shows the model as assistant A, g2 the baseline as A.
      const baseAnswer = `answer ${row.turn - 1}`;
      assert.ok(row.g2_user_prompt.indexOf(baseAnswer) < row.g2_user_prompt.indexOf('Start of Assistant B'));
      assert.ok(row.g1_user_prompt.indexOf(baseAnswer) > row.g1_user_prompt.indexOf('Start of Assistant B'));
    }
    // Per model: 2 losses (81, both turns), 8 ties (112's orders disagree: a tie, as FastChat counts it).
    const results = JSON.parse(readFileSync(join(out, 'results.json'), 'utf8'));
    for (const id of ['alpha', 'beta']) {
      const r = results.models[id];
      assert.deepEqual([r.win, r.loss, r.tie, r.errors], [0, 2, 8, 0]);
      assert.equal(r.win_rate_adjusted, (0 + 8 / 2) / 10);
      assert.equal(r.categories.writing, (0 + 2 / 2) / 4);
    }
    assert.match(result.stdout, /win \/ loss \/ tie\s+0\/2\/8\s+0\/2\/8/);
    const expected = { writing: 0.25, math: 0.5, humanities: 0.5 };
    assertRadar(readFileSync(join(out, 'radar.svg'), 'utf8'), { alpha: expected, beta: expected }, 1);
  });

  it('win, loss, tie and the win rates equal FastChat show_result.py\'s (pandas) on the same judgment file', (t) => {
    if (!pandas.python) return t.skip(pandas.skipReason!);
    const out = join(work, 'pairwise');
    const results = JSON.parse(readFileSync(join(out, 'results.json'), 'utf8'));
    const fastchat = JSON.parse(runPython(pandas.python, showResult, ['pairwise', join(out, 'model_judgment', 'judge-x_pair.jsonl'), 'base']));
    for (const id of ['alpha', 'beta']) {
      for (const key of ['win', 'loss', 'tie', 'win_rate', 'loss_rate', 'win_rate_adjusted']) assert.equal(results.models[id][key], fastchat[id][key], `${id} ${key}`);
    }
  });
});

describe('eval: --judge_prompts in FastChat judge_prompts.jsonl format', () => {
  it('the right prompt per category, reference and turn reaches the judge, filled like str.format', async () => {
    const out = withAnswers('prompts');
    const prompt = (name: string, template: string) => ({
      name, type: 'single', system_prompt: `system of ${name}`, prompt_template: `PROMPT=${name} {{literal}}\n${template}`, description: '', category: 'general', output_format: '[[rating]]',
    });
    writeJsonl(join(work, 'judge_prompts.jsonl'), [
      prompt('single-v1', 'Q: {question}\nA: {answer}'),
      prompt('single-math-v1', 'Q: {question}\nREF: {ref_answer_1}\nA: {answer}'),
      prompt('single-v1-multi-turn', 'Q1: {question_1}\nA1: {answer_1}\nQ2: {question_2}\nA2: {answer_2}'),
      prompt('single-math-v1-multi-turn', 'Q1: {question_1}\nREF1: {ref_answer_1}\nQ2: {question_2}\nREF2: {ref_answer_2}\nA2: {answer_2}'),
      { name: 'pair-v2', type: 'pairwise', system_prompt: '', prompt_template: '{question}', output_format: '[[A]]' },
    ]);
    const start = judge.requests.length;
    await evaluate({ ...libraryOptions(out), judgePrompts: join(work, 'judge_prompts.jsonl') });
    const answers = new Map(readJsonl(join(out, 'model_answer', 'alpha.jsonl')).map((r) => [r.question_id, r.choices[0].turns]));
    const requests = judge.requests.slice(start).filter((r) => !r.reask);
    assert.equal(requests.length, 20);
    for (const question of QUESTIONS) {
      const reference = question.category === 'math' && question.reference;
      for (const turn of [1, 2]) {
        const name = `${reference ? 'single-math-v1' : 'single-v1'}${turn === 2 ? '-multi-turn' : ''}`;
        const seen = requests.filter((r) => r.user.includes(question.turns[turn - 1]) && r.promptTag === name);
        assert.equal(seen.length, 2, `q${question.question_id} turn ${turn}: ${name} for both models`);
        assert.ok(seen.every((r) => r.system === `system of ${name}` && r.user.startsWith(`PROMPT=${name} {literal}\n`)));
      }
      const a = answers.get(question.question_id)!;
      const expectedTurn1 = reference ? `Q: ${question.turns[0]}\nREF: ${question.reference![0]}\nA: ${a[0]}` : `Q: ${question.turns[0]}\nA: ${a[0]}`;
      assert.ok(requests.some((r) => r.user.endsWith(expectedTurn1)), `q${question.question_id} turn 1 filled`);
    }
  });

  it('a prompt file without a prompt the mode needs is refused before any model loads', () => {
    writeJsonl(join(work, 'partial_prompts.jsonl'), [{ name: 'single-v1', type: 'single', system_prompt: '', prompt_template: '{question}', output_format: '[[rating]]' }]);
    const options = { models: [{ path: models[0], id: 'alpha' }], questions: join(work, 'questions.jsonl'), judgePrompts: join(work, 'partial_prompts.jsonl'), outputDir: join(work, 'partial'), judge: { model: 'j', complete: async () => '' } };
    assert.throws(() => prepareEval(options), /partial_prompts\.jsonl: no prompt named 'single-math-v1'/);
    writeJsonl(join(work, 'partial_prompts.jsonl'), [{ name: 'single-v1', type: 'single', system_prompt: '', prompt_template: '{question', output_format: '[[rating]]' }]);
    assert.throws(() => prepareEval(options), /partial_prompts\.jsonl: line 1: field 'prompt_template': unsupported format field at offset 0/);
  });
});

describe('eval: bad questions', () => {
  const cases: [string, string, RegExp][] = [
    ['not json', '{"question_id": 1, "category": "writing", "turns": ["a"]}\n{oops', /questions-bad\.jsonl: line 2: not valid JSON/],
    ['no turns', '{"question_id": 1, "category": "writing"}', /line 1: field 'turns': expected a non-empty list of strings, found nothing/],
    ['turn not text', '{"question_id": 1, "category": "writing", "turns": ["a", 3]}', /line 1: field 'turns\[1\]': expected a string, found number/],
    ['no category', '\n{"question_id": 1, "turns": ["a"]}', /line 2: field 'category'/],
    ['duplicate id', '{"question_id": 1, "category": "x", "turns": ["a"]}\n{"question_id": 1, "category": "x", "turns": ["b"]}', /line 2: field 'question_id': 1 already used on line 1/],
  ];
  for (const [name, text, message] of cases) {
    it(`${name}: refused with file, line and field`, () => {
      const file = join(work, `questions-bad-${name.replace(/ /g, '-')}.jsonl`);
      writeFileSync(file, text);
      assert.throws(() => readQuestions(file), (error: Error) => error instanceof ZnError && message.test(error.message.replace(file, join(work, 'questions-bad.jsonl'))));
    });
  }

  it('the CLI exits 1 with the message before loading a model, and writes nothing', async () => {
    writeFileSync(join(work, 'questions-bad.jsonl'), cases[2][1]);
    const out = join(work, 'bad-cli');
    const result = await runCli(evalArgs(out).map((a) => (a.endsWith('questions.jsonl') ? join(work, 'questions-bad.jsonl') : a)));
    assert.equal(result.status, 1, result.stderr);
    assert.match(result.stderr, cases[2][2]);
    assert.equal(existsSync(out), false);
  });
});

describe('eval: reading judge replies (FastChat patterns)', () => {
  it('ratings: [[N]], else the [N] backup; out of 1-10 or missing is a failure with its reason', () => {
    assert.deepEqual(parseRating('Good answer.\n\nRating: [[8]]'), { score: 8 });
    assert.deepEqual(parseRating('Rating: [[7.5]]'), { score: 7.5 });
    assert.deepEqual(parseRating('I rate it [6] overall'), { score: 6 });
    assert.deepEqual(parseRating('first [[3]] then [[9]]'), { score: 3 });
    assert.deepEqual(parseRating('Rating: [[11]]'), { failure: 'rating 11 is outside 1-10' });
    assert.deepEqual(parseRating('Rating: eight'), { failure: 'no rating in the "[[rating]]" format' });
  });

  it('pairwise verdicts: [[A]], [[B]], [[C]] a tie; none or two different ones are failures', () => {
    assert.deepEqual(parsePairVerdict('A is better. [[A]]'), { verdict: 'A' });
    assert.deepEqual(parsePairVerdict('[[B]]'), { verdict: 'B' });
    assert.deepEqual(parsePairVerdict('Equally good: [[C]]'), { verdict: 'tie' });
    assert.deepEqual(parsePairVerdict('[[B]] ... final: [[B]]'), { verdict: 'B' });
    assert.deepEqual(parsePairVerdict('Either [[A]] or [[B]]'), { failure: 'more than one verdict (A, B)' });
    assert.deepEqual(parsePairVerdict('A wins'), { failure: 'no verdict in the "[[A]]" / "[[B]]" / "[[C]]" format' });
  });

  it('templates fill like Python str.format: {name} fields, {{ }} braces, a missing field named', () => {
    assert.equal(fillTemplate('Q: {question} {{x}} A: {answer}', { question: 'q{1}', answer: 'a', extra: 'unused' }), 'Q: q{1} {x} A: a');
    assert.throws(() => fillTemplate('{ref_answer_1}', { question: 'q' }, 'single-math-v1'), /judge prompt 'single-math-v1': the template uses \{ref_answer_1\}/);
    assert.throws(() => fillTemplate('a } b', {}), /single '}' at offset 2/);
  });

  it('per-category temperatures are FastChat\'s temperature_config, 0.7 for others', () => {
    const fastchat: Record<string, number> = { writing: 0.7, roleplay: 0.7, extraction: 0.0, math: 0.0, coding: 0.0, reasoning: 0.0, stem: 0.1, humanities: 0.1, 'arena-hard-200': 0.0 };
    for (const [category, temperature] of Object.entries(fastchat)) assert.equal(categoryTemperature(category), temperature, category);
    assert.equal(categoryTemperature('poetry'), 0.7);
  });

  it('greedy categories answer as Generator does, turn 2 continuing the conversation', async () => {
    const rows = readJsonl(join(work, 'single', 'model_answer', 'alpha.jsonl'));
    const question = QUESTIONS.find((q) => q.category === 'math')!;
    const answer = rows.find((r) => r.question_id === question.question_id)!.choices[0].turns;
    const model = await loadModel(models[0]);
    try {
      const generator = await Generator.create(model, HfTokenizer.fromFolder(models[0]), { batchSize: 1 });
      const messages: { role: 'user' | 'assistant'; content: string }[] = [];
      for (const [t, turn] of question.turns.entries()) {
        messages.push({ role: 'user', content: turn });
        const [[completion]] = await generator.generate([messages], { maxNewTokens: 6, doSample: false });
        assert.equal(answer[t], completion.text.trim(), `turn ${t + 1}`);
        messages.push({ role: 'assistant', content: completion.text.trim() });
      }
    } finally {
      model.dispose();
    }
  });
});

describe('eval: zephyr-native serve as the judge', () => {
  it('a served tiny model judges over HTTP; its replies carry no rating, so every judgment is recorded as failed, none dropped', async () => {
    const judgeDir = join(work, 'judge-model');
    const config = mistralConfig({
      vocab_size: 32000, hidden_size: 32, intermediate_size: 48, num_hidden_layers: 2, num_attention_heads: 4,
      num_key_value_heads: 2, max_position_embeddings: 2048, sliding_window: 2048, tie_word_embeddings: true,
      bos_token_id: 1, eos_token_id: 2, initializer_range: 0.5,
    });
    await writeRandomModel(judgeDir, config, { seed: 99, tokenizerDir: join(work, 'tokenizer') });
    const access: string[] = [];
    const server = await createServer(judgeDir, { port: 0, servedModelName: 'served-judge', log: (line) => access.push(line) });
    try {
      const out = withAnswers('served');
      const args = evalArgs(out).map((a) => (a === judge.url ? `${server.url}/v1` : a === 'judge-x' ? 'served-judge' : a));
      const result = await runCli([...args, '--judge_max_tokens', '8']);
      assert.equal(result.status, 0, result.stderr);
      const rows = readJsonl(join(out, 'model_judgment', 'served-judge_single.jsonl'));
      assert.equal(rows.length, 20);
      for (const row of rows) {
        assert.equal(row.score, -1);
        assert.match(row.failure, /unreadable twice: (no rating|rating .* is outside 1-10)/);
        assert.deepEqual(row.judge[0], 'served-judge');
      }
      assert.equal(access.filter((line) => line.includes('/v1/chat/completions') && line.includes(' 200 ')).length, 40, 'each judgment asked twice');
      const results = JSON.parse(readFileSync(join(out, 'results.json'), 'utf8'));
      assert.equal(results.models.alpha.overall, null);
      assert.equal(results.models.alpha.counts.failed, 10);
      assert.match(result.stderr, /20 recorded as failed/);
    } finally {
      await server.close();
    }
  });
});

describe('eval: stopped while answering', () => {
  it('keeps the finished answers, and a rerun answers only the rest, as an uninterrupted run would', async () => {
    const out = join(work, 'stopped');
    const stop = new AbortController();
    const options = {
      models: [{ path: models[0], id: 'alpha' }],
      questions: join(work, 'questions.jsonl'),
      outputDir: out,
      judge: { model: 'inline', complete: async () => 'Rating: [[5]]' },
      answering: { maxNewTokens: 6, batchSize: 1, device: 'cpu' as const, onProgress: ({ done }: { done: number }) => done >= 2 && stop.abort() },
    };
    await assert.rejects(evaluate({ ...options, signal: stop.signal }), /eval stopped: the answers and judgments written so far are kept/);
    const partial = readJsonl(join(out, 'model_answer', 'alpha.jsonl'));
    assert.ok(partial.length >= 2 && partial.length < QUESTIONS.length, `${partial.length} answers kept`);
    assert.equal(existsSync(join(out, 'model_judgment')), false);
    const report = await evaluate({ ...options, answering: { ...options.answering, onProgress: () => undefined } });
    assert.equal(report.answers[0].resumed, partial.length);
    assert.equal(report.answers[0].answered, QUESTIONS.length - partial.length);
    const rows = readJsonl(join(out, 'model_answer', 'alpha.jsonl'));
    assert.deepEqual(rows.map((r) => r.question_id), QUESTIONS.map((q) => q.question_id));
    // Greedy and seeded sampling: the same turns as the uninterrupted single run.
    const uninterrupted = readJsonl(join(work, 'single', 'model_answer', 'alpha.jsonl'));
    assert.deepEqual(rows.map((r) => r.choices[0].turns), uninterrupted.map((r) => r.choices[0].turns));
  });
});

describe('eval: a judge that refuses or stays unavailable', () => {
  it('a refused request is recorded as failed with the reason; an unavailable judge writes nothing, and the next run asks only for those', async () => {
    const out = withAnswers('refusing');
    const asked: string[] = [];
    const judgeFor = (script: (user: string) => string) => ({
      model: 'scripted',
      complete: async (messages: ChatTurn[]) => {
        const user = messages.find((m) => m.role === 'user')!.content;
        asked.push(user);
        return script(user);
      },
    });
    const options = { models: [], answered: ['alpha'], questions: join(work, 'questions.jsonl'), outputDir: out };
    const first = await evaluate({
      ...options,
      judge: judgeFor((user) => {
        if (user.includes('Write a poem.')) throw new JudgeRejectedError('judge rejected the request (HTTP 400: too long)');
        if (user.includes('Who was Kant?')) throw new JudgeUnavailableError('judge: gave up after 7 attempts (last: HTTP 503)');
        return 'Rating: [[4]]';
      }),
    });
    // 81: both turns refused (recorded); 151: both turns unavailable (not written).
    assert.deepEqual([first.judging.judged, first.judging.failed, first.judging.unavailable], [8, 2, 2]);
    const rows = readJsonl(join(out, 'model_judgment', 'scripted_single.jsonl'));
    assert.equal(rows.length, 8);
    for (const row of rows.filter((r) => r.question_id === 81)) {
      assert.equal(row.score, -1);
      assert.match(row.failure, /HTTP 400: too long/);
    }
    assert.equal((first.results.models.alpha as { counts: { failed: number } }).counts.failed, 2);
    asked.length = 0;
    const second = await evaluate({ ...options, judge: judgeFor(() => 'Rating: [[6]]') });
    assert.deepEqual([second.judging.judged, second.judging.resumed], [2, 8]);
    assert.ok(asked.length === 2 && asked.every((user) => user.includes('Who was Kant?')));
  });
});
