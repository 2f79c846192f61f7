/**
 * The model API without the Python reference (that is test/conformance/model.test.ts): folders
 * in and out (f32 exact, bf16 rounded as torch rounds, sharded with an index, tokenizer files
 * carried over), the memory plan before allocation, optimizer state round trips, and errors.
 */
import assert from 'node:assert/strict';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';

import type { TokenBatch } from '../lib/data/batch.js';
import { mistralConfigJson, parseMistralConfig, stringifyConfigJson, type MistralConfig } from '../lib/model/config.js';
import { mistralConfig, writeRandomModel } from '../lib/model/init.js';
import { loadModel, modelMemoryPlan } from '../lib/model/model.js';
import { mistralParameterShapes } from '../lib/model/parameters.js';
import { loadNative } from '../lib/native.js';

const addon = loadNative('cpu');
const work = mkdtempSync(join(tmpdir(), 'zn-model-'));
after(() => rmSync(work, { recursive: true, force: true }));

const config: MistralConfig = parseMistralConfig(
  {
    model_type: 'mistral',
    vocab_size: 29,
    hidden_size: 12,
    intermediate_size: 20,
    num_hidden_layers: 2,
    num_attention_heads: 3,
    num_key_value_heads: 1,
    sliding_window: 4,
    rope_theta: 1e6,
    tie_word_embeddings: true,
    pad_token_id: 0,
  },
  'tiny config',
);

/** A seeded xorshift stream in [-0.5, 0.5), so folders are the same on every run. */
function randomValues(n: number, seed: number): Float32Array {
  let state = seed * 2654435761 + 1;
  return Float32Array.from({ length: n }, () => {
    state ^= state << 13;
    state ^= state >>> 17;
    state ^= state << 5;
    return (state >>> 0) / 2 ** 32 - 0.5;
  });
}

/** bf16 round-to-nearest-even of an f32, back to f32 (torch's .to(torch.bfloat16)). */
function roundBf16(x: number): number {
  const view = new DataView(new ArrayBuffer(4));
  view.setFloat32(0, x);
  const bits = view.getUint32(0);
  const rounded = (bits + 0x7fff + ((bits >>> 16) & 1)) & 0xffff0000;
  view.setUint32(0, rounded >>> 0);
  return view.getFloat32(0);
}

/** A model folder written with the safetensors binding, plus a tokenizer file to carry over. */
async function writeFolder(dir: string): Promise<Map<string, Float32Array>> {
  const values = new Map<string, Float32Array>();
  const tensors = mistralParameterShapes(config).map(({ name, shape }, k) => {
    const data = randomValues(shape.reduce((a, b) => a * b, 1), k + 1);
    values.set(name, data);
    return { name, dtype: 'F32' as const, shape, data };
  });
  rmSync(dir, { recursive: true, force: true });
  mkdirSync(dir, { recursive: true });
  await addon.writeSafetensors({ path: join(dir, 'model.safetensors'), tensors, metadata: { format: 'pt' } });
  writeFileSync(join(dir, 'config.json'), stringifyConfigJson(mistralConfigJson(config, 'float32')));
  writeFileSync(join(dir, 'tokenizer_config.json'), '{"bos_token": "<s>"}\n');
  return values;
}

function batch(): TokenBatch {
  return {
    inputIds: Int32Array.from([1, 5, 0, 7, 9, 2, 3, 28]),
    positionIds: Int32Array.from([0, 1, 2, 3, 4, 0, 1, 2]),
    targets: Int32Array.from([5, 0, 7, 9, -100, 3, 28, -100]),
    cuSeqlens: Int32Array.from([0, 5, 8]),
  };
}

/** Parameters of a Mistral config, counted from the architecture (not from the native table). */
function parameterCount(c: MistralConfig): number {
  const q = c.numAttentionHeads * c.headDim;
  const kv = c.numKeyValueHeads * c.headDim;
  const layer = c.hiddenSize * (q + 2 * kv) + q * c.hiddenSize + 3 * c.hiddenSize * c.intermediateSize + 2 * c.hiddenSize;
  return c.vocabSize * c.hiddenSize * (c.tieWordEmbeddings ? 1 : 2) + c.numHiddenLayers * layer + c.hiddenSize;
}

