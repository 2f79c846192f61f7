/**
 * Greedy generation against transformers' `generate(do_sample=False)`: tiny random Mistral
 * models written by test/conformance/generate_reference.py (f32, windows 8 and 5 and none;
 * prompts and continuations longer than the window, so the rolling buffer wraps) decode token
 * for token as transformers does with attn_implementation "eager" and "sdpa", every prompt in
 * one engine together (short and long mixed), and again with fewer slots than prompts and
 * prompts prefilled in chunks. transformers runs each prompt alone (batch 1, no padding; see the
 * script). The prefill's next-token logits agree to f32 rounding. bf16 (ours) against f32
 * (transformers): the continuations may part only where transformers' top-2 margin is within
 * bf16's logit error; the tokens agreed before the first difference are measured and printed.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';

import { HfTokenizer } from '../../lib/data/tokenizer.js';
import { GenerationEngine } from '../../lib/generate/engine.js';
import { loadModel, type ModelDType } from '../../lib/model/model.js';
import { packageRoot } from '../../lib/native.js';
import { referencePython, runPython } from '../support/python.js';
import { relError } from '../support/reference-batch.js';

interface Reference {
  vocab_size: number;
  prompts: number[][];
  max_new_tokens: number;
  implementations: Record<'eager' | 'sdpa', { tokens: number[][]; margins: number[][] }>;
  first_logits: number[][];
}

const CASES = ['gqa_window8_tied', 'mqa_headdim_window5', 'no_window'] as const;
const GREEDY = { temperature: 0, topK: 0, topP: 1, minP: 0, repetitionPenalty: 1, seed: 0 };
const root = packageRoot();
const { python, skipReason } = referencePython(['torch', 'transformers', 'tokenizers', 'safetensors']);

interface Run {
  tokens: number[][];
}

/** Every prompt through one engine of `slots` sequences (all at once when slots = prompts). */
async function engineGreedy(dir: string, ref: Reference, options: { dtype: ModelDType; slots: number; maxTokens: number }): Promise<Run> {
  const model = await loadModel(dir, { dtype: options.dtype, maxTokens: options.maxTokens });
  try {
    const engine = await GenerationEngine.create(model, HfTokenizer.fromFolder(dir), { maxSequences: options.slots });
    const completions = await Promise.all(
      ref.prompts.map((promptIds) => engine.complete({ promptIds, sampling: GREEDY, maxNewTokens: ref.max_new_tokens, stopTokenIds: [], stop: [] })),
    );
    return { tokens: completions.map((c) => c.tokenIds) };
  } finally {
    model.dispose();
  }
}

/** The prefill's next-token logits of each prompt, through the engine's own path (extend). */
async function firstLogits(dir: string, ref: Reference, dtype: ModelDType): Promise<Float32Array[]> {
  const model = await loadModel(dir, { dtype, maxTokens: 64 });
  try {
    await model.startGeneration(1, 128);
    const out: Float32Array[] = [];
    for (const prompt of ref.prompts) {
      const slot = model.acquireSequence();
      out.push(await model.extend(Int32Array.of(slot), Int32Array.of(prompt.length), Int32Array.from(prompt)));
      model.releaseSequence(slot);
    }
    return out;
  } finally {
    model.dispose();
  }
}

function maxAbsError(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let worst = 0;
  for (let i = 0; i < b.length; i++) worst = Math.max(worst, Math.abs(a[i] - b[i]));
  return worst;
}

/** Tokens agreed before the first difference. */
function agreed(ours: number[], theirs: number[]): number {
  let n = 0;
  while (n < theirs.length && ours[n] === theirs[n]) n++;
  return n;
}

/** Each prompt's first differing step, with transformers' margin there, for messages. */
function differences(ours: number[][], ref: Reference, implementation: 'eager' | 'sdpa'): string[] {
  const { tokens, margins } = ref.implementations[implementation];
  return tokens.flatMap((theirs, p) => {
    const at = agreed(ours[p], theirs);
    if (at === theirs.length && ours[p].length === theirs.length) return [];
    return [`prompt ${p} (${ref.prompts[p].length} tokens) parts at step ${at}: ours ${ours[p].slice(at, at + 4)}, transformers ${theirs.slice(at, at + 4)}, margin ${margins[p][at]}`];
  });
}

