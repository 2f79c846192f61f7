/**
 * SFT rows -> token ids and labels, as TRL 1.13's SFTTrainer prepares them
 * (trl/trainer/sft_trainer.py `_prepare_dataset`):
 *
 * - `messages` (UltraChat): the conversation rendered with the chat template and tokenized with
 *   no special tokens added (no BOS unless the template writes one); loss on every token, template
 *   markers included, unless `assistant_only_loss`, where only the assistant's tokens carry loss.
 *   Which tokens those are is derived from the rendered messages (ChatTemplate.assistantSpans),
 *   mapped to tokens with transformers' char_to_token rule, so no `{% generation %}` markers are
 *   needed; on a template that has them the mask equals TRL's.
 * - `prompt` + `completion` (messages or strings): the prompt rendered with the generation prompt;
 *   loss on the completion only unless `completion_only_loss: false` (TRL's default for this shape).
 * - `text` (the `dataset_text_field`): tokenized with special tokens (BOS), EOS appended when missing.
 * - `input_ids` (+ `labels`): pre-tokenized, passed through.
 *
 * `labels` are unshifted, -100 where no loss, like TRL's. Without packing, sequences are cut to
 * `max_length` (keep the start) and rows left with no loss-carrying token are dropped, as TRL
 * drops them; with packing, cutting is the packer's job (lib/data/packing.ts).
 *
 * A row's shape is read per row in this order: `input_ids`, `messages`, `prompt`+`completion`,
 * text. UltraChat rows also carry a `prompt` string next to `messages`: `messages` wins (the
 * alignment-handbook recipes select the `messages` column for the same effect).
 */
import { IGNORE_INDEX } from './batch.js';
import type { ChatMessage, ChatTemplate } from './chat-template.js';
import { isMessageList, joinPromptCompletion, parseLabels, parseMessages, parseString, parseTokenIds } from './messages.js';
import { charToToken } from './token-offsets.js';
import type { HfTokenizer } from './tokenizer.js';
import { RowProblem, type RowSource } from './validation.js';

export interface SftOptions {
  /** Cut sequences to this many tokens (TRL's default 1024); null: no limit. */
  maxLength: number | null;
  /** Packing cuts documents itself, so examples are not cut here. */
  packing: boolean;
  assistantOnlyLoss: boolean;
  /** Loss on the completion of prompt+completion rows only; null: true for that shape (TRL). */
  completionOnlyLoss: boolean | null;
  /** The text column of plain-text rows (TRL's `dataset_text_field`). */
  datasetTextField: string;
}

export const DEFAULT_SFT_OPTIONS: SftOptions = {
  maxLength: 1024,
  packing: false,
  assistantOnlyLoss: false,
  completionOnlyLoss: null,
  datasetTextField: 'text',
};

export interface SftExample {
  inputIds: Int32Array;
  /** Unshifted labels (-100: no loss); null when every token carries loss (labels = inputIds). */
  labels: Int32Array | null;
  source: RowSource;
}

export interface SftTokenized {
  example: SftExample;
  truncated: boolean;
  promptNotPrefix: boolean;
}

export class SftTokenizer {
  constructor(
    private readonly tokenizer: HfTokenizer,
    private readonly template: ChatTemplate,
    readonly options: SftOptions,
  ) {}

  /** One row -> one example; throws RowProblem for an unusable row. */
  tokenize(row: Record<string, unknown>, source: RowSource): SftTokenized {
    const { inputIds, labels, promptNotPrefix } = this.idsAndLabels(row);
    let ids = inputIds;
    let kept = labels;
    let truncated = false;
    if (this.options.maxLength !== null && !this.options.packing) {
      truncated = ids.length > this.options.maxLength;
      ids = ids.subarray(0, this.options.maxLength);
      kept = kept?.subarray(0, this.options.maxLength) ?? null;
      if (kept !== null && !kept.some((label) => label !== IGNORE_INDEX)) {
        throw new RowProblem('fully_masked', 'labels', `no loss-carrying token in the first ${this.options.maxLength} tokens`);
      }
      if (ids.length === 0) throw new RowProblem('fully_masked', 'input_ids', 'no tokens');
    }
    return { example: { inputIds: ids.slice(), labels: kept?.slice() ?? null, source }, truncated, promptNotPrefix };
  }

  private idsAndLabels(row: Record<string, unknown>): { inputIds: Int32Array; labels: Int32Array | null; promptNotPrefix: boolean } {
    // Parquet writes an absent field as null: both mean "not this shape".
    if (row.input_ids != null) return { ...this.pretokenized(row), promptNotPrefix: false };
    if (row.messages != null) return { ...this.conversation(parseMessages(row.messages, 'messages')), promptNotPrefix: false };
    if (row.prompt != null && row.completion != null) return this.promptCompletion(row);
    const textField = this.options.datasetTextField;
    if (row[textField] != null) return { ...this.text(parseString(row[textField], textField)), promptNotPrefix: false };
    throw new RowProblem('missing_field', 'messages', `missing (expected 'messages', 'prompt'+'completion', '${textField}' or 'input_ids')`);
  }

