/**
 * Preference rows -> prompt, chosen and rejected token ids, as TRL 1.13's DPOTrainer makes them
 * (trl/trainer/dpo_trainer.py `_prepare_dataset`, trl/data_utils.py `extract_prompt`):
 *
 * - The prompt of `chosen`/`rejected` message lists is their longest common prefix, compared
 *   message by message (TRL's loop, quirks included: when one list is a prefix of the other the
 *   last shared message goes to the completions). A `prompt` given as messages is used as is;
 *   a `prompt` string next to message lists (UltraFeedback's copy of the first user turn) is
 *   ignored and the prefix extracted, as TRL's maybe_extract_prompt does.
 * - The prompt is rendered with the generation prompt and tokenized without special tokens; each
 *   completion's ids are the ids of the whole rendered prompt+completion after the prompt's ids
 *   (tokenizing a completion alone would start it with a spurious `▁`). No BOS is added to
 *   templated text; EOS comes from the template (Zephyr: `</s>` then `\n`, both carry loss).
 * - Plain-text rows (`prompt`, `chosen`, `rejected` strings) are tokenized with special tokens
 *   (BOS) and get EOS appended when missing, as TRL does for non-conversational data.
 * - `max_prompt_length` (the Zephyr recipe sets it; TRL 1.13 dropped it) follows the older TRL
 *   rule: the prompt keeps its last `max_prompt_length` tokens, before `max_length` applies.
 * - `max_length` keeps the start of each prompt+completion (TRL's `keep_start`, its only
 *   non-deprecated mode): chosen and rejected are cut independently; a row whose prompt alone
 *   reaches `max_length` is skipped (TRL filters it out), counted as `prompt_too_long`.
 * - Pre-tokenized rows (`prompt_input_ids`/`chosen_input_ids`/`rejected_input_ids`, or TRL 1.13's
 *   `prompt_ids`/`chosen_ids`/`rejected_ids`) pass through the same length rules.
 */
import type { ChatMessage, ChatTemplate } from './chat-template.js';
import { isMessageList, joinPromptCompletion, parseMessages, parseString, parseTokenIds } from './messages.js';
import type { HfTokenizer } from './tokenizer.js';
import { RowProblem, type RowSource } from './validation.js';

export interface DpoOptions {
  /** Cut prompt+completion to this many tokens, keeping the start (TRL's default 1024); null: no limit. */
  maxLength: number | null;
  /** Keep only the last this-many prompt tokens (older TRL); null: no limit. */
  maxPromptLength: number | null;
}

export const DEFAULT_DPO_OPTIONS: DpoOptions = { maxLength: 1024, maxPromptLength: null };

export interface PreferencePair {
  promptIds: Int32Array;
  /** Completion ids after the prompt, already cut to max_length. */
  chosenIds: Int32Array;
  rejectedIds: Int32Array;
  source: RowSource;
}

export interface DpoTokenized {
  pair: PreferencePair;
  truncated: boolean;
  promptNotPrefix: boolean;
}

interface Untruncated {
  promptIds: number[] | Int32Array;
  chosenIds: number[] | Int32Array;
  rejectedIds: number[] | Int32Array;
  promptNotPrefix: boolean;
}

export class DpoTokenizer {
  constructor(
    private readonly tokenizer: HfTokenizer,
    private readonly template: ChatTemplate,
    readonly options: DpoOptions,
  ) {}

  /** One row -> one pair; throws RowProblem for an unusable row. */
  tokenize(row: Record<string, unknown>, source: RowSource): DpoTokenized {
    const ids = this.untruncated(row);
    let promptIds = Int32Array.from(ids.promptIds);
    if (this.options.maxPromptLength !== null && promptIds.length > this.options.maxPromptLength) {
      promptIds = promptIds.slice(promptIds.length - this.options.maxPromptLength);
    }
    const maxLength = this.options.maxLength;
    if (maxLength !== null && promptIds.length >= maxLength) {
      throw new RowProblem('prompt_too_long', 'prompt', `${promptIds.length} prompt tokens, max_length ${maxLength}`);
    }
    const room = maxLength === null ? Infinity : maxLength - promptIds.length;
    const truncated = promptIds.length < ids.promptIds.length || ids.chosenIds.length > room || ids.rejectedIds.length > room;
    const cut = (completion: number[] | Int32Array) => Int32Array.from(completion.slice(0, Math.min(completion.length, room)));
    return {
      pair: { promptIds, chosenIds: cut(ids.chosenIds), rejectedIds: cut(ids.rejectedIds), source },
      truncated,
      promptNotPrefix: ids.promptNotPrefix,
    };
  }

