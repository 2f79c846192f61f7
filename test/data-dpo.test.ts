/**
 * DPO tokenization on the real Mistral vocabulary, no Python needed: the prompt as the longest
 * common message prefix (TRL's loop and its quirks), completions cut from the tokenized
 * prompt+completion, max_length / max_prompt_length rules, text and pre-tokenized rows, and the
 * named reason of every unusable row. (Ids against TRL: test/conformance/data-trl.test.ts.)
 */
import assert from 'node:assert/strict';
import { before, describe, it } from 'node:test';

import { ChatTemplate, type ChatMessage } from '../lib/data/chat-template.js';
import { DpoTokenizer, type DpoOptions } from '../lib/data/dpo-tokenize.js';
import { loadLlama2Tokenizer } from '../lib/data/llama2-tokenizer.js';
import type { HfTokenizer } from '../lib/data/tokenizer.js';
import { RowProblem, type SkipReason } from '../lib/data/validation.js';

const source = { file: 'prefs.parquet', index: 3 };
const user = (content: string): ChatMessage => ({ role: 'user', content });
const assistant = (content: string): ChatMessage => ({ role: 'assistant', content });
const system = (content: string): ChatMessage => ({ role: 'system', content });

let tokenizer: HfTokenizer;
let zephyr: ChatTemplate;

before(() => {
  tokenizer = loadLlama2Tokenizer();
  zephyr = new ChatTemplate(null, tokenizer.specialTokensMap);
});

function dpo(options: Partial<DpoOptions> = {}): DpoTokenizer {
  return new DpoTokenizer(tokenizer, zephyr, { maxLength: null, maxPromptLength: null, ...options });
}

const ids = (text: string) => tokenizer.encode(text, { addSpecialTokens: false });

function problemOf(fn: () => unknown): RowProblem {
  try {
    fn();
  } catch (error) {
    if (error instanceof RowProblem) return error;
    throw error;
  }
  assert.fail('expected a RowProblem');
}

