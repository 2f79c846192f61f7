/**
 * The model on the GPU through the package (lib/model, the trainer), against the same work on the
 * CPU. The CUDA addon is built in CI (scripts/build-cuda.sh) but CI has no GPU, so, as in
 * cuda-addon.test.ts, one test per machine state: without a usable GPU, asking for the GPU model
 * is a clear ZnError and `device: auto` trains on the CPU; with one, the GPU model's log-probs and
 * a few SFT and DPO trainer steps track the CPU's (f32 tightly, bf16 within bf16 rounding), and a
 * model trained on the GPU reloads on the CPU with the same log-probs.
 */
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createRequire } from 'node:module';
import { before, describe, it } from 'node:test';

import { binarize } from '../lib/aif/binarize.js';
import { writePreferences } from '../lib/aif/preference-files.js';
import { ultrachatRows, ultrafeedbackRows } from '../lib/demo/teacher.js';
import { writeLlama2TokenizerFolder } from '../lib/data/llama2-tokenizer.js';
import { writeRows } from '../lib/data/writers.js';
import { ZnError } from '../lib/errors.js';
import { mistralConfig, writeRandomModel } from '../lib/model/init.js';
import { loadModel } from '../lib/model/model.js';
import { loadNative } from '../lib/native.js';
import { dpo, sft } from '../lib/train/api.js';
import { cudaAddonFile, gpuUsable } from './support/cuda.js';

const require = createRequire(import.meta.url);
const skip = cudaAddonFile ? false : 'the CUDA addon is not built here (bash scripts/build-cuda.sh builds it)';

type Entry = Record<string, number>;
const history = (dir: string): Entry[] =>
  (JSON.parse(readFileSync(join(dir, 'trainer_state.json'), 'utf8')).log_history as Entry[]).filter((e) => 'loss' in e);

const work = mkdtempSync(join(tmpdir(), 'zn-cuda-model-'));

/** Two packed documents of a 64-token vocabulary slice; the second longer than the window. */
function batch() {
  const lengths = [9, 23];
  const tokens = lengths.reduce((a, b) => a + b, 0);
  const inputIds = new Int32Array(tokens);
  const positionIds = new Int32Array(tokens);
  const targets = new Int32Array(tokens);
  let t = 0;
  for (const length of lengths) {
    for (let i = 0; i < length; i++, t++) {
      inputIds[t] = 3 + ((t * 7919) % 60);
      positionIds[t] = i;
      targets[t] = i === length - 1 ? -100 : 3 + (((t + 1) * 7919) % 60);
    }
  }
  return { inputIds, positionIds, targets, cuSeqlens: Int32Array.from([0, lengths[0]!, tokens]) };
}

function maxRelError(got: Float32Array, want: Float32Array): number {
  let worst = 0;
  for (let i = 0; i < want.length; i++) worst = Math.max(worst, Math.abs(got[i]! - want[i]!) / (1e-3 + Math.abs(want[i]!)));
  return worst;
}

const trainer = {
  bf16: false,
  gradient_checkpointing: false,
  max_length: 64,
  logging_steps: 1,
  per_device_train_batch_size: 4,
  seed: 1,
  max_steps: 3,
  learning_rate: 1e-3,
  save_strategy: 'no',
};

