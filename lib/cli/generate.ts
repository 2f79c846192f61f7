import { basename, resolve } from 'node:path';

import { SingleBar } from 'cli-progress';
import type { CommandModule } from 'yargs';

import { type GenerateProgress, type GenerateStats, generateFile } from '../generate/generate-file.js';
import { UsageError } from '../errors.js';
import { computeDevice, type ModelDType } from '../model/model.js';
import type { Device } from '../native.js';
import { generationOptions, withGenerationFlags, type GenerationFlags } from './generation-flags.js';
import { formatDuration } from './rate.js';
import { untilStopSignal } from './stop-signals.js';
import { lockOutputFile, resolveDatasetPath, resolveModelPath } from './hub-args.js';

interface GenerateArgs extends GenerationFlags {
  model_name_or_path: string[];
  dataset_name: string;
  split?: string;
  output: string;
  num_return_sequences?: number;
  batch_size: number;
  device: Device;
  dtype?: ModelDType;
  max_rows?: number;
  strict: boolean;
}

/** `zephyr-native generate`: completions of a dataset's prompts, resumable (lib/generate/generate-file.ts). */
export const generateCommand: CommandModule<object, GenerateArgs> = {
  command: 'generate',
  describe: 'Generate completions of a dataset\'s prompts with one or more models (raw UltraFeedback rows for rate)',
  builder: (yargs) =>
    withGenerationFlags(yargs, 'Seed: completions of row i from model k use seeds derived from (seed, i, k), so a resumed run writes the same')
      .option('model_name_or_path', { type: 'string', array: true, demandOption: true, describe: 'Model folder; repeat for several models (loaded one at a time, in this order)' })
      .option('dataset_name', { type: 'string', demandOption: true, describe: 'Prompts (prompt, messages, instruction): .jsonl, .json, .parquet or an HF folder' })
      .option('split', { type: 'string', describe: 'Split to read when --dataset_name is a dataset folder with several' })
      .option('output', { type: 'string', demandOption: true, describe: 'JSON Lines file, appended row by row; rerun to resume' })
      .option('num_return_sequences', { type: 'number', describe: 'Completions per prompt from each model (default 1)' })
      .option('batch_size', { type: 'number', default: 8, describe: 'Sequences decoded at once' })
      .option('device', { choices: ['cpu', 'cuda', 'auto'] as const, default: 'auto' as Device, describe: 'Where the models run' })
      .option('dtype', { choices: ['f32', 'bf16'] as const, describe: 'Compute precision (default bf16 on cuda, f32 on cpu)' })
      .option('max_rows', { type: 'number', describe: 'Read only the first N rows of the dataset' })
      .option('strict', { type: 'boolean', default: false, describe: 'Stop at the first row without a usable prompt' })
      .check((args) => {
        if (!/\.jsonl$/i.test(args.output)) throw new UsageError(`--output must be a .jsonl file (generate appends to it row by row), got ${args.output}`);
        if (!Number.isInteger(args.batch_size) || args.batch_size < 1) throw new UsageError(`--batch_size must be a positive integer, got ${args.batch_size}`);
        if (args.max_rows !== undefined && (!Number.isInteger(args.max_rows) || args.max_rows < 1)) {
          throw new UsageError(`--max_rows must be a positive integer, got ${args.max_rows}`);
        }
        return true;
      }),
  handler: async (args) => {
    lockOutputFile(args.output);
    const models: string[] = [];
    for (const model of args.model_name_or_path) models.push(await resolveModelPath(model));
    const dataset = await resolveDatasetPath(args.dataset_name, { splits: args.split ? [args.split] : [] });
    const device = computeDevice(args.device);
    const progress = new ProgressDisplay();
    let stats: GenerateStats;
    try {
      stats = await untilStopSignal((signal) =>
        generateFile(dataset, {
          models,
          // A Hub model's completions carry its id, not the cache's snapshot folder name.
          modelNames: args.model_name_or_path.map((value, k) => (models[k] === value ? basename(resolve(value)) : value)),
          output: args.output,
          split: args.split,
          generation: { ...generationOptions(args), numReturnSequences: args.num_return_sequences },
          batchSize: args.batch_size,
          device,
          dtype: args.dtype ?? (device === 'cuda' ? 'bf16' : 'f32'),
          maxRows: args.max_rows,
          strict: args.strict,
          signal,
          onProgress: (p) => progress.update(p),
        }),
      );
    } finally {
      progress.stop();
    }
    process.stderr.write(summary(stats, args.output));
    if (stats.stopped) process.exitCode = 130;
  },
};

/**
 * A cli-progress bar per model on a terminal; on anything else a plain status line every 10 s.
 * Speed is new tokens per second of generation in this pass.
 */
class ProgressDisplay {
  private bar: SingleBar | null = null;
  private last: GenerateProgress | null = null;

  update(progress: GenerateProgress): void {
    if (progress.phase === 'loading') {
      this.stop();
      const tty = Boolean(process.stderr.isTTY);
      process.stderr.write(`generate: loading model ${progress.modelIndex + 1}/${progress.models}: ${progress.model}\n`);
      this.bar = new SingleBar({
        stream: process.stderr,
        format: tty
          ? 'generate {model} {bar} {value}/{total} rows | {speed} tok/s | ETA {eta_text}'
          : 'generate: {model}: {value}/{total} rows ({percentage}%), {speed} new tokens/s, ETA {eta_text}',
        noTTYOutput: true,
        notTTYSchedule: 10_000,
        hideCursor: tty,
        gracefulExit: false,
      });
      this.bar.start(progress.rows, 0, this.payload(progress));
    }
    this.last = progress;
    this.bar?.update(progress.done, this.payload(progress));
  }

  stop(): void {
    if (this.bar && this.last) this.bar.update(this.last.done, this.payload(this.last));
    this.bar?.stop();
    this.bar = null;
  }

  private payload(progress: GenerateProgress) {
    const speed = progress.seconds > 0 ? progress.newTokens / progress.seconds : 0;
    const rowsPerSecond = progress.seconds > 0 ? progress.done / progress.seconds : 0;
    const eta = rowsPerSecond > 0 ? (progress.rows - progress.done) / rowsPerSecond : Infinity;
    return { model: `${progress.modelIndex + 1}/${progress.models} ${progress.model}`, speed: speed.toFixed(1), eta_text: formatDuration(eta) };
  }
}

function summary(stats: GenerateStats, output: string): string {
  const speed = stats.seconds > 0 ? stats.newTokens / stats.seconds : 0;
  const [read, ...skipped] = stats.report.summary();
  const lines = [
    `${read}; ${stats.resumed} rows already in the output`,
    `  this run: ${stats.written} rows written, ${stats.completions} completions, ${stats.newTokens} new tokens in ${stats.seconds.toFixed(1)}s (${speed.toFixed(1)} new tokens/s)`,
    ...skipped,
    `  output: ${output}`,
  ];
  if (stats.stopped) {
    lines.push(`  stopped before every row was written${stats.partsDir ? ` (earlier models' completions are kept in ${stats.partsDir})` : ''}: run the same command again to continue`);
  }
  return `${lines.join('\n')}\n`;
}
