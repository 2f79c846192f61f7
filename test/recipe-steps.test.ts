/**
 * The recipe-shaped step benchmark (issue 21): its FLOP count against sums written out here for
 * Mistral-7B at the recipe's shapes, MFU and host-share arithmetic, the memory plan's residency
 * choice, and a run of the very runner the GPU uses, on this CPU, scaled down (the tiny model;
 * the same micro-batch structure, accumulation and reference), whose JSON the device check's
 * table (bench/device_report.py) then prints. No speed is asserted.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';

import { PRESETS } from '../lib/bench/presets.js';
import { checkTargets, datasheetPeak, RECIPE_PRESETS, recipeStepFlops, resolveShape } from '../lib/bench/recipe-shapes.js';
import { summarize, type RecipeStepResult, type RecipeTimedStep } from '../lib/bench/recipe-steps.js';
import { chooseResidency, CUDA_LIBRARY_RESERVE, type Residency } from '../lib/bench/residency.js';
import { mistralConfig } from '../lib/model/init.js';
import { modelMemoryPlan, type MemoryPlan } from '../lib/model/model.js';
import { packageRoot } from '../lib/native.js';

const mistral7b = mistralConfig(PRESETS['mistral-7b'].model);
const tiny = mistralConfig(PRESETS.tiny.model);

/** Exact integer arithmetic, then a double: the step counts pass 2^53. */
const big = (...terms: bigint[]) => Number(terms.reduce((a, b) => a + b, 0n));
const near = (actual: number, expected: number, what: string) => assert.ok(Math.abs(actual - expected) <= 1e-12 * Math.abs(expected), `${what}: ${actual} vs ${expected}`);

describe('recipe step FLOPs', () => {
  // Mistral-7B: per layer q and o 4096x4096, k and v 1024x4096, gate/up/down 14336x4096; lm_head 32000x4096.
  const N = 32n * (2n * 4096n * 4096n + 2n * 1024n * 4096n + 3n * 14336n * 4096n) + 32000n * 4096n;
  // Attention forward per visible (query, key) pair: QK^T and PV, 2 FLOPs a multiply-add, every head of every layer.
  const perPair = 4n * 32n * 32n * 128n;

  it('mistral-7b-sft: 6N x 8 x 16 x 2048 tokens + 3 x attention over 128 causal 2048-token documents (window 4096 wider)', () => {
    const f = recipeStepFlops(mistral7b, RECIPE_PRESETS['mistral-7b-sft'].shape, null);
    assert.equal(Number(N), 7_110_393_856);
    assert.equal(f.matmul_parameters, Number(N));
    assert.equal(f.policy_tokens, 262_144);
    assert.equal(f.reference_tokens, 0);
    const pairs = (2048n * 2049n) / 2n;
    near(f.flops, big(6n * N * 262_144n, 3n * 128n * pairs * perPair), 'SFT step FLOPs');
    assert.equal(f.reference_flops, 0);
  });

  it('mistral-7b-dpo: + 2N per reference token and one attention forward over the reference documents; precomputed: none', () => {
    const shape = RECIPE_PRESETS['mistral-7b-dpo'].shape;
    const pairs = (1024n * 1025n) / 2n;
    const policy = big(6n * N * 65_536n, 3n * 64n * pairs * perPair);
    const reference = big(2n * N * 65_536n, 64n * pairs * perPair);
    const withModel = recipeStepFlops(mistral7b, shape, 'model');
    assert.equal(withModel.policy_tokens, 4 * 8 * 2 * 1024);
    assert.equal(withModel.reference_tokens, 65_536);
    near(withModel.policy_flops, policy, 'DPO policy FLOPs');
    near(withModel.reference_flops, reference, 'DPO reference FLOPs');
    near(withModel.flops, policy + reference, 'DPO step FLOPs');
    const precomputed = recipeStepFlops(mistral7b, shape, 'precomputed');
    assert.equal(precomputed.reference_tokens, 0);
    near(precomputed.flops, policy, 'DPO step FLOPs, precomputed reference');
  });

  it('a scaled-down shape keeps the structure; bad prompt lengths are refused', () => {
    const { shape, overridden } = resolveShape(RECIPE_PRESETS['mistral-7b-dpo'], { microBatches: 2, rows: 2, seqLen: 32, promptLen: 8 });
    assert.equal(overridden, true);
    assert.deepEqual(shape, { mode: 'dpo', microBatches: 2, rows: 2, seqLen: 32, promptLen: 8 });
    assert.equal(resolveShape(RECIPE_PRESETS['mistral-7b-sft'], {}).overridden, false);
    assert.throws(() => resolveShape(RECIPE_PRESETS['mistral-7b-dpo'], { seqLen: 32 }), /--prompt-len must be at least 1 and below --seq-len \(32\), got 256/);
  });
});

