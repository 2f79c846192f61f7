/**
 * `report_to`, as HF Trainer defines it: besides trainer_state.json and metrics.jsonl (always
 * written), the logged values go to TensorBoard event files and/or a Weights & Biases run, under
 * HF's tag names (`train/loss`, `eval/loss`, `train/rewards/margins`: lib/train/tensorboard.ts,
 * lib/train/wandb.ts). `all` is both, `none` (the default) neither, a list any of them.
 *
 * Reporters are opened before training starts, so a missing W&B key fails the run before any
 * step is paid for.
 */
import { join } from 'node:path';

import type { TrainingValues } from './config.js';
import { type Reporter, rewriteLogs } from './reporter.js';
import { defaultRunName, EventFileWriter } from './tensorboard.js';
import { openWandb } from './wandb.js';

export type Integration = 'tensorboard' | 'wandb';
export type { Reporter };

/** The integrations a `report_to` value names ('all' is every one zephyr-native has). */
export function integrationsOf(reportTo: TrainingValues['report_to']): Integration[] {
  const names = Array.isArray(reportTo) ? reportTo : [reportTo];
  if (names.includes('all')) return ['tensorboard', 'wandb'];
  return [...new Set(names.filter((name): name is Integration => name === 'tensorboard' || name === 'wandb'))];
}

/** TensorBoard's folder: `logging_dir`, else $TENSORBOARD_LOGGING_DIR (transformers 5), else output_dir/runs/<date>_<host>. */
export function tensorboardDir(values: Pick<TrainingValues, 'logging_dir'>, outputDir: string): string {
  return values.logging_dir ?? process.env.TENSORBOARD_LOGGING_DIR ?? join(outputDir, 'runs', defaultRunName());
}

function tensorboardReporter(logDir: string, runConfig: Record<string, unknown>): Reporter {
  const writer = new EventFileWriter(logDir);
  writer.addText('args', JSON.stringify(runConfig, null, 2));
  writer.flush();
  return {
    log(entry) {
      const step = Number(entry.step ?? 0);
      for (const [tag, value] of Object.entries(rewriteLogs(entry))) {
        if (typeof value === 'number') writer.addScalar(tag, value, step);
        else writer.addText(tag, value, step);
      }
      writer.flush();
    },
    async close() {
      writer.flush();
    },
  };
}

/**
 * Opens the reporters `report_to` names. `runConfig` is the run's configuration (what HF sends
 * as the W&B run config and TensorBoard's `args` text); `log` takes one-line notices.
 */
export async function openReporters(
  values: Pick<TrainingValues, 'report_to' | 'logging_dir' | 'run_name'>,
  outputDir: string,
  runConfig: Record<string, unknown>,
  log: (line: string) => void,
): Promise<Reporter[]> {
  const reporters: Reporter[] = [];
  try {
    for (const integration of integrationsOf(values.report_to)) {
      if (integration === 'tensorboard') {
        const dir = tensorboardDir(values, outputDir);
        reporters.push(tensorboardReporter(dir, runConfig));
        log(`report_to tensorboard: event files in ${dir}`);
      } else {
        const wandb = await openWandb({ runName: values.run_name, config: runConfig }, log);
        if (wandb) reporters.push(wandb);
      }
    }
  } catch (error) {
    await closeReporters(reporters);
    throw error;
  }
  return reporters;
}

export async function closeReporters(reporters: Reporter[]): Promise<void> {
  for (const reporter of reporters) await reporter.close();
}