  private pretokenized(row: Record<string, unknown>): { inputIds: Int32Array; labels: Int32Array | null } {
    const inputIds = parseTokenIds(row.input_ids, 'input_ids', this.tokenizer.vocabSize);
    const labels = row.labels === undefined || row.labels === null ? null : parseLabels(row.labels, 'labels', inputIds.length, this.tokenizer.vocabSize);
    return { inputIds, labels };
  }

  private conversation(messages: ChatMessage[]): { inputIds: Int32Array; labels: Int32Array | null } {
    const text = this.template.render(messages);
    if (!this.options.assistantOnlyLoss) return { inputIds: Int32Array.from(this.tokenizer.encode(text, { addSpecialTokens: false })), labels: null };
    if (!messages.some((message) => message.role === 'assistant')) {
      throw new RowProblem('no_assistant_message', 'messages', 'assistant_only_loss needs at least one assistant message');
    }
    const { ids, mask } = this.assistantMask(text, messages);
    return { inputIds: ids, labels: maskedLabels(ids, [mask]) };
  }

  /** transformers' return_assistant_tokens_mask over the spans the assistant wrote. */
  private assistantMask(text: string, messages: ChatMessage[]): { ids: Int32Array; mask: Uint8Array } {
    const spans = this.template.assistantSpans(messages);
    const { ids, offsets } = this.tokenizer.encodeWithOffsets(text);
    const mask = new Uint8Array(ids.length);
    for (const [start, end] of spans) {
      const first = charToToken(offsets, start);
      const last = charToToken(offsets, end - 1);
      if (first === null) break;
      // transformers writes `range(start_token, end_token + 1 if end_token else len(ids))`.
      mask.fill(1, first, last ? last + 1 : ids.length);
    }
    return { ids: Int32Array.from(ids), mask };
  }

  private promptCompletion(row: Record<string, unknown>): { inputIds: Int32Array; labels: Int32Array | null; promptNotPrefix: boolean } {
    let promptIds: number[];
    let inputIds: Int32Array;
    const masks: Uint8Array[] = [];
    if (isMessageList(row.prompt) || isMessageList(row.completion)) {
      const prompt = parseMessages(row.prompt, 'prompt', false);
      const messages = joinPromptCompletion(prompt, parseMessages(row.completion, 'completion', false), 'prompt', 'completion');
      promptIds = this.tokenizer.encode(this.template.render(prompt, { addGenerationPrompt: true }), { addSpecialTokens: false });
      const text = this.template.render(messages);
      if (this.options.assistantOnlyLoss) {
        const { ids, mask } = this.assistantMask(text, messages);
        inputIds = ids;
        masks.push(mask);
      } else {
        inputIds = Int32Array.from(this.tokenizer.encode(text, { addSpecialTokens: false }));
      }
    } else {
      const prompt = parseString(row.prompt, 'prompt');
      const completion = this.withEos(parseString(row.completion, 'completion'));
      promptIds = this.tokenizer.encode(prompt, { addSpecialTokens: true });
      inputIds = Int32Array.from(this.tokenizer.encode(prompt + completion, { addSpecialTokens: true }));
    }
    const promptNotPrefix = !promptIds.every((id, i) => inputIds[i] === id);
    if (this.options.completionOnlyLoss ?? true) {
      const completionMask = new Uint8Array(inputIds.length);
      completionMask.fill(1, Math.min(promptIds.length, inputIds.length));
      masks.push(completionMask);
    }
    return { inputIds, labels: masks.length > 0 ? maskedLabels(inputIds, masks) : null, promptNotPrefix };
  }

  private text(text: string): { inputIds: Int32Array; labels: null } {
    return { inputIds: Int32Array.from(this.tokenizer.encode(this.withEos(text), { addSpecialTokens: true })), labels: null };
  }

  /** TRL appends the EOS token to non-conversational text that does not end with it. */
  private withEos(text: string): string {
    const eos = this.tokenizer.eosToken;
    return eos !== null && !text.endsWith(eos) ? text + eos : text;
  }
}

/** TRL's build_labels: a token keeps its id when every mask is 1 there, else -100. */
function maskedLabels(ids: Int32Array, masks: Uint8Array[]): Int32Array {
  const labels = new Int32Array(ids.length);
  for (let t = 0; t < ids.length; t++) labels[t] = masks.every((mask) => mask[t] === 1) ? ids[t] : IGNORE_INDEX;
  return labels;
}

/** The labels of an example, materialised (labels = input ids when every token carries loss). */
export function labelsOf(example: SftExample): Int32Array {
  return example.labels ?? example.inputIds;
}
