import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, it } from 'node:test';

import { parseMistralConfig, readMistralConfig, type MistralConfig } from '../lib/model/config.js';
import {
  checkMistralWeights,
  locateWeights,
  parseShardSize,
  planShards,
  readCheckpointWeights,
  writeModelFolder,
  weightsIndexJson,
  type TensorPlan,
} from '../lib/model/folder.js';
import { mistralConfig, writeRandomModel } from '../lib/model/init.js';
import { mistralParameterShapes } from '../lib/model/parameters.js';
import { loadNative } from '../lib/native.js';

const addon = loadNative('cpu');

function tempDir(): string {
  return mkdtempSync(join(tmpdir(), 'zn-folder-'));
}

const tiny: MistralConfig = parseMistralConfig(
  {
    model_type: 'mistral',
    hidden_size: 8,
    intermediate_size: 12,
    num_hidden_layers: 2,
    num_attention_heads: 2,
    num_key_value_heads: 1,
    vocab_size: 16,
    tie_word_embeddings: false,
  },
  'tiny',
);

/** Distinct values per tensor so a mix-up between tensors shows. */
function tensorValues(config: MistralConfig): Map<string, Float32Array> {
  const values = new Map<string, Float32Array>();
  mistralParameterShapes(config).forEach(({ name, shape }, k) => {
    const numel = shape.reduce((a, b) => a * b, 1);
    values.set(name, Float32Array.from({ length: numel }, (_, i) => k + i / 1024));
  });
  return values;
}

function arrayWriter(values: Map<string, Float32Array>) {
  return async (path: string, tensors: TensorPlan[], metadata: Record<string, string>) => {
    await addon.writeSafetensors({
      path,
      metadata,
      tensors: tensors.map((t) => ({ name: t.name, dtype: 'F32' as const, shape: t.shape, data: values.get(t.name)! })),
    });
  };
}

async function saveTiny(dir: string, maxShardSize: number | string, config = tiny) {
  const values = tensorValues(config);
  const plan = await writeModelFolder(dir, mistralParameterShapes(config), {
    config,
    dtype: 'float32',
    maxShardSize,
    writeShard: arrayWriter(values),
  });
  return { values, plan };
}

/** A safetensors file written by hand, for dtypes our writer does not produce. */
function handMadeSafetensors(path: string, tensors: { name: string; dtype: string; shape: number[]; bytes: number }[]): void {
  let offset = 0;
  const header: Record<string, unknown> = {};
  for (const t of tensors) {
    header[t.name] = { dtype: t.dtype, shape: t.shape, data_offsets: [offset, offset + t.bytes] };
    offset += t.bytes;
  }
  const json = Buffer.from(JSON.stringify(header));
  const length = Buffer.alloc(8);
  length.writeBigUInt64LE(BigInt(json.length));
  writeFileSync(path, Buffer.concat([length, json, Buffer.alloc(offset)]));
}

describe('model folders: shard plans', () => {
  it('parses shard sizes as huggingface_hub does (powers of ten)', () => {
    assert.equal(parseShardSize('5GB'), 5_000_000_000);
    assert.equal(parseShardSize('20KB'), 20_000);
    assert.equal(parseShardSize('1.5MB'), 1_500_000);
    assert.equal(parseShardSize(' 2 tb '), 2_000_000_000_000);
    assert.equal(parseShardSize('1000'), 1000);
    assert.equal(parseShardSize(1000), 1000);
    assert.throws(() => parseShardSize('5GiB'), /max_shard_size '5GiB' is not a size/);
    assert.throws(() => parseShardSize(0), /max_shard_size must be a positive number of bytes, got 0/);
  });

  it('fills shards in order up to the limit; a tensor over the limit gets its own shard', () => {
    const t = (name: string, n: number) => ({ name, shape: [n], dtype: 'F32' as const });
    const plan = planShards([t('a', 10), t('b', 10), t('c', 5), t('big', 100), t('d', 1)], 100);
    assert.deepEqual(
      plan.shards.map((s) => [s.file, s.tensors.map((x) => x.name), s.bytes]),
      [
        ['model-00001-of-00003.safetensors', ['a', 'b', 'c'], 100],
        ['model-00002-of-00003.safetensors', ['big'], 400],
        ['model-00003-of-00003.safetensors', ['d'], 4],
      ],
    );
    assert.equal(plan.sharded, true);
    assert.equal(plan.totalSize, 504);
    assert.equal(plan.totalParameters, 126);
    const single = planShards([t('a', 10), { name: 'b', shape: [3, 2], dtype: 'BF16' }], 1000);
    assert.deepEqual(single.shards.map((s) => s.file), ['model.safetensors']);
    assert.equal(single.sharded, false);
    assert.equal(single.totalSize, 52);
  });

  it('writes the index as transformers does: sorted names, total_size and total_parameters', () => {
    const plan = planShards(
      [
        { name: 'z', shape: [2], dtype: 'F32' },
        { name: 'a', shape: [2], dtype: 'F32' },
      ],
      8,
    );
    assert.equal(
      weightsIndexJson(plan),
      '{\n  "metadata": {\n    "total_parameters": 4,\n    "total_size": 16\n  },\n  "weight_map": {\n' +
        '    "a": "model-00002-of-00002.safetensors",\n    "z": "model-00001-of-00002.safetensors"\n  }\n}\n',
    );
  });
});

