import assert from 'node:assert/strict';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, it } from 'node:test';

import { ZnError } from '../lib/errors.js';
import {
  mistralConfigJson,
  parseMistralConfig,
  readMistralConfig,
  stringifyConfigJson,
  type MistralConfig,
} from '../lib/model/config.js';
import { mistralParameterShapes } from '../lib/model/parameters.js';
import { packageRoot } from '../lib/native.js';

const fixture = join(packageRoot(), 'test', 'fixtures', 'mistral-7b-v0.1.config.json');

/** A small transformers-5 style config (what save_pretrained writes). */
function v5Config(overrides: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    architectures: ['MistralForCausalLM'],
    attention_dropout: 0.0,
    bos_token_id: 1,
    dtype: 'float32',
    eos_token_id: 2,
    head_dim: 16,
    hidden_act: 'silu',
    hidden_size: 64,
    initializer_range: 0.02,
    intermediate_size: 96,
    max_position_embeddings: 131072,
    model_type: 'mistral',
    num_attention_heads: 4,
    num_hidden_layers: 2,
    num_key_value_heads: 2,
    pad_token_id: null,
    rms_norm_eps: 1e-6,
    rope_parameters: { rope_theta: 1000000.0, rope_type: 'default' },
    sliding_window: null,
    tie_word_embeddings: false,
    transformers_version: '5.18.0',
    use_cache: true,
    vocab_size: 100,
    ...overrides,
  };
}

function errorOf(raw: unknown, file = '/models/x/config.json'): string {
  try {
    parseMistralConfig(raw, file);
  } catch (error) {
    assert.ok(error instanceof ZnError, `expected a ZnError, got ${String(error)}`);
    return error.message;
  }
  assert.fail('expected the config to be rejected');
}