describe('the model on the GPU', { skip }, () => {
  before(async () => {
    writeLlama2TokenizerFolder(join(work, 'tokenizer'));
    // head_dim 64 so the bf16 run takes the flash attention kernels; window 16 < a document.
    const config = mistralConfig({
      vocab_size: 32000, hidden_size: 128, intermediate_size: 256, num_hidden_layers: 2, num_attention_heads: 2,
      num_key_value_heads: 1, max_position_embeddings: 128, sliding_window: 16, tie_word_embeddings: false,
      bos_token_id: 1, eos_token_id: 2,
    });
    await writeRandomModel(join(work, 'base'), config, { seed: 5, tokenizerDir: join(work, 'tokenizer') });
    await writeRows(join(work, 'chats.jsonl'), ultrachatRows(16, 4));
    const { pairs } = await binarize(ultrafeedbackRows(24, 5), { seed: 3 });
    await writePreferences(join(work, 'prefs'), pairs, { testSize: 4, seed: 3 });
  });

  async function withoutGpu(): Promise<void> {
    // The addon itself: the device plan is computable without a GPU; building a model says why not.
    const addon = require(cudaAddonFile!) as {
      Model: new (options: object) => unknown;
      modelMemoryPlan(options: object): Record<string, number>;
    };
    const options = { config: { vocabSize: 64, hiddenSize: 32, intermediateSize: 64, numHiddenLayers: 1, numAttentionHeads: 2, numKeyValueHeads: 1, headDim: 16, rmsNormEps: 1e-5, ropeTheta: 10000 }, maxTokens: 16, dtype: 'bf16' };
    const plan = addon.modelMemoryPlan(options);
    // 4 + 2 bytes per weight (f32 master, bf16 copy) and the three norm weights (32 each) in f32
    // beside the bf16 ones, 4 per gradient, 8 per AdamW pair (64x32 embed and lm_head, one layer),
    // each device buffer rounded up to 256 bytes.
    const params = 2 * 64 * 32 + 32 + (32 * 32 + 2 * 16 * 32 + 32 * 32) + 32 + 3 * 64 * 32 + 32;
    const norms = 3 * 32;
    const within = (got: number, bytes: number, buffers: number) => got >= bytes && got < bytes + 256 * buffers;
    assert.ok(within(plan.weights!, 6 * params + 4 * norms, 3), `weights ${plan.weights}`);
    assert.ok(within(plan.grads!, 4 * params, 1), `grads ${plan.grads}`);
    assert.ok(within(plan.optimizer!, 8 * params, 2), `optimizer ${plan.optimizer}`);
    assert.equal(plan.total, plan.weights! + plan.grads! + plan.optimizer! + plan.activations! + plan.logitsChunks!);
    assert.equal(plan.host, 0);
    // Without an f32 master on the device: 2 bytes per weight (bf16) plus the three norm weights
    // (32 each) in f32. Frozen: nothing else. Offloaded optimizer: the gradients stay, the moments
    // leave, and the host holds the f32 master and both moments (12 bytes per parameter) plus the
    // pinned buffers of the step's copies: two f32 gradient chunks and two bf16 weight chunks, a
    // chunk being the whole model at this size (12 bytes per parameter).
    const frozen = addon.modelMemoryPlan({ ...options, trainable: false });
    assert.ok(within(frozen.weights!, 2 * params + 4 * norms, 2), `frozen weights ${frozen.weights}`);
    assert.equal(frozen.grads! + frozen.optimizer! + frozen.host!, 0);
    const offloaded = addon.modelMemoryPlan({ ...options, offloadOptimizer: true });
    assert.ok(within(offloaded.weights!, 2 * params + 4 * norms, 2), `offloaded weights ${offloaded.weights}`);
    assert.equal(offloaded.grads, plan.grads);
    assert.equal(offloaded.optimizer, 0);
    assert.equal(offloaded.host, 12 * params + 12 * params);
    assert.equal(offloaded.activations, plan.activations);
    // f32 mode keeps the f32 weights the kernels read on the device; the host has its own master.
    const offloadedF32 = addon.modelMemoryPlan({ ...options, dtype: 'f32', offloadOptimizer: true });
    assert.ok(within(offloadedF32.weights!, 4 * params, 1), `offloaded f32 weights ${offloadedF32.weights}`);
    assert.equal(offloadedF32.host, 12 * params + 16 * params);
    assert.throws(() => new addon.Model(options), /^Error: Model: no usable CUDA GPU: /);
    await assert.rejects(loadModel(join(work, 'base'), { device: 'cuda', maxTokens: 64 }), (error: unknown) =>
      error instanceof ZnError && /CUDA backend .* cannot use a GPU/.test(error.message));
    await assert.rejects(
      async () => sft({ ...trainer, device: 'cuda', model_name_or_path: join(work, 'base'), dataset_name: join(work, 'chats.jsonl'), output_dir: join(work, 'no-gpu') }, { progress: 'silent' }),
      /cannot use a GPU/,
    );
    // auto: the CPU, and the run completes.
    await sft({ ...trainer, device: 'auto', max_steps: 1, model_name_or_path: join(work, 'base'), dataset_name: join(work, 'chats.jsonl'), output_dir: join(work, 'auto') }, { progress: 'silent' });
    assert.equal(history(join(work, 'auto')).length, 1);
  }

  async function withGpu(): Promise<void> {
    // Log-probs of the same weights, f32 and bf16.
    for (const [dtype, tol] of [['f32', 1e-4], ['bf16', 3e-2]] as const) {
      const cpu = await loadModel(join(work, 'base'), { device: 'cpu', dtype, maxTokens: 64, trainable: false });
      const gpu = await loadModel(join(work, 'base'), { device: 'cuda', dtype, maxTokens: 64, trainable: false });
      const name = 'model.layers.1.mlp.down_proj.weight';
      assert.deepEqual(gpu.getParameter(name), cpu.getParameter(name), `${dtype}: loaded weights`);
      const err = maxRelError(await gpu.logprobs(batch()), await cpu.logprobs(batch()));
      assert.ok(err <= tol, `${dtype} logprobs: max rel error ${err} > ${tol}`);
    }
    // Trainer steps: SFT in f32, DPO in f32 and bf16, each on both devices from the same weights and data.
    const runs = [
      { stage: sft, name: 'sft-f32', bf16: false, tol: 1e-4, data: { dataset_name: join(work, 'chats.jsonl') } },
      { stage: dpo, name: 'dpo-f32', bf16: false, tol: 1e-4, data: { dataset_name: join(work, 'prefs'), dataset_train_split: 'train_prefs' } },
      { stage: dpo, name: 'dpo-bf16', bf16: true, tol: 2e-2, data: { dataset_name: join(work, 'prefs'), dataset_train_split: 'train_prefs' } },
      // The optimizer offloaded to the host (the GPU side; the CPU run ignores the key).
      { stage: dpo, name: 'dpo-bf16-offload', bf16: true, tol: 2e-2, data: { dataset_name: join(work, 'prefs'), dataset_train_split: 'train_prefs', offload_optimizer: true } },
    ];
    for (const run of runs) {
      for (const device of ['cpu', 'cuda']) {
        const config = { ...trainer, ...run.data, bf16: run.bf16, device, model_name_or_path: join(work, 'base'), output_dir: join(work, `${run.name}-${device}`) };
        await run.stage(config, { progress: 'silent' });
      }
      const cpu = history(join(work, `${run.name}-cpu`));
      const gpu = history(join(work, `${run.name}-cuda`));
      assert.equal(gpu.length, 3, run.name);
      gpu.forEach((entry, i) => {
        for (const key of ['loss', 'grad_norm']) {
          const rel = Math.abs(entry[key]! - cpu[i]![key]!) / Math.abs(cpu[i]![key]!);
          assert.ok(rel <= run.tol * (key === 'grad_norm' ? 10 : 1), `${run.name} step ${i + 1} ${key}: gpu ${entry[key]} cpu ${cpu[i]![key]}`);
        }
      });
    }
    // The GPU-trained model reloads on the CPU with the GPU's log-probs.
    const trained = join(work, 'sft-f32-cuda');
    const onCpu = await loadModel(trained, { device: 'cpu', maxTokens: 64, trainable: false });
    const onGpu = await loadModel(trained, { device: 'cuda', maxTokens: 64, trainable: false });
    const err = maxRelError(await onGpu.logprobs(batch()), await onCpu.logprobs(batch()));
    assert.ok(err <= 1e-4, `reloaded logprobs: ${err}`);
  }

  it('without a usable GPU: a ZnError for device cuda and auto trains on the CPU; with one: log-probs and SFT/DPO steps track the CPU', async () => {
    if (gpuUsable()) await withGpu();
    else await withoutGpu();
  });
});
