/**
 * Each model answers every question, turn by turn in one conversation (turn 2 sees turn 1 and
 * the model's answer to it), as FastChat's gen_model_answer.py does, into
 * `model_answer/<model_id>.jsonl` in FastChat's answer format:
 *   {question_id, answer_id, model_id, choices: [{index: 0, turns: [answer per turn]}], tstamp}
 * Sampling temperature by category as FastChat's temperature_config; greedy below 1e-4 (its
 * do_sample rule). A sampled answer uses a seed derived from (seed, model_id, question_id), so a
 * resumed run writes what an uninterrupted one would.
 *
 * Rows are appended as questions finish (a kill loses only those in flight); running again skips
 * the questions already in the file. When every question is answered the file is rewritten
 * sorted by question id (FastChat's reorg_answer_file), atomically.
 */
import { createHash, randomUUID } from 'node:crypto';
import { existsSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';

import type { ChatMessage } from '../data/chat-template.js';
import { HfTokenizer } from '../data/tokenizer.js';
import { cutTornLine, JsonlAppender, writeRows } from '../data/writers.js';
import { UsageError, ZnError } from '../errors.js';
import { Generator } from '../generate/generate.js';
import { DEFAULT_MAX_TOKENS, loadModel, type ModelDType } from '../model/model.js';
import type { Device } from '../native.js';
import { type AnswerRow, type Question, questionKey, readAnswerRows } from './questions.js';

/** FastChat's temperature_config (gen_model_answer.py); other categories get 0.7. */
export const CATEGORY_TEMPERATURES: Readonly<Record<string, number>> = {
  writing: 0.7,
  roleplay: 0.7,
  extraction: 0.0,
  math: 0.0,
  coding: 0.0,
  reasoning: 0.0,
  stem: 0.1,
  humanities: 0.1,
  'arena-hard-200': 0.0,
};
export const DEFAULT_TEMPERATURE = 0.7;

export function categoryTemperature(category: string): number {
  return CATEGORY_TEMPERATURES[category] ?? DEFAULT_TEMPERATURE;
}

/** A model to answer with: its folder and the id its answers and judgments carry. */
export interface AnsweringModel {
  path: string;
  id: string;
}

export interface AnswerOptions {
  /** New tokens per turn at most (FastChat's --max-new-token default: 1024). */
  maxNewTokens?: number;
  /** Sequences decoded at once (default 8). */
  batchSize?: number;
  device?: Device;
  dtype?: ModelDType;
  /** Temperatures by category over FastChat's (the demo answers its own categories greedily). */
  temperatures?: Readonly<Record<string, number>>;
  /** The run's seed for sampled answers (default 0: the same questions give the same answers). */
  seed?: number;
  signal?: AbortSignal;
  onProgress?: (progress: { model: string; done: number; total: number }) => void;
}

export interface AnswerStats {
  model: string;
  file: string;
  /** Questions already answered in the file when the run started. */
  resumed: number;
  /** Questions answered in this run. */
  answered: number;
  newTokens: number;
  seconds: number;
}

export function answerFile(outputDir: string, modelId: string): string {
  return join(outputDir, 'model_answer', `${modelId}.jsonl`);
}

/** A model id is a file name: refused when it is not one. */
export function checkModelId(id: string): void {
  if (id === '' || id === '.' || id === '..' || /[/\\\0]/.test(id)) throw new UsageError(`model id ${JSON.stringify(id)} cannot be a file name (model_answer/<id>.jsonl)`);
}

/** Seed of a sampled answer: a function of the run's seed, the model and the question. */
export function answerSeed(seed: number, modelId: string, questionId: Question['question_id']): number {
  const digest = createHash('sha256').update(JSON.stringify([seed, modelId, questionId])).digest();
  return digest.readUIntBE(0, 6) % 2 ** 47;
}

/** Answers of one model to every question not yet in its answer file. */
export async function answerQuestions(model: AnsweringModel, questions: Question[], outputDir: string, options: AnswerOptions = {}): Promise<AnswerStats> {
  checkModelId(model.id);
  const file = answerFile(outputDir, model.id);
  mkdirSync(join(outputDir, 'model_answer'), { recursive: true });
  const done = await answeredQuestions(file, questions);
  const todo = questions.filter((q) => !done.has(questionKey(q.question_id)));
  const stats: AnswerStats = { model: model.id, file, resumed: questions.length - todo.length, answered: 0, newTokens: 0, seconds: 0 };
  if (todo.length > 0 && !options.signal?.aborted) await answerWithModel(model, todo, file, options, stats);
  if (stats.resumed + stats.answered === questions.length) await sortAnswerFile(file);
  return stats;
}

/** Question keys already answered in `file`, after checking each row fits its question. */
async function answeredQuestions(file: string, questions: Question[]): Promise<Set<string>> {
  if (!existsSync(file)) return new Set();
  await cutTornLine(file);
  const byKey = new Map(questions.map((q) => [questionKey(q.question_id), q]));
  const done = new Set<string>();
  for (const row of readAnswerRows(file)) {
    const question = byKey.get(questionKey(row.question_id));
    if (question && row.choices[0].turns.length !== question.turns.length) {
      throw new ZnError(`${file}: the answer to question ${JSON.stringify(row.question_id)} has ${row.choices[0].turns.length} turns, the question ${question.turns.length}: delete the row (or the file) to answer it again`);
    }
    done.add(questionKey(row.question_id));
  }
  return done;
}

async function answerWithModel(model: AnsweringModel, todo: Question[], file: string, options: AnswerOptions, stats: AnswerStats): Promise<void> {
  const batchSize = options.batchSize ?? 8;
  const tokenizer = HfTokenizer.fromFolder(model.path);
  const loaded = await loadModel(model.path, { device: options.device, dtype: options.dtype, maxTokens: Math.max(DEFAULT_MAX_TOKENS, batchSize) });
  const appender = await JsonlAppender.open(file);
  const started = performance.now();
  try {
    const generator = await Generator.create(loaded, tokenizer, { batchSize });
    const failure = new AbortController();
    const signal = options.signal ? AbortSignal.any([options.signal, failure.signal]) : failure.signal;
    let next = 0;
    // Conversations run side by side (turns of one are sequential), enough to keep every batch slot busy.
    const worker = async () => {
      while (next < todo.length && !options.signal?.aborted) {
        const question = todo[next++];
        const turns = await converse(generator, question, model.id, options, signal, stats);
        if (options.signal?.aborted && turns === null) return;
        await appender.append(answerRow(model.id, question, turns!));
        stats.answered++;
        options.onProgress?.({ model: model.id, done: stats.resumed + stats.answered, total: stats.resumed + todo.length });
      }
    };
    const workers = Array.from({ length: Math.min(todo.length, 2 * batchSize) }, () =>
      worker().catch((error) => {
        failure.abort(error);
        throw error;
      }),
    );
    const results = await Promise.allSettled(workers);
    const failed = results.find((r): r is PromiseRejectedResult => r.status === 'rejected' && (r.reason as Error)?.name !== 'AbortError');
    if (failed) throw failed.reason;
  } finally {
    stats.seconds += (performance.now() - started) / 1000;
    await appender.close();
    loaded.dispose();
  }
}

/** The model's answers to each turn of a question; null when stopped part way. */
async function converse(generator: Generator, question: Question, modelId: string, options: AnswerOptions, signal: AbortSignal, stats: AnswerStats): Promise<string[] | null> {
  const temperature = options.temperatures?.[question.category] ?? categoryTemperature(question.category);
  const messages: ChatMessage[] = [];
  const answers: string[] = [];
  for (const [t, turn] of question.turns.entries()) {
    messages.push({ role: 'user', content: turn });
    let completion;
    try {
      [[completion]] = await generator.generate([messages], {
        maxNewTokens: options.maxNewTokens ?? 1024,
        doSample: temperature >= 1e-4,
        temperature,
        seed: answerSeed(options.seed ?? 0, modelId, question.question_id) + t,
        signal,
      });
    } catch (error) {
      if (options.signal?.aborted) return null;
      if (error instanceof UsageError) throw new ZnError(`model ${modelId}, question ${JSON.stringify(question.question_id)}, turn ${t + 1}: ${error.message} (a smaller --max_new_tokens leaves room for later turns)`);
      throw error;
    }
    // FastChat strips the answer; special tokens are already left out of the text.
    const text = completion.text.trim();
    stats.newTokens += completion.tokenIds.length;
    answers.push(text);
    messages.push({ role: 'assistant', content: text });
  }
  return answers;
}

function answerRow(modelId: string, question: Question, turns: string[]): AnswerRow {
  return {
    question_id: question.question_id,
    answer_id: randomUUID(),
    model_id: modelId,
    choices: [{ index: 0, turns }],
    tstamp: Date.now() / 1000,
  };
}

/** FastChat's reorg_answer_file: rows sorted by question id, one per question (the last wins). */
async function sortAnswerFile(file: string): Promise<void> {
  const rows = new Map<string, AnswerRow>();
  for (const row of readAnswerRows(file)) rows.set(questionKey(row.question_id), row);
  const sorted = [...rows.values()].sort((a, b) => compareIds(a.question_id, b.question_id));
  await writeRows(file, sorted);
}

export function compareIds(a: Question['question_id'], b: Question['question_id']): number {
  if (typeof a === 'number' && typeof b === 'number') return a - b;
  return String(a) < String(b) ? -1 : String(a) > String(b) ? 1 : 0;
}

/** Every model's answers by question key, read from model_answer/ (the models' own and any already there). */
export function readAnswers(outputDir: string, modelIds: string[]): Map<string, Map<string, string[]>> {
  const answers = new Map<string, Map<string, string[]>>();
  for (const id of modelIds) {
    const file = answerFile(outputDir, id);
    if (!existsSync(file)) throw new ZnError(`no answers for model '${id}': ${file} does not exist`);
    answers.set(id, new Map(readAnswerRows(file).map((row) => [questionKey(row.question_id), row.choices[0].turns])));
  }
  return answers;
}
