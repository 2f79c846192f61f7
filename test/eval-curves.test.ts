/**
 * Training curves: `zephyr-native plot` over trainer_state.json files written here (TRL's metric
 * names), checked point by point in the SVG (every series of every run, at its steps and values),
 * and the PNG decodes; writeTrainingCurves puts both files in a stage's folder.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';

import { writeTrainingCurves } from '../lib/eval/curves.js';
import { packageRoot } from '../lib/native.js';

const cli = join(packageRoot(), 'dist', 'lib', 'cli', 'main.js');
const work = mkdtempSync(join(tmpdir(), 'zn-curves-'));
after(() => rmSync(work, { recursive: true, force: true }));

const DPO_METRICS = ['loss', 'learning_rate', 'rewards/margins', 'rewards/accuracies', 'rewards/chosen', 'rewards/rejected'];

/** A run folder whose log_history has `steps` entries of `metrics` (value = f(metric, step)), and the end-of-training summary HF adds. */
function writeRun(name: string, metrics: string[], steps: number[], withEval = false): string {
  const dir = join(work, name);
  mkdirSync(dir, { recursive: true });
  const value = (metric: string, step: number) => (metrics.indexOf(metric) + 1) * (metric === 'rewards/rejected' ? -1 : 1) * (1 + step / 100) + (name === 'sft' ? 0.5 : 0);
  const log_history: Record<string, number>[] = steps.map((step) => ({ ...Object.fromEntries(metrics.map((m) => [m, value(m, step)])), grad_norm: 1, epoch: step / 100, step }));
  if (withEval) log_history.push({ eval_loss: 0.25, epoch: 1, step: steps.at(-1)! });
  log_history.push({ train_runtime: 3, train_loss: 0.5, epoch: 1, step: steps.at(-1)! });
  writeFileSync(join(dir, 'trainer_state.json'), JSON.stringify({ global_step: steps.at(-1), log_history }));
  return dir;
}

interface Point {
  step: number;
  value: number;
  run: string;
  metric: string;
}

/** The data points of the chart, from each point mark's aria-label (Vega-Lite writes every field). */
function points(svg: string): Point[] {
  return [...svg.matchAll(/aria-label="step: (\d+); value: ([^;]+); (?:run: ([^;]+); )?metric: ([^"]+)"/g)].map((m) => ({
    step: Number(m[1]),
    value: Number(m[2].replace('\u2212', '-')),
    run: m[3] ?? '',
    metric: m[4],
  }));
}

describe('training curves', () => {
  it('plot overlays runs: every metric of every run at every logged step, with its value', () => {
    const sft = writeRun('sft', ['loss', 'learning_rate'], [10, 20, 30], true);
    const dpo = writeRun('dpo', DPO_METRICS, [5, 10, 15, 20]);
    const output = join(work, 'both.svg');
    const result = spawnSync(process.execPath, [cli, 'plot', sft, dpo, '--output', output], { encoding: 'utf8' });
    assert.equal(result.status, 0, result.stderr);
    const svg = readFileSync(output, 'utf8');
    assert.match(svg, /^<svg[\s\S]*<\/svg>$/);
    const found = points(svg);
    for (const [dir, run, metrics, steps] of [[sft, 'sft', ['loss', 'learning_rate'], [10, 20, 30]], [dpo, 'dpo', DPO_METRICS, [5, 10, 15, 20]]] as const) {
      const history = JSON.parse(readFileSync(join(dir, 'trainer_state.json'), 'utf8')).log_history;
      for (const metric of metrics) {
        for (const step of steps) {
          const expected = history.find((e: Record<string, number>) => e.step === step && metric in e)[metric];
          const point = found.find((p) => p.run === run && p.metric === metric && p.step === step);
          assert.ok(point, `${run} ${metric} at step ${step}`);
          assert.ok(Math.abs(point.value - expected) < 1e-9 * Math.max(1, Math.abs(expected)), `${run} ${metric} ${step}: ${point.value} vs ${expected}`);
        }
      }
    }
    assert.ok(found.some((p) => p.run === 'sft' && p.metric === 'eval_loss' && p.value === 0.25));
    for (const title of ['loss', 'learning_rate', 'rewards/margins', 'rewards/accuracies', 'rewards/chosen and rewards/rejected']) assert.ok(svg.includes(`>${title}</text>`), title);
  });

  it('writes training_curves.svg and .png into a stage folder; the PNG decodes', async () => {
    const dir = writeRun('stage', DPO_METRICS, [1, 2]);
    await writeTrainingCurves(dir);
    // A line's path carries its first point's label too: count distinct points.
    const distinct = new Set(points(readFileSync(join(dir, 'training_curves.svg'), 'utf8')).map((p) => JSON.stringify(p)));
    assert.equal(distinct.size, DPO_METRICS.length * 2);
    const png = readFileSync(join(dir, 'training_curves.png'));
    assert.deepEqual([...png.subarray(0, 8)], [137, 80, 78, 71, 13, 10, 26, 10]);
    assert.equal(png.toString('latin1', 12, 16), 'IHDR');
    assert.ok(png.readUInt32BE(16) > 500 && png.readUInt32BE(20) > 500);
  });

  it('a folder without trainer_state.json is refused with its name; --output must be .svg or .png', () => {
    const missing = spawnSync(process.execPath, [cli, 'plot', join(work, 'nowhere'), '--output', join(work, 'x.svg')], { encoding: 'utf8' });
    assert.equal(missing.status, 1);
    assert.match(missing.stderr, /nowhere: no trainer_state\.json/);
    const wrong = spawnSync(process.execPath, [cli, 'plot', join(work, 'sft'), '--output', join(work, 'x.jpg')], { encoding: 'utf8' });
    assert.equal(wrong.status, 2);
    assert.equal(existsSync(join(work, 'x.jpg')), false);
  });
});
