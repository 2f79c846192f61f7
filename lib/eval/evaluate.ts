/**
 * MT-Bench-style evaluation, end to end (what `zephyr-native eval` and the demo run):
 *   1. every model answers every question (lib/eval/answers.ts) -> model_answer/<id>.jsonl
 *   2. the judge grades the answers, singly or pairwise against a baseline
 *      (lib/eval/judgments.ts) -> model_judgment/<judge>_{single,pair}.jsonl
 *   3. scores by model, turn and category (lib/eval/results.ts) -> results.json, and the radar
 *      chart (lib/eval/charts.ts) -> radar.svg, radar.png
 * Inputs are all checked before a model is loaded. Each step skips what earlier runs finished.
 */
import { existsSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';

import { UsageError, ZnError } from '../errors.js';
import { writeJsonAtomic } from '../io/atomic.js';
import { answerFile, answerQuestions, type AnswerOptions, type AnsweringModel, type AnswerStats, checkModelId, readAnswers } from './answers.js';
import { radarSvg, writeChart } from './charts.js';
import { DEFAULT_JUDGE_PROMPTS, type JudgeMode, promptSet, readJudgePrompts } from './judge-prompts.js';
import { type EvalJudge, judgeAnswers, type JudgeStats } from './judgments.js';
import { type Question, readQuestions, readReferenceAnswers, withReferences } from './questions.js';
import { type EvalResults, pairResults, type PairResult, type SingleResult, singleResults } from './results.js';

export interface EvalOptions {
  /** Models that answer (model_answer/<id>.jsonl); their answers already there are kept. */
  models: AnsweringModel[];
  /** Model ids judged from answer files already in model_answer/ (no model folder: e.g. FastChat's published answers). */
  answered?: string[];
  /** FastChat question.jsonl. */
  questions: string;
  /** A FastChat answer file of reference answers (they replace the questions' `reference`). */
  referenceAnswers?: string;
  /** A FastChat judge_prompts.jsonl (default: the built-in prompts). */
  judgePrompts?: string;
  mode?: JudgeMode;
  /** Pairwise: the model every other one plays (one of `models`, or answers already in model_answer/). */
  baseline?: string;
  outputDir: string;
  judge: EvalJudge;
  answering?: AnswerOptions;
  /** Judge requests in flight at once (default 8). */
  concurrency?: number;
  signal?: AbortSignal;
  onJudgeProgress?: (progress: { done: number; total: number }) => void;
}

export interface EvalReport {
  answers: AnswerStats[];
  judging: JudgeStats;
  results: EvalResults;
  files: { results: string; radarSvg: string; radarPng: string };
}

/** The questions and prompts of a run, checked (nothing is loaded or written). */
export function prepareEval(options: EvalOptions): { questions: Question[]; prompts: ReturnType<typeof promptSet>; mode: JudgeMode; modelIds: string[] } {
  const mode = options.mode ?? 'single';
  const references = options.referenceAnswers ? readReferenceAnswers(options.referenceAnswers) : null;
  const questions = withReferences(readQuestions(options.questions), references);
  const prompts = promptSet(options.judgePrompts ? readJudgePrompts(options.judgePrompts) : DEFAULT_JUDGE_PROMPTS, mode, options.judgePrompts);
  const ids = options.models.map((m) => m.id);
  for (const id of options.answered ?? []) {
    checkModelId(id);
    if (!existsSync(answerFile(options.outputDir, id))) throw new UsageError(`model '${id}' has no folder and ${answerFile(options.outputDir, id)} does not exist`);
    ids.push(id);
  }
  ids.forEach(checkModelId);
  const duplicate = ids.find((id, i) => ids.indexOf(id) !== i);
  if (duplicate !== undefined) throw new UsageError(`model id '${duplicate}' is given twice (ids name the answer files; pass --model_id to tell the models apart)`);
  const modelIds = [...ids];
  if (mode === 'pairwise') {
    if (!options.baseline) throw new UsageError('pairwise judging needs --baseline MODEL_ID (the model every other one plays)');
    checkModelId(options.baseline);
    if (!ids.includes(options.baseline)) {
      if (!existsSync(answerFile(options.outputDir, options.baseline))) {
        throw new UsageError(`baseline '${options.baseline}' is not one of the models and ${answerFile(options.outputDir, options.baseline)} does not exist`);
      }
      modelIds.push(options.baseline);
    }
    if (modelIds.length < 2) throw new UsageError('pairwise judging needs a model besides the baseline');
  } else if (options.baseline) {
    throw new UsageError('--baseline is for --mode pairwise');
  }
  if (ids.length === 0) throw new UsageError('no model to evaluate');
  return { questions, prompts, mode, modelIds };
}

const STOPPED = 'eval stopped: the answers and judgments written so far are kept; run the same command again to continue';

export async function evaluate(options: EvalOptions): Promise<EvalReport> {
  const stopped = () => {
    if (options.signal?.aborted) throw new ZnError(STOPPED);
  };
  const { questions, prompts, mode, modelIds } = prepareEval(options);
  mkdirSync(options.outputDir, { recursive: true });
  const answers: AnswerStats[] = [];
  for (const model of options.models) {
    stopped();
    answers.push(await answerQuestions(model, questions, options.outputDir, { ...options.answering, signal: options.signal }));
  }
  stopped();
  const judging = await judgeAnswers(options.judge, questions, modelIds, readAnswers(options.outputDir, modelIds), options.outputDir, {
    mode,
    prompts,
    baseline: options.baseline,
    concurrency: options.concurrency,
    signal: options.signal,
    onProgress: options.onJudgeProgress,
  });
  const results = mode === 'single' ? singleResults(judging.file, options.judge.model, questions, modelIds) : pairResults(judging.file, options.judge.model, questions, modelIds, options.baseline!);
  const resultsFile = join(options.outputDir, 'results.json');
  writeJsonAtomic(resultsFile, results);
  const chart = await writeChart(join(options.outputDir, 'radar'), await radarSvg(radarOf(results)));
  return { answers, judging, results, files: { results: resultsFile, radarSvg: chart.svg, radarPng: chart.png } };
}

/** The radar chart of results: scores 0-10 per category, or pairwise adjusted win rates 0-1. */
export function radarOf(results: EvalResults, title?: string) {
  const single = results.mode === 'single';
  return {
    categories: results.categories,
    series: Object.entries(results.models).map(([model, r]) => ({ model, values: (r as SingleResult | PairResult).categories })),
    max: single ? 10 : 1,
    title: title ?? (single ? `Score by category (judge: ${results.judge})` : `Win rate vs ${(Object.values(results.models)[0] as PairResult).baseline} by category (judge: ${results.judge})`),
  };
}
