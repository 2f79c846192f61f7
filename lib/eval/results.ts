/**
 * Scores from the judgment files, computed as FastChat computes them:
 *   single (show_result.py display_result_single): judgments with score -1 are left out; a
 *   model's overall score is the mean of its remaining scores over both turns, turn 1 and turn 2
 *   the means of each turn's; a category's score (the radar chart) is the mean over both turns of
 *   its questions.
 *   pairwise (display_result_pairwise): games with an "error" winner in either order are left
 *   out; a game whose two orders disagree, or that either order calls a tie, is a tie; win rate
 *   = win / games, and the adjusted win rate counts ties as half: (win + tie / 2) / games.
 * Only the run's questions, models and judge are counted (the files may hold other runs').
 */
import { existsSync } from 'node:fs';

import { ZnError } from '../errors.js';
import type { JudgeMode } from './judge-prompts.js';
import { type Question, questionKey, readJsonLines } from './questions.js';

export interface SingleResult {
  overall: number | null;
  turn1: number | null;
  turn2: number | null;
  categories: Record<string, number | null>;
  /** Judgments counted (score 1-10), left out (score -1), and per turn. */
  counts: { scored: number; failed: number; turn1: number; turn2: number };
}

export interface PairResult {
  baseline: string;
  win: number;
  loss: number;
  tie: number;
  /** Games left out because a verdict was unreadable. */
  errors: number;
  win_rate: number | null;
  loss_rate: number | null;
  win_rate_adjusted: number | null;
  turn1: number | null;
  turn2: number | null;
  /** Adjusted win rate per category. */
  categories: Record<string, number | null>;
}

export interface EvalResults {
  mode: JudgeMode;
  judge: string;
  questions: number;
  categories: string[];
  models: Record<string, SingleResult | PairResult>;
}

/** Categories in the order the question file first names them (MT-Bench's order). */
export function categoriesOf(questions: Question[]): string[] {
  return [...new Set(questions.map((q) => q.category))];
}

function mean(values: number[]): number | null {
  return values.length ? values.reduce((a, b) => a + b, 0) / values.length : null;
}

function judgmentRows(file: string, judgeModel: string): Record<string, any>[] {
  if (!existsSync(file)) throw new ZnError(`no judgments: ${file} does not exist`);
  return readJsonLines(file)
    .map(({ row }) => row as Record<string, any>)
    .filter((row) => Array.isArray(row.judge) && row.judge[0] === judgeModel);
}

export function singleResults(file: string, judgeModel: string, questions: Question[], models: string[]): EvalResults {
  const byKey = new Map(questions.map((q) => [questionKey(q.question_id), q]));
  const categories = categoriesOf(questions);
  const results: EvalResults = { mode: 'single', judge: judgeModel, questions: questions.length, categories, models: {} };
  const rows = judgmentRows(file, judgeModel);
  for (const model of models) {
    const mine = rows.filter((row) => row.model === model && byKey.has(questionKey(row.question_id)));
    const scored = mine.filter((row) => row.score !== -1);
    const scores = (filter: (row: Record<string, any>) => boolean) => scored.filter(filter).map((row) => Number(row.score));
    results.models[model] = {
      overall: mean(scores(() => true)),
      turn1: mean(scores((row) => row.turn === 1)),
      turn2: mean(scores((row) => row.turn === 2)),
      categories: Object.fromEntries(categories.map((c) => [c, mean(scores((row) => byKey.get(questionKey(row.question_id))!.category === c))])),
      counts: {
        scored: scored.length,
        failed: mine.length - scored.length,
        turn1: scored.filter((row) => row.turn === 1).length,
        turn2: scored.filter((row) => row.turn === 2).length,
      },
    };
  }
  return results;
}

type Outcome = 'win' | 'loss' | 'tie';