describe('greedy generation conformance with transformers generate', { skip: skipReason ?? false }, () => {
  let work = '';
  const refs = new Map<string, Reference>();
  const dir = (name: string) => join(work, name, 'model');

  before(() => {
    work = mkdtempSync(join(tmpdir(), 'zn-generate-conformance-'));
    runPython(python!, join(root, 'test', 'conformance', 'generate_reference.py'), [work]);
    for (const name of CASES) refs.set(name, JSON.parse(readFileSync(join(work, name, 'reference.json'), 'utf8')) as Reference);
  });

  after(() => rmSync(work, { recursive: true, force: true }));

  for (const name of CASES) {
    it(`${name}: f32 greedy equals transformers eager and sdpa token for token, all prompts in one batch`, async (t) => {
      const ref = refs.get(name)!;
      assert.deepEqual(ref.implementations.sdpa.tokens, ref.implementations.eager.tokens, 'transformers eager and sdpa agree');
      const run = await engineGreedy(dir(name), ref, { dtype: 'f32', slots: ref.prompts.length, maxTokens: 64 });
      for (const implementation of ['eager', 'sdpa'] as const) {
        assert.deepEqual(differences(run.tokens, ref, implementation), [], implementation);
      }
      const margin = Math.min(...ref.implementations.eager.margins.flat());
      t.diagnostic(`${name}: ${ref.prompts.length} prompts of ${ref.prompts.map((p) => p.length)} tokens, ${ref.max_new_tokens} new each; smallest top-2 margin ${margin.toFixed(4)}`);
    });

    it(`${name}: f32 greedy is the same with fewer slots than prompts and prompts prefilled in chunks`, async () => {
      const ref = refs.get(name)!;
      // maxTokens 8: the longer prompts take several prefill calls; 2 slots: sequences join as others leave.
      const run = await engineGreedy(dir(name), ref, { dtype: 'f32', slots: 2, maxTokens: 8 });
      assert.deepEqual(differences(run.tokens, ref, 'eager'), []);
    });

    it(`${name}: the prefill's next-token logits are transformers' to f32 rounding, far inside the margins`, async (t) => {
      const ref = refs.get(name)!;
      const ours = await firstLogits(dir(name), ref, 'f32');
      const errors = ours.map((logits, p) => relError(logits, ref.first_logits[p]));
      const worstAbs = Math.max(...ours.map((logits, p) => maxAbsError(logits, ref.first_logits[p])));
      const margin = Math.min(...ref.implementations.eager.margins.flat());
      t.diagnostic(`${name}: first-step logits relative error ${errors.map((e) => e.toExponential(1))}; max abs ${worstAbs.toExponential(1)}; smallest margin ${margin.toFixed(4)}`);
      for (const error of errors) assert.ok(error < 1e-5, `relative error ${error}`);
      // Identity above is not luck: every greedy choice had a margin far beyond the f32 error.
      assert.ok(margin > 100 * worstAbs, `smallest margin ${margin} vs logit error ${worstAbs}`);
    });

    it(`${name}: bf16 (ours) against f32 (transformers) parts only at a near-tie; agreement measured`, async (t) => {
      const ref = refs.get(name)!;
      const run = await engineGreedy(dir(name), ref, { dtype: 'bf16', slots: ref.prompts.length, maxTokens: 64 });
      const first = await firstLogits(dir(name), ref, 'bf16');
      const firstAbs = Math.max(...first.map((logits, p) => maxAbsError(logits, ref.first_logits[p])));
      const firstRel = Math.max(...first.map((logits, p) => relError(logits, ref.first_logits[p])));
      const { tokens, margins } = ref.implementations.eager;
      const prefixes = tokens.map((theirs, p) => agreed(run.tokens[p], theirs));
      const total = prefixes.reduce((a, b) => a + b, 0);
      const parted = prefixes.flatMap((at, p) => (at < ref.max_new_tokens ? [`prompt ${p} step ${at} margin ${margins[p][at].toFixed(3)}`] : []));
      t.diagnostic(
        `${name}: bf16 agrees for ${prefixes} of ${ref.max_new_tokens} tokens (${total}/${tokens.length * ref.max_new_tokens}); ` +
          `first-step logits vs f32: relative ${firstRel.toExponential(1)}, max abs ${firstAbs.toFixed(3)}; parted at: ${parted.join(', ') || 'none'}`,
      );
      // bf16 keeps 8 significant bits of the weights and matmul inputs: the logits move by about
      // 1% relative (measured at the first step: firstRel). Greedy can flip only where the two
      // best logits are closer than twice that error. Errors grow along a sequence (the cache
      // holds bf16 keys and values, and each layer's error feeds the next), so the bound allows
      // 4x the first step's worst absolute error on each side: a divergence at a margin wider
      // than 8 x firstAbs would be a bug, not rounding.
      assert.ok(firstRel < 3e-2, `bf16 first-step logits relative error ${firstRel}`);
      for (const [p, at] of prefixes.entries()) {
        if (at === ref.max_new_tokens) continue;
        assert.ok(margins[p][at] < 8 * firstAbs, `prompt ${p} parts at step ${at} where transformers' margin is ${margins[p][at]} (bound ${8 * firstAbs})`);
      }
    });
  }
});