describe('model', () => {
  it('loads a folder bit for bit and saves f32 folders that load back identically', async () => {
    const source = join(work, 'source');
    const values = await writeFolder(source);
    const model = await loadModel(source, { maxTokens: 16 });
    for (const [name, data] of values) assert.deepEqual(model.getParameter(name), data, name);

    const out = join(work, 'saved-f32');
    await model.save(out);
    assert.equal(JSON.parse(readFileSync(join(out, 'config.json'), 'utf8')).dtype, 'float32');
    assert.ok(existsSync(join(out, 'tokenizer_config.json')), 'tokenizer files are carried over');
    assert.ok(existsSync(join(out, 'generation_config.json')));
    const again = await loadModel(out, { maxTokens: 16 });
    for (const [name, data] of values) assert.deepEqual(again.getParameter(name), data, name);
    assert.deepEqual(await again.logprobs(batch()), await model.logprobs(batch()));
  });

  it('saves bf16 shards with an index, rounded to nearest even', async () => {
    const source = join(work, 'source');
    const values = await writeFolder(source);
    const model = await loadModel(source, { maxTokens: 16, dtype: 'bf16' });
    const out = join(work, 'saved-bf16');
    await model.save(out, { maxShardSize: 2000 });
    const index = JSON.parse(readFileSync(join(out, 'model.safetensors.index.json'), 'utf8')) as { weight_map: Record<string, string> };
    const files = new Set(Object.values(index.weight_map));
    assert.ok(files.size > 1, 'several shards');
    for (const file of files) {
      for (const tensor of addon.readSafetensorsHeader({ path: join(out, file) }).tensors) assert.equal(tensor.dtype, 'BF16');
    }
    assert.equal(JSON.parse(readFileSync(join(out, 'config.json'), 'utf8')).dtype, 'bfloat16');
    const again = await loadModel(out, { maxTokens: 16 });
    for (const [name, data] of values) assert.deepEqual(again.getParameter(name), data.map(roundBf16), name);
  });

  it('plans memory before allocating, by category', () => {
    const n = parameterCount(config);
    const plain = modelMemoryPlan(config, { maxTokens: 64, trainable: true });
    assert.equal(plain.weights, 4 * n);
    assert.equal(plain.grads, 4 * n);
    assert.equal(plain.optimizer, 8 * n);
    const bf16 = modelMemoryPlan(config, { maxTokens: 64, trainable: true, dtype: 'bf16' });
    // f32 master and bf16 copy, and the norm weights (two per layer and the final one) in f32
    // beside the bf16 weights the kernels read.
    const norms = (2 * config.numHiddenLayers + 1) * config.hiddenSize;
    assert.equal(bf16.weights, 6 * n + 4 * norms);
    const frozen = modelMemoryPlan(config, { maxTokens: 64 });
    assert.equal(frozen.grads + frozen.optimizer, 0);
    const checkpointed = modelMemoryPlan(config, { maxTokens: 64, trainable: true, gradientCheckpointing: true });
    assert.ok(checkpointed.activations < plain.activations && frozen.activations < checkpointed.activations);
    // The layer inputs alone: (layers + 1) x tokens x hidden f32 values.
    assert.ok(checkpointed.activations >= (config.numHiddenLayers + 1) * 64 * config.hiddenSize * 4);
    assert.ok(plain.logitsChunks > 0);
    assert.equal(plain.total, plain.weights + plain.grads + plain.optimizer + plain.activations + plain.logitsChunks);
  });

  it('memoryPlan() of a loaded model is the plan computed before loading', async () => {
    const source = join(work, 'source');
    await writeFolder(source);
    const model = await loadModel(source, { maxTokens: 32, trainable: true, gradientCheckpointing: true });
    assert.deepEqual(model.memoryPlan(), modelMemoryPlan(config, { maxTokens: 32, trainable: true, gradientCheckpointing: true }));
  });

  it('dispose() frees the model: later calls fail naming it, and a running call refuses it', async () => {
    const source = join(work, 'source');
    await writeFolder(source);
    const model = await loadModel(source, { maxTokens: 16, trainable: true });
    const running = model.logprobs(batch());
    assert.throws(() => model.dispose(), /dispose: the model is busy/);
    assert.equal((await running).length, batch().inputIds.length);
    model.dispose();
    await assert.rejects(async () => model.logprobs(batch()), /logprobs: the model was disposed/);
    await assert.rejects(async () => model.zeroGrad(), /zeroGrad: the model was disposed/);
    assert.throws(() => model.getParameter('model.norm.weight'), /getParameter: the model was disposed/);
    assert.throws(() => model.memoryPlan(), /memoryPlan: the model was disposed/);
    assert.throws(() => model.parameters(), /parameters: the model was disposed/);
    model.dispose();  // twice is harmless
  });

  it('dispose() gives the model\'s memory back to the OS at once (RSS falls by its weights, gradients and moments)', async () => {
    // 16.4 M parameters (32000 x 256 embedding and lm_head): 233 MB of f32 master, gradients
    // (the embedding's held by rows, so few) and AdamW moments, all written at load, so resident.
    // Buffers of 1 MiB or more are mmapped (core/memory.h): freeing them unmaps them.
    const big = mistralConfig({
      vocab_size: 32000, hidden_size: 256, intermediate_size: 64, num_hidden_layers: 1, num_attention_heads: 2,
      num_key_value_heads: 1, tie_word_embeddings: false,
    });
    const dir = join(work, 'big');
    await writeRandomModel(dir, big, { seed: 3 });
    const model = await loadModel(dir, { maxTokens: 8, trainable: true });
    const plan = model.memoryPlan();
    const held = plan.weights + plan.grads + plan.optimizer;
    assert.ok(held > 200e6, `the plan holds ${held} bytes`);
    const before = process.memoryUsage().rss;
    model.dispose();
    const after = process.memoryUsage().rss;
    assert.ok(before - after >= 0.9 * held, `RSS fell by ${before - after} bytes on dispose; the model held ${held}`);
  });

  it('optimizer state saves and loads: the next step matches bit for bit', async () => {
    const source = join(work, 'source');
    await writeFolder(source);
    const a = await loadModel(source, { maxTokens: 16, trainable: true });
    const b = await loadModel(source, { maxTokens: 16, trainable: true });
    const dlogp = new Float32Array(8).fill(-0.25);
    const hp = { lr: 1e-2, weightDecay: 0.1, maxGradNorm: 1 };
    const step = async (model: typeof a) => {
      await model.zeroGrad();
      await model.forward(batch());
      await model.backward(dlogp);
      return model.clipAndStep(hp);
    };
    await step(a);
    const first = await step(a);
    assert.equal(first.step, 2);
    assert.ok(first.gradNorm > 0);
    const state = join(work, 'optimizer.safetensors');
    await a.saveOptimizerState(state);
    await a.save(join(work, 'after-two-steps'));
    const c = await loadModel(join(work, 'after-two-steps'), { maxTokens: 16, trainable: true });
    await c.loadOptimizerState(state);
    assert.equal(c.optimizerStep, 2);
    await step(a);
    await step(c);
    for (const { name } of a.parameters()) assert.deepEqual(c.getParameter(name), a.getParameter(name), name);
    assert.equal(b.optimizerStep, 0);
  });

  it('refuses overlapping calls, bad batches and backward without forward, naming the problem', async () => {
    const source = join(work, 'source');
    await writeFolder(source);
    const model = await loadModel(source, { maxTokens: 16, trainable: true });
    const running = model.forward(batch());
    await assert.rejects(model.logprobs(batch()), /busy/);
    await running;
    const bad = { ...batch(), inputIds: Int32Array.from([1, 5, 0, 29, 9, 2, 3, 4]) };
    await assert.rejects(model.logprobs(bad), /inputIds\[3\] = 29 is outside the vocabulary/);
    await assert.rejects(model.logprobs({ ...batch(), cuSeqlens: Int32Array.from([0, 5, 7]) }), /last cuSeqlens offset/);
    await assert.rejects(model.backward(new Float32Array(8)), /needs a forward\(\) first/);
    await model.forward(batch());
    await assert.rejects(model.backward(new Float32Array(3)), /dlogp has 3 elements/);
    await assert.rejects(model.forwardBackward(batch(), new Float32Array(3)), /forwardBackward.*'dlogp'.*8/);
    await assert.rejects(model.forwardBackward(batch(), new Float32Array(8).fill(NaN)), /dlogp\[0\] = nan is not finite/);
    const frozen = await loadModel(source, { maxTokens: 16 });
    await assert.rejects(frozen.forward(batch()), /trainable: false/);
    await assert.rejects(frozen.forwardBackward(batch(), new Float32Array(8)), /forwardBackward\(\) on a model created with trainable: false/);
    assert.throws(() => frozen.getGradient('model.norm.weight'), /trainable/);
    assert.throws(() => frozen.getParameter('lm_head.weight'), /no parameter named 'lm_head.weight'/);
  });
});
