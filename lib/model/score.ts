/**
 * Summed completion log-probabilities of a model (and optionally a reference model) on a
 * dataset, row by row, in input order; what `zephyr-native score` writes.
 *
 * Rows go through the data pipeline that the trainers use (lib/data): preference rows
 * (`chosen`/`rejected` messages or text, or pre-tokenized `prompt_input_ids` /
 * `chosen_input_ids` / `rejected_input_ids`) through DpoTokenizer, anything else (messages,
 * prompt+completion, text, pre-tokenized `input_ids` with optional `labels`) through
 * SftTokenizer, with the same `max_length` / `max_prompt_length` rules. A preference row scores
 * `chosen_logps` / `rejected_logps`: the sum of log p over the completion tokens, each predicted
 * from everything before it. An SFT row scores `logps` over its loss-carrying tokens
 * (`num_tokens` of them). A row that cannot be scored is reported as `{index, skipped: reason}`
 * with the pipeline's reason names, and counted.
 *
 * Documents are packed end to end into batches of at most the model's maxTokens tokens, so
 * memory stays bounded whatever the dataset size.
 */
import { IGNORE_INDEX, type TokenBatch } from '../data/batch.js';
import { collateSft } from '../data/collate.js';
import type { DpoTokenizer } from '../data/dpo-tokenize.js';
import type { SourceRow } from '../data/readers.js';
import type { SftExample, SftTokenizer } from '../data/sft-examples.js';
import { type DatasetReport, RowProblem } from '../data/validation.js';
import { ZnError } from '../errors.js';
import type { MistralModel } from './model.js';

export type ScoredRow =
  | { index: number; chosen_logps: number; rejected_logps: number; ref_chosen_logps?: number; ref_rejected_logps?: number }
  | { index: number; logps: number; num_tokens: number; ref_logps?: number }
  | { index: number; skipped: string };

export interface ScoreOptions {
  model: MistralModel;
  refModel?: MistralModel | null;
  preferences: DpoTokenizer;
  sft: SftTokenizer;
  /** Counts rows read, used and skipped (by reason). */
  report: DatasetReport;
  /** Called after each batch with the rows and tokens done so far. */
  progress?: (done: { rows: number; tokens: number }) => void;
}

/** A document to score: ids and unshifted labels (-100: not scored), as the collator takes them. */
interface Document {
  ids: Int32Array;
  labels: Int32Array;
  logps: number;
  refLogps: number;
}

interface Entry {
  index: number;
  kind: 'preference' | 'sft' | 'skipped';
  reason?: string;
  documents: Document[];
}

function isPreferenceRow(row: Record<string, unknown>): boolean {
  return row.chosen !== undefined || row.chosen_input_ids !== undefined || row.chosen_ids !== undefined;
}

function promptCompletionDocument(promptIds: Int32Array, completionIds: Int32Array): Document {
  const ids = new Int32Array(promptIds.length + completionIds.length);
  ids.set(promptIds);
  ids.set(completionIds, promptIds.length);
  const labels = ids.slice();
  labels.fill(IGNORE_INDEX, 0, promptIds.length);
  return { ids, labels, logps: 0, refLogps: 0 };
}

/** The documents of one row, or a RowProblem saying why it cannot be scored. */
function documentsOf(source: SourceRow, options: ScoreOptions): Document[] {
  const where = { file: source.file, index: source.index };
  if (isPreferenceRow(source.row)) {
    const { pair } = options.preferences.tokenize(source.row, where);
    return [promptCompletionDocument(pair.promptIds, pair.chosenIds), promptCompletionDocument(pair.promptIds, pair.rejectedIds)];
  }
  const { example } = options.sft.tokenize(source.row, where);
  const labels = example.labels ?? example.inputIds;
  if (!labels.subarray(1).some((label) => label !== IGNORE_INDEX)) {
    throw new RowProblem('fully_masked', 'labels', 'no token after the first carries loss');
  }
  return [{ ids: example.inputIds, labels, logps: 0, refLogps: 0 }];
}

/** Token ids the tokenizer accepts but the model's vocabulary does not hold. */
function checkVocabulary(documents: Document[], vocabSize: number): void {
  for (const document of documents) {
    const bad = document.ids.findIndex((id) => id >= vocabSize);
    if (bad >= 0) {
      throw new RowProblem('bad_token_ids', 'input_ids', `token ${document.ids[bad]} is outside the model's vocabulary (vocab_size ${vocabSize})`);
    }
  }
}

