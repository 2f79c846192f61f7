/**
 * The judge's verdicts on the models' answers, in FastChat's judgment files
 * (model_judgment/<judge>_single.jsonl, model_judgment/<judge>_pair.jsonl) and with its fields:
 *   single:   {question_id, model, judge: [judge_model, prompt name], user_prompt, judgment, score, turn, tstamp}
 *   pairwise: {question_id, model_1, model_2, g1_winner, g2_winner, judge, g1_user_prompt,
 *              g1_judgment, g2_user_prompt, g2_judgment, turn, tstamp}
 * Turn 1 is judged alone, turn 2 with the whole conversation (FastChat's prompts cover two turns;
 * later turns are answered but not judged, and counted). Pairwise games are played in both
 * orders (g1: the model as A, g2: the baseline as A) to cancel the judge's position bias.
 *
 * An unreadable reply is asked again once; if the second is unreadable too, the judgment is
 * recorded with score -1 (pairwise: winner "error") and a `failure` reason, so averages leave it
 * out and the summary counts it. A request the judge refuses for good (4xx) is recorded the same
 * way. When retries run out (judge unavailable) nothing is written, so the next run asks again.
 * Rows are appended as they finish; a judgment already in the file is not asked again.
 */
import { existsSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';

import { JudgeRejectedError, JudgeUnavailableError } from '../aif/judge.js';
import { limiter } from '../aif/rate.js';
import type { ChatTurn } from '../aif/rubric.js';
import { cutTornLine, JsonlAppender } from '../data/writers.js';
import { ZnError } from '../errors.js';
import { fillTemplate, type JudgeMode, type JudgePrompt, selectPrompt } from './judge-prompts.js';
import { type Question, questionKey, readJsonLines } from './questions.js';
import { parsePairVerdict, parseRating, reaskPrompt } from './verdicts.js';

/** What eval asks: an OpenAI-compatible judge (JudgeClient) or any function with its shape. */
export interface EvalJudge {
  /** The judge model's name: in file names and every judgment's `judge`. */
  model: string;
  complete(messages: ChatTurn[], signal?: AbortSignal): Promise<string>;
}

export interface JudgeRunOptions {
  mode: JudgeMode;
  prompts: Map<string, JudgePrompt>;
  /** Pairwise: every other model plays this one. */
  baseline?: string;
  /** Requests in flight at once (default 8). */
  concurrency?: number;
  signal?: AbortSignal;
  onProgress?: (progress: { done: number; total: number }) => void;
}

export interface JudgeStats {
  file: string;
  /** Judgments already in the file. */
  resumed: number;
  /** Judgments written in this run (failures included). */
  judged: number;
  /** Written with score -1 / winner "error": unreadable twice, or refused by the judge. */
  failed: number;
  /** Replies asked again once because the first could not be read. */
  reasked: number;
  /** Not written: the judge stayed unavailable (the next run asks again). */
  unavailable: number;
  /** Answers missing from model_answer/ (not judged). */
  missingAnswers: number;
  /** Turns after the second: answered, not judged. */
  unjudgedTurns: number;
  /** The first few failures: where and why. */
  examples: string[];
}

export type Answers = Map<string, Map<string, string[]>>;

export function judgmentFile(outputDir: string, judgeModel: string, mode: JudgeMode): string {
  const name = judgeModel.replace(/[/\\]/g, '_');
  return join(outputDir, 'model_judgment', `${name}_${mode === 'single' ? 'single' : 'pair'}.jsonl`);
}

interface Task {
  key: string;
  question: Question;
  turn: number;
  prompt: JudgePrompt;
  run: () => Promise<Record<string, unknown>>;
}

const MAX_EXAMPLES = 5;

/** Judges every answer of `models` (single) or every model against the baseline (pairwise). */
export async function judgeAnswers(judge: EvalJudge, questions: Question[], models: string[], answers: Answers, outputDir: string, options: JudgeRunOptions): Promise<JudgeStats> {
  const file = judgmentFile(outputDir, judge.model, options.mode);
  mkdirSync(join(outputDir, 'model_judgment'), { recursive: true });
  const stats: JudgeStats = { file, resumed: 0, judged: 0, failed: 0, reasked: 0, unavailable: 0, missingAnswers: 0, unjudgedTurns: 0, examples: [] };
  const done = await judgedKeys(file, options.mode);
  const limit = limiter(options.concurrency ?? 8);
  const stop = new AbortController();
  const signal = options.signal ? AbortSignal.any([options.signal, stop.signal]) : stop.signal;
  const ask = (messages: ChatTurn[]) => limit(() => judge.complete(messages, signal));
  const tasks = planTasks(judge, questions, models, answers, options, stats, ask).filter((task) => {
    if (!done.has(task.key)) return true;
    stats.resumed++;
    return false;
  });
  const appender = await JsonlAppender.open(file);
  let finished = 0;
  let fatal: unknown;
  try {
    await Promise.all(
      tasks.map(async (task) => {
        try {
          const row = await task.run();
          if (signal.aborted) return;
          await appender.append(row);
          stats.judged++;
        } catch (error) {
          if (error instanceof JudgeUnavailableError) {
            stats.unavailable++;
            note(stats, `question ${JSON.stringify(task.question.question_id)} turn ${task.turn}: ${error.message}`);
          } else {
            fatal ??= error;
            stop.abort(error);
          }
        }
        options.onProgress?.({ done: ++finished, total: tasks.length });
      }),
    );
  } finally {
    await appender.close();
  }
  if (fatal && (fatal as Error).name !== 'AbortError') throw fatal;
  if (fatal || options.signal?.aborted) throw new ZnError(`judging stopped after ${stats.judged} judgments this run; run the same command again to resume`);
  return stats;
}

function note(stats: JudgeStats, example: string): void {
  if (stats.examples.length < MAX_EXAMPLES) stats.examples.push(example);
}

type Ask = (messages: ChatTurn[]) => Promise<string>;

function planTasks(judge: EvalJudge, questions: Question[], models: string[], answers: Answers, options: JudgeRunOptions, stats: JudgeStats, ask: Ask): Task[] {
  const tasks: Task[] = [];
  const players = options.mode === 'single' ? models : models.filter((m) => m !== options.baseline);
  for (const model of players) {
    for (const question of questions) {
      const qkey = questionKey(question.question_id);
      const mine = answers.get(model)?.get(qkey);
      const theirs = options.mode === 'pairwise' ? answers.get(options.baseline!)?.get(qkey) : [];
      if (!mine || !theirs) {
        stats.missingAnswers++;
        continue;
      }
      const turns = Math.min(2, question.turns.length);
      stats.unjudgedTurns += question.turns.length - turns;
      for (let turn = 1; turn <= turns; turn++) {
        const prompt = selectPrompt(options.prompts, options.mode, question, turn);
        const judgeField = [judge.model, prompt.name];
        if (options.mode === 'single') {
          const key = singleKey(question.question_id, model, judgeField, turn);
          tasks.push({ key, question, turn, prompt, run: () => judgeSingle(ask, question, model, mine, turn, prompt, judgeField, stats) });
        } else {
          const key = pairKey(question.question_id, model, options.baseline!, judgeField, turn);
          tasks.push({ key, question, turn, prompt, run: () => judgePair(ask, question, [model, options.baseline!], [mine, theirs], turn, prompt, judgeField, stats) });
        }
      }
    }
  }
  return tasks;
}

function singleKey(id: Question['question_id'], model: unknown, judge: unknown, turn: unknown): string {
  return JSON.stringify(['single', questionKey(id), model, judge, turn]);
}

function pairKey(id: Question['question_id'], model1: unknown, model2: unknown, judge: unknown, turn: unknown): string {
  return JSON.stringify(['pair', questionKey(id), model1, model2, judge, turn]);
}

/** Keys of the judgments already in the file (a torn last line from a kill is cut first). */
async function judgedKeys(file: string, mode: JudgeMode): Promise<Set<string>> {
  const keys = new Set<string>();
  if (!existsSync(file)) return keys;
  await cutTornLine(file);
  for (const { row } of readJsonLines(file)) {
    const r = row as Record<string, any>;
    keys.add(mode === 'single' ? singleKey(r.question_id, r.model, r.judge, r.turn) : pairKey(r.question_id, r.model_1, r.model_2, r.judge, r.turn));
  }
  return keys;
}

/** The template's values for a turn, as FastChat's run_judge_single / run_judge_pair fill them. */
function templateValues(question: Question, turn: number, answers: Record<string, string[]>): Record<string, string> {
  const values: Record<string, string> = {};
  const reference = question.reference ?? [];
  if (turn === 1) {
    values.question = question.turns[0];
    for (const [suffix, turns] of Object.entries(answers)) values[`answer${suffix}`] = turns[0];
  } else {
    values.question_1 = question.turns[0];
    values.question_2 = question.turns[1];
    for (const [suffix, turns] of Object.entries(answers)) {
      values[`answer${suffix}_1`] = turns[0];
      values[`answer${suffix}_2`] = turns[1];
    }
  }
  if (reference.length > 0) values.ref_answer_1 = reference[0];
  if (reference.length > 1) values.ref_answer_2 = reference[1];
  return values;
}

function messagesFor(prompt: JudgePrompt, userPrompt: string): ChatTurn[] {
  const messages: ChatTurn[] = [];
  if (prompt.system_prompt) messages.push({ role: 'system', content: prompt.system_prompt });
  messages.push({ role: 'user', content: userPrompt });
  return messages;
}

/** Asks, and asks again once when the reply cannot be read. */
async function askReadable<T>(ask: Ask, prompt: JudgePrompt, userPrompt: string, read: (reply: string) => T | { failure: string }, stats: JudgeStats): Promise<{ reply: string; reading: T | { failure: string }; first?: string }> {
  const messages = messagesFor(prompt, userPrompt);
  try {
    const reply = await ask(messages);
    const reading = read(reply);
    if (!(reading as { failure?: string }).failure) return { reply, reading };
    stats.reasked++;
    const second = await ask([...messages, { role: 'assistant', content: reply }, { role: 'user', content: reaskPrompt(prompt.output_format) }]);
    const secondReading = read(second);
    const failed = (secondReading as { failure?: string }).failure;
    return { reply: second, reading: failed ? { failure: `unreadable twice: ${failed}` } : secondReading, first: reply };
  } catch (error) {
    if (error instanceof JudgeRejectedError) return { reply: '', reading: { failure: error.message } };
    throw error;
  }
}

async function judgeSingle(ask: Ask, question: Question, model: string, answer: string[], turn: number, prompt: JudgePrompt, judge: string[], stats: JudgeStats): Promise<Record<string, unknown>> {
  const userPrompt = fillTemplate(prompt.prompt_template, templateValues(question, turn, { '': answer }), prompt.name);
  const { reply, reading, first } = await askReadable(ask, prompt, userPrompt, parseRating, stats);
  const row: Record<string, unknown> = { question_id: question.question_id, model, judge, user_prompt: userPrompt, judgment: reply, score: -1, turn, tstamp: Date.now() / 1000 };
  if ('score' in reading) row.score = reading.score;
  else {
    row.failure = reading.failure;
    stats.failed++;
    note(stats, `model ${model}, question ${JSON.stringify(question.question_id)}, turn ${turn}: ${reading.failure}`);
  }
  if (first !== undefined) row.first_judgment = first;
  return row;
}

/** One pairwise game in both orders: g1 with models[0] as A, g2 with models[1] as A. */
async function judgePair(ask: Ask, question: Question, models: [string, string], answers: [string[], string[]], turn: number, prompt: JudgePrompt, judge: string[], stats: JudgeStats): Promise<Record<string, unknown>> {
  const game = async (a: number) => {
    const b = 1 - a;
    const userPrompt = fillTemplate(prompt.prompt_template, templateValues(question, turn, { _a: answers[a], _b: answers[b] }), prompt.name);
    const { reply, reading, first } = await askReadable(ask, prompt, userPrompt, parsePairVerdict, stats);
    // FastChat's g1_map / g2_map: the letter back to model_1 / model_2.
    const winner = 'verdict' in reading ? (reading.verdict === 'tie' ? 'tie' : `model_${(reading.verdict === 'A' ? a : b) + 1}`) : 'error';
    return { userPrompt, reply, winner, failure: 'failure' in reading ? reading.failure : undefined, first };
  };
  const [g1, g2] = await Promise.all([game(0), game(1)]);
  const row: Record<string, unknown> = {
    question_id: question.question_id,
    model_1: models[0],
    model_2: models[1],
    g1_winner: g1.winner,
    g2_winner: g2.winner,
    judge,
    g1_user_prompt: g1.userPrompt,
    g1_judgment: g1.reply,
    g2_user_prompt: g2.userPrompt,
    g2_judgment: g2.reply,
    turn,
    tstamp: Date.now() / 1000,
  };
  for (const [name, g] of [['g1', g1], ['g2', g2]] as const) {
    if (g.failure) {
      row[`${name}_failure`] = g.failure;
      note(stats, `model ${models[0]} vs ${models[1]}, question ${JSON.stringify(question.question_id)}, turn ${turn}, ${name}: ${g.failure}`);
    }
    if (g.first !== undefined) row[`${name}_first_judgment`] = g.first;
  }
  if (g1.failure || g2.failure) stats.failed++;
  return row;
}