  private untruncated(row: Record<string, unknown>): Untruncated {
    const pretokenized = pretokenizedFields(row);
    if (pretokenized) return this.pretokenized(row, pretokenized);
    if (row.chosen == null) throw new RowProblem('missing_field', 'chosen', 'missing');
    if (row.rejected == null) throw new RowProblem('missing_field', 'rejected', 'missing');
    if (Array.isArray(row.chosen) || Array.isArray(row.rejected)) return this.conversational(row);
    return this.plainText(row);
  }

  private pretokenized(row: Record<string, unknown>, names: [string, string, string]): Untruncated {
    const vocab = this.tokenizer.vocabSize;
    const [promptIds, chosenIds, rejectedIds] = names.map((name) => parseTokenIds(row[name], name, vocab));
    if (chosenIds.length === 0) throw new RowProblem('empty_completion', names[1], 'no tokens');
    if (rejectedIds.length === 0) throw new RowProblem('empty_completion', names[2], 'no tokens');
    if (sameIds(chosenIds, rejectedIds)) throw new RowProblem('chosen_equals_rejected', names[1], 'same ids as rejected');
    return { promptIds, chosenIds, rejectedIds, promptNotPrefix: false };
  }

  private conversational(row: Record<string, unknown>): Untruncated {
    const { prompt, chosen, rejected } = isMessageList(row.prompt) ? explicitPrompt(row) : extractedPrompt(row);
    const promptIds = this.tokenizer.encode(this.template.render(prompt, { addGenerationPrompt: true }), { addSpecialTokens: false });
    const chosenAll = this.tokenizer.encode(this.template.render([...prompt, ...chosen]), { addSpecialTokens: false });
    const rejectedAll = this.tokenizer.encode(this.template.render([...prompt, ...rejected]), { addSpecialTokens: false });
    return completionsAfterPrompt(promptIds, chosenAll, rejectedAll);
  }

  private plainText(row: Record<string, unknown>): Untruncated {
    const chosenText = parseString(row.chosen, 'chosen');
    const rejectedText = parseString(row.rejected, 'rejected');
    if (chosenText === rejectedText) throw new RowProblem('chosen_equals_rejected', 'chosen', 'same text as rejected');
    let prompt: string;
    let chosen: string;
    let rejected: string;
    if (row.prompt !== undefined && row.prompt !== null) {
      [prompt, chosen, rejected] = [parseString(row.prompt, 'prompt'), chosenText, rejectedText];
    } else {
      const chosenChars = Array.from(chosenText);
      const rejectedChars = Array.from(rejectedText);
      const cut = trlPromptEnd(chosenChars, rejectedChars, (a, b) => a === b, (c) => c === ' ');
      [prompt, chosen, rejected] = [pySlice(chosenChars, 0, cut).join(''), pySlice(chosenChars, cut).join(''), pySlice(rejectedChars, cut).join('')];
    }
    if (chosen === '') throw new RowProblem('empty_completion', 'chosen', 'nothing after the prompt');
    if (rejected === '') throw new RowProblem('empty_completion', 'rejected', 'nothing after the prompt');
    const eos = this.tokenizer.eosToken;
    const withEos = (text: string) => (eos !== null && !text.endsWith(eos) ? text + eos : text);
    const promptIds = this.tokenizer.encode(prompt, { addSpecialTokens: true });
    const chosenAll = this.tokenizer.encode(prompt + withEos(chosen), { addSpecialTokens: true });
    const rejectedAll = this.tokenizer.encode(prompt + withEos(rejected), { addSpecialTokens: true });
    return completionsAfterPrompt(promptIds, chosenAll, rejectedAll);
  }
}

function pretokenizedFields(row: Record<string, unknown>): [string, string, string] | null {
  if (row.chosen_input_ids != null) return ['prompt_input_ids', 'chosen_input_ids', 'rejected_input_ids'];
  if (row.chosen_ids != null) return ['prompt_ids', 'chosen_ids', 'rejected_ids'];
  return null;
}

