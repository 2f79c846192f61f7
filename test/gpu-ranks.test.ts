/**
 * Data parallel on GPU ranks (issue 23, ZeRO stages 0, 1 and 2 on NCCL), what can be checked
 * without a GPU: which transport sums, reduce-scatters and all-gathers (bookkeeping, with fake
 * model objects: no NCCL is faked), zero_stage 1 and 2 accepted on cuda with the shard option and
 * the GPU memory plan's savings where the CUDA addon is built,
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
import { loadNative, mpiAddonCandidates, type NcclAddon, packageRoot } from '../lib/native.js';
import type { StageConfig } from '../lib/train/config.js';
import { reduceGradients, shardOption, stepAndGather, sumGradients, zeroStage } from '../lib/train/zero.js';
import { policyOptions, type StageSources } from '../lib/train/stage.js';
import { cudaAddonFile, gpuUsable } from './support/cuda.js';

const require = createRequire(import.meta.url);


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
    reduceScatterGradients: async () => void asked.push('reduceScatterGradients'),
    allGatherWeights: async () => void asked.push('allGatherWeights'),
  };
}

/** A GPU rank's model as the loop drives it at ZeRO stages 1 and 2: NCCL through its own calls, never MPI over host buffers. */
function fakeShardedGpuModel() {
  const asked: string[] = [];
  const refuse = (what: string) => () => assert.fail(`${what} asked of a GPU model (its buffers are device memory)`);
  return {
    asked,
    gradientBuffers: refuse('gradientBuffers'),
    weightSegments: refuse('weightSegments'),
    gradientShardCounts: refuse('gradientShardCounts'),
    sumGradientsItself: async () => void asked.push('sumGradientsItself'),
    reduceScatterItself: async () => void asked.push('reduceScatterItself'),
    allGatherItself: async () => void asked.push('allGatherItself'),
    shardGradSumOfSquares: async () => {
      asked.push('shardGradSumOfSquares');
      return 2.25;
    },
    clipAndStep: async (o: { gradSumOfSquares?: number }) => {
      asked.push(`clipAndStep(${o.gradSumOfSquares ?? 'own sum'})`);
      return { gradNorm: Math.sqrt(o.gradSumOfSquares ?? 1) };
    },
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

  it('ZeRO on GPU ranks: stage 1 all-reduces and all-gathers through the model (NCCL), stage 2 reduce-scatters and all-reduces the shard sums of squares over MPI; one rank does neither', async () => {
    const hp = { lr: 1e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: 0, maxGradNorm: 1 };
    const stage1 = fakeShardedGpuModel();
    const ranks1 = recordingRanks(1, 2, 1);
    assert.equal(await reduceGradients(stage1, ranks1, 1), undefined);
    await stepAndGather(stage1, ranks1, 1, hp, undefined);
    assert.deepEqual(stage1.asked, ['sumGradientsItself', 'clipAndStep(own sum)', 'allGatherItself']);
    assert.deepEqual(ranks1.calls, []);

    const stage2 = fakeShardedGpuModel();
    const ranks2 = recordingRanks(0, 2, 0);
    const squares = await reduceGradients(stage2, ranks2, 2);
    assert.equal(squares, 2.25);  // the recording ranks' all-reduce leaves the one rank's value
    const { gradNorm } = await stepAndGather(stage2, ranks2, 2, hp, squares);
    assert.equal(gradNorm, 1.5);
    assert.deepEqual(stage2.asked, ['reduceScatterItself', 'shardGradSumOfSquares', 'clipAndStep(2.25)', 'allGatherItself']);
    assert.deepEqual(ranks2.calls, ["allReduceSum: the gradient shards' sums of squares"]);

    const single = fakeShardedGpuModel();
    assert.equal(await reduceGradients(single, SINGLE_RANK, 2), undefined);
    await stepAndGather(single, SINGLE_RANK, 2, hp, undefined);
    assert.deepEqual(single.asked, ['clipAndStep(own sum)']);
  });

  it('zero_stage 1 and 2 are accepted on cuda: the policy gets its shard on GPU ranks (and none on one process)', () => {
    assert.equal(zeroStage(1), 1);
    assert.equal(zeroStage(2), 2);
    const config = { values: { gradient_checkpointing: false, offload_optimizer: true, seed: 42, zero_stage: 2 } } as unknown as StageConfig;
    const sources = { device: 'cuda', dtype: 'bf16', lora: null, freshAdapter: false } as unknown as StageSources;
    const options = policyOptions(config, sources, 64, { rank: 3, size: 4, localRank: 1 });
    assert.deepEqual(options.shard, { rank: 3, count: 4 });
    assert.equal(options.cudaDevice, 1);
    assert.equal(options.offloadOptimizer, true);
    assert.equal(policyOptions(config, sources, 64, { rank: 0, size: 1, localRank: 0 }).shard, undefined);
    assert.deepEqual(shardOption(2, { rank: 0, size: 1 }), {});
  });

  it('the GPU memory plan per rank shows what ZeRO saves: moments and bf16 master of the rank\'s range only, gradients whole, offloaded host arrays of the range', { skip: cudaAddonFile ? false : 'the CUDA addon is not built here (bash scripts/build-cuda.sh builds it)' }, () => {
    const addon = require(cudaAddonFile!) as { modelMemoryPlan(options: object): Record<string, number> };
    const config = { vocabSize: 64, hiddenSize: 32, intermediateSize: 64, numHiddenLayers: 1, numAttentionHeads: 2, numKeyValueHeads: 1, headDim: 16, rmsNormEps: 1e-5, ropeTheta: 10000 };
    const options = { config, maxTokens: 16, dtype: 'bf16', trainable: true };
    // The parameters end to end (embed, input norm, q, k, v, o, post norm, gate, up, down, norm, lm_head).
    const params = 2 * 64 * 32 + 32 + (32 * 32 + 2 * 16 * 32 + 32 * 32) + 32 + 3 * 64 * 32 + 32;
    // zero_shard.h's ranges of 2 ranks: the inner boundary floor(T / 2) rounded down to 16 elements.
    const boundary = Math.floor(Math.floor(params / 2) / 16) * 16;
    const owned = [boundary, params - boundary];
    const whole = addon.modelMemoryPlan(options);
    const within = (got: number, bytes: number, buffers: number) => got >= bytes && got < bytes + 256 * buffers;
    for (const [rank, count] of owned.entries()) {
      const plan = addon.modelMemoryPlan({ ...options, shard: { rank, count: 2 } });
      assert.ok(within(plan.optimizer!, 8 * count, 2), `rank ${rank}: optimizer ${plan.optimizer} for ${count} elements`);
      assert.equal(plan.grads, whole.grads, 'the gradients stay whole on the device');
      // bf16 weights, the three norms (32 each) in f32 beside them, and the f32 master of the range.
      assert.ok(within(plan.weights!, 2 * params + 4 * 3 * 32 + 4 * count, 3), `rank ${rank}: weights ${plan.weights} (the f32 master of ${count} elements)`);
      assert.equal(plan.activations, whole.activations);
      const offloaded = addon.modelMemoryPlan({ ...options, shard: { rank, count: 2 }, offloadOptimizer: true });
      // The host: master and both moments of the range, and two f32 gradient and two bf16 weight
      // chunks of the range's size (one chunk covers it at this size).
      assert.equal(offloaded.host, 12 * count + 12 * count);
      assert.equal(offloaded.optimizer, 0);
    }
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

  it("the CPU model refuses the NCCL collectives (its ranks use gradientBuffers() and weightSegments() over MPI)", async () => {
    const config = { vocabSize: 32, hiddenSize: 16, intermediateSize: 32, numHiddenLayers: 1, numAttentionHeads: 2, numKeyValueHeads: 1, headDim: 8, rmsNormEps: 1e-5, ropeTheta: 10000 };
    const model = new (loadNative('cpu').Model)({ config, maxTokens: 8 });
    try {
      for (const name of ['allReduceGradients', 'reduceScatterGradients', 'allGatherWeights'] as const) {
        assert.throws(() => model[name]({} as never), new RegExp(`${name}: the CPU model's ranks use gradientBuffers\\(\\) and weightSegments\\(\\) over MPI; NCCL collectives are the GPU model's`));
      }
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
