import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, it } from 'node:test';

import { BACKEND_MEMBERS, loadNative, packageRoot, type NativeAddon } from '../lib/native.js';
import { ZnError } from '../lib/errors.js';

const require = createRequire(import.meta.url);
const root = packageRoot();

function exerciseAddon(addon: NativeAddon): Promise<void> {
  const info = addon.info();
  const pkg = require(join(root, 'package.json')) as { version: string };
  assert.equal(info.version, pkg.version);
  assert.equal(info.backend, 'cpu');
  assert.ok(['avx512bf16', 'avx2', 'scalar'].includes(info.cpuPath));
  assert.ok(info.threads >= 1);
  const values = new Float32Array(100_001).map((_, i) => (i % 7) - 3);
  let expected = 0;
  for (const v of values) expected += v * v;
  return addon.sumOfSquares({ values }).then((sum) => assert.equal(sum, expected));
}

describe('native addon', () => {
  it('loads through node-gyp-build and runs work on the thread pool', async () => {
    await exerciseAddon(loadNative('cpu'));
  });

  it('the cmake-js build loads and behaves the same', async () => {
    const file = join(root, 'build-cmake', 'Release', 'zn_cpu.node');
    assert.ok(existsSync(file), `${file} missing: npm test builds it with cmake-js first`);
    await exerciseAddon(require(file) as NativeAddon);
  });

  it('turns bad arguments into errors naming the operation and field', async () => {
    const addon = loadNative('cpu');
    assert.throws(() => addon.sumOfSquares({} as never), /sumOfSquares: missing option 'values'/);
    assert.throws(
      () => addon.sumOfSquares({ values: [1, 2] as never }),
      /sumOfSquares: 'values' must be a Float32Array/,
    );
    await assert.rejects(addon.sumOfSquares({ values: new Float32Array([1, Number.NaN]) }), /values\[1\] is not finite/);
  });

  it('an addon file without every backend member (a stale build) is a ZnError naming what it lacks', () => {
    for (const name of BACKEND_MEMBERS) assert.equal(typeof (loadNative('cpu') as unknown as Record<string, unknown>)[name], 'function', name);
    const stale = join(mkdtempSync(join(tmpdir(), 'zn-stale-addon-')), 'zn_cpu.cjs');
    writeFileSync(stale, 'exports.info = () => ({}); exports.Model = function Model() {};\n');
    const saved = process.env.ZN_ADDON_PATH;
    process.env.ZN_ADDON_PATH = stale;
    try {
      assert.throws(
        () => loadNative('cpu'),
        (error: unknown) =>
          error instanceof ZnError && error.message.includes(stale) && /lacks sumOfSquares, dpoLoss, modelMemoryPlan, generationMemory: it is from an older build/.test(error.message),
      );
    } finally {
      if (saved === undefined) delete process.env.ZN_ADDON_PATH;
      else process.env.ZN_ADDON_PATH = saved;
    }
  });

  it('a missing CUDA backend is a catchable ZnError', () => {
    const saved = process.env.ZN_CUDA_ADDON;
    process.env.ZN_CUDA_ADDON = join(root, 'no-such-dir', 'zn_cuda.node');
    try {
      if (existsSync(join(root, 'build-cuda', 'cuda', 'zn_cuda.node'))) return;
      assert.throws(() => loadNative('cuda'), (error: unknown) => error instanceof ZnError && /CUDA backend/.test(error.message));
      assert.equal(loadNative('auto').info().backend, 'cpu');
    } finally {
      if (saved === undefined) delete process.env.ZN_CUDA_ADDON;
      else process.env.ZN_CUDA_ADDON = saved;
    }
  });
});
