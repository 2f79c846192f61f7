/**
 * Data parallel on GPU ranks (issue 23, ZeRO stage 0 on NCCL), what can be checked without a GPU:
 * which transport sums the gradients (bookkeeping, with fake model objects: no NCCL is faked),
 * each rank's GPU by LOCAL_RANK, rank 0's NCCL unique id reaching the other ranks through real
 * MPI, and the CUDA addon's NCCL entry points where the addon is built (the library loaded by
 * dlopen, ncclGetUniqueId). The NCCL all-reduce itself runs only on a GPU: bench/device-check.sh.
 */
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { join } from 'node:path';
import { describe, it } from 'node:test';

import { ZnError } from '../lib/errors.js';
import { gradientTransport, NCCL_UNIQUE_ID_BYTES, openNcclGradientSum, shareUniqueId } from '../lib/model/gradient-sum.js';
import { type Ranks, SINGLE_RANK } from '../lib/model/ranks.js';
import { cudaAddonCandidates, loadNative, mpiAddonCandidates, type NcclAddon, packageRoot } from '../lib/native.js';
import type { StageConfig } from '../lib/train/config.js';
import { sumGradients } from '../lib/train/zero.js';
import { policyOptions, type StageSources } from '../lib/train/stage.js';

const require = createRequire(import.meta.url);

function gpuUsable(): boolean {
  try {
    loadNative('cuda');
    return true;
  } catch {
    return false;
  }
}

/** Ranks that record the collectives asked of them (rank `rank` of `size`); broadcast fills in `fill`. */
function recordingRanks(rank: number, size: number, localRank: number, fill?: Uint8Array): Ranks & { calls: string[]; reduced: unknown[] } {
  const calls: string[] = [];
  const reduced: unknown[] = [];
  return {
    ...SINGLE_RANK,
    rank,
    size,
    localRank,
    isLeader: rank === 0,
    calls,
    reduced,
    allReduceSum: async (buffers, what) => {
      calls.push(`allReduceSum: ${what}`);
      reduced.push(buffers);
    },
    broadcast: async (data, root, what) => {
      calls.push(`broadcast from ${root}: ${what} (${data.length} bytes)`);
      if (fill && rank !== root) (data as Uint8Array).set(fill);
    },
  };
}

/** A model object that records which sum was asked of it. */
function fakeModel(buffers: Float32Array[]) {
  const asked: string[] = [];
  return {
    asked,
    gradientBuffers: () => {
      asked.push('gradientBuffers');
      return buffers;
    },
    sumGradientsItself: async () => void asked.push('sumGradientsItself'),
    allReduceGradients: async () => void asked.push('allReduceGradients'),
  };
}