describe('DPO tokenization', () => {
  it('prompt = common message prefix with the generation prompt; completions cut after the prompt ids', () => {
    const row = {
      prompt: 'What is 2+2?', // UltraFeedback's copy of the first user turn: ignored for message lists
      chosen: [system('Be exact.'), user('What is 2+2?'), assistant('4')],
      rejected: [system('Be exact.'), user('What is 2+2?'), assistant('5, roughly')],
    };
    const { pair, truncated } = dpo().tokenize(row, source);
    const promptText = '<|system|>\nBe exact.</s>\n<|user|>\nWhat is 2+2?</s>\n<|assistant|>\n';
    assert.deepEqual(Array.from(pair.promptIds), ids(promptText));
    assert.deepEqual(Array.from(pair.chosenIds), ids(`${promptText}4</s>\n`).slice(pair.promptIds.length));
    assert.deepEqual(Array.from(pair.rejectedIds), ids(`${promptText}5, roughly</s>\n`).slice(pair.promptIds.length));
    assert.equal(truncated, false);
    assert.notEqual(pair.promptIds[0], tokenizer.bosTokenId);
    // EOS from the template (then `▁` and `\n`), all in the completion.
    assert.equal(tokenizer.decode(Array.from(pair.chosenIds)), '4</s> \n');
  });

  it('the completion is not tokenized alone (that would start it with a spurious ▁)', () => {
    const { pair } = dpo().tokenize({ chosen: [user('Hi'), assistant('Hello')], rejected: [user('Hi'), assistant('Bye')] }, source);
    assert.notDeepEqual(Array.from(pair.chosenIds).slice(0, 1), ids('Hello').slice(0, 1));
    assert.equal(tokenizer.idToToken(pair.chosenIds[0]), 'Hello');
  });

  it('multi-turn: the prompt runs up to the first differing message', () => {
    const shared = [user('a'), assistant('b'), user('c')];
    const { pair } = dpo().tokenize({ chosen: [...shared, assistant('good')], rejected: [...shared, assistant('bad')] }, source);
    assert.deepEqual(Array.from(pair.promptIds), ids(zephyr.render(shared, { addGenerationPrompt: true })));
  });

  it("TRL's loop when one list extends the other: the last shared message moves to the completions", () => {
    const row = { chosen: [user('q'), assistant('a')], rejected: [user('q'), assistant('a'), user('more'), assistant('x')] };
    const { pair } = dpo().tokenize(row, source);
    assert.deepEqual(Array.from(pair.promptIds), ids('<|user|>\nq</s>\n<|assistant|>\n'));
  });

  it('an explicit prompt of messages: chosen and rejected are the completions', () => {
    const row = { prompt: [user('Hi')], chosen: [assistant('Hello')], rejected: [assistant('Go away')] };
    const extracted = dpo().tokenize({ chosen: [user('Hi'), assistant('Hello')], rejected: [user('Hi'), assistant('Go away')] }, source).pair;
    const explicit = dpo().tokenize(row, source).pair;
    assert.deepEqual(explicit, extracted);
  });

  it('text rows: BOS from the tokenizer, EOS appended, completion ids after the prompt ids', () => {
    const { pair } = dpo().tokenize({ prompt: 'Question:', chosen: ' yes', rejected: ' no' }, source);
    const prompt = [tokenizer.bosTokenId!, ...ids('Question:')];
    assert.deepEqual(Array.from(pair.promptIds), prompt);
    assert.deepEqual(Array.from(pair.chosenIds), [tokenizer.bosTokenId!, ...ids('Question: yes</s>')].slice(prompt.length));
  });

  it("text rows without a prompt: TRL's character prefix, backing off a trailing space", () => {
    const { pair } = dpo().tokenize({ chosen: 'The sky is blue', rejected: 'The sky is green' }, source);
    assert.deepEqual(Array.from(pair.promptIds), [tokenizer.bosTokenId!, ...ids('The sky is')]);
  });

  it('max_length keeps the start of each sequence; chosen and rejected are cut independently', () => {
    const row = { chosen: [user('Hi'), assistant('one two three four five six seven')], rejected: [user('Hi'), assistant('no')] };
    const full = dpo().tokenize(row, source).pair;
    const maxLength = full.promptIds.length + 4;
    const { pair, truncated } = dpo({ maxLength }).tokenize(row, source);
    assert.equal(truncated, true);
    assert.deepEqual(Array.from(pair.chosenIds), Array.from(full.chosenIds.subarray(0, 4)));
    assert.deepEqual(Array.from(pair.rejectedIds), Array.from(full.rejectedIds.subarray(0, 4)));
    assert.ok(full.chosenIds.length > 4, 'chosen must be long enough to be cut');
  });

  it('a prompt that alone reaches max_length is skipped as prompt_too_long', () => {
    const row = { chosen: [user('Hi'), assistant('a')], rejected: [user('Hi'), assistant('b')] };
    const promptLength = dpo().tokenize(row, source).pair.promptIds.length;
    assert.equal(problemOf(() => dpo({ maxLength: promptLength }).tokenize(row, source)).reason, 'prompt_too_long');
    assert.equal(dpo({ maxLength: promptLength + 1 }).tokenize(row, source).pair.chosenIds.length, 1);
  });

  it('max_prompt_length keeps the last prompt tokens, before max_length applies', () => {
    const row = { chosen: [user('word '.repeat(30)), assistant('yes')], rejected: [user('word '.repeat(30)), assistant('no')] };
    const full = dpo().tokenize(row, source).pair;
    const { pair } = dpo({ maxPromptLength: 8, maxLength: 10 }).tokenize(row, source);
    assert.deepEqual(Array.from(pair.promptIds), Array.from(full.promptIds.subarray(full.promptIds.length - 8)));
    assert.deepEqual(Array.from(pair.chosenIds), Array.from(full.chosenIds.subarray(0, 2)));
  });

  it('pre-tokenized rows pass through the same rules (both field namings)', () => {
    const row = { prompt_input_ids: [1, 10, 11, 12], chosen_input_ids: [20, 21, 22], rejected_input_ids: [30] };
    const { pair } = dpo({ maxLength: 6, maxPromptLength: 3 }).tokenize(row, source);
    assert.deepEqual([Array.from(pair.promptIds), Array.from(pair.chosenIds), Array.from(pair.rejectedIds)], [[10, 11, 12], [20, 21, 22], [30]]);
    const trl = dpo().tokenize({ prompt_ids: [5], chosen_ids: [6], rejected_ids: [7] }, source).pair;
    assert.deepEqual([Array.from(trl.promptIds), Array.from(trl.chosenIds), Array.from(trl.rejectedIds)], [[5], [6], [7]]);
  });

  it('bad rows: each gets its named reason and the field', () => {
    const ok = [user('q'), assistant('a')];
    const cases: [Record<string, unknown>, SkipReason, string][] = [
      [{ rejected: ok }, 'missing_field', 'chosen'],
      [{ chosen: ok }, 'missing_field', 'rejected'],
      [{ chosen: ok, rejected: ok }, 'chosen_equals_rejected', 'chosen'],
      [{ chosen: [user('q1'), assistant('a')], rejected: [user('q2'), assistant('b')] }, 'no_common_prompt', 'chosen[0]'],
      [{ chosen: ok, rejected: [user('q'), { role: 'robot', content: 'b' }] }, 'unknown_role', 'rejected[1].role'],
      [{ chosen: ok, rejected: [user('q'), assistant('')] }, 'empty_content', 'rejected[1].content'],
      [{ chosen: ok, rejected: [user('q'), user('again')] }, 'role_order', 'rejected[1].role'],
      [{ prompt: [user('q')], chosen: [], rejected: [assistant('b')] }, 'empty_completion', 'chosen'],
      [{ prompt: [user('q')], chosen: [user('x')], rejected: [assistant('b')] }, 'role_order', 'chosen[0].role'],
      [{ chosen: 'same', rejected: 'same' }, 'chosen_equals_rejected', 'chosen'],
      [{ chosen: 5, rejected: 'x' }, 'wrong_type', 'chosen'],
      [{ prompt_input_ids: [1], chosen_input_ids: [2, -1], rejected_input_ids: [3] }, 'bad_token_ids', 'chosen_input_ids[1]'],
      [{ prompt_input_ids: [1], chosen_input_ids: [2], rejected_input_ids: [2] }, 'chosen_equals_rejected', 'chosen_input_ids'],
    ];
    for (const [row, reason, field] of cases) {
      const problem = problemOf(() => dpo().tokenize(row, source));
      assert.equal(problem.reason, reason, JSON.stringify(row));
      assert.equal(problem.field, field, JSON.stringify(row));
    }
  });
});