describe('model config.json', () => {
  it("loads Mistral-7B-v0.1's real config (transformers 4 generation)", () => {
    const config = readMistralConfig(fixture);
    const expected: MistralConfig = {
      vocabSize: 32000,
      hiddenSize: 4096,
      intermediateSize: 14336,
      numHiddenLayers: 32,
      numAttentionHeads: 32,
      numKeyValueHeads: 8,
      headDim: 128,
      maxPositionEmbeddings: 32768,
      rmsNormEps: 1e-5,
      ropeTheta: 10000,
      slidingWindow: 4096,
      tieWordEmbeddings: false,
      bosTokenId: 1,
      eosTokenId: 2,
      padTokenId: null,
      dtype: 'bfloat16',
      initializerRange: 0.02,
      useCache: true,
    };
    assert.deepEqual(config, expected);
    // 7.24e9 parameters, the published size of Mistral-7B.
    const params = mistralParameterShapes(config).reduce((sum, p) => sum + p.shape.reduce((a, b) => a * b, 1), 0);
    assert.equal(params, 7_241_732_096);
  });

  it('reads a folder as well as the file', () => {
    const dir = mkdtempSync(join(tmpdir(), 'zn-config-'));
    writeFileSync(join(dir, 'config.json'), JSON.stringify(v5Config()));
    assert.equal(readMistralConfig(dir).ropeTheta, 1e6);
  });

  it('loads a transformers 5 config: rope_parameters, dtype, null sliding_window and head_dim', () => {
    const config = parseMistralConfig(v5Config({ head_dim: null, dtype: 'bfloat16', eos_token_id: [2, 3], pad_token_id: 0 }), 'c');
    assert.equal(config.ropeTheta, 1e6);
    assert.equal(config.headDim, 16);
    assert.equal(config.slidingWindow, null);
    assert.equal(config.dtype, 'bfloat16');
    assert.deepEqual(config.eosTokenId, [2, 3]);
    assert.equal(config.padTokenId, 0);
  });

  it("head_dim may differ from hidden_size / num_attention_heads, and missing fields take MistralConfig's defaults", () => {
    assert.equal(parseMistralConfig(v5Config({ head_dim: 32 }), 'c').headDim, 32);
    const minimal = parseMistralConfig({ model_type: 'mistral', hidden_size: 64, num_attention_heads: 4, num_key_value_heads: 2 }, 'c');
    assert.equal(minimal.vocabSize, 32000);
    assert.equal(minimal.intermediateSize, 14336);
    assert.equal(minimal.rmsNormEps, 1e-6);
    assert.equal(minimal.ropeTheta, 10000);
    assert.equal(minimal.slidingWindow, 4096);
    assert.equal(minimal.maxPositionEmbeddings, 131072);
    assert.equal(minimal.bosTokenId, 1);
    assert.equal(minimal.eosTokenId, 2);
    assert.equal(minimal.dtype, null);
    // num_key_value_heads null means one KV head per query head (no GQA), as in transformers.
    assert.equal(parseMistralConfig(v5Config({ num_key_value_heads: null }), 'c').numKeyValueHeads, 4);
  });

  it('refuses RoPE scaling, naming the field', () => {
    assert.match(
      errorOf(v5Config({ rope_parameters: { rope_theta: 1e6, rope_type: 'linear', factor: 2.0 } })),
      /^\/models\/x\/config.json: invalid MistralForCausalLM config: rope_parameters.rope_type 'linear' is not supported.*rope_parameters.factor is not supported/,
    );
    const v4 = { ...v5Config(), rope_parameters: undefined, rope_theta: 10000.0, rope_scaling: { type: 'yarn', factor: 4.0 } };
    assert.match(errorOf(v4), /rope_scaling \{"type":"yarn","factor":4\} is not supported/);
    // A null rope_scaling, or one that asks for plain RoPE, is fine.
    assert.equal(parseMistralConfig({ ...v4, rope_scaling: null }, 'c').ropeTheta, 10000);
    assert.equal(parseMistralConfig({ ...v4, rope_scaling: { rope_type: 'default' } }, 'c').ropeTheta, 10000);
  });

  it('names every bad field at once, with the file', () => {
    const message = errorOf(
      v5Config({
        hidden_size: 0,
        num_key_value_heads: 3,
        rms_norm_eps: -1,
        sliding_window: 0,
        tie_word_embeddings: 'yes',
        pad_token_id: 100,
        dtype: 'float64',
      }),
    );
    assert.ok(message.startsWith('/models/x/config.json: invalid MistralForCausalLM config: '), message);
    for (const expected of [
      'hidden_size must be an integer >= 1, got 0',
      'num_key_value_heads (3) must divide num_attention_heads (4)',
      'rms_norm_eps must be a positive number, got -1',
      'sliding_window must be an integer >= 1, got 0',
      'tie_word_embeddings must be true or false, got "yes"',
      'pad_token_id must be null or a token id in [0, 100), got 100',
      'dtype must be one of float32, bfloat16, float16 (or null), got "float64"',
    ]) {
      assert.ok(message.includes(expected), `missing '${expected}' in: ${message}`);
    }
    assert.ok(!message.includes('\n'));
  });

  it('refuses what the native model does not implement', () => {
    assert.match(errorOf(v5Config({ model_type: 'llama' })), /model_type is "llama", expected "mistral"/);
    assert.match(errorOf(v5Config({ hidden_act: 'gelu' })), /hidden_act "gelu" is not supported/);
    assert.match(errorOf(v5Config({ attention_dropout: 0.1 })), /attention_dropout 0.1 is not supported/);
    assert.match(errorOf(v5Config({ quantization_config: { quant_method: 'bitsandbytes' } })), /quantization_config is set/);
    assert.match(errorOf(v5Config({ head_dim: 15 })), /head_dim 15 must be even and >= 2/);
    assert.match(errorOf(v5Config({ eos_token_id: [2, -1] })), /eos_token_id must hold token ids in \[0, 100\), got \[2,-1\]/);
  });

  it('refuses the two generations disagreeing with each other', () => {
    assert.match(errorOf(v5Config({ rope_theta: 10000.0 })), /rope_theta \(10000\) disagrees with rope_parameters.rope_theta \(1000000\)/);
    assert.match(errorOf(v5Config({ torch_dtype: 'float16' })), /dtype \('float32'\) disagrees with torch_dtype \('float16'\)/);
    // Agreeing duplicates are what we write ourselves.
    assert.equal(parseMistralConfig(v5Config({ rope_theta: 1e6, torch_dtype: 'float32' }), 'c').ropeTheta, 1e6);
  });

  it('unreadable files are errors naming the path', () => {
    const dir = mkdtempSync(join(tmpdir(), 'zn-config-'));
    assert.throws(() => readMistralConfig(join(dir, 'missing')), /missing: no such model folder or config file/);
    assert.throws(() => readMistralConfig(dir), /config.json: cannot read the model config \(ENOENT\)/);
    writeFileSync(join(dir, 'config.json'), '{"hidden_size": 4');
    assert.throws(() => readMistralConfig(dir), /config.json: not valid JSON/);
    writeFileSync(join(dir, 'config.json'), '[1]');
    assert.throws(() => readMistralConfig(dir), /config.json: expected a JSON object/);
  });

  it('writes the transformers 5 form, floats as floats, and reads it back unchanged', () => {
    const config = parseMistralConfig(v5Config({ rms_norm_eps: 1e-5, sliding_window: 4096, pad_token_id: 0 }), 'c');
    const text = stringifyConfigJson(mistralConfigJson(config, 'bfloat16'));
    assert.match(text, /"rope_parameters": \{\n {4}"rope_theta": 1000000\.0,\n {4}"rope_type": "default"\n {2}\}/);
    assert.match(text, /"rms_norm_eps": 0\.00001,/);
    assert.match(text, /"initializer_range": 0\.02,/);
    assert.match(text, /"attention_dropout": 0\.0,/);
    assert.match(text, /"dtype": "bfloat16",/);
    assert.match(text, /"head_dim": 16,/);
    const written = JSON.parse(text) as Record<string, unknown>;
    assert.deepEqual(Object.keys(written), [...Object.keys(written)].sort());
    assert.deepEqual(parseMistralConfig(written, 'c'), { ...config, dtype: 'bfloat16' });
  });
});