function completionsAfterPrompt(promptIds: number[], chosenAll: number[], rejectedAll: number[]): Untruncated {
  const isPrefixOf = (all: number[]) => promptIds.every((id, i) => all[i] === id);
  return {
    promptIds,
    chosenIds: chosenAll.slice(promptIds.length),
    rejectedIds: rejectedAll.slice(promptIds.length),
    promptNotPrefix: !isPrefixOf(chosenAll) || !isPrefixOf(rejectedAll),
  };
}

/** `prompt` as messages: chosen and rejected are the completions. */
function explicitPrompt(row: Record<string, unknown>): { prompt: ChatMessage[]; chosen: ChatMessage[]; rejected: ChatMessage[] } {
  const prompt = parseMessages(row.prompt, 'prompt', false);
  const chosen = parseCompletion(row.chosen, 'chosen');
  const rejected = parseCompletion(row.rejected, 'rejected');
  joinPromptCompletion(prompt, chosen, 'prompt', 'chosen');
  joinPromptCompletion(prompt, rejected, 'prompt', 'rejected');
  if (sameMessages(chosen, rejected)) throw new RowProblem('chosen_equals_rejected', 'chosen', 'same messages as rejected');
  return { prompt, chosen, rejected };
}

function parseCompletion(value: unknown, field: string): ChatMessage[] {
  if (Array.isArray(value) && value.length === 0) throw new RowProblem('empty_completion', field, 'no messages');
  return parseMessages(value, field, false);
}

/** The longest common message prefix of chosen and rejected is the prompt (TRL's extract_prompt). */
function extractedPrompt(row: Record<string, unknown>): { prompt: ChatMessage[]; chosen: ChatMessage[]; rejected: ChatMessage[] } {
  const chosenAll = parseMessages(row.chosen, 'chosen');
  const rejectedAll = parseMessages(row.rejected, 'rejected');
  if (sameMessages(chosenAll, rejectedAll)) throw new RowProblem('chosen_equals_rejected', 'chosen', 'same messages as rejected');
  const cut = trlPromptEnd(chosenAll, rejectedAll, sameMessage, () => false);
  const prompt = pySlice(chosenAll, 0, cut);
  const chosen = pySlice(chosenAll, cut);
  const rejected = pySlice(rejectedAll, cut);
  if (prompt.length === 0) throw new RowProblem('no_common_prompt', 'chosen[0]', 'chosen and rejected differ from the first message');
  if (chosen.length === 0) throw new RowProblem('empty_completion', 'chosen', 'no messages after the prompt');
  if (rejected.length === 0) throw new RowProblem('empty_completion', 'rejected', 'no messages after the prompt');
  return { prompt, chosen, rejected };
}

/**
 * TRL's extract_prompt loop, exactly: the first index where the lists differ (stepping back one
 * when the element before it is a space, for strings), or, when they never differ, the last index
 * compared (min length - 1). May return -1, a Python slice index.
 */
function trlPromptEnd<T>(chosen: T[], rejected: T[], equal: (a: T, b: T) => boolean, isSpace: (item: T) => boolean): number {
  const shared = Math.min(chosen.length, rejected.length);
  for (let idx = 0; idx < shared; idx++) {
    if (!equal(chosen[idx], rejected[idx])) {
      const before = chosen.at(idx - 1);
      return before !== undefined && isSpace(before) ? idx - 1 : idx;
    }
  }
  return shared - 1;
}

/** Python's `list[start:end]`, negative indices counting from the end. */
function pySlice<T>(items: T[], start: number, end?: number): T[] {
  const at = (i: number) => (i < 0 ? Math.max(0, items.length + i) : Math.min(i, items.length));
  return items.slice(at(start), end === undefined ? items.length : at(end));
}

function sameMessage(a: ChatMessage, b: ChatMessage): boolean {
  const keys = Object.keys(a);
  return keys.length === Object.keys(b).length && keys.every((key) => JSON.stringify(a[key]) === JSON.stringify(b[key]));
}

function sameMessages(a: ChatMessage[], b: ChatMessage[]): boolean {
  return a.length === b.length && a.every((message, i) => sameMessage(message, b[i]));
}

function sameIds(a: Int32Array, b: Int32Array): boolean {
  return a.length === b.length && a.every((id, i) => id === b[i]);
}
