/**
 * LoRA against PEFT: adapters that PEFT built and saved (test/conformance/lora_reference.py,
 * adapter_model.safetensors as PEFT writes it) load by their saved names into the native model
 * over the base's safetensors, and the per-token log-probs and the gradients of
 * loss = sum_t w[t] logp[t] w.r.t. every lora_A and lora_B agree with PEFT's (float64) to 1e-4
 * relative in f32; with the adapters off the log-probs are PEFT's disable_adapter() ones; the
 * frozen base gets no gradient. Cases: all-linear (r 4), and q/v/down with rsLoRA (r 2).
 */
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';

import { readMistralConfig } from '../../lib/model/config.js';
import { nativeModelConfig } from '../../lib/model/model.js';
import { loadNative, packageRoot, type NativeModel, type NativeTokenBatch } from '../../lib/native.js';
import { referencePython, runPython } from '../support/python.js';

interface Reference {
  documents: number[][];
  targets: number[][];
  weights: number[];
  logp: number[];
  logp_base: number[];
  grads: Record<string, number[]>;
}

const CASES: Record<string, { rank: number; alpha: number; rslora: boolean; targetModules: string[] }> = {
  all_linear: { rank: 4, alpha: 8, rslora: false, targetModules: ['all-linear'] },
  qv_rslora: { rank: 2, alpha: 16, rslora: true, targetModules: ['q_proj', 'v_proj', 'down_proj'] },
};
const root = packageRoot();
const { python, skipReason } = referencePython(['torch', 'transformers', 'peft', 'safetensors']);

function relError(a: ArrayLike<number>, b: ArrayLike<number>): number {
  assert.equal(a.length, b.length);
  let diff = 0;
  let norm = 0;
  for (let i = 0; i < b.length; i++) {
    diff += (a[i] - b[i]) ** 2;
    norm += b[i] ** 2;
  }
  return Math.sqrt(diff) / Math.max(Math.sqrt(norm), 1e-30);
}

function packed(ref: Reference): NativeTokenBatch {
  const cu = [0];
  for (const doc of ref.documents) cu.push(cu[cu.length - 1] + doc.length);
  return {
    inputIds: Int32Array.from(ref.documents.flat()),
    positionIds: Int32Array.from(ref.documents.flatMap((doc) => doc.map((_, i) => i))),
    targets: Int32Array.from(ref.targets.flat()),
    cuSeqlens: Int32Array.from(cu),
  };
}

describe('LoRA conformance with PEFT', { skip: skipReason ?? false }, () => {
  let work = '';
  const refs = new Map<string, Reference>();

  before(() => {
    work = mkdtempSync(join(tmpdir(), 'zn-lora-conformance-'));
    runPython(python!, join(root, 'test', 'conformance', 'lora_reference.py'), [work]);
    for (const name of Object.keys(CASES)) refs.set(name, JSON.parse(readFileSync(join(work, name, 'reference.json'), 'utf8')) as Reference);
  });

  after(() => rmSync(work, { recursive: true, force: true }));

  async function adapted(name: string): Promise<NativeModel> {
    const config = readMistralConfig(join(work, name, 'base'));
    const addon = loadNative('cpu');
    const probe = new addon.Model({ config: nativeModelConfig(config), maxTokens: 32, trainable: false });
    const frozen = probe.parameters().map((p) => p.name);
    probe.dispose();
    const model = new addon.Model({ config: nativeModelConfig(config), maxTokens: 32, trainable: true, frozen, lora: CASES[name] });
    assert.deepEqual((await model.loadWeights({ files: [join(work, name, 'base', 'model.safetensors')] })).unexpected, []);
    const { unexpected } = await model.loadAdapters({ files: [join(work, name, 'adapter', 'adapter_model.safetensors')] });
    assert.deepEqual(unexpected, [], 'every tensor PEFT saved is one of our adapter parameters');
    return model;
  }

  for (const name of Object.keys(CASES)) {
    it(`${name}: log-probs and every lora_A/lora_B gradient within 1e-4 of PEFT; the base frozen`, async () => {
      const ref = refs.get(name)!;
      const model = await adapted(name);
      const adapterNames = model.adapterParameters().map((p) => p.name);
      assert.deepEqual([...adapterNames].sort(), Object.keys(ref.grads).sort(), 'the same adapted modules as PEFT');
      await model.zeroGrad({});
      const { logp } = await model.forward(packed(ref));
      await model.backward({ dlogp: Float32Array.from(ref.weights) });
      assert.ok(relError(logp, ref.logp) < 1e-4, `logp: ${relError(logp, ref.logp)}`);
      assert.ok(relError(ref.logp, ref.logp_base) > 1e-2, 'the adapters change the log-probs');
      for (const key of adapterNames) {
        const err = relError(model.getGradient({ name: key }), ref.grads[key]);
        assert.ok(err < 1e-4, `d loss / d ${key}: relative error ${err}`);
      }
      assert.throws(() => model.getGradient({ name: 'model.layers.0.self_attn.q_proj.weight' }), /is frozen/);
      model.setAdaptersEnabled({ enabled: false });
      const base = (await model.logprobs(packed(ref))).logp;
      assert.ok(relError(base, ref.logp_base) < 1e-4, `adapters off: ${relError(base, ref.logp_base)}`);
      model.dispose();
    });
  }
});
