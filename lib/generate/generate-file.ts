/**
 * `generate`'s work: completions of a dataset's prompts (lib/generate/prompts.ts) from one or
 * more models, written as raw UltraFeedback rows, which `rate` reads:
 *   {instruction, [messages], completions: [{model, response, token_ids, finish_reason}]}
 * (`messages`: the prompt conversation, only when it is more than the one user message), each
 * model adding its num_return_sequences completions, in the order the models are given.
 *
 * One model in memory at a time: each model is loaded, completes every prompt and is disposed
 * before the next. Models before the last append their completions to `OUT.parts/model-K.jsonl`;
 * the last one appends whole rows to OUT as it finishes them, joined with those files. So OUT
 * only ever holds finished rows, in dataset order, and grows during the last model's pass; the
 * parts folder is removed when every row is in OUT.
 *
 * Resuming: OUT must be a prefix of this run's rows (checked: instruction, prompt and models),
 * and those rows are skipped; each part file resumes after its last row. Prompts whose rows are
 * written are never generated again. With a seed S, completion j of row i from model k samples
 * with seed derive(S, i, k) + j, so a resumed run writes what an uninterrupted one would.
 *
 * Before any model is loaded, every row is read and checked: a row without a usable prompt, or
 * with a prompt too long for one of the models, is skipped and counted by reason with its file
 * and row (strict: the first one stops the run), and a dataset with no usable prompt is an error.
 * The prompts are held in memory (text only), so the dataset is read once.
 */
import { createHash, randomInt } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, rmSync } from 'node:fs';
import { basename, join, resolve } from 'node:path';

import type { ChatTemplate } from '../data/chat-template.js';
import { chatTemplateOf } from '../data/load.js';
import { readRows } from '../data/readers.js';
import { HfTokenizer } from '../data/tokenizer.js';
import { DatasetReport, RowProblem } from '../data/validation.js';
import { cutTornLine, JsonlAppender } from '../data/writers.js';
import { ZnError } from '../errors.js';
import { writeJsonAtomic } from '../io/atomic.js';
import { readMistralConfig } from '../model/config.js';
import { baseFolderOf } from '../model/peft.js';
import { DEFAULT_MAX_TOKENS, loadModel, type ModelDType } from '../model/model.js';
import type { Device } from '../native.js';
import type { Completion } from './engine.js';
import { Generator, promptIds } from './generate.js';
import { type GenerationOptions, resolveGeneration } from './options.js';
import { type RowPrompt, rowPrompt } from './prompts.js';

export interface GenerateFileOptions {
  /** Model folders, in the order their completions appear in each row. */
  models: string[];
  /** The `model` of each model's completions (default: its folder's name; the CLI gives a Hub model's id). */
  modelNames?: string[];
  /** The JSON Lines file rows are appended to; rows already in it are not generated again. */
  output: string;
  /** Split to read when the input is a dataset folder. */
  split?: string;
  /** Sampling options over each model's generation_config.json; `seed` is the run's seed. */
  generation?: GenerationOptions;
  /** Sequences decoded at once (default 8). */
  batchSize?: number;
  device?: Device;
  dtype?: ModelDType;
  /** Read only the first maxRows rows of the dataset (skipped rows count). */
  maxRows?: number;
  /** Stop at the first row without a usable prompt. */
  strict?: boolean;
  /** Stops the run after the rows in flight, which are written. */
  signal?: AbortSignal;
  onProgress?: (progress: GenerateProgress) => void;
}

/** Where one model's pass is. */
export interface GenerateProgress {
  model: string;
  /** 0-based position of the model in `models`. */
  modelIndex: number;
  models: number;
  /** 'loading' while the model loads, then 'generating'. */
  phase: 'loading' | 'generating';
  /** Rows this pass has finished, of `rows` it has to do. */
  done: number;
  rows: number;
  /** New tokens this pass and the seconds it has spent generating them. */
  newTokens: number;
  seconds: number;
}

export interface GenerateStats {
  /** Dataset rows read and prompts found in them (report: skipped rows by reason). */
  report: DatasetReport;
  /** Rows already in the output when the run started. */
  resumed: number;
  /** Rows appended to the output in this run. */
  written: number;
  /** Completions generated in this run (every model, part files included). */
  completions: number;
  newTokens: number;
  /** Seconds spent generating (model loading not counted). */
  seconds: number;
  /** True when the run stopped (signal) before every row was in the output. */
  stopped: boolean;
  /** The parts folder, when one is left for the next run. */
  partsDir: string | null;
}

