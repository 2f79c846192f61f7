import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, it } from 'node:test';

import { loadNative } from '../lib/native.js';

const addon = loadNative('cpu');

/** bf16 bits of an f32, rounded to nearest even (finite inputs). */
function bf16Bits(value: number): number {
  const bits = new Uint32Array(new Float32Array([value]).buffer)[0]!;
  return ((bits + 0x7fff + ((bits >>> 16) & 1)) >>> 16) & 0xffff;
}

describe('safetensors through the addon', () => {
  it('writes, lists and reads tensors with conversion', async () => {
    const path = join(mkdtempSync(join(tmpdir(), 'zn-st-')), 'w.safetensors');
    const w = new Float32Array([1, -2.5, 1 + 1 / 256, 1 + 3 / 256, 3.14159, -1e-20]);
    const b = new Uint16Array([0x3f80, 0xc2f7]);
    await addon.writeSafetensors({
      path,
      tensors: [
        { name: 'w', dtype: 'F32', shape: [2, 3], data: w },
        { name: 'b', dtype: 'BF16', shape: [2], data: b },
        { name: 'h', dtype: 'F16', shape: [1], data: new Uint16Array([0xc0a0]) },
      ],
      metadata: { format: 'pt', note: 'é' },
    });
    assert.deepEqual(addon.readSafetensorsHeader({ path }), {
      tensors: [
        { name: 'w', dtype: 'F32', shape: [2, 3], dataOffsets: [0, 24] },
        { name: 'b', dtype: 'BF16', shape: [2], dataOffsets: [24, 28] },
        { name: 'h', dtype: 'F16', shape: [1], dataOffsets: [28, 30] },
      ],
      metadata: { format: 'pt', note: 'é' },
    });
    assert.deepEqual(await addon.readTensor({ path, name: 'w', dtype: 'f32' }), w);
    assert.deepEqual(await addon.readTensor({ path, name: 'w', dtype: 'bf16' }), Uint16Array.from(w, bf16Bits));
    assert.deepEqual(await addon.readTensor({ path, name: 'b', dtype: 'f32' }), new Float32Array([1, -123.5]));
    assert.deepEqual(await addon.readTensor({ path, name: 'h', dtype: 'f32' }), new Float32Array([-2.3125]));
  });

  it('turns bad arguments into errors naming the op and field', async () => {
    const path = join(mkdtempSync(join(tmpdir(), 'zn-st-')), 'w.safetensors');
    assert.throws(
      () => addon.writeSafetensors({ path, tensors: [{ name: 'w', dtype: 'F32', shape: [3], data: new Float32Array(2) }] }),
      /writeSafetensors: in 'tensors\[0\]': 'data' has 2 elements, expected 3/,
    );
    assert.throws(
      () => addon.writeSafetensors({ path, tensors: [{ name: 'w', dtype: 'BF16', shape: [2], data: new Float32Array(2) as never }] }),
      /writeSafetensors: in 'tensors\[0\]': 'data' must be a Uint16Array/,
    );
    assert.throws(
      () => addon.writeSafetensors({ path, tensors: [{ name: 'w', dtype: 'I8' as never, shape: [2], data: new Uint16Array(2) }] }),
      /'dtype' must be 'F32', 'BF16' or 'F16', got 'I8'/,
    );
    assert.throws(
      () => addon.writeSafetensors({ path, tensors: [{ name: 'w', dtype: 'F32', shape: [1.5], data: new Float32Array(2) }] }),
      /'shape\[0\]' must be an integer/,
    );
    assert.throws(
      () => addon.writeSafetensors({ path, tensors: [], metadata: { format: 1 } as never }),
      /'metadata.format' must be a string/,
    );
    await assert.rejects(
      addon.writeSafetensors({
        path,
        tensors: [
          { name: 'w', dtype: 'F32', shape: [1], data: new Float32Array(1) },
          { name: 'w', dtype: 'F32', shape: [1], data: new Float32Array(1) },
        ],
      }),
      /writeSafetensors: cannot write '.*w.safetensors': tensor 'w': duplicate tensor name/,
    );
    assert.throws(() => addon.readTensor({ path, name: 'w', dtype: 'f16' as never }), /readTensor: 'dtype' must be 'f32' or 'bf16', got 'f16'/);
  });

  it('a corrupt file is a one-line error naming the file and the problem', async () => {
    const path = join(mkdtempSync(join(tmpdir(), 'zn-st-')), 'w.safetensors');
    await addon.writeSafetensors({ path, tensors: [{ name: 'w', dtype: 'F32', shape: [4], data: new Float32Array(4) }] });
    const bytes = readFileSync(path);
    writeFileSync(path, bytes.subarray(0, bytes.length - 1));
    assert.throws(
      () => addon.readSafetensorsHeader({ path }),
      (error: Error) =>
        error.message === `readSafetensorsHeader: safetensors file '${path}': tensor 'w': data_offsets [0, 16] run past the end of the data (15 bytes; file truncated?)`,
    );
    await assert.rejects(addon.readTensor({ path, name: 'w', dtype: 'f32' }), /readTensor: safetensors file .* run past the end/);
    const header = Buffer.from('{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"v":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}');
    const length = Buffer.alloc(8);
    length.writeBigUInt64LE(BigInt(header.length));
    writeFileSync(path, Buffer.concat([length, header, Buffer.alloc(12)]));
    assert.throws(() => addon.readSafetensorsHeader({ path }), /tensor 'v': data_offsets \[4, 12\] overlap tensor 'w'/);
  });
});
