/**
 * Training curves from trainer_state.json's log_history (HF Trainer's format, TRL's metric
 * names): a panel per quantity against steps, one line per run and series:
 *   loss (train `loss`, `eval_loss`), learning_rate, and for DPO rewards/margins,
 *   rewards/accuracies, and rewards/chosen with rewards/rejected (their eval_ twins too).
 * A Vega-Lite spec compiled to Vega and rendered headless to SVG (PNG through charts.ts).
 */
import { existsSync, readFileSync } from 'node:fs';
import { basename, join, resolve } from 'node:path';

import { ZnError } from '../errors.js';

interface Panel {
  title: string;
  metrics: string[];
}

const PANELS: Panel[] = [
  { title: 'loss', metrics: ['loss', 'eval_loss'] },
  { title: 'learning_rate', metrics: ['learning_rate'] },
  { title: 'rewards/margins', metrics: ['rewards/margins', 'eval_rewards/margins'] },
  { title: 'rewards/accuracies', metrics: ['rewards/accuracies', 'eval_rewards/accuracies'] },
  { title: 'rewards/chosen and rewards/rejected', metrics: ['rewards/chosen', 'rewards/rejected', 'eval_rewards/chosen', 'eval_rewards/rejected'] },
];

export interface RunCurves {
  /** The run's name in the legend (the folder's name). */
  run: string;
  logHistory: Record<string, unknown>[];
}

export interface CurvePoint {
  run: string;
  panel: string;
  metric: string;
  step: number;
  value: number;
}

/** A run folder's log_history (its trainer_state.json). */
export function readRunCurves(dir: string): RunCurves {
  const file = join(dir, 'trainer_state.json');
  if (!existsSync(file)) throw new ZnError(`${dir}: no trainer_state.json (not a training output folder, or no step logged yet)`);
  let state: { log_history?: unknown };
  try {
    state = JSON.parse(readFileSync(file, 'utf8'));
  } catch (error) {
    throw new ZnError(`${file}: not valid JSON (${(error as Error).message})`);
  }
  if (!Array.isArray(state.log_history)) throw new ZnError(`${file}: field 'log_history': expected a list`);
  return { run: basename(resolve(dir)), logHistory: state.log_history as Record<string, unknown>[] };
}

/** Every plotted value of the runs, one point per (run, metric, logged step). */
export function curvePoints(runs: RunCurves[]): CurvePoint[] {
  const points: CurvePoint[] = [];
  for (const { run, logHistory } of runs) {
    for (const entry of logHistory) {
      const step = entry.step;
      if (typeof step !== 'number') continue;
      for (const panel of PANELS) {
        for (const metric of panel.metrics) {
          const value = entry[metric];
          if (typeof value === 'number' && Number.isFinite(value)) {
            points.push({ run, panel: panel.title, metric, step, value });
          }
        }
      }
    }
  }
  return points;
}

/**
 * The Vega-Lite spec: a panel per quantity present, two columns, each with its own y scale;
 * colour tells the runs apart (dashes the metrics sharing a panel), or the metrics of one run.
 */
export function curvesSpec(points: CurvePoint[], title: string): Record<string, unknown> {
  const panels = PANELS.map((p) => p.title).filter((t) => points.some((point) => point.panel === t));
  const overlay = new Set(points.map((p) => p.run)).size > 1;
  const lines = overlay
    ? { color: { field: 'run', type: 'nominal', title: 'run' }, strokeDash: { field: 'metric', type: 'nominal', title: 'metric', legend: { symbolType: 'stroke', symbolStrokeColor: 'black', labelLimit: 400 } } }
    : { color: { field: 'metric', type: 'nominal', title: 'metric', legend: { labelLimit: 400 } } };
  return {
    $schema: 'https://vega.github.io/schema/vega-lite/v6.json',
    title,
    background: 'white',
    data: { values: points },
    facet: { field: 'panel', type: 'nominal', sort: panels, title: null, header: { labelFontSize: 13, labelFontWeight: 'bold' } },
    columns: 2,
    resolve: { scale: { y: 'independent' } },
    spec: {
      width: 320,
      height: 180,
      mark: { type: 'line', point: { size: 12 } },
      encoding: {
        x: { field: 'step', type: 'quantitative', title: 'step' },
        y: { field: 'value', type: 'quantitative', title: null, scale: { zero: false } },
        ...lines,
      },
    },
  };
}

/** The curves of run folders as SVG. */
export async function curvesSvg(runs: RunCurves[], title?: string): Promise<string> {
  const points = curvePoints(runs);
  if (points.length === 0) throw new ZnError(`nothing to plot: no logged step with a loss, learning rate or reward in ${runs.map((r) => r.run).join(', ')}`);
  // Loaded on first use: only charts need them.
  const [vegaLite, vega] = await Promise.all([import('vega-lite'), import('vega')]);
  const compiled = vegaLite.compile(curvesSpec(points, title ?? `training curves: ${runs.map((r) => r.run).join(', ')}`) as never).spec;
  const view = new vega.View(vega.parse(compiled), { renderer: 'none' });
  try {
    return await view.toSVG();
  } finally {
    view.finalize();
  }
}

/**
 * `<dir>/training_curves.svg` and `.png` for a finished stage's folder (what sft, dpo and train
 * write at the end of each stage). Returns the SVG's path.
 */
export async function writeTrainingCurves(dir: string): Promise<string> {
  const { writeChart } = await import('./charts.js');
  const svg = await curvesSvg([readRunCurves(dir)]);
  return (await writeChart(join(dir, 'training_curves'), svg)).svg;
}