interface ModelSource {
  dir: string;
  /** The folder's name: the `model` of its completions. */
  name: string;
  tokenizer: HfTokenizer;
  template: ChatTemplate;
  maxPositions: number;
}

interface PlannedPrompt extends RowPrompt {
  /** 0-based position of the row in the dataset (skipped rows included): part of its seed. */
  index: number;
}

interface CompletionRecord {
  model: string;
  response: string;
  token_ids: number[];
  finish_reason: string;
}

/** Generates completions of the prompts in `input` (file or HF dataset folder) into `options.output`. */
export async function generateFile(input: string, options: GenerateFileOptions): Promise<GenerateStats> {
  if (!/\.jsonl$/i.test(options.output)) throw new ZnError(`generate output must be a .jsonl file (it is appended to row by row), got ${options.output}`);
  if (options.models.length === 0) throw new ZnError('generate: no model given');
  resolveGeneration(options.generation ?? {}); // bad sampling options: refused before anything is read or written
  const sources = options.models.map((dir, k) => modelSource(dir, options.modelNames?.[k]));
  const report = new DatasetReport('generate', options.strict ?? false);
  const prompts = await planPrompts(input, options, sources, report);
  const perModel = options.generation?.numReturnSequences ?? 1;
  const resumed = await finishedRows(options.output, prompts, sources.flatMap((s) => Array<string>(perModel).fill(s.name)));
  const partsDir = `${options.output}.parts`;
  const settings = { input: resolve(input), split: options.split ?? null, models: sources.map((s) => resolve(s.dir)), generation: options.generation ?? {} };
  if (sources.length > 1 && resumed < prompts.length) checkParts(partsDir, settings);

  const runSeed = options.generation?.seed ?? randomInt(2 ** 47);
  const stats: GenerateStats = { report, resumed, written: 0, completions: 0, newTokens: 0, seconds: 0, stopped: false, partsDir: null };
  const remaining = prompts.slice(resumed);
  for (const [k, source] of sources.entries()) {
    const last = k === sources.length - 1;
    const partFile = join(partsDir, `model-${k}.jsonl`);
    const after = last ? -1 : await lastPartRow(partFile);
    const todo = remaining.filter((prompt) => prompt.index > after);
    if (todo.length === 0) continue;
    if (options.signal?.aborted) break;
    const sink = last ? await outputSink(options.output, sources.length - 1, partsDir) : await partSink(partFile);
    const write: Sink['write'] = async (prompt, completions) => {
      await sink.write(prompt, completions);
      if (last) stats.written++;
    };
    try {
      await runModel(source, k, todo, write, options, runSeed, stats);
    } finally {
      await sink.close();
    }
  }
  stats.stopped = resumed + stats.written < prompts.length;
  if (stats.stopped) stats.partsDir = existsSync(partsDir) ? partsDir : null;
  else rmSync(partsDir, { recursive: true, force: true });
  return stats;
}

/** A model folder, or a PEFT adapter folder: its base's config, and its own tokenizer if it has one (PEFT writes none). */
function modelSource(dir: string, name?: string): ModelSource {
  const base = baseFolderOf(dir);
  const config = readMistralConfig(base);
  const tokenizer = HfTokenizer.fromFolder(existsSync(join(dir, 'tokenizer.json')) ? dir : base);
  return { dir, name: name ?? basename(resolve(dir)), tokenizer, template: chatTemplateOf(tokenizer), maxPositions: config.maxPositionEmbeddings };
}

