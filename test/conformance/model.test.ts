/**
 * The model against transformers: tiny random MistralForCausalLM folders written by
 * test/conformance/mistral_reference.py load through loadModel, and per-token log-probs and the
 * gradients of loss = sum_t w[t] logp[t] w.r.t. every parameter agree with transformers'
 * (float64) to 1e-4 relative in f32; bf16 mode within bf16's tolerance; gradient checkpointing
 * changes nothing; the packed stream agrees with each document run on its own. `score` end to
 * end agrees with transformers' summed completion log-probs.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';

import type { TokenBatch } from '../../lib/data/batch.js';
import { loadModel, type MistralModel } from '../../lib/model/model.js';
import { packageRoot } from '../../lib/native.js';
import { referencePython, runPython } from '../support/python.js';
import { packDocuments, relError } from '../support/reference-batch.js';

interface Reference {
  config: Record<string, unknown>;
  documents: number[][];
  targets: number[][];
  weights: number[];
  logp: number[];
  logp_sdpa: number[];
  grads: Record<string, number[]>;
  parameter_names: string[];
}

const CASES = ['gqa_window_tied', 'mqa_headdim_untied'] as const;
const root = packageRoot();
const { python, skipReason } = referencePython(['torch', 'transformers', 'safetensors']);

function packed(ref: Reference): TokenBatch {
  return packDocuments(ref.documents, ref.targets);
}

/** Gradients of sum_t w[t] logp[t] for every parameter, keyed by name: forward then backward, or one forwardBackward call. */
async function gradients(model: MistralModel, ref: Reference, call: 'separate' | 'fused' = 'separate'): Promise<{ logp: Float32Array; grads: Map<string, Float32Array> }> {
  await model.zeroGrad();
  const weights = Float32Array.from(ref.weights);
  let logp: Float32Array;
  if (call === 'fused') {
    logp = await model.forwardBackward(packed(ref), weights);
  } else {
    logp = await model.forward(packed(ref));
    await model.backward(weights);
  }
  const grads = new Map<string, Float32Array>();
  for (const { name } of model.parameters()) grads.set(name, model.getGradient(name));
  return { logp, grads };
}