export function pairResults(file: string, judgeModel: string, questions: Question[], models: string[], baseline: string): EvalResults {
  const byKey = new Map(questions.map((q) => [questionKey(q.question_id), q]));
  const categories = categoriesOf(questions);
  const results: EvalResults = { mode: 'pairwise', judge: judgeModel, questions: questions.length, categories, models: {} };
  const rows = judgmentRows(file, judgeModel).filter((row) => byKey.has(questionKey(row.question_id)));
  for (const model of models.filter((m) => m !== baseline)) {
    const games = rows.filter((row) => row.model_1 === model && row.model_2 === baseline);
    const valid = games.filter((row) => row.g1_winner !== 'error' && row.g2_winner !== 'error');
    const outcomes = valid.map((row) => ({ row, outcome: outcome(row) }));
    const adjusted = (filter: (row: Record<string, any>) => boolean) => {
      const picked = outcomes.filter((o) => filter(o.row));
      return picked.length ? picked.reduce((sum, o) => sum + (o.outcome === 'win' ? 1 : o.outcome === 'tie' ? 0.5 : 0), 0) / picked.length : null;
    };
    const count = (kind: Outcome) => outcomes.filter((o) => o.outcome === kind).length;
    const n = outcomes.length;
    results.models[model] = {
      baseline,
      win: count('win'),
      loss: count('loss'),
      tie: count('tie'),
      errors: games.length - valid.length,
      win_rate: n ? count('win') / n : null,
      loss_rate: n ? count('loss') / n : null,
      win_rate_adjusted: adjusted(() => true),
      turn1: adjusted((row) => row.turn === 1),
      turn2: adjusted((row) => row.turn === 2),
      categories: Object.fromEntries(categories.map((c) => [c, adjusted((row) => byKey.get(questionKey(row.question_id))!.category === c)])),
    };
  }
  return results;
}

/** FastChat: a tie in g1, or g1 and g2 disagreeing, is a tie; else model_1 won or lost. */
function outcome(row: Record<string, any>): Outcome {
  if (row.g1_winner === 'tie' || row.g1_winner !== row.g2_winner) return 'tie';
  return row.g1_winner === 'model_1' ? 'win' : 'loss';
}

/** The results as a text table: a row per score, a column per model. */
export function resultsTable(results: EvalResults): string {
  const models = Object.keys(results.models);
  const single = results.mode === 'single';
  const format = (value: number | null | undefined) => (value === null || value === undefined ? '-' : single ? value.toFixed(2) : `${(100 * value).toFixed(1)}%`);
  const lines: [string, string[]][] = [];
  const pick = (f: (r: any) => number | null) => models.map((m) => format(f(results.models[m])));
  if (single) {
    lines.push(['overall', pick((r: SingleResult) => r.overall)]);
  } else {
    lines.push([`win rate vs ${(Object.values(results.models)[0] as PairResult | undefined)?.baseline ?? '-'} (ties = 1/2)`, pick((r: PairResult) => r.win_rate_adjusted)]);
    lines.push(['win / loss / tie', models.map((m) => {
      const r = results.models[m] as PairResult;
      return `${r.win}/${r.loss}/${r.tie}`;
    })]);
  }
  lines.push(['turn 1', pick((r) => r.turn1)]);
  // Single-turn question sets (the demo's) have no second turn: no row of dashes.
  if (models.some((m) => results.models[m].turn2 !== null)) lines.push(['turn 2', pick((r) => r.turn2)]);
  for (const category of results.categories) lines.push([category, pick((r) => r.categories[category])]);
  if (single) lines.push(['failed judgments', models.map((m) => String((results.models[m] as SingleResult).counts.failed))]);
  else lines.push(['unreadable games', models.map((m) => String((results.models[m] as PairResult).errors))]);
  const title = single ? `score 1-10 (judge ${results.judge})` : `pairwise (judge ${results.judge})`;
  const first = Math.max(title.length, ...lines.map(([label]) => label.length));
  const widths = models.map((m, i) => Math.max(m.length, ...lines.map(([, cells]) => cells[i].length)));
  const row = (label: string, cells: string[]) => [label.padEnd(first), ...cells.map((c, i) => c.padStart(widths[i]))].join('  ').trimEnd();
  return [row(title, models), ...lines.map(([label, cells]) => row(label, cells))].join('\n');
}
