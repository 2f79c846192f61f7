import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { join } from 'node:path';
import { describe, it } from 'node:test';

import { loadNative, packageRoot, type NativeAddon } from '../lib/native.js';
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
