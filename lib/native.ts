/**
 * Loads the native addon and types its whole surface: the one place TypeScript meets C++.
 *
 * The CPU addon (`zn_cpu.node`) is found by node-gyp-build (build/Release or prebuilds/);
 * ZN_ADDON_PATH points at another build (e.g. the cmake-js one in build-cmake/Release). The CUDA
 * addon (`zn_cuda.node`) lives in `<build>/cuda/`, where node-gyp-build never looks, and is
 * loaded only when asked for (`device: 'cuda'`) or when `auto` finds a usable GPU.
 */
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

import { ZnError } from './errors.js';

const require = createRequire(import.meta.url);

export type Device = 'cpu' | 'cuda' | 'auto';

export interface AddonInfo {
  version: string;
  backend: 'cpu' | 'cuda';
  cpuFeatures: string;
  cpuPath: 'avx512bf16' | 'avx2' | 'scalar';
  threads: number;
  /** CUDA addon only: the GPU it found. */
  deviceName?: string;
}

/** The functions every backend addon exports. */
export interface NativeAddon {
  info(): AddonInfo;
  /** Self-check of the thread pool and the async path: sum of x^2 in f64. */
  sumOfSquares(options: { values: Float32Array }): Promise<number>;
}

/** The package root: dist/lib/native.js -> ../.. ; lib/native.ts (ts-node style) -> .. */
export function packageRoot(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  while (!existsSync(join(dir, 'package.json'))) {
    const parent = dirname(dir);
    if (parent === dir) throw new ZnError('zephyr-native: cannot find the package root');
    dir = parent;
  }
  return dir;
}

const loaded = new Map<string, NativeAddon>();

function loadFile(file: string, what: string): NativeAddon {
  const cached = loaded.get(file);
  if (cached) return cached;
  try {
    const addon = require(file) as NativeAddon;
    loaded.set(file, addon);
    return addon;
  } catch (error) {
    throw new ZnError(`cannot load the ${what} (${file}): ${(error as Error).message}`);
  }
}

function loadCpu(): NativeAddon {
  const override = process.env.ZN_ADDON_PATH;
  if (override) return loadFile(resolve(override), 'CPU addon named by ZN_ADDON_PATH');
  const root = packageRoot();
  const cached = loaded.get(root);
  if (cached) return cached;
  try {
    const nodeGypBuild = require('node-gyp-build') as (dir: string) => NativeAddon;
    const addon = nodeGypBuild(root);
    loaded.set(root, addon);
    return addon;
  } catch (error) {
    throw new ZnError(
      `cannot load the CPU addon: ${(error as Error).message}. Run \`npm install\` (or \`npx node-gyp rebuild\`) in ${root}`,
    );
  }
}

/** Where a CUDA addon may have been built, in the order they are tried. */
export function cudaAddonCandidates(): string[] {
  const root = packageRoot();
  const fromEnv = process.env.ZN_CUDA_ADDON ? [resolve(process.env.ZN_CUDA_ADDON)] : [];
  return [...fromEnv, join(root, 'build-cuda', 'cuda', 'zn_cuda.node'), join(root, 'build', 'cuda', 'zn_cuda.node')];
}

function loadCuda(): NativeAddon {
  const candidates = cudaAddonCandidates();
  const file = candidates.find((candidate) => existsSync(candidate));
  if (!file) {
    throw new ZnError(
      `the CUDA backend is not built (looked for ${candidates.join(', ')}). Build it with ` +
        '`npx cmake-js build --out build-cuda --CDZN_CUDA=ON` on a machine with the CUDA toolkit',
    );
  }
  return loadFile(file, 'CUDA addon');
}

/** Loads the addon for a device. A missing or broken CUDA backend is a ZnError, never a crash. */
export function loadNative(device: Device = 'cpu'): NativeAddon {
  switch (device) {
    case 'cpu':
      return loadCpu();
    case 'cuda':
      return loadCuda();
    case 'auto':
      try {
        return loadCuda();
      } catch {
        return loadCpu();
      }
    default:
      throw new ZnError(`unknown device '${String(device)}': expected cpu, cuda or auto`);
  }
}