/** Every usable prompt of the dataset (or its first maxRows rows); skipped rows go to `report`. */
async function planPrompts(input: string, options: GenerateFileOptions, sources: ModelSource[], report: DatasetReport): Promise<PlannedPrompt[]> {
  const prompts: PlannedPrompt[] = [];
  for await (const { row, file, index } of readRows(input, { split: options.split })) {
    if (options.maxRows !== undefined && report.read >= options.maxRows) break;
    const position = report.read++;
    try {
      if (row === null || typeof row !== 'object' || Array.isArray(row)) throw new RowProblem('wrong_type', 'row', 'expected an object');
      const prompt = rowPrompt(row);
      for (const source of sources) {
        const tokens = promptIds(source.tokenizer, source.template, prompt.conversation).length;
        if (tokens >= source.maxPositions) {
          throw new RowProblem('prompt_too_long', 'prompt', `${tokens} tokens; ${source.name} holds ${source.maxPositions} positions (max_position_embeddings)`);
        }
      }
      prompts.push({ ...prompt, index: position });
      report.used++;
    } catch (error) {
      if (!(error instanceof RowProblem)) throw error;
      report.skip(error, { file, index });
    }
  }
  if (prompts.length === 0) {
    const reasons = [...report.skipped].map(([reason, tally]) => `${tally.count} x ${reason}`).join(', ');
    const example = [...report.skipped.values()][0]?.examples[0];
    const where = example ? `; e.g. ${example.file}: row ${example.index}: field '${example.field}': ${example.detail}` : '';
    throw new ZnError(`${input}: no usable prompt in ${report.read} rows (${reasons || 'no rows'})${where}`);
  }
  return prompts;
}

/**
 * How many rows the output already holds, after checking that they are this run's first rows
 * (same instruction and prompt, completions from the same models).
 */
async function finishedRows(output: string, prompts: PlannedPrompt[], models: string[]): Promise<number> {
  if (!existsSync(output)) return 0;
  await cutTornLine(output);
  let count = 0;
  for await (const { row, index } of readRows(output)) {
    if (count < prompts.length) {
      const problem = rowMismatch(row, prompts[count], models);
      if (problem) {
        throw new ZnError(`${output}: row ${index} is not this run's row ${count} (${problem}): give another --output, or the dataset, models and --num_return_sequences that wrote it`);
      }
    }
    count++;
  }
  return Math.min(count, prompts.length);
}

function rowMismatch(row: Record<string, unknown>, prompt: PlannedPrompt, models: string[]): string | null {
  if (row.instruction !== prompt.instruction) return `instruction ${clip(row.instruction)}, expected ${clip(prompt.instruction)}`;
  if (JSON.stringify(row.messages ?? null) !== JSON.stringify(promptMessages(prompt) ?? null)) return 'the prompt conversation differs';
  const found = Array.isArray(row.completions) ? row.completions.map((c) => (c as CompletionRecord)?.model) : [];
  if (JSON.stringify(found) !== JSON.stringify(models)) return `completions from [${found.join(', ')}], expected [${models.join(', ')}]`;
  return null;
}

function clip(value: unknown): string {
  const text = JSON.stringify(value) ?? String(value);
  return text.length > 60 ? `${text.slice(0, 57)}...` : text;
}

/** The conversation written beside the instruction when it is more than the one user message. */
function promptMessages(prompt: RowPrompt): RowPrompt['conversation'] | undefined {
  return prompt.conversation.length > 1 ? prompt.conversation : undefined;
}

/** Part files are only reused by a run with the same input, models and sampling options. */
function checkParts(partsDir: string, settings: Record<string, unknown>): void {
  const file = join(partsDir, 'settings.json');
  if (existsSync(file)) {
    const previous = readFileSync(file, 'utf8');
    if (previous.trim() !== JSON.stringify(settings, null, 2)) {
      throw new ZnError(`${partsDir} holds completions of a run with other settings (${file}); run with the same dataset, models and sampling flags, or delete the folder`);
    }
    return;
  }
  mkdirSync(partsDir, { recursive: true });
  writeJsonAtomic(file, settings);
}

/** The dataset position of a part file's last row, or -1. */
async function lastPartRow(file: string): Promise<number> {
  if (!existsSync(file)) return -1;
  await cutTornLine(file);
  let last = -1;
  for await (const { row } of readRows(file)) last = row.row as number;
  return last;
}

interface Sink {
  write(prompt: PlannedPrompt, completions: CompletionRecord[]): Promise<void>;
  close(): Promise<void>;
}

async function partSink(file: string): Promise<Sink> {
  const appender = await JsonlAppender.open(file);
  return {
    write: (prompt, completions) => appender.append({ row: prompt.index, completions }),
    close: () => appender.close(),
  };
}