describe('GPU ranks: bookkeeping (no GPU, no NCCL)', () => {
  it('sums gradients over MPI on CPU ranks, over NCCL on GPU ranks, and not at all on one rank', () => {
    assert.equal(gradientTransport('cpu', { size: 1 }), 'none');
    assert.equal(gradientTransport('cuda', { size: 1 }), 'none');
    assert.equal(gradientTransport('cpu', { size: 2 }), 'mpi');
    assert.equal(gradientTransport('cuda', { size: 8 }), 'nccl');
  });

  it("the loop sums through the model's own all-reduce when it has one, else MPI over its host buffers", async () => {
    const buffers = [new Float32Array(3)];
    const ranks = recordingRanks(1, 2, 1);
    const cpu = fakeModel(buffers);
    await sumGradients({ gradientBuffers: cpu.gradientBuffers }, ranks);
    assert.deepEqual(ranks.calls, ['allReduceSum: the gradient all-reduce']);
    assert.equal(ranks.reduced[0], buffers);
    const gpu = fakeModel(buffers);
    const gpuRanks = recordingRanks(1, 2, 1);
    await sumGradients(gpu, gpuRanks);
    assert.deepEqual(gpu.asked, ['sumGradientsItself']);
    assert.deepEqual(gpuRanks.calls, []);
    const single = fakeModel(buffers);
    await sumGradients(single, SINGLE_RANK);
    assert.deepEqual(single.asked, []);
  });

  it('puts each GPU rank on the GPU of its LOCAL_RANK (policy and reference), and leaves CPU and one-process runs as they were', () => {
    const config = { values: { gradient_checkpointing: false, offload_optimizer: false, seed: 42, zero_stage: 0 } } as unknown as StageConfig;
    const sources = (device: 'cpu' | 'cuda') => ({ device, dtype: 'bf16', lora: null, freshAdapter: false }) as unknown as StageSources;
    assert.equal(policyOptions(config, sources('cuda'), 64, { rank: 1, size: 4, localRank: 3 }).cudaDevice, 3);
    assert.equal(policyOptions(config, sources('cuda'), 64, { rank: 0, size: 1, localRank: 0 }).cudaDevice, undefined);
    assert.equal(policyOptions(config, sources('cpu'), 64, { rank: 1, size: 2, localRank: 1 }).cudaDevice, undefined);
  });

  it("shares rank 0's unique id: only rank 0 makes it, every rank broadcasts from rank 0, and a wrong size is refused", async () => {
    const id = Uint8Array.from({ length: NCCL_UNIQUE_ID_BYTES }, (_, i) => (i * 7 + 3) % 256);
    const leader = recordingRanks(0, 2, 0);
    assert.deepEqual(await shareUniqueId(leader, () => id), id);
    assert.deepEqual(leader.calls, [`broadcast from 0: rank 0's NCCL unique id (${NCCL_UNIQUE_ID_BYTES} bytes)`]);
    const follower = recordingRanks(1, 2, 1, id);
    const received = await shareUniqueId(follower, () => assert.fail('rank 1 made an id'));
    assert.deepEqual(received, id);
    await assert.rejects(shareUniqueId(recordingRanks(0, 2, 0), () => new Uint8Array(16)), /16 bytes, expected 128/);
  });

  it("the CPU model refuses allReduceGradients (its ranks sum gradientBuffers() over MPI)", async () => {
    const config = { vocabSize: 32, hiddenSize: 16, intermediateSize: 32, numHiddenLayers: 1, numAttentionHeads: 2, numKeyValueHeads: 1, headDim: 8, rmsNormEps: 1e-5, ropeTheta: 10000 };
    const model = new (loadNative('cpu').Model)({ config, maxTokens: 8 });
    try {
      assert.throws(() => model.allReduceGradients({} as never), /allReduceGradients: the CPU model's ranks sum gradientBuffers\(\) over MPI/);
    } finally {
      model.dispose();
    }
  });

  // With a GPU, the id exchange would go on to wait for a second rank: the device check covers that machine.
  it('GPU ranks without a usable CUDA backend fail before the id exchange, saying why', { skip: gpuUsable() ? 'a GPU is usable here (bench/device-check.sh runs GPU ranks)' : false }, async () => {
    const ranks = recordingRanks(0, 2, 0);
    await assert.rejects(openNcclGradientSum(fakeModel([]), ranks, 30), (error: Error) => {
      assert.ok(error instanceof ZnError, String(error));
      assert.match(error.message, /CUDA (backend|addon)/);
      return true;
    });
    assert.deepEqual(ranks.calls, []);
  });
});

function mpiSkipReason(): string | null {
  if (spawnSync('mpirun', ['--version'], { encoding: 'utf8' }).status !== 0) return 'mpirun not found (.ci/run installs Open MPI)';
  if (!mpiAddonCandidates().some((file) => existsSync(file))) return 'the MPI addon (zn_mpi.node) is not built: `npx node-gyp rebuild` with MPI installed';
  return null;
}

describe('GPU ranks: the NCCL unique id over real MPI', { skip: mpiSkipReason() ?? false }, () => {
  it("mpirun -n 2: rank 1 receives rank 0's 128 bytes exactly", async () => {
    const env: NodeJS.ProcessEnv = { ...process.env, ZN_NUM_THREADS: '1' };
    for (const name of Object.keys(env)) if (/^(OMPI_|PMIX_|PMI_)/.test(name)) delete env[name];
    const script = join(packageRoot(), 'dist', 'test', 'support', 'share-nccl-id.js');
    const child = spawn('mpirun', ['--allow-run-as-root', '--oversubscribe', '-n', '2', process.execPath, script], { env });
    let output = '';
    child.stdout.on('data', (chunk) => (output += chunk));
    child.stderr.on('data', (chunk) => (output += chunk));
    const timer = setTimeout(() => child.kill('SIGKILL'), 60_000);
    const code = await new Promise<number | null>((resolve) => child.on('close', resolve));
    clearTimeout(timer);
    assert.equal(code, 0, output);
    const ids = new Map([...output.matchAll(/^rank (\d) of 2: ([0-9a-f]+)$/gm)].map((m) => [Number(m[1]), m[2]]));
    assert.equal(ids.size, 2, output);
    assert.equal(ids.get(0)!.length, 2 * NCCL_UNIQUE_ID_BYTES);
    assert.notEqual(ids.get(0), '00'.repeat(NCCL_UNIQUE_ID_BYTES));
    assert.equal(ids.get(1), ids.get(0));
  });
});

const cudaAddonFile = cudaAddonCandidates().find((candidate) => existsSync(candidate));

describe("GPU ranks: the CUDA addon's NCCL entry points (no GPU needed)", { skip: cudaAddonFile ? false : 'the CUDA addon is not built here (bash scripts/build-cuda.sh builds it)' }, () => {
  const nccl = () => require(cudaAddonFile!) as NcclAddon;

  it('loads libnccl.so.2 (dlopen) and makes 128-byte unique ids, or says which library and wheel are missing', () => {
    let library: string;
    try {
      library = nccl().ncclLibrary();
    } catch (error) {
      assert.match((error as Error).message, /libnccl\.so\.2.*nvidia-nccl-cu13|built without nccl\.h/s);
      return;
    }
    assert.match(library, /^NCCL 2\.\d+\.\d+ \(.*libnccl\.so\.2\)$/);
    const first = nccl().ncclUniqueId();
    const second = nccl().ncclUniqueId();
    assert.equal(first.length, NCCL_UNIQUE_ID_BYTES);
    assert.ok(first.some((byte) => byte !== 0));
    assert.notDeepEqual(first, second, 'two communicators get two ids');
  });

  it('an NcclCommunicator refuses bad arguments before NCCL sees them, and without a GPU its open rejects (no hang)', async () => {
    const communicator = () => new (nccl().NcclCommunicator)();
    const good = { uniqueId: new Uint8Array(NCCL_UNIQUE_ID_BYTES), rank: 0, size: 1, device: 0, timeoutSeconds: 5 };
    assert.throws(() => communicator().open({ ...good, uniqueId: new Uint8Array(64) }), /uniqueId/);
    assert.throws(() => communicator().open({ ...good, rank: 2, size: 2 }), /'rank' must be in \[0, size\)/);
    assert.throws(() => communicator().open({ ...good, timeoutSeconds: 0 }), /timeoutSeconds/);
    const once = communicator();
    const opening = once.open(good);
    assert.throws(() => once.open(good), /open\(\) was called already/);
    await opening.then(
      () => assert.ok(true, 'a GPU is here: a communicator of one rank opened'),
      (error: Error) => assert.match(error.message, /^NcclCommunicator\.open: (CUDA error|NCCL)/),
    );
    await once.close({});
  });
});
