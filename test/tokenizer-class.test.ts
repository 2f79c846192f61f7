/**
 * Which class and pipeline a tokenizer folder gets, without Python: the cases are what
 * transformers 5.18's AutoTokenizer picked for these folders (test/conformance/data-tokenizer.test.ts
 * checks the same against the installed transformers, with ids).
 */
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';

import { writeLlama2TokenizerFolder } from '../lib/data/llama2-tokenizer.js';
import { HfTokenizer } from '../lib/data/tokenizer.js';
import { chooseTokenizerClass, type ModelConfigForTokenizer, type TokenizerConfigForClass } from '../lib/data/tokenizer-class.js';

const llama = { tokenizer_class: 'LlamaTokenizer', legacy: true };

/** [what the folder is, tokenizer_config.json, config.json (null: none), the class transformers 5.18 picked]. */
const CASES: [string, TokenizerConfigForClass, ModelConfigForTokenizer | null, string][] = [
  ['tokenizer files alone', llama, null, 'LlamaTokenizer'],
  ['Mistral model folder', llama, { model_type: 'mistral' }, 'TokenizersBackend'],
  ['Mixtral model folder', llama, { model_type: 'mixtral' }, 'TokenizersBackend'],
  ['Mistral model folder, LlamaTokenizerFast', { tokenizer_class: 'LlamaTokenizerFast' }, { model_type: 'mistral' }, 'TokenizersBackend'],
  ['Mistral model folder, class only in config.json', {}, { model_type: 'mistral', tokenizer_class: 'LlamaTokenizer' }, 'TokenizersBackend'],
  ['Mistral model folder, no class', {}, { model_type: 'mistral' }, 'TokenizersBackend'],
  ['Mistral model folder, unknown class', { tokenizer_class: 'NoSuchTokenizer' }, { model_type: 'mistral' }, 'TokenizersBackend'],
  ['Mistral model folder with auto_map', { ...llama, auto_map: { AutoTokenizer: [null, 'LlamaTokenizerFast'] } }, { model_type: 'mistral' }, 'LlamaTokenizer'],
  ['Mistral model folder, auto_map without AutoTokenizer', { ...llama, auto_map: { AutoModel: 'model.Model' } }, { model_type: 'mistral' }, 'TokenizersBackend'],
  ['Llama model folder', llama, { model_type: 'llama' }, 'LlamaTokenizer'],
  ['Llama model folder, no class', {}, { model_type: 'llama' }, 'TokenizersBackend'],
  ['Llama model folder, PreTrainedTokenizerFast in config.json', {}, { model_type: 'llama', tokenizer_class: 'PreTrainedTokenizerFast' }, 'TokenizersBackend'],
  ['Gemma model folder (its own class does not override a named one)', llama, { model_type: 'gemma' }, 'LlamaTokenizer'],
  ['Qwen2 model folder (transformers distrusts the named class)', llama, { model_type: 'qwen2' }, 'Qwen2Tokenizer'],
  ['config.json without model_type', llama, { hidden_size: 8 } as ModelConfigForTokenizer, 'LlamaTokenizer'],
  ['config.json with a model_type transformers does not know', llama, { model_type: 'nonesuch' }, 'LlamaTokenizer'],
  ['tokenizer files alone, no class', {}, null, 'TokenizersBackend'],
  ['tokenizer files alone, PreTrainedTokenizerFast', { tokenizer_class: 'PreTrainedTokenizerFast' }, null, 'TokenizersBackend'],
];

describe('the tokenizer class transformers 5 picks', () => {
  for (const [what, tokenizerConfig, modelConfig, expected] of CASES) {
    it(`${what}: ${expected}`, () => {
      const choice = chooseTokenizerClass(tokenizerConfig, modelConfig);
      assert.equal(choice.tokenizerClass, expected);
      assert.equal(choice.pipeline, expected === 'LlamaTokenizer' ? 'llama-rebuild' : 'tokenizer.json');
    });
  }

  it('says why, naming the file that decided', () => {
    assert.match(chooseTokenizerClass(llama, { model_type: 'mistral' }).reason, /config\.json's model_type 'mistral' registers TokenizersBackend, which transformers uses over tokenizer_config\.json's tokenizer_class LlamaTokenizer/);
    assert.match(chooseTokenizerClass(llama, null).reason, /tokenizer_config\.json's tokenizer_class is LlamaTokenizer \(no config\.json\)/);
    assert.match(chooseTokenizerClass({}, null).reason, /no tokenizer_class \(no config\.json\)/);
  });
});

describe('HfTokenizer.fromFolder reads config.json', () => {
  let work = '';
  before(() => {
    work = mkdtempSync(join(tmpdir(), 'zn-tokenizer-class-'));
    writeLlama2TokenizerFolder(join(work, 'tokenizer'));
    writeLlama2TokenizerFolder(join(work, 'model'));
    writeFileSync(join(work, 'model', 'config.json'), JSON.stringify({ model_type: 'mistral' }));
  });
  after(() => rmSync(work, { recursive: true, force: true }));

  it('the Mistral tokenizer: leading whitespace keeps its own ▁ in a model folder, as in transformers (issue 24)', () => {
    const model = HfTokenizer.fromFolder(join(work, 'model'));
    const files = HfTokenizer.fromFolder(join(work, 'tokenizer'));
    assert.equal(model.tokenizerClass.tokenizerClass, 'TokenizersBackend');
    assert.equal(files.tokenizerClass.tokenizerClass, 'LlamaTokenizer');
    assert.equal(model.prependScheme, null);
    assert.equal(files.prependScheme, 'always');
    assert.deepEqual(model.encode(' Hello world', { addSpecialTokens: false }), [28705, 22557, 1526]);
    assert.deepEqual(files.encode(' Hello world', { addSpecialTokens: false }), [22557, 1526]);
    // Text that starts with a word is the same either way; BOS comes from the post-processor in both.
    assert.deepEqual(model.encode('Hello world', { addSpecialTokens: true }), files.encode('Hello world', { addSpecialTokens: true }));
    assert.deepEqual(model.encode('Hello world', { addSpecialTokens: true }), [1, 22557, 1526]);
  });
});
