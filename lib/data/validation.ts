/**
 * Nothing lost silently: a row that cannot be used is counted under a named reason with its file
 * and row number (0-based, as `datasets` numbers rows), and loading ends with a summary (rows
 * read / used / skipped by reason). In strict mode the first bad row stops loading with
 * `file: row N: field 'x': what is wrong (reason)`.
 */
import { ZnError } from '../errors.js';

export const SKIP_REASONS = {
  missing_field: 'a required field is missing',
  no_prompt: "no prompt: none of 'prompt', 'instruction' or 'messages'",
  wrong_type: 'a field has the wrong type',
  unknown_role: "a message role is not 'system', 'user' or 'assistant'",
  role_order: 'messages are out of order (system first, then user and assistant alternating, user first)',
  empty_content: 'a user or assistant message is empty',
  empty_conversation: 'the message list is empty',
  no_assistant_message: 'assistant-only loss, but the conversation has no assistant message',
  chosen_equals_rejected: 'chosen and rejected are identical',
  no_common_prompt: 'chosen and rejected share no prompt (they differ from the first message)',
  empty_completion: 'chosen or rejected has nothing after the prompt',
  prompt_too_long: 'the prompt alone reaches max_length (no completion token would be left)',
  fully_masked: 'after truncation to max_length no token carries loss',
  bad_token_ids: 'pre-tokenized ids are not integers inside the vocabulary',
} as const;

export type SkipReason = keyof typeof SKIP_REASONS;

/** Where a row came from: the reader's file and 0-based row index. */
export interface RowSource {
  file: string;
  index: number;
}

/** Why a row is unusable: thrown by row parsers, caught and counted by the loader. */
export class RowProblem extends Error {
  override name = 'RowProblem';
  constructor(
    readonly reason: SkipReason,
    readonly field: string,
    readonly detail: string,
  ) {
    super(`field '${field}': ${detail}`);
  }
}

export interface SkippedRow extends RowSource {
  field: string;
  detail: string;
}

interface ReasonTally {
  count: number;
  /** The first few rows skipped for this reason, to point a user at them. */
  examples: SkippedRow[];
}

const EXAMPLES_PER_REASON = 5;

export class DatasetReport {
  read = 0;
  used = 0;
  /** Rows kept but cut to max_length. */
  truncated = 0;
  /** Rows whose prompt tokens are not a prefix of prompt+completion tokens (TRL warns; kept). */
  promptNotPrefix = 0;
  readonly skipped = new Map<SkipReason, ReasonTally>();

  constructor(
    readonly name: string,
    readonly strict = false,
  ) {}

  get skippedTotal(): number {
    let total = 0;
    for (const tally of this.skipped.values()) total += tally.count;
    return total;
  }

  /** Counts an unusable row, or throws at once in strict mode. */
  skip(problem: RowProblem, source: RowSource): void {
    if (this.strict) {
      throw new ZnError(`${source.file}: row ${source.index}: ${problem.message} (${problem.reason}; --strict stops at the first bad row)`);
    }
    const tally = this.skipped.get(problem.reason) ?? { count: 0, examples: [] };
    tally.count++;
    if (tally.examples.length < EXAMPLES_PER_REASON) tally.examples.push({ ...source, field: problem.field, detail: problem.detail });
    this.skipped.set(problem.reason, tally);
  }

  /** The end-of-loading summary, one line per fact. */
  summary(): string[] {
    const lines = [`${this.name}: ${this.read} rows read, ${this.used} used, ${this.skippedTotal} skipped`];
    if (this.truncated > 0) lines.push(`  ${this.truncated} rows truncated to max_length`);
    if (this.promptNotPrefix > 0) lines.push(`  ${this.promptNotPrefix} rows whose prompt tokens are not a prefix of prompt+completion (kept, as TRL)`);
    for (const [reason, tally] of [...this.skipped].sort((a, b) => b[1].count - a[1].count)) {
      lines.push(`  skipped ${tally.count} x ${reason}: ${SKIP_REASONS[reason]}`);
      for (const example of tally.examples) lines.push(`    ${example.file}: row ${example.index}: field '${example.field}': ${example.detail}`);
    }
    return lines;
  }

  toJSON(): Record<string, unknown> {
    return {
      name: this.name,
      read: this.read,
      used: this.used,
      truncated: this.truncated,
      promptNotPrefix: this.promptNotPrefix,
      skipped: Object.fromEntries([...this.skipped].map(([reason, tally]) => [reason, tally])),
    };
  }
}
