/**
 * Dataset config -> tokenized training and evaluation sets for the SFT and DPO trainers: rows
 * streamed from the planned sources (lib/data/dataset-config.ts), tokenized one at a time (only
 * the token ids are kept), unusable rows counted in a DatasetReport per set, the summary logged
 * at the end of loading. SFT examples are packed afterwards when `packing` is on.
 */
import { ZnError } from '../errors.js';
import { ChatTemplate } from './chat-template.js';
import { countPlanRows, type DataConfig, type DatasetPlan, planDatasets, planRows, testRowPositions } from './dataset-config.js';
import { DpoTokenizer, type DpoOptions, type PreferencePair } from './dpo-tokenize.js';
import { packExamples, type PackedRow } from './packing.js';
import type { SourceRow } from './readers.js';
import { type SftExample, type SftOptions, SftTokenizer } from './sft-examples.js';
import { seededShuffle } from './shuffle.js';
import type { HfTokenizer } from './tokenizer.js';
import { DatasetReport, RowProblem, type RowSource } from './validation.js';

export interface LoadOptions {
  /** Stop at the first unusable row instead of counting it. */
  strict?: boolean;
  /** Where the end-of-loading summaries go (default: nowhere). */
  log?: (line: string) => void;
}

export type SftItem = SftExample | PackedRow;

export interface LoadedData<T> {
  train: T[];
  test: T[];
  reports: { train: DatasetReport; test: DatasetReport };
}

interface Tokenized<T> {
  value: T;
  truncated: boolean;
  promptNotPrefix: boolean;
}

type RowTokenizer<T> = (row: Record<string, unknown>, source: RowSource) => Tokenized<T>;

export function chatTemplateOf(tokenizer: HfTokenizer): ChatTemplate {
  return new ChatTemplate(tokenizer.chatTemplate, tokenizer.specialTokensMap);
}

/** A recipe's dataset keys, or an explicit plan (e.g. one split of one folder). */
export type DataSource = DataConfig | DatasetPlan;

function planOf(source: DataSource): DatasetPlan {
  return 'train' in source && Array.isArray(source.train) ? (source as DatasetPlan) : planDatasets(source as DataConfig);
}

export async function loadSftData(config: DataSource, tokenizer: HfTokenizer, options: SftOptions, load: LoadOptions = {}): Promise<LoadedData<SftItem>> {
  if (options.packing && options.maxLength === null) throw new ZnError('packing needs max_length (the length of a packed row)');
  const sft = new SftTokenizer(tokenizer, chatTemplateOf(tokenizer), options);
  const data = await loadTokenized<SftExample>(config, load, (row, source) => {
    const { example, truncated, promptNotPrefix } = sft.tokenize(row, source);
    return { value: example, truncated, promptNotPrefix };
  });
  if (!options.packing) return data;
  return { ...data, train: packExamples(data.train as SftExample[], options.maxLength!), test: packExamples(data.test as SftExample[], options.maxLength!) };
}

export async function loadDpoData(config: DataSource, tokenizer: HfTokenizer, options: DpoOptions, load: LoadOptions = {}): Promise<LoadedData<PreferencePair>> {
  const dpo = new DpoTokenizer(tokenizer, chatTemplateOf(tokenizer), options);
  return loadTokenized<PreferencePair>(config, load, (row, source) => {
    const { pair, truncated, promptNotPrefix } = dpo.tokenize(row, source);
    return { value: pair, truncated, promptNotPrefix };
  });
}

async function loadTokenized<T>(config: DataSource, load: LoadOptions, tokenize: RowTokenizer<T>): Promise<LoadedData<T>> {
  const plan = planOf(config);
  const reports = { train: new DatasetReport('train', load.strict), test: new DatasetReport('test', load.strict) };
  const train: T[] = [];
  const test: T[] = [];
  const testPositions = plan.testSplit ? testRowPositions(await countPlanRows(plan.train), plan.testSplit.size, plan.testSplit.seed) : null;
  let position = 0;
  for await (const source of planRows(plan.train)) {
    const isTest = testPositions?.has(position++) ?? false;
    tokenizeInto(source, tokenize, isTest ? test : train, isTest ? reports.test : reports.train);
  }
  for await (const source of planRows(plan.test)) tokenizeInto(source, tokenize, test, reports.test);
  for (const report of [reports.train, reports.test]) if (report.read > 0) for (const line of report.summary()) load.log?.(line);
  if (plan.shuffleSeed === null) return { train, test, reports };
  return { train: seededShuffle(train, plan.shuffleSeed), test: seededShuffle(test, plan.shuffleSeed), reports };
}

function tokenizeInto<T>(source: SourceRow, tokenize: RowTokenizer<T>, into: T[], report: DatasetReport): void {
  const where: RowSource = { file: source.file, index: source.index };
  report.read++;
  let result: Tokenized<T>;
  try {
    result = tokenize(source.row, where);
  } catch (error) {
    if (error instanceof RowProblem) {
      report.skip(error, where);
      return;
    }
    throw new ZnError(`${where.file}: row ${where.index}: ${(error as Error).message}`);
  }
  into.push(result.value);
  report.used++;
  if (result.truncated) report.truncated++;
  if (result.promptNotPrefix) report.promptNotPrefix++;
}
