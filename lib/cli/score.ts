import { extname } from 'node:path';

import type { CommandModule } from 'yargs';

import { DpoTokenizer } from '../data/dpo-tokenize.js';
import { chatTemplateOf } from '../data/load.js';
import { readRows } from '../data/readers.js';
import { DEFAULT_SFT_OPTIONS, SftTokenizer } from '../data/sft-examples.js';
import { HfTokenizer } from '../data/tokenizer.js';
import { DatasetReport } from '../data/validation.js';
import { writeRows } from '../data/writers.js';
import { UsageError } from '../errors.js';
import { loadModel, type ModelDType } from '../model/model.js';
import { scoreRows } from '../model/score.js';
import type { Device } from '../native.js';
import { lockOutputFile, resolveDatasetPath, resolveModelPath } from './hub-args.js';

interface ScoreArgs {
  model_name_or_path: string;
  ref_model_name_or_path?: string;
  tokenizer_name_or_path?: string;
  dataset_name: string;
  dataset_split?: string;
  output: string;
  max_length?: number;
  max_prompt_length?: number;
  assistant_only_loss: boolean;
  batch_tokens: number;
  device: Device;
  dtype: ModelDType;
  strict: boolean;
}

const PROGRESS_INTERVAL_MS = 2000;

function positiveInteger(name: string, value: number | undefined): void {
  if (value !== undefined && !(Number.isSafeInteger(value) && value > 0)) {
    throw new UsageError(`--${name} must be a positive integer, got ${value}`);
  }
}

/** `zephyr-native score`: summed completion log-probs per row (lib/model/score.ts). */
export const scoreCommand: CommandModule<object, ScoreArgs> = {
  command: 'score',
  describe: 'Summed completion log-probabilities of a model on a dataset',
  builder: (yargs) =>
    yargs
      .option('model_name_or_path', { type: 'string', demandOption: true, describe: 'HF model folder (config.json + safetensors)' })
      .option('ref_model_name_or_path', { type: 'string', describe: 'A reference model folder: adds ref_* log-probs' })
      .option('tokenizer_name_or_path', { type: 'string', describe: 'Tokenizer folder (default: the model folder)' })
      .option('dataset_name', { type: 'string', demandOption: true, describe: 'Rows: .jsonl, .json, .parquet or an HF dataset folder' })
      .option('dataset_split', { type: 'string', describe: 'Split to read when --dataset_name is a folder with several' })
      .option('output', { type: 'string', demandOption: true, describe: 'Where to write one JSON line per row (.jsonl, written atomically)' })
      .option('max_length', { type: 'number', describe: 'Cut prompt+completion to this many tokens, keeping the start (TRL)' })
      .option('max_prompt_length', { type: 'number', describe: 'Keep the last this-many prompt tokens first (older TRL rule)' })
      .option('assistant_only_loss', { type: 'boolean', default: false, describe: 'SFT rows: score only the assistant tokens' })
      .option('batch_tokens', { type: 'number', default: 4096, describe: 'Tokens per forward pass (documents are packed up to it)' })
      .option('device', { choices: ['cpu', 'cuda', 'auto'] as const, default: 'cpu' as Device, describe: 'Backend to run on' })
      .option('dtype', { choices: ['f32', 'bf16'] as const, default: 'f32' as ModelDType, describe: 'f32, or bf16 weights and matmul inputs' })
      .option('strict', { type: 'boolean', default: false, describe: 'Stop at the first row that cannot be scored' })
      .check((args) => {
        positiveInteger('max_length', args.max_length);
        positiveInteger('max_prompt_length', args.max_prompt_length);
        positiveInteger('batch_tokens', args.batch_tokens);
        if (extname(args.output).toLowerCase() !== '.jsonl') throw new UsageError(`--output must be a .jsonl file, got ${args.output}`);
        return true;
      }),
  handler: async (args) => {
    lockOutputFile(args.output);
    const modelDir = await resolveModelPath(args.model_name_or_path);
    const refDir = args.ref_model_name_or_path ? await resolveModelPath(args.ref_model_name_or_path) : null;
    const dataset = await resolveDatasetPath(args.dataset_name, { splits: args.dataset_split ? [args.dataset_split] : [] });
    const tokenizer = HfTokenizer.fromFolder(args.tokenizer_name_or_path ? await resolveModelPath(args.tokenizer_name_or_path) : modelDir);
    const template = chatTemplateOf(tokenizer);
    const maxLength = args.max_length ?? null;
    const preferences = new DpoTokenizer(tokenizer, template, { maxLength, maxPromptLength: args.max_prompt_length ?? null });
    const sft = new SftTokenizer(tokenizer, template, { ...DEFAULT_SFT_OPTIONS, maxLength, assistantOnlyLoss: args.assistant_only_loss });
    const modelOptions = { device: args.device, dtype: args.dtype, maxTokens: args.batch_tokens };
    const model = await loadModel(modelDir, modelOptions);
    const refModel = refDir ? await loadModel(refDir, modelOptions) : null;
    const report = new DatasetReport('score', args.strict);

    const started = Date.now();
    let lastReport = started;
    const progress = ({ rows, tokens }: { rows: number; tokens: number }) => {
      const now = Date.now();
      if (now - lastReport < PROGRESS_INTERVAL_MS) return;
      lastReport = now;
      const rate = Math.round(tokens / Math.max((now - started) / 1000, 1e-3));
      process.stderr.write(`score: ${rows} rows (${report.skippedTotal} skipped), ${tokens} tokens, ${rate} tokens/s\n`);
    };
    const rows = readRows(dataset, { split: args.dataset_split });
    const { rows: written } = await writeRows(args.output, scoreRows(rows, { model, refModel, preferences, sft, report, progress }));
    for (const line of report.summary()) process.stderr.write(`${line}\n`);
    process.stderr.write(`score: wrote ${written} rows to ${args.output}\n`);
  },
};