describe('datasheet peaks by card name', () => {
  it('H100 SXM and H200 at 989.4 dense bf16 TFLOP/s; anything else an unknown card', () => {
    assert.deepEqual(datasheetPeak('NVIDIA H100 80GB HBM3'), { card: 'H100 SXM', tflops: 989.4 });
    assert.deepEqual(datasheetPeak('NVIDIA H200'), { card: 'H200', tflops: 989.4 });
    assert.deepEqual(datasheetPeak('NVIDIA H100 PCIe'), { card: 'unknown card', tflops: null });
    assert.deepEqual(datasheetPeak('NVIDIA A100-SXM4-80GB'), { card: 'unknown card', tflops: null });
  });
});

describe('residency chosen by the memory plan', () => {
  const plan = (total: number, host = 0): MemoryPlan => ({ weights: total, grads: 0, optimizer: 0, activations: 0, logitsChunks: 0, total, host });

  it('CPU: the native plans of the tiny model; checkpointing only when the plain plan does not fit', () => {
    const planOf = (r: Residency) => modelMemoryPlan(tiny, { dtype: 'f32', maxTokens: 4096, trainable: true, ...r });
    const plain = planOf({ gradientCheckpointing: false, offloadOptimizer: false }).total;
    const checkpointed = planOf({ gradientCheckpointing: true, offloadOptimizer: false }).total;
    assert.ok(checkpointed < plain, `checkpointing saves activations: ${checkpointed} < ${plain}`);
    const roomy = chooseResidency({ device: 'cpu', planOf, referenceBytes: 0, freeBytes: plain, freeHostBytes: plain });
    assert.deepEqual([roomy.gradientCheckpointing, roomy.offloadOptimizer], [false, false]);
    assert.equal(roomy.candidates.length, 2, 'no offloading on the CPU');
    const tight = chooseResidency({ device: 'cpu', planOf, referenceBytes: 0, freeBytes: plain - 1, freeHostBytes: plain });
    assert.deepEqual([tight.gradientCheckpointing, tight.offloadOptimizer], [true, false]);
    assert.deepEqual(tight.candidates.map((c) => c.fits), [false, true]);
    assert.throws(() => chooseResidency({ device: 'cpu', planOf, referenceBytes: 0, freeBytes: checkpointed - 1, freeHostBytes: plain }), /no residency fits/);
  });

  it('GPU: resident first, then checkpointing, then the offloaded optimizer; the reference and the libraries\' reserve come off first', () => {
    // The CUDA plans of Mistral-7B at a DPO micro-batch (16,384 tokens, bf16), GiB.
    const G = 2 ** 30;
    const plans: Record<string, MemoryPlan> = {
      'false,false': plan(200.6 * G),
      'true,false': plan(134.7 * G),
      'false,true': plan(119.7 * G, 81.1 * G),
      'true,true': plan(53.7 * G, 81.1 * G),
    };
    const planOf = (r: Residency) => plans[`${r.gradientCheckpointing},${r.offloadOptimizer}`]!;
    const choose = (free: number, reference: number, host = 100 * G) => chooseResidency({ device: 'cuda', planOf, referenceBytes: reference, freeBytes: free, freeHostBytes: host });
    // An H200 (about 139.8 GiB free) with precomputed reference log-probs: all resident, recomputing.
    const h200 = choose(139.8 * G, 0);
    assert.deepEqual([h200.gradientCheckpointing, h200.offloadOptimizer], [true, false]);
    assert.equal(h200.available_bytes, 139.8 * G - CUDA_LIBRARY_RESERVE);
    // The same card with the frozen reference (16.5 GiB) in the step: the optimizer goes to the
    // host, and the room that leaves keeps every layer's activations (no recomputation).
    const withReference = choose(139.8 * G, 16.5 * G);
    assert.deepEqual([withReference.gradientCheckpointing, withReference.offloadOptimizer], [false, true]);
    assert.deepEqual(withReference.candidates.map((c) => c.fits), [false, false, true, true]);
    assert.equal(withReference.reference_bytes, 16.5 * G);
    // An H100 (79 GiB free): offloaded and checkpointing; too little host memory for the offload: none fits.
    const h100 = choose(79 * G, 16.5 * G);
    assert.deepEqual([h100.gradientCheckpointing, h100.offloadOptimizer], [true, true]);
    assert.throws(() => choose(79 * G, 16.5 * G, 64 * G), /no residency fits: .*64\.0 GiB of host memory/);
  });
});

