/**
 * LoRA against PEFT: adapters that PEFT built and saved (test/conformance/lora_reference.py,
 * adapter_model.safetensors as PEFT writes it) load by their saved names into the native model
 * over the base's safetensors, and the per-token log-probs and the gradients of
 * loss = sum_t w[t] logp[t] w.r.t. every lora_A and lora_B agree with PEFT's (float64) to 1e-4
 * relative in f32; with the adapters off the log-probs are PEFT's disable_adapter() ones; the
 * frozen base gets no gradient. Cases: all-linear (r 4), q/v/down with rsLoRA (r 2), and q/v
 * (r 2) with modules_to_save lm_head and embed_tokens, whose trained copies PEFT saves in the
 * adapter file (base_model.model.lm_head.weight): their log-probs and gradients too.
 * Through lib/model: loadModel reads PEFT's adapter folder (its resolved full-name
 * target_modules too), one AdamW step, saveAdapter writes a folder PEFT's
 * PeftModel.from_pretrained loads with the same log-probs, and `zephyr-native merge` writes the
 * weights PEFT's merge_and_unload makes from that adapter.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';

import { readMistralConfig } from '../../lib/model/config.js';
import { loadModel, nativeModelConfig } from '../../lib/model/model.js';
import { LORA_MODULES, savedModuleParameters } from '../../lib/model/peft.js';
import { loadNative, packageRoot, type NativeModel, type NativeTokenBatch } from '../../lib/native.js';
import { referencePython, runPython } from '../support/python.js';
import { packDocuments, relError } from '../support/reference-batch.js';

interface Reference {
  documents: number[][];
  targets: number[][];
  weights: number[];
  logp: number[];
  logp_base: number[];
  grads: Record<string, number[]>;
}

const CASES: Record<string, { rank: number; alpha: number; rslora: boolean; targetModules: string[]; modulesToSave?: string[] }> = {
  all_linear: { rank: 4, alpha: 8, rslora: false, targetModules: ['all-linear'] },
  qv_rslora: { rank: 2, alpha: 16, rslora: true, targetModules: ['q_proj', 'v_proj', 'down_proj'] },
  modules_to_save: { rank: 2, alpha: 4, rslora: false, targetModules: ['q_proj', 'v_proj'], modulesToSave: ['lm_head', 'embed_tokens'] },
};
const root = packageRoot();
const { python, skipReason } = referencePython(['torch', 'transformers', 'peft', 'safetensors']);

function packed(ref: Reference): NativeTokenBatch {
  return packDocuments(ref.documents, ref.targets);
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
    const saved = savedModuleParameters({ ...CASES[name], dropout: 0 }, config, name);
    const frozen = probe.parameters().map((p) => p.name).filter((n) => !saved.includes(n));
    probe.dispose();
    const lora = { ...CASES[name], modulesToSave: saved };
    const model = new addon.Model({ config: nativeModelConfig(config), maxTokens: 32, trainable: true, frozen, lora });
    assert.deepEqual((await model.loadWeights({ files: [join(work, name, 'base', 'model.safetensors')] })).unexpected, []);
    const { unexpected, absent } = await model.loadAdapters({ files: [join(work, name, 'adapter', 'adapter_model.safetensors')] });
    assert.deepEqual(unexpected, [], 'every tensor PEFT saved is one of our adapter parameters or saved modules');
    assert.deepEqual(absent, [], 'every saved module is in the file');
    return model;
  }

  for (const name of Object.keys(CASES)) {
    it(`${name}: log-probs and every lora_A/lora_B (and saved module) gradient within 1e-4 of PEFT; the base frozen`, async () => {
      const ref = refs.get(name)!;
      const model = await adapted(name);
      // Saved modules by the name PEFT's adapter file gives them (getGradient takes it).
      const savedNames = (CASES[name].modulesToSave ?? []).length > 0 ? ['base_model.model.lm_head.weight', 'base_model.model.model.embed_tokens.weight'] : [];
      const adapterNames = [...model.adapterParameters().map((p) => p.name), ...savedNames];
      assert.deepEqual([...adapterNames].sort(), Object.keys(ref.grads).sort(), 'the same trained parameters as PEFT');
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
      if (savedNames.length === 0) {
        assert.ok(relError(base, ref.logp_base) < 1e-4, `adapters off: ${relError(base, ref.logp_base)}`);
      } else {
        // Off switches the adapters only; PEFT's disable_adapter() also the saved copies (so the
        // trainer's reference for a fresh adapter with saved modules is the base folder instead).
        assert.ok(relError(base, ref.logp_base) > 1e-2, 'the saved modules stay on');
      }
      model.dispose();
    });
  }

  it('loadModel of PEFT adapter folders, a step, saveAdapter and merge: PEFT loads the saved adapter with the same log-probs, and merges to the same weights', async () => {
    const cli = join(root, 'dist', 'lib', 'cli', 'main.js');
    const after = new Map<string, Float32Array>();
    for (const name of Object.keys(CASES)) {
      const ref = refs.get(name)!;
      const base = join(work, name, 'base');
      const model = await loadModel(join(work, name, 'adapter'), { baseModel: base, trainable: true, maxTokens: 32 });
      const { targetModules, ...settings } = model.options.lora!;
      const { targetModules: wanted, ...expected } = CASES[name];
      assert.deepEqual(settings, { ...expected, dropout: 0 }, 'settings read from adapter_config.json');
      // PEFT writes all-linear resolved to every layer's modules by full name.
      assert.deepEqual([...targetModules].sort(), [...(wanted[0] === 'all-linear' ? LORA_MODULES : wanted)].sort());
      assert.ok(relError(await model.logprobs(packed(ref)), ref.logp) < 1e-4, `${name}: loadModel(adapter folder) log-probs`);
      await model.zeroGrad();
      await model.forward(packed(ref));
      await model.backward(Float32Array.from(ref.weights));
      await model.clipAndStep({ lr: 1e-2, weightDecay: 0.01, maxGradNorm: 1 });
      after.set(name, await model.logprobs(packed(ref)));
      await model.saveAdapter(join(work, name, 'ours'), base);
      model.dispose();
      const merged = spawnSync(process.execPath, [cli, 'merge', '--adapter', join(work, name, 'ours'), '--output', join(work, name, 'merged'), '--dtype', 'float32'], { encoding: 'utf8' });
      assert.equal(merged.status, 0, merged.stderr);
      const plain = await loadModel(join(work, name, 'merged'), { maxTokens: 32 });
      assert.ok(relError(await plain.logprobs(packed(ref)), after.get(name)!) < 1e-5, `${name}: merged folder = adapters on`);
      plain.dispose();
    }
    runPython(python!, join(root, 'test', 'conformance', 'lora_reference.py'), ['check', work]);
    const check = JSON.parse(readFileSync(join(work, 'check.json'), 'utf8')) as Record<string, { logp: number[]; merge_max_rel: number }>;
    for (const name of Object.keys(CASES)) {
      const err = relError(after.get(name)!, check[name].logp);
      assert.ok(err < 1e-4, `${name}: PEFT's log-probs with our saved adapter: ${err}`);
      assert.ok(check[name].merge_max_rel < 1e-6, `${name}: merged weights vs PEFT merge_and_unload: ${check[name].merge_max_rel}`);
    }
  });
});