describe('model conformance with transformers', { skip: skipReason ?? false }, () => {
  let work = '';
  let scoreMaxLength = 0;
  const refs = new Map<string, Reference>();

  before(() => {
    work = mkdtempSync(join(tmpdir(), 'zn-model-conformance-'));
    const printed = JSON.parse(runPython(python!, join(root, 'test', 'conformance', 'mistral_reference.py'), [work])) as { score_max_length: number };
    scoreMaxLength = printed.score_max_length;
    for (const name of CASES) refs.set(name, JSON.parse(readFileSync(join(work, name, 'reference.json'), 'utf8')) as Reference);
  });

  after(() => rmSync(work, { recursive: true, force: true }));

  for (const name of CASES) {
    for (const call of ['separate', 'fused'] as const) {
      it(`${name}: f32 log-probs and every gradient within 1e-4 of transformers (${call === 'fused' ? 'forwardBackward' : 'forward, backward'})`, async () => {
        const ref = refs.get(name)!;
        const model = await loadModel(join(work, name, 'model'), { dtype: 'f32', maxTokens: 64, trainable: true });
        const names = model.parameters().map((p) => p.name);
        // Tied embeddings: transformers lists one parameter (model.embed_tokens.weight), as we do.
        assert.deepEqual([...names].sort(), [...ref.parameter_names].sort());
        const { logp, grads } = await gradients(model, ref, call);
        // transformers' eager path runs softmax in f32 even on float64 inputs; sdpa stays float64.
        assert.ok(relError(logp, ref.logp) < 1e-4, `logp vs eager: ${relError(logp, ref.logp)}`);
        assert.ok(relError(logp, ref.logp_sdpa) < 1e-4, `logp vs sdpa: ${relError(logp, ref.logp_sdpa)}`);
        for (const [param, grad] of grads) {
          const err = relError(grad, ref.grads[param]);
          assert.ok(err < 1e-4, `d loss / d ${param}: relative error ${err}`);
        }
      });
    }

    it(`${name}: gradient checkpointing gives the same log-probs and gradients`, async () => {
      const ref = refs.get(name)!;
      const dir = join(work, name, 'model');
      const plain = await gradients(await loadModel(dir, { maxTokens: 64, trainable: true }), ref);
      const model = await loadModel(dir, { maxTokens: 64, trainable: true, gradientCheckpointing: true });
      const ckpt = await gradients(model, ref);
      assert.deepEqual(ckpt.logp, plain.logp);
      for (const [param, grad] of plain.grads) assert.deepEqual(ckpt.grads.get(param), grad, param);
    });

    it(`${name}: bf16 mode within bf16 tolerance`, async () => {
      const ref = refs.get(name)!;
      const model = await loadModel(join(work, name, 'model'), { dtype: 'bf16', maxTokens: 64, trainable: true });
      const { logp, grads } = await gradients(model, ref);
      // bf16 keeps 8 significant bits of weights and matmul inputs (relative rounding 2^-9);
      // through a few layers log-probs move by ~0.5% and gradients by a few percent.
      assert.ok(relError(logp, ref.logp) < 2e-2, `bf16 logp: ${relError(logp, ref.logp)}`);
      for (const [param, grad] of grads) {
        const err = relError(grad, ref.grads[param]);
        assert.ok(err < 8e-2, `bf16 d loss / d ${param}: relative error ${err}`);
      }
    });

    it(`${name}: bf16 forwardBackward within bf16 tolerance`, async () => {
      const ref = refs.get(name)!;
      const model = await loadModel(join(work, name, 'model'), { dtype: 'bf16', maxTokens: 64, trainable: true });
      const { logp, grads } = await gradients(model, ref, 'fused');
      assert.ok(relError(logp, ref.logp) < 2e-2, `bf16 logp: ${relError(logp, ref.logp)}`);
      for (const [param, grad] of grads) {
        const err = relError(grad, ref.grads[param]);
        assert.ok(err < 8e-2, `bf16 d loss / d ${param}: relative error ${err}`);
      }
    });
  }

  it('packed documents give the same log-probs as each document alone, and logprobs() = forward()', async () => {
    const ref = refs.get('gqa_window_tied')!;
    const model = await loadModel(join(work, 'gqa_window_tied', 'model'), { maxTokens: 64 });
    const batch = packed(ref);
    const together = await model.logprobs(batch);
    for (let doc = 0; doc + 1 < batch.cuSeqlens.length; doc++) {
      const [b, e] = [batch.cuSeqlens[doc], batch.cuSeqlens[doc + 1]];
      const alone = await model.logprobs({
        inputIds: batch.inputIds.slice(b, e),
        positionIds: batch.positionIds.slice(b, e),
        targets: batch.targets.slice(b, e),
        cuSeqlens: Int32Array.from([0, e - b]),
      });
      assert.ok(relError(together.subarray(b, e), alone) < 1e-6, `document ${doc}`);
    }
    const trainable = await loadModel(join(work, 'gqa_window_tied', 'model'), { maxTokens: 64, trainable: true });
    assert.deepEqual(await trainable.forward(batch), await trainable.logprobs(batch));
  });

  it('score: preference and SFT rows (pre-tokenized and chat) agree with transformers; unscorable rows are skipped', () => {
    const cli = join(root, 'dist', 'lib', 'cli', 'main.js');
    const dir = join(work, 'score');
    for (const kind of ['preference', 'sft'] as const) {
      const output = join(work, `${kind}-scores.jsonl`);
      const args = ['score', '--model_name_or_path', join(dir, 'model'), '--dataset_name', join(dir, `${kind}_rows.jsonl`)];
      const result = spawnSync(process.execPath, [cli, ...args, '--output', output, '--max_length', String(scoreMaxLength), '--batch_tokens', '64'], {
        encoding: 'utf8',
      });
      assert.equal(result.status, 0, result.stderr);
      const lines = (file: string) => readFileSync(file, 'utf8').trim().split('\n').map((line) => JSON.parse(line) as Record<string, number | string>);
      const got = lines(output);
      const expected = lines(join(dir, `${kind}_reference.jsonl`));
      assert.equal(got.length, expected.length);
      for (let i = 0; i < expected.length; i++) {
        assert.deepEqual(Object.keys(got[i]).sort(), Object.keys(expected[i]).sort(), `${kind} row ${i}`);
        for (const key of Object.keys(expected[i])) {
          const [a, b] = [got[i][key], expected[i][key]];
          if (typeof b === 'string' || key === 'index' || key === 'num_tokens') {
            assert.equal(a, b, `${kind} row ${i} ${key}`);
          } else {
            assert.ok(Math.abs((a as number) - b) <= 1e-4 * Math.abs(b), `${kind} row ${i} ${key}: ${a} vs transformers ${b}`);
          }
        }
      }
      const skipped = expected.filter((row) => 'skipped' in row).length;
      assert.match(result.stderr, new RegExp(`score: ${expected.length} rows read, ${expected.length - skipped} used, ${skipped} skipped`));
    }
  });
});