/** Whole rows: the earlier models' completions from their part files, then the last model's. */
async function outputSink(output: string, earlierModels: number, partsDir: string): Promise<Sink> {
  const parts = Array.from({ length: earlierModels }, (_, k) => new PartReader(join(partsDir, `model-${k}.jsonl`)));
  const appender = await JsonlAppender.open(output);
  return {
    write: async (prompt, completions) => {
      const earlier: CompletionRecord[] = [];
      for (const part of parts) earlier.push(...(await part.take(prompt.index)));
      await appender.append({ instruction: prompt.instruction, messages: promptMessages(prompt), completions: [...earlier, ...completions] });
    },
    close: async () => {
      await appender.close();
      await Promise.all(parts.map((part) => part.close()));
    },
  };
}

/** Reads a part file forward: rows come in dataset order. */
class PartReader {
  private readonly rows: AsyncGenerator<{ row: Record<string, unknown> }>;

  constructor(private readonly file: string) {
    this.rows = readRows(file);
  }

  async take(index: number): Promise<CompletionRecord[]> {
    for (let next = await this.rows.next(); !next.done; next = await this.rows.next()) {
      const row = next.value.row;
      if (row.row === index) return row.completions as CompletionRecord[];
      if ((row.row as number) > index) break;
    }
    throw new ZnError(`${this.file}: no completions for dataset row ${index}; delete the parts folder and run again`);
  }

  async close(): Promise<void> {
    await this.rows.return(undefined);
  }
}

/** Completion j of dataset row `row` from model `model` samples with this seed + j. */
export function rowSeed(runSeed: number, row: number, model: number): number {
  const digest = createHash('sha256').update(`${runSeed}:${row}:${model}`).digest();
  return digest.readUIntBE(0, 6) % 2 ** 47;
}

/**
 * Loads one model, completes `prompts` in dataset order and disposes it. Rows go to the engine a
 * few at a time (enough to keep every batch slot busy) and are written in order as they finish;
 * once the signal fires no new row starts, and the rows in flight are finished and written.
 */
async function runModel(
  source: ModelSource,
  k: number,
  prompts: PlannedPrompt[],
  write: Sink['write'],
  options: GenerateFileOptions,
  runSeed: number,
  stats: GenerateStats,
): Promise<void> {
  const batchSize = options.batchSize ?? 8;
  const progress = { model: source.name, modelIndex: k, models: options.models.length, done: 0, rows: prompts.length, newTokens: 0, seconds: 0 };
  options.onProgress?.({ ...progress, phase: 'loading' });
  const model = await loadModel(source.dir, { device: options.device, dtype: options.dtype, maxTokens: Math.max(DEFAULT_MAX_TOKENS, batchSize) });
  try {
    const generator = await Generator.create(model, source.tokenizer, { batchSize, template: source.template });
    const perRow = options.generation?.numReturnSequences ?? 1;
    const lookahead = Math.max(2, Math.ceil((2 * batchSize) / perRow));
    const failure = new AbortController();
    const started = performance.now();
    const queue: { prompt: PlannedPrompt; result: Promise<Completion[]> }[] = [];
    let next = 0;
    try {
      for (;;) {
        while (!options.signal?.aborted && next < prompts.length && queue.length < lookahead) {
          const prompt = prompts[next++];
          const request = { ...options.generation, seed: rowSeed(runSeed, prompt.index, k), signal: failure.signal };
          const result = generator.generate([prompt.conversation], request).then(([completions]) => completions);
          result.catch(() => undefined);
          queue.push({ prompt, result });
        }
        const head = queue.shift();
        if (!head) break;
        const completions = await head.result;
        await write(head.prompt, completions.map((c) => completionRecord(source.name, c)));
        const tokens = completions.reduce((sum, c) => sum + c.tokenIds.length, 0);
        stats.completions += completions.length;
        stats.newTokens += tokens;
        progress.done++;
        progress.newTokens += tokens;
        progress.seconds = (performance.now() - started) / 1000;
        options.onProgress?.({ ...progress, phase: 'generating' });
      }
    } catch (error) {
      failure.abort(error);
      await Promise.allSettled(queue.map((q) => q.result));
      throw error;
    } finally {
      stats.seconds += (performance.now() - started) / 1000;
    }
  } finally {
    model.dispose();
  }
}

function completionRecord(model: string, completion: Completion): CompletionRecord {
  return { model, response: completion.text, token_ids: completion.tokenIds, finish_reason: completion.finishReason };
}