describe('model folders: save and load', () => {
  it('round-trips a sharded folder: index, shards, config, generation config', async () => {
    const dir = tempDir();
    const { values, plan } = await saveTiny(dir, 700);
    assert.ok(plan.shards.length > 2, `expected several shards, got ${plan.shards.length}`);
    const files = readdirSync(dir).sort();
    assert.deepEqual(files, [
      'config.json',
      'generation_config.json',
      ...plan.shards.map((s) => s.file),
      'model.safetensors.index.json',
    ].sort());
    assert.deepEqual(readMistralConfig(dir), { ...tiny, dtype: 'float32' });
    assert.deepEqual(JSON.parse(readFileSync(join(dir, 'generation_config.json'), 'utf8')), {
      _from_model_config: true,
      bos_token_id: 1,
      eos_token_id: 2,
    });
    const weights = readCheckpointWeights(dir, addon);
    assert.equal(weights.indexPath, join(dir, 'model.safetensors.index.json'));
    const check = checkMistralWeights(weights, tiny);
    assert.deepEqual(check.unused, []);
    assert.deepEqual(
      check.shards.flatMap((s) => s.names),
      mistralParameterShapes(tiny).map((p) => p.name),
    );
    for (const shard of check.shards) {
      assert.deepEqual(addon.readSafetensorsHeader({ path: shard.path }).metadata, { format: 'pt' });
      for (const name of shard.names) {
        const back = await addon.readTensor({ path: shard.path, name, dtype: 'f32' });
        assert.deepEqual(back, values.get(name), name);
      }
    }
  });

  it('a later save removes weight files the new layout does not use', async () => {
    const dir = tempDir();
    await saveTiny(dir, 700);
    await saveTiny(dir, '1GB');
    assert.deepEqual(readdirSync(dir).sort(), ['config.json', 'generation_config.json', 'model.safetensors']);
    await saveTiny(dir, 1500);
    const after = readdirSync(dir);
    assert.ok(!after.includes('model.safetensors'));
    assert.ok(after.includes('model.safetensors.index.json'));
    assert.equal(locateWeights(dir).files.length, after.filter((f) => f.startsWith('model-')).length);
  });

  it('carries tokenizer files and generation_config.json over from the source folder', async () => {
    const source = tempDir();
    writeFileSync(join(source, 'tokenizer.json'), '{"model": {}}');
    writeFileSync(join(source, 'tokenizer_config.json'), '{"bos_token": "<s>"}');
    writeFileSync(join(source, 'generation_config.json'), '{"bos_token_id": 1, "eos_token_id": 2, "do_sample": true}');
    writeFileSync(join(source, 'unrelated.txt'), 'x');
    const dir = join(tempDir(), 'out', 'nested');
    const values = tensorValues(tiny);
    await writeModelFolder(dir, mistralParameterShapes(tiny), {
      config: tiny,
      dtype: 'float32',
      writeShard: arrayWriter(values),
      sourceDir: source,
    });
    assert.equal(readFileSync(join(dir, 'tokenizer.json'), 'utf8'), '{"model": {}}');
    assert.equal(readFileSync(join(dir, 'tokenizer_config.json'), 'utf8'), '{"bos_token": "<s>"}');
    assert.equal(JSON.parse(readFileSync(join(dir, 'generation_config.json'), 'utf8')).do_sample, true);
    assert.ok(!existsSync(join(dir, 'unrelated.txt')));
    assert.ok(!readdirSync(dir).some((f) => f.includes('.tmp')), 'temporary files left behind');
  });

  it('tied embeddings: lm_head is neither expected nor saved', async () => {
    const tied = { ...tiny, tieWordEmbeddings: true };
    const dir = tempDir();
    await saveTiny(dir, '1GB', tied);
    const weights = readCheckpointWeights(dir, addon);
    assert.ok(!weights.tensors.has('lm_head.weight'));
    assert.equal(checkMistralWeights(weights, tied).shards[0]!.names.length, 2 * 9 + 2);
    assert.throws(() => checkMistralWeights(weights, tiny), /missing tensor 'lm_head.weight'/);
  });
});