/** Sums each document's per-token log-probs (targets of -100 contribute 0). */
function sumPerDocument(logp: Float32Array, batch: TokenBatch): number[] {
  const sums: number[] = [];
  for (let d = 0; d + 1 < batch.cuSeqlens.length; d++) {
    let sum = 0;
    for (let t = batch.cuSeqlens[d]; t < batch.cuSeqlens[d + 1]; t++) sum += logp[t];
    sums.push(sum);
  }
  return sums;
}

function scoredRow(entry: Entry, withRef: boolean): ScoredRow {
  if (entry.kind === 'skipped') return { index: entry.index, skipped: entry.reason! };
  if (entry.kind === 'preference') {
    const [chosen, rejected] = entry.documents;
    const row: ScoredRow = { index: entry.index, chosen_logps: chosen.logps, rejected_logps: rejected.logps };
    return withRef ? { ...row, ref_chosen_logps: chosen.refLogps, ref_rejected_logps: rejected.refLogps } : row;
  }
  const [document] = entry.documents;
  const numTokens = document.labels.subarray(1).filter((label) => label !== IGNORE_INDEX).length;
  const row: ScoredRow = { index: entry.index, logps: document.logps, num_tokens: numTokens };
  return withRef ? { ...row, ref_logps: document.refLogps } : row;
}

/** Scores documents in batches of at most maxTokens tokens, in order. */
async function scoreDocuments(documents: Document[], maxTokens: number, options: ScoreOptions): Promise<void> {
  let start = 0;
  while (start < documents.length) {
    let end = start;
    let tokens = 0;
    while (end < documents.length && tokens + documents[end].ids.length <= maxTokens) tokens += documents[end++].ids.length;
    const group = documents.slice(start, end);
    const examples: SftExample[] = group.map((d) => ({ inputIds: d.ids, labels: d.labels, source: { file: '', index: 0 } }));
    const batch = collateSft(examples);
    const logps = sumPerDocument(await options.model.logprobs(batch), batch);
    group.forEach((document, i) => (document.logps = logps[i]));
    if (options.refModel) {
      const refLogps = sumPerDocument(await options.refModel.logprobs(batch), batch);
      group.forEach((document, i) => (document.refLogps = refLogps[i]));
    }
    start = end;
  }
}

/** Scores rows as they stream in; yields one result per row, in input order. */
export async function* scoreRows(rows: AsyncIterable<SourceRow>, options: ScoreOptions): AsyncGenerator<ScoredRow> {
  const { model, report } = options;
  const maxTokens = Math.min(model.maxTokens, options.refModel?.maxTokens ?? Infinity);
  const withRef = Boolean(options.refModel);
  let pending: Entry[] = [];
  let pendingTokens = 0;
  let index = 0;
  let tokensDone = 0;

  const flush = async function* (): AsyncGenerator<ScoredRow> {
    await scoreDocuments(pending.flatMap((entry) => entry.documents), maxTokens, options);
    for (const entry of pending) yield scoredRow(entry, withRef);
    tokensDone += pendingTokens;
    options.progress?.({ rows: index, tokens: tokensDone });
    pending = [];
    pendingTokens = 0;
  };

  for await (const source of rows) {
    report.read++;
    const entry: Entry = { index: index++, kind: 'skipped', documents: [] };
    try {
      const documents = documentsOf(source, options);
      checkVocabulary(documents, model.config.vocabSize);
      const longest = Math.max(...documents.map((d) => d.ids.length));
      if (longest > maxTokens) {
        throw new ZnError(
          `${source.file}: row ${source.index}: a sequence of ${longest} tokens does not fit a scoring batch of ${maxTokens} tokens (raise --batch_tokens or set --max_length)`,
        );
      }
      entry.kind = isPreferenceRow(source.row) ? 'preference' : 'sft';
      entry.documents = documents;
      report.used++;
    } catch (error) {
      if (!(error instanceof RowProblem)) throw error;
      report.skip(error, { file: source.file, index: source.index });
      entry.reason = error.reason;
    }
    const tokens = entry.documents.reduce((sum, d) => sum + d.ids.length, 0);
    if (pendingTokens + tokens > maxTokens && pending.length > 0) yield* flush();
    pending.push(entry);
    pendingTokens += tokens;
  }
  if (pending.length > 0) yield* flush();
}
