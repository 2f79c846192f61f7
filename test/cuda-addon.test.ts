/**
 * The CUDA addon (bash scripts/build-cuda.sh builds it; CI does): it loads on any machine, and
 * without a usable GPU every call is an Error saying why (never a crash) while loadNative('cuda')
 * is a ZnError and 'auto' falls back to the CPU. With a GPU, its kernel-level functions agree
 * with the CPU addon and with float64 references written here.
 */
import assert from 'node:assert/strict';
import { createRequire } from 'node:module';
import { describe, it } from 'node:test';

import { ZnError } from '../lib/errors.js';
import { BACKEND_MEMBERS, loadNative } from '../lib/native.js';
import { cudaAddonFile } from './support/cuda.js';

const require = createRequire(import.meta.url);

interface CudaAddon {
  info(): { backend: string; deviceName: string; computeCapability: string; totalMemory: number; cublasLt: boolean };
  sumOfSquares(options: { values: Float32Array }): Promise<number>;
  dpoLoss(options: Record<string, unknown>): { losses: Float32Array; dPolicyChosen: Float32Array; dPolicyRejected: Float32Array; metrics: Record<string, number> };
  gemm(options: Record<string, unknown>): Promise<Float32Array>;
}

const skip = cudaAddonFile ? false : 'the CUDA addon is not built here (bash scripts/build-cuda.sh builds it)';

function gpuError(addon: CudaAddon): Error | undefined {
  try {
    addon.info();
    return undefined;
  } catch (error) {
    return error as Error;
  }
}

/** Deterministic values in [-1, 1): the same inputs on every run, never zeros. */
function values(n: number, seed: number): Float32Array {
  const out = new Float32Array(n);
  let state = seed;
  for (let i = 0; i < n; i++) {
    state = (Math.imul(state, 1664525) + 1013904223) >>> 0;
    out[i] = state / 2 ** 31 - 1;
  }
  return out;
}

function relError(out: Float32Array, ref: Float64Array): number {
  let diff = 0;
  let norm = 0;
  for (let i = 0; i < ref.length; i++) {
    diff += (out[i]! - ref[i]!) ** 2;
    norm += ref[i]! ** 2;
  }
  return Math.sqrt(diff / norm);
}

describe('CUDA addon', { skip }, () => {
  const addon = cudaAddonFile ? (require(cudaAddonFile) as CudaAddon) : undefined;
  const noGpu = addon ? gpuError(addon) : undefined;

  // One test per machine state, so no test is skipped: what runs depends on whether a GPU is usable.
  async function withoutGpu(): Promise<void> {
    assert.match(noGpu!.message, /^info: no usable CUDA GPU: /);
    await assert.rejects(addon!.sumOfSquares({ values: new Float32Array([1, 2]) }), /^Error: sumOfSquares: no usable CUDA GPU/);
    assert.throws(
      () => loadNative('cuda'),
      (error: unknown) => error instanceof ZnError && /CUDA backend .* cannot use a GPU: info: no usable CUDA GPU/.test(error.message),
    );
    assert.equal(loadNative('auto').info().backend, 'cpu');
  }

  async function withGpu(): Promise<void> {
    const info = addon!.info();
    assert.equal(info.backend, 'cuda');
    assert.ok(info.deviceName.length > 0 && info.totalMemory > 0);
    const v = values(100_001, 7);
    let expected = 0;
    for (const x of v) expected += x * x;
    assert.ok(Math.abs((await addon!.sumOfSquares({ values: v })) - expected) <= 1e-9 * expected);

    const pairs = 33;
    const dpo = {
      policyChosen: values(pairs, 1).map((x) => x * 20 - 100),
      policyRejected: values(pairs, 2).map((x) => x * 20 - 100),
      refChosen: values(pairs, 3).map((x) => x * 20 - 100),
      refRejected: values(pairs, 4).map((x) => x * 20 - 100),
      beta: 0.1,
      labelSmoothing: 0.1,
    };
    const gpu = addon!.dpoLoss(dpo);
    const cpu = loadNative('cpu').dpoLoss(dpo);
    for (const key of ['losses', 'dPolicyChosen', 'dPolicyRejected'] as const)
      assert.ok(relError(gpu[key], Float64Array.from(cpu[key])) < 1e-6, key);
    for (const [name, value] of Object.entries(cpu.metrics)) assert.ok(Math.abs(gpu.metrics[name]! - value) <= 1e-6 * (1 + Math.abs(value)), name);

    const [M, N, K] = [37, 45, 29];
    const a = values(K * M, 5);
    const b = values(N * K, 6);
    const ref = new Float64Array(M * N);
    for (let i = 0; i < M; i++)
      for (let j = 0; j < N; j++) {
        let sum = 0;
        for (let p = 0; p < K; p++) sum += a[p * M + i]! * b[j * K + p]!;  // transA, transB
        ref[i * N + j] = sum;
      }
    for (const impl of ['auto', 'simple'])
      assert.ok(relError(await addon!.gemm({ transA: true, transB: true, M, N, K, a, b, impl }), ref) < 1e-5, impl);
  }

  it('without a usable GPU: clear errors, a ZnError from loadNative, auto picks the CPU; with one: info, sum of squares, DPO loss as the CPU addon, GEMM against float64', async () => {
    // Everything the package calls on a backend is there (the file functions are the CPU addon's).
    for (const name of BACKEND_MEMBERS) assert.equal(typeof (addon as unknown as Record<string, unknown>)[name], 'function', name);
    if (noGpu) await withoutGpu();
    else await withGpu();
  });
});