/** A timed step with these phases (seconds) and the optimizer's own timing of its grad norm. */
function step(fb: number, ref: number, zero: number, opt: number, other: number, clip: number): RecipeTimedStep {
  return {
    step_s: fb + ref + zero + opt + other,
    phases_s: { forward_backward: fb, reference: ref, zero_grad: zero, optimizer: opt, other },
    micro_batches_s: [fb / 2, fb / 2],
    optimizer_detail: { clip_s: clip },
    loss: Math.LN2,
  };
}

describe('MFU, host share and targets', () => {
  it('MFU = step FLOPs / median step time / peak; the host share is other + the offloaded optimizer less the device grad norm', () => {
    const shape = RECIPE_PRESETS['mistral-7b-dpo'].shape;
    const steps = [step(6, 1.5, 0.1, 2, 0.4, 0.05), step(5, 1.5, 0.1, 2, 0.2, 0.05), step(7, 1.5, 0.1, 2, 0.6, 0.05)];
    const result = summarize({
      options: { preset: 'mistral-7b-dpo', model: 'mistral-7b', shape, shapeOverridden: false, reference: 'model', device: 'cuda', precision: 'bf16', steps: 3, warmupMicroBatches: 1, modelDir: '', measuredPeak: { tflops: 800, how: 'test' } },
      config: mistral7b,
      residency: { gradientCheckpointing: true, offloadOptimizer: true, chosen_by: 'memory plan', available_bytes: 0, available_host_bytes: 0, reference_bytes: 0, candidates: [] },
      steps,
      losses: [],
      precomputeS: null,
      measuredPeak: { tflops: 800, how: 'test' },
      deviceName: 'NVIDIA H100 80GB HBM3',
      threads: 16,
      memory: { device_peak_bytes: 1, device_planned_bytes: 1, host_rss_peak_bytes: 1, host_planned_bytes: 1 },
    });
    const flops = recipeStepFlops(mistral7b, shape, 'model').flops;
    assert.equal(result.step_s, 10); // the median of 10, 8.8 and 11.2
    near(result.tokens_per_s, 65_536 / 10, 'tokens/s');
    near(result.achieved_tflops, flops / 10 / 1e12, 'TFLOP/s');
    near(result.mfu_measured!, flops / 10 / 800e12, 'MFU against the measured GEMM rate');
    near(result.mfu_datasheet!, flops / 10 / 989.4e12, 'MFU against the datasheet');
    // mean other 0.4 + mean optimizer 2 - mean clip 0.05, over the mean step 10.
    near(result.host_share, (0.4 + 2 - 0.05) / 10, 'host share');
    assert.equal(result.peak.datasheet_card, 'H100 SXM');
    const mfu = result.targets.find((t) => t.name.startsWith('DPO MFU'))!;
    assert.equal(mfu.met, result.mfu_datasheet! >= 0.45);
    assert.equal(result.targets.find((t) => t.name.startsWith('host share'))!.met, false);
  });

  it('targets: met / not met on the GPU at the recipe\'s shape; n/a on a CPU or a scaled-down shape', () => {
    const sft = (tokensPerS: number, device: 'cpu' | 'cuda', shapeOverridden = false) => checkTargets({ mode: 'sft', device, shapeOverridden, tokensPerS, mfuDatasheet: 0.4, hostShare: 0.05 });
    assert.deepEqual(sft(10_500, 'cuda').map((t) => t.met), [true, true]);
    assert.deepEqual(sft(9_000, 'cuda').map((t) => t.met), [false, true]);
    assert.deepEqual(sft(10_500, 'cpu').map((t) => t.met), [null, null]);
    assert.deepEqual(sft(10_500, 'cuda', true).map((t) => t.met), [null, null]);
    const unknownCard = checkTargets({ mode: 'dpo', device: 'cuda', shapeOverridden: false, tokensPerS: 1, mfuDatasheet: null, hostShare: 0.2 });
    assert.deepEqual(unknownCard.map((t) => t.met), [null, false]);
    assert.equal(unknownCard[0]!.note, 'unknown card: no datasheet peak');
  });
});