describe('model folders: bad folders', () => {
  it('refuses pickled weights without reading them', () => {
    const dir = tempDir();
    writeFileSync(join(dir, 'config.json'), '{}');
    writeFileSync(join(dir, 'pytorch_model.bin'), 'not really a pickle');
    assert.throws(
      () => locateWeights(dir),
      /pytorch_model\.bin\), which zephyr-native never loads: unpickling can run arbitrary code\. Convert the folder to safetensors first/,
    );
    // Trainer state files are not weights: no pickle message for them.
    const trainerState = tempDir();
    for (const name of ['optimizer.pt', 'scheduler.pt', 'rng_state.pth', 'training_args.bin']) writeFileSync(join(trainerState, name), 'x');
    assert.throws(() => locateWeights(trainerState), /no model weights/);
    const sharded = tempDir();
    writeFileSync(join(sharded, 'pytorch_model-00001-of-00002.bin'), 'x');
    assert.throws(() => locateWeights(sharded), /pytorch_model-00001-of-00002\.bin\), which zephyr-native never loads/);
    const indexed = tempDir();
    writeFileSync(join(indexed, 'model.safetensors.index.json'), '{"weight_map": {"a": "pytorch_model-00001-of-00002.bin"}}');
    assert.throws(() => locateWeights(indexed), /never loads/);
  });

  it('names what is missing', () => {
    const dir = tempDir();
    assert.throws(() => locateWeights(join(dir, 'nope')), /nope: no such model folder/);
    assert.throws(() => locateWeights(dir), /no model weights \(expected model.safetensors or model.safetensors.index.json\)/);
    writeFileSync(join(dir, 'adapter_config.json'), '{}');
    assert.throws(() => locateWeights(dir), /is a PEFT adapter folder/);
  });

  it('validates the index against the shard files', async () => {
    const dir = tempDir();
    await saveTiny(dir, 700);
    const indexPath = join(dir, 'model.safetensors.index.json');
    const index = JSON.parse(readFileSync(indexPath, 'utf8')) as { weight_map: Record<string, string> };
    const write = (weightMap: Record<string, string>) => writeFileSync(indexPath, JSON.stringify({ weight_map: weightMap }));
    // Two small tensors in different files that also hold other tensors.
    const layerEntries = Object.entries(index.weight_map).filter(([name]) => name.endsWith('layernorm.weight'));
    const first = layerEntries[0];
    const second = layerEntries.find(([, file]) => file !== first![1]);

    write({ ...index.weight_map, 'extra.weight': index.weight_map['model.norm.weight']! });
    assert.throws(() => readCheckpointWeights(dir, addon), /index.json: does not match the shard files: 'extra.weight' is not in model-/);

    const withoutOne = { ...index.weight_map };
    delete withoutOne[first![0]];
    write(withoutOne);
    assert.throws(() => readCheckpointWeights(dir, addon), new RegExp(`'${first![0].replace(/\./g, '\\.')}' \\(in .*\\) is not listed`));

    write({ ...index.weight_map, [first![0]]: second![1] });
    assert.throws(() => readCheckpointWeights(dir, addon), /is listed in model-.* but stored in/);

    write({ ...index.weight_map, [first![0]]: 'model-00009-of-00009.safetensors' });
    assert.throws(() => locateWeights(dir), /lists shard files that do not exist: model-00009-of-00009.safetensors/);
    write({ ...index.weight_map, [first![0]]: '../outside.safetensors' });
    assert.throws(() => locateWeights(dir), /must be a file name in the model folder, got "..\/outside.safetensors"/);
    writeFileSync(indexPath, '{"weight_map": ');
    assert.throws(() => locateWeights(dir), /index.json: not valid JSON/);
    writeFileSync(indexPath, '{"weights": {}}');
    assert.throws(() => locateWeights(dir), /expected an object with a "weight_map" object/);
  });

  it('checks every tensor against config.json; unknown tensors are reported as unused', async () => {
    const dir = tempDir();
    const config = { ...tiny, numHiddenLayers: 1 };
    const shapes = mistralParameterShapes(config);
    const entries = shapes
      .filter((p) => p.name !== 'model.norm.weight' && p.name !== 'model.layers.0.mlp.up_proj.weight')
      .map((p) => {
        const shape = p.name.endsWith('q_proj.weight') ? [p.shape[0]! + 1, p.shape[1]!] : p.shape;
        const dtype = p.name === 'lm_head.weight' ? 'F64' : 'BF16';
        return { name: p.name, dtype, shape, bytes: (dtype === 'F64' ? 8 : 2) * shape.reduce((a, b) => a * b, 1) };
      });
    handMadeSafetensors(join(dir, 'model.safetensors'), entries);
    const weights = readCheckpointWeights(dir, addon);
    assert.throws(
      () => checkMistralWeights(weights, config),
      (error: Error) => {
        assert.match(error.message, /the weights do not match config.json: /);
        assert.match(error.message, /tensor 'model.layers.0.self_attn.q_proj.weight' has shape \[9, 8\], config.json implies \[8, 8\]/);
        assert.match(error.message, /missing tensor 'model.layers.0.mlp.up_proj.weight'/);
        assert.match(error.message, /missing tensor 'model.norm.weight'/);
        assert.match(error.message, /tensor 'lm_head.weight' has dtype F64 \(supported: BF16, F16, F32\)/);
        return true;
      },
    );
  });

  it('reports unused tensors and corrupt files', async () => {
    const dir = tempDir();
    const shapes = mistralParameterShapes(tiny);
    handMadeSafetensors(join(dir, 'model.safetensors'), [
      ...shapes.map((p) => ({ name: p.name, dtype: 'BF16', shape: p.shape, bytes: 2 * p.shape.reduce((a, b) => a * b, 1) })),
      { name: 'model.layers.0.self_attn.rotary_emb.inv_freq', dtype: 'F32', shape: [2], bytes: 8 },
    ]);
    assert.deepEqual(checkMistralWeights(readCheckpointWeights(dir, addon), tiny).unused, [
      'model.layers.0.self_attn.rotary_emb.inv_freq',
    ]);
    const bytes = readFileSync(join(dir, 'model.safetensors'));
    writeFileSync(join(dir, 'model.safetensors'), bytes.subarray(0, bytes.length - 5));
    assert.throws(
      () => readCheckpointWeights(dir, addon),
      /readSafetensorsHeader: safetensors file '.*model.safetensors': tensor 'model.layers.0.self_attn.rotary_emb.inv_freq': data_offsets \[\d+, \d+\] run past the end of the data/,
    );
  });
});

