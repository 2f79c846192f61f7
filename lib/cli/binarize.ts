import type { CommandModule } from 'yargs';

import { Binarizer, type BinarizeStats, type PreferenceRow, type ScoreRule } from '../aif/binarize.js';
import { isSingleFile, type PreferenceFormat, writePreferences } from '../aif/preference-files.js';
import { readRows } from '../data/readers.js';
import { UsageError } from '../errors.js';

interface BinarizeArgs {
  input: string;
  split?: string;
  output: string;
  seed: number;
  score: ScoreRule;
  test_size: number;
  format: PreferenceFormat;
  strict: boolean;
}

/** `zephyr-native binarize`: raw UltraFeedback ratings -> chosen/rejected pairs (lib/aif/binarize.ts). */
export const binarizeCommand: CommandModule<object, BinarizeArgs> = {
  command: 'binarize',
  describe: 'Turn raw UltraFeedback ratings into chosen/rejected preference pairs',
  builder: (yargs) =>
    yargs
      .option('input', { type: 'string', demandOption: true, describe: 'Raw UltraFeedback rows: .jsonl, .json, .parquet or an HF dataset folder' })
      .option('split', { type: 'string', describe: 'Split to read when --input is a dataset folder with several' })
      .option('output', {
        type: 'string',
        demandOption: true,
        describe: 'A .jsonl/.parquet file, or a folder written as data/train_prefs-00000-of-00001.<format> (+ test_prefs)',
      })
      .option('seed', { type: 'number', default: 42, describe: 'Seed of the rejected draw and the test split' })
      .option('score', { choices: ['mean', 'overall'] as const, default: 'mean' as ScoreRule, describe: 'mean of the 4 aspect ratings, or overall_score' })
      .option('test_size', { type: 'number', default: 0, describe: 'Test split: a fraction in (0,1) or a row count (needs a folder --output)' })
      .option('format', { choices: ['parquet', 'jsonl'] as const, default: 'parquet' as PreferenceFormat, describe: 'File format inside a folder --output' })
      .option('strict', { type: 'boolean', default: false, describe: 'Stop at the first row that cannot make a pair' })
      .check((args) => {
        if (!Number.isInteger(args.seed)) throw new UsageError(`--seed must be an integer, got ${args.seed}`);
        if (!(args.test_size >= 0)) throw new UsageError(`--test_size must be >= 0, got ${args.test_size}`);
        if (args.test_size > 0 && isSingleFile(args.output)) {
          throw new UsageError(`--test_size needs a dataset folder as --output, not the file ${args.output}`);
        }
        return true;
      }),
  handler: async (args) => {
    const binarizer = new Binarizer({ seed: args.seed, score: args.score, strict: args.strict });
    const pairs: PreferenceRow[] = [];
    for await (const { row, file, index } of readRows(args.input, { split: args.split })) {
      const pair = binarizer.add(row, `${file}: row ${index}`);
      if (pair) pairs.push(pair);
    }
    const { files } = await writePreferences(args.output, pairs, { testSize: args.test_size, seed: args.seed, format: args.format });
    process.stderr.write(summary(binarizer.stats, files));
  },
};

function summary(stats: BinarizeStats, files: { path: string; split: string; rows: number }[]): string {
  const counts = (record: Record<string, number | undefined>) =>
    Object.entries(record)
      .filter(([, n]) => n)
      .map(([name, n]) => `${name} ${n}`)
      .join(', ') || 'none';
  const lines = [
    `binarize: ${stats.rows} rows read, ${stats.pairs} pairs made`,
    `  skipped rows: ${counts(stats.skipped)}`,
    `  unusable completions: ${counts(stats.unusableCompletions)}; ratings left out of means: ${counts(stats.ratings)}`,
    ...stats.examples.map((example) => `  e.g. ${example}`),
    ...files.map((file) => `  wrote ${file.rows} rows (${file.split}) to ${file.path}`),
  ];
  return `${lines.join('\n')}\n`;
}