describe('the recipe steps on this CPU, scaled down', () => {
  const dir = mkdtempSync(join(tmpdir(), 'zn-recipe-test-'));
  after(() => rmSync(dir, { recursive: true, force: true }));
  const steps = join(packageRoot(), 'dist', 'bench', 'steps.js');
  const run = (...args: string[]) => spawnSync(process.execPath, [steps, ...args, '--cache-dir', join(dir, 'cache'), '--model-preset', 'tiny', '--rows', '2', '--seq-len', '32'], { encoding: 'utf8', timeout: 240_000 });
  let sft: { results: RecipeStepResult[] };
  let dpo: { results: RecipeStepResult[] };
  let sftStdout = '';

  before(() => {
    const sftRun = run('--preset', 'mistral-7b-sft', '--micro-batches', '3', '--steps', '2', '--json', join(dir, 'sft.json'));
    assert.equal(sftRun.status, 0, sftRun.stderr);
    sftStdout = sftRun.stdout;
    sft = JSON.parse(readFileSync(join(dir, 'sft.json'), 'utf8'));
    const dpoRun = run('--preset', 'mistral-7b-dpo', '--micro-batches', '2', '--prompt-len', '8', '--reference', 'both', '--json', join(dir, 'dpo.json'));
    assert.equal(dpoRun.status, 0, dpoRun.stderr);
    dpo = JSON.parse(readFileSync(join(dir, 'dpo.json'), 'utf8'));
  });

  /** The fields every result carries, its phases against its steps, and its FLOPs against a hand count for the tiny model. */
  function checkResult(r: RecipeStepResult, microBatches: number, expectedFlops: number) {
    assert.equal(r.kind, 'recipe-step');
    assert.equal(r.model, 'tiny');
    assert.equal(r.shape_overridden, true);
    assert.equal(r.device, 'cpu');
    assert.equal(r.shape.microBatches, microBatches);
    assert.equal(r.residency.chosen_by, 'memory plan');
    assert.equal(r.residency.offloadOptimizer, false);
    assert.ok(r.residency.candidates.length === 2 && r.residency.candidates.some((c) => c.fits));
    near(r.flops.flops, expectedFlops, 'step FLOPs');
    assert.equal(r.steps.length, r.steps_s.length);
    for (const s of r.steps) {
      const p = s.phases_s;
      const sum = p.forward_backward + p.reference + p.zero_grad + p.optimizer + p.other;
      assert.ok(p.forward_backward > 0 && p.optimizer > 0 && p.zero_grad >= 0 && p.other >= 0, JSON.stringify(p));
      assert.ok(sum <= s.step_s * (1 + 1e-9) + 1e-9, `phases ${sum} <= step ${s.step_s}`);
      assert.ok(p.forward_backward + p.reference + p.zero_grad + p.optimizer <= s.step_s, 'the timed phases fit in the step');
      assert.equal(s.micro_batches_s.length, microBatches, 'one forward+backward per micro-batch');
      near(s.micro_batches_s.reduce((a, b) => a + b, 0), p.forward_backward, 'micro-batches sum to forward+backward');
      // The CPU model's own timing of its step (profileSteps): the grad norm and the AdamW pass,
      // inside the step's optimizer phase; the GPU-only parts absent.
      const detail = s.optimizer_detail!;
      assert.deepEqual(Object.keys(detail).sort(), ['clip_s', 'host_adamw_s']);
      assert.ok(detail.clip_s! > 0 && detail.host_adamw_s! > 0 && detail.clip_s! + detail.host_adamw_s! <= p.optimizer, JSON.stringify(detail));
    }
    near(r.tokens_per_s * r.step_s, r.policy_tokens_per_step, 'tokens/s x step');
    near(r.achieved_tflops, r.flops.flops / r.step_s / 1e12, 'achieved TFLOP/s');
    if (r.peak.measured_tflops !== null) near(r.mfu_measured!, r.achieved_tflops / r.peak.measured_tflops, 'MFU = achieved / measured peak');
    assert.equal(r.mfu_datasheet, null, 'no datasheet peak for a CPU');
    assert.ok(r.host_share >= 0 && r.host_share < 1, `host share ${r.host_share}`);
    assert.equal(r.memory.device_peak_bytes, null);
    assert.ok(r.memory.host_rss_peak_bytes > r.memory.device_planned_bytes && r.memory.device_planned_bytes > 0);
    assert.ok(r.targets.length === 2 && r.targets.every((t) => t.met === null && /CPU run/.test(t.note ?? '')));
  }

  it('SFT: 3 micro-batches of 2 x 32 tokens, 2 timed steps, a warm-up micro-batch', () => {
    const [r] = sft.results;
    const N = 4 * (2 * 128 * 128 + 2 * 64 * 128 + 3 * 352 * 128) + 32000 * 128; // tied lm_head still multiplies
    const attention = 4 * 4 * 4 * 32 * ((32 * 33) / 2); // per 32-token document, window 256 wider
    checkResult(r!, 3, 6 * N * 192 + 3 * 6 * attention);
    assert.equal(r!.policy_tokens_per_step, 3 * 2 * 32);
    assert.equal(r!.steps.length, 2);
    assert.equal(r!.losses.length, 3, 'the warm-up step and two timed steps');
    assert.ok(Math.abs(r!.losses[0]! - Math.log(32000)) < 0.2, `random init: loss near ln(vocab), got ${r!.losses[0]}`);
    assert.ok(r!.steps.every((s) => s.phases_s.reference === 0));
    assert.match(sftStdout, /\| mistral-7b-sft \(scaled down: tiny, 3 x 2 x 32\) \| - \| cpu \| everything resident, no recomputation \|/);
    assert.match(sftStdout, /Targets \(issue 21, one H100\):\n- mistral-7b-sft: SFT tokens\/s >= 10000: \d+ -> n\/a/);
  });

  it('DPO: the frozen reference in the step, and precomputed by the policy before its first update: the same losses', () => {
    const [withModel, precomputed] = dpo.results;
    const N = 4 * (2 * 128 * 128 + 2 * 64 * 128 + 3 * 352 * 128) + 32000 * 128;
    const attention = 4 * 4 * 4 * 32 * ((32 * 33) / 2);
    const policy = 6 * N * 256 + 3 * 8 * attention;
    checkResult(withModel!, 2, policy + 2 * N * 256 + 8 * attention);
    checkResult(precomputed!, 2, policy);
    assert.equal(withModel!.reference, 'model');
    assert.equal(precomputed!.reference, 'precomputed');
    assert.ok(withModel!.phases_s.reference > 0, 'the reference ran in the step');
    assert.equal(precomputed!.phases_s.reference, 0);
    assert.ok(precomputed!.precompute_s! > 0 && withModel!.precompute_s === null);
    assert.ok(withModel!.residency.reference_bytes > 0 && precomputed!.residency.reference_bytes === 0);
    // Before the first update the policy is the reference: -log sigmoid(0).
    assert.ok(Math.abs(withModel!.losses[0]! - Math.LN2) < 1e-6, `first DPO loss ${withModel!.losses[0]}`);
    for (let i = 0; i < withModel!.losses.length; i++) assert.ok(Math.abs(withModel!.losses[i]! - precomputed!.losses[i]!) < 1e-6, `loss ${i}`);
  });

  it('bench/device_report.py prints the recipe-steps table, the phases and the targets (met / not met / n/a)', () => {
    // The CPU run as recorded, and the same step as an H100 at the recipe's shape would report it.
    const [r] = dpo.results;
    const gpu = summarize({
      options: { preset: r!.preset, model: 'mistral-7b', shape: RECIPE_PRESETS['mistral-7b-dpo'].shape, shapeOverridden: false, reference: 'model', device: 'cuda', precision: 'bf16', steps: 1, warmupMicroBatches: 1, modelDir: '', measuredPeak: { tflops: 790, how: 'passed in (--gemm-tflops)' } },
      config: mistral7b,
      residency: { ...r!.residency, offloadOptimizer: true, gradientCheckpointing: true },
      steps: [step(5.4, 1.8, 0.01, 2.1, 0.05, 0.02)],
      losses: [Math.LN2],
      precomputeS: null,
      measuredPeak: { tflops: 790, how: 'passed in (--gemm-tflops)' },
      deviceName: 'NVIDIA H100 80GB HBM3',
      threads: 16,
      memory: { device_peak_bytes: 70 * 2 ** 30, device_planned_bytes: 70 * 2 ** 30, host_rss_peak_bytes: 90 * 2 ** 30, host_planned_bytes: 81 * 2 ** 30 },
    });
    // And an SFT step of 29 s: 262,144 / 29 = 9,039 tokens/s, short of 10,000.
    const sftGpu = summarize({
      options: { preset: 'mistral-7b-sft', model: 'mistral-7b', shape: RECIPE_PRESETS['mistral-7b-sft'].shape, shapeOverridden: false, reference: null, device: 'cuda', precision: 'bf16', steps: 1, warmupMicroBatches: 1, modelDir: '', measuredPeak: { tflops: 790, how: 'passed in (--gemm-tflops)' } },
      config: mistral7b,
      residency: { ...r!.residency, offloadOptimizer: true, gradientCheckpointing: true },
      steps: [step(26.9, 0, 0.01, 2.09, 0, 0.02)],
      losses: [10.4],
      precomputeS: null,
      measuredPeak: { tflops: 790, how: 'passed in (--gemm-tflops)' },
      deviceName: 'NVIDIA H100 80GB HBM3',
      threads: 16,
      memory: { device_peak_bytes: 67 * 2 ** 30, device_planned_bytes: 67 * 2 ** 30, host_rss_peak_bytes: 90 * 2 ** 30, host_planned_bytes: 81 * 2 ** 30 },
    });
    assert.equal(sftGpu.step_s, 29);
    const recorded = join(dir, 'gpu.json');
    writeFileSync(recorded, JSON.stringify({ kind: 'recipe-steps', results: [gpu, sftGpu] }));
    const report = spawnSync('python3', [join(packageRoot(), 'bench', 'device_report.py'), '/dev/null', '--recipe', join(dir, 'dpo.json'), recorded, join(dir, 'absent.json')], { encoding: 'utf8' });
    assert.equal(report.status, 0, report.stderr);
    const out = report.stdout;
    assert.match(out, /Recipe steps: one optimizer step as recipes\/zephyr-7b-beta\.yaml runs it/);
    assert.match(out, /no report: .*absent\.json: No such file or directory/);
    const line = (label: string) => out.split('\n').find((l) => l.startsWith(label)) ?? '';
    const gpuRow = line('mistral-7b-dpo (model ref)  ');
    assert.ok(gpuRow.includes('NVIDIA H100 80GB HBM3') && gpuRow.includes('offloaded optimizer, checkpointing'), gpuRow);
    const cells = gpuRow.split(/\s{2,}/);
    assert.equal(cells.at(-7), (65_536 / gpu.step_s).toFixed(0), 'tokens/s');
    assert.equal(cells.at(-5), `${(100 * gpu.mfu_measured!).toFixed(1)}%`, 'MFU against the GEMM rate');
    assert.equal(cells.at(-4), `${(100 * gpu.mfu_datasheet!).toFixed(1)}%`, 'MFU against the datasheet');
    assert.equal(cells.at(-1), `${(100 * gpu.host_share).toFixed(1)}%`, 'host share');
    assert.match(out, /mistral-7b-dpo \(model ref\) scaled down +cpu/);
    // The GPU row's targets: MFU 36.6% and host share 22%: not met; the CPU rows': n/a.
    assert.ok(gpu.mfu_datasheet! < 0.45 && gpu.host_share > 0.1);
    assert.match(out, /mistral-7b-dpo \(model ref\) +DPO MFU \(datasheet peak\) +>= 45% +\d+\.\d% +NOT MET/);
    assert.match(out, /mistral-7b-dpo \(model ref\) +host share of the step +< 10% +\d+\.\d% +NOT MET/);
    assert.match(out, /scaled down +DPO MFU \(datasheet peak\) +>= 45% +not measured +n\/a \(a CPU run/);
    assert.match(out, /mistral-7b-sft +SFT tokens\/s +>= 10000 +9039 +NOT MET/);
    // 2.09 - 0.02 of host optimizer over 29 s: 7.1%, under 10%.
    assert.match(out, /mistral-7b-sft +host share of the step +< 10% +7\.1% +met/);
    assert.match(out, /time by phase, seconds per step/);
  });
});