describe('model folders: random initialisation', () => {
  it("writes HF's init: norms 1, the pad row 0, matrices ~ N(0, initializer_range^2); seeded; bfloat16 is the f32 values rounded", async () => {
    const config = mistralConfig({
      vocab_size: 512, hidden_size: 64, intermediate_size: 96, num_hidden_layers: 2, num_attention_heads: 4,
      num_key_value_heads: 2, initializer_range: 0.02, pad_token_id: 3, tie_word_embeddings: false,
    });
    const [a, b, c, half] = [tempDir(), tempDir(), tempDir(), tempDir()];
    await writeRandomModel(a, config, { seed: 7 });
    await writeRandomModel(b, config, { seed: 7 });
    await writeRandomModel(c, config, { seed: 8 });
    await writeRandomModel(half, config, { seed: 7, dtype: 'bfloat16' });
    assert.equal(readMistralConfig(half).dtype, 'bfloat16');
    const file = (dir: string) => join(dir, 'model.safetensors');
    for (const { name, shape } of mistralParameterShapes(config)) {
      const values = await addon.readTensor({ path: file(a), name, dtype: 'f32' });
      assert.equal(values.length, shape.reduce((x, y) => x * y, 1), name);
      assert.deepEqual(await addon.readTensor({ path: file(b), name, dtype: 'f32' }), values, `${name}: same seed`);
      assert.deepEqual(await addon.readTensor({ path: file(half), name, dtype: 'bf16' }), await addon.readTensor({ path: file(a), name, dtype: 'bf16' }), `${name}: bf16`);
      if (name.endsWith('norm.weight')) {
        assert.ok(values.every((x) => x === 1), name);
        continue;
      }
      const other = await addon.readTensor({ path: file(c), name, dtype: 'f32' });
      assert.ok(other.some((x, i) => x !== values[i]), `${name}: another seed, other values`);
      let drawn = Array.from(values);
      if (name === 'model.embed_tokens.weight') {
        assert.ok(values.subarray(3 * 64, 4 * 64).every((x) => x === 0), 'pad row');
        drawn = drawn.filter((_, i) => i < 3 * 64 || i >= 4 * 64);
      }
      // Sample standard deviation within 5 standard errors (sd of s ~ sigma / sqrt(2n)).
      const n = drawn.length;
      const mean = drawn.reduce((s, x) => s + x, 0) / n;
      const sd = Math.sqrt(drawn.reduce((s, x) => s + (x - mean) ** 2, 0) / n);
      assert.ok(Math.abs(sd - 0.02) < (5 * 0.02) / Math.sqrt(2 * n), `${name}: sd ${sd}`);
      assert.ok(Math.abs(mean) < (5 * 0.02) / Math.sqrt(n), `${name}: mean ${mean}`);
    }
  });
});
