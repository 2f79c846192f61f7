/**
 * Where the tests find the CUDA backend: the built addon file (it loads without a GPU, e.g. for
 * memory plans), and whether a GPU is usable through it.
 */
import { existsSync } from 'node:fs';

import { cudaAddonCandidates, loadNative } from '../../lib/native.js';

/** The first CUDA addon file that exists (bash scripts/build-cuda.sh builds it), or undefined. */
export const cudaAddonFile: string | undefined = cudaAddonCandidates().find((candidate) => existsSync(candidate));

/** True when the CUDA backend loads and finds a GPU. */
export function gpuUsable(): boolean {
  try {
    loadNative('cuda');
    return true;
  } catch {
    return false;
  }
}
