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
  /** CUDA addon only: the device's free and total memory in bytes, read at the call. */
  freeMemory?: number;
  totalMemory?: number;
}

export interface DpoLossOptions {
  policyChosen: Float32Array;
  policyRejected: Float32Array;
  refChosen: Float32Array;
  refRejected: Float32Array;
  beta: number;
  labelSmoothing?: number;
  lossType?: 'sigmoid' | 'ipo' | 'hinge';
  /** Completion token counts (ipo averages log-ratios per token, as TRL 1.13). */
  chosenTokens?: Int32Array;
  rejectedTokens?: Int32Array;
}

export interface DpoLossResult {
  losses: Float32Array;
  dPolicyChosen: Float32Array;
  dPolicyRejected: Float32Array;
  /** Means over the pairs, under TRL's metric names (loss, rewards/*, logps/*). */
  metrics: Record<string, number>;
}

/**
 * What every backend addon (CPU and CUDA) exports: the model, its memory plan and the DPO loss.
 * `loadNative(device)` gives this much for any device.
 */
export interface BackendAddon {
  info(): AddonInfo;
  /** Self-check of the thread pool and the async path: sum of x^2 in f64. */
  sumOfSquares(options: { values: Float32Array }): Promise<number>;
  /** The fused DPO loss (native/kernels/cpu/dpo.h): per-pair losses, gradients, TRL metrics. */
  dpoLoss(options: DpoLossOptions): DpoLossResult;
  /** The Mistral model (native/model/mistral.h): `new addon.Model({config, maxTokens, ...})`. */
  Model: new (options: NativeModelOptions) => NativeModel;
  /** The bytes a Model with these options would allocate, computed without allocating. */
  modelMemoryPlan(options: NativeModelOptions): MemoryPlan;
  /** The bytes startGeneration({sequences, maxContext}) would allocate (the KvCache). */
  generationMemory(options: NativeModelOptions & { sequences: number; maxContext: number }): number;
}

/** BackendAddon's members, which loadNative checks an addon file has (a stale build lacks some). */
export const BACKEND_MEMBERS = ['info', 'sumOfSquares', 'dpoLoss', 'Model', 'modelMemoryPlan', 'generationMemory'] as const;
// Compiles only while BACKEND_MEMBERS names every member of BackendAddon.
const everyMemberListed: [Exclude<keyof BackendAddon, (typeof BACKEND_MEMBERS)[number]>] extends [never] ? true : never = true;
void everyMemberListed;

/**
 * The CPU addon: a backend, plus the host-side functions (files, random draws, the machine's
 * peak) that the package calls on every device, always through `loadNative('cpu')`: the CUDA
 * addon holds device work only.
 */
export interface NativeAddon extends BackendAddon {
  /**
   * N(0, std^2) draws (native/core/random.h), counter-based: element i of (seed, stream) is the
   * same however the work is split. For initialising weights.
   */
  randomNormal(options: { count: number; seed: number; stream?: number; std: number; dtype?: 'f32' }): Promise<Float32Array>;
  randomNormal(options: { count: number; seed: number; stream?: number; std: number; dtype: 'bf16' }): Promise<Uint16Array>;
  /**
   * One next token per row of logits (native/kernels/cpu/sampling.h): repetition penalty, then
   * greedy (temperature 0) or temperature, top-k, top-p, min-p and a counter-based draw
   * (seed = seedHigh * 2^32 + seedLow, draw number `draws[row]`); logprobs are the model's own.
   */
  sampleTokens(options: NativeSamplingRows): { tokens: Int32Array; logprobs: Float32Array };
  /** A safetensors file's validated header: tensors in file order, and `__metadata__`. */
  readSafetensorsHeader(options: { path: string }): SafetensorsHeader;
  /** One tensor converted to f32 or bf16 (bits). For tests and small tensors. */
  readTensor(options: { path: string; name: string; dtype: 'f32' }): Promise<Float32Array>;
  readTensor(options: { path: string; name: string; dtype: 'bf16' }): Promise<Uint16Array>;
  /** Writes a safetensors file atomically, tensors in the order given. */
  writeSafetensors(options: {
    path: string;
    tensors: SafetensorsTensorData[];
    metadata?: Record<string, string>;
  }): Promise<void>;
  /** This machine's multiply-add peak (native/core/peak.h), GFLOP/s on every pool thread: MFU's denominator. */
  measurePeak(options: { secondsPerLoop?: number }): Promise<{ f32: number; bf16: number; threads: number; loops: { name: string; dtype: string; gflops: number }[] }>;
}

/**
 * What the CUDA addon has beside the backend (native/addon/cuda_binding.cpp); optional members,
 * since an addon built before them lacks them.
 */
export interface CudaAddonExtras {
  /**
   * This GPU's bf16 GEMM rate (y = x W^T, bf16 operands, f32 accumulation, bf16 out, the model's
   * GEMM path), the fastest of `repeats` runs by CUDA events; default 8192 x 8192 x 8192.
   */
  measureGemmPeak?(options: { M?: number; N?: number; K?: number; repeats?: number }): Promise<{ tflops: number; ms: number; shape: string; impl: string }>;
}

/** MistralConfig fields the native model needs (lib/model/model.ts maps config.json to it). */
/** Per-row inputs of sampleTokens: logits [rows x vocab] and one value per row of each setting. */
export interface NativeSamplingRows {
  logits: Float32Array;
  vocab: number;
  temperature: Float32Array;
  topK: Int32Array;
  topP: Float32Array;
  minP: Float32Array;
  repetitionPenalty: Float32Array;
  seedLow: Int32Array;
  seedHigh: Int32Array;
  draws: Int32Array;
  /** Each row's sequence so far (for the repetition penalty), end to end, split by historyOffsets. */
  history: Int32Array;
  historyOffsets: Int32Array;
}

export interface NativeModelConfig {
  vocabSize: number;
  hiddenSize: number;
  intermediateSize: number;
  numHiddenLayers: number;
  numAttentionHeads: number;
  numKeyValueHeads: number;
  headDim: number;
  rmsNormEps: number;
  ropeTheta: number;
  /** 0 (or absent): no sliding window. */
  slidingWindow?: number;
  tieWordEmbeddings?: boolean;
  /** -1 (or absent): none; otherwise that embedding row gets no gradient. */
  padTokenId?: number;
}

export interface NativeModelOptions {
  config: NativeModelConfig;
  /** 'f32' (default) or 'bf16': bf16 weights and matmul inputs, f32 master weights. */
  dtype?: 'f32' | 'bf16';
  /** The most tokens one forward/logprobs call may carry (activations are planned for it). */
  maxTokens: number;
  /** Keep only each layer's input and recompute the layer in backward. */
  gradientCheckpointing?: boolean;
  /** false: no gradients, optimizer moments or saved activations (a frozen reference). */
  trainable?: boolean;
  /**
   * GPU model: the f32 master weights and AdamW moments in host memory, the AdamW step on the
   * CPU (ZeRO-Offload's split); the device keeps the compute weights and the gradients. No effect
   * on the CPU model, which holds everything in host memory.
   */
  offloadOptimizer?: boolean;
  /** Parameters a trainable model keeps frozen (no gradient, no optimizer state, no f32 master in bf16). */
  frozen?: string[];
  /**
   * LoRA adapters on the projections (PEFT's LoraConfig: r, lora_alpha, use_rslora,
   * target_modules with 'all-linear', lora_dropout), a trained group of their own; freezing the
   * base is the caller's (frozen). dropout (in [0, 1)) acts in training forwards (forward,
   * forwardBackward) only, with counter-based masks named by dropoutSeed, the optimizer step and
   * the micro-batch's index within it, so a resumed run draws the same masks.
   */
  lora?: {
    rank: number;
    alpha: number;
    rslora?: boolean;
    targetModules: string[];
    dropout?: number;
    dropoutSeed?: number;
    /** Base parameters trained beside the adapters (PEFT's modules_to_save), by base name; not in `frozen`. */
    modulesToSave?: string[];
  };
  /**
   * CPU model: an untied embedding's gradient as a dense [vocab, dim] buffer rather than by the
   * rows a step touched, so that data-parallel ranks can sum whole gradient buffers.
   */
  denseEmbeddingGradient?: boolean;
  /**
   * ZeRO (CPU and GPU models): this process's rank among `count` data-parallel ranks that shard
   * every trained group's AdamW moments (and bf16 mode's f32 master) by element ranges.
   */
  shard?: { rank: number; count: number };
  /** Time each optimizer step's parts (stepProfile()); off by default, when a step reads no clock. */
  profileSteps?: boolean;
  /** GPU model: the CUDA device ordinal to build on (default -1: the current device). */
  cudaDevice?: number;
}

/**
 * Seconds of the last optimizer step's parts (native/model/step_profile.h): the grad norm, AdamW
 * on the device or on the host, and with offloadOptimizer the host's waits for gradient chunks
 * and for the last weight uploads, and the copies' device time (CUDA events). 0 where a part does
 * not apply.
 */
export interface StepProfile {
  clip_s: number;
  device_adamw_s: number;
  host_adamw_s: number;
  gradient_wait_s: number;
  upload_wait_s: number;
  norms_s: number;
  gradient_copy_s: number;
  weight_upload_s: number;
}

/**
 * Bytes by category, in the backend's memory (device memory for the GPU model); logitsChunks is
 * the log-prob kernel's scratch during a call. `host`: host memory the GPU model holds beside it
 * (with offloadOptimizer: the f32 master, the moments and pinned copy buffers), 0 on the CPU.
 */
export interface MemoryPlan {
  weights: number;
  grads: number;
  optimizer: number;
  activations: number;
  logitsChunks: number;
  total: number;
  host: number;
}

export interface NativeParameter {
  name: string;
  shape: number[];
  /** Whether AdamW weight decay applies (not to norm weights, as HF Trainer). */
  decay: boolean;
}

/** A packed batch (lib/data/batch.ts TokenBatch). */
export interface NativeTokenBatch {
  inputIds: Int32Array;
  positionIds: Int32Array;
  targets: Int32Array;
  cuSeqlens: Int32Array;
}

export interface AdamWHyperparameters {
  lr: number;
  beta1?: number;
  beta2?: number;
  eps?: number;
  weightDecay?: number;
  /** <= 0 or absent: no clipping. */
  maxGradNorm?: number;
}

/**
 * The native model. One call at a time: a call made while another is running is an error.
 * forward() keeps activations for exactly one backward(); logprobs() keeps nothing.
 */
export interface NativeModel {
  parameters(): NativeParameter[];
  /** LoRA's adapter parameters, named as PEFT saves them (empty without adapters). */
  adapterParameters(): NativeParameter[];
  memoryPlan(): MemoryPlan;
  /** Reads every parameter from safetensors files; returns the names of extra tensors. */
  loadWeights(options: { files: string[] }): Promise<{ unexpected: string[] }>;
  /**
   * Reads every adapter parameter (PEFT's adapter_model.safetensors) and the saved modules the
   * files hold (as `base_model.model.<name>`); returns the names of extra tensors and of the
   * saved modules the files lack (they keep their values).
   */
  loadAdapters(options: { files: string[] }): Promise<{ unexpected: string[]; absent: string[] }>;
  /** Off: every later call runs the base model alone (TRL's reference for a fresh adapter). */
  setAdaptersEnabled(options: { enabled: boolean }): void;
  /** W += s B A into the base (PEFT's merge_and_unload; CPU model, dtype f32), adapters off after. */
  mergeAdapters(options: Record<string, never>): Promise<void>;
  /** Writes one safetensors file atomically: these parameters, in this order, narrowed to dtype. */
  saveWeights(options: { path: string; names: string[]; dtype?: 'F32' | 'F16' | 'BF16'; metadata?: Record<string, string> }): Promise<void>;
  /** Per-token log p(target) (0 where target is -100), keeping activations for backward. */
  forward(batch: NativeTokenBatch): Promise<{ logp: Float32Array }>;
  /** The same log-probs without keeping anything for backward. */
  logprobs(batch: NativeTokenBatch): Promise<{ logp: Float32Array }>;
  /** Logits after each document's last token, [documents x vocab] (greedy decoding). */
  nextTokenLogits(batch: NativeTokenBatch): Promise<{ logits: Float32Array }>;
  /** Accumulates parameter gradients of a loss whose per-token gradient is dlogp. */
  backward(options: { dlogp: Float32Array }): Promise<void>;
  /** forward then backward(dlogp) in one call, for a dlogp known before the forward (SFT); the lm_head's logits are computed once (CPU and GPU). */
  forwardBackward(batch: NativeTokenBatch & { dlogp: Float32Array }): Promise<{ logp: Float32Array }>;
  zeroGrad(options: Record<string, never>): Promise<void>;
  /** Global grad-norm clipping (torch clip_grad_norm_) and one AdamW step. */
  /** gradSumOfSquares (ZeRO stage 2): the global sum of squared gradients, summed across the ranks. */
  clipAndStep(options: AdamWHyperparameters & { gradSumOfSquares?: number }): Promise<{ gradNorm: number; step: number }>;
  saveOptimizerState(options: { path: string }): Promise<void>;
  /** `paths`: this rank's range from one process's file or any number of ranks' shard files. */
  loadOptimizerState(options: { path: string } | { paths: string[] }): Promise<void>;
  /** ZeRO: this rank's optimizer shard file. */
  saveOptimizerShard(options: { path: string }): Promise<void>;
  /** ZeRO: per gradient buffer, each rank's element count. */
  gradientShardCounts(options: Record<string, never>): number[][];
  /** ZeRO stage 2: the sum of squares of this rank's shard of the gradients. */
  shardGradSumOfSquares(options: Record<string, never>): Promise<number>;
  /** CPU, ZeRO: views over the weight runs the ranks all-gather in place after a sharded step (bf16 weights as their bits). */
  weightSegments(): { data: Float32Array | Uint16Array; counts: number[] }[];
  /** AdamW steps taken (restored by loadOptimizerState). */
  optimizerStep(): number;
  /** The last clipAndStep's parts; null unless the model was created with profileSteps and has stepped. */
  stepProfile(): StepProfile | null;
  getParameter(options: { name: string }): Float32Array;
  getGradient(options: { name: string }): Float32Array;
  /**
   * CPU model: views (no copy) over each trained group's f32 gradient buffer, for summing across
   * data-parallel ranks in place; the same arrays every call, detached by dispose(). Refused for
   * an untied embedding's gradient held by rows (create the model with denseEmbeddingGradient).
   */
  gradientBuffers(): Float32Array[];
  /** GPU model: each trained group's gradients summed across an open NcclCommunicator's ranks, in place on the device. */
  allReduceGradients(communicator: NcclCommunicator): Promise<void>;
  /** GPU model, ZeRO stage 2: this rank's range of the device gradients summed across the ranks (NCCL, in place). */
  reduceScatterGradients(communicator: NcclCommunicator): Promise<void>;
  /** GPU model, ZeRO stages 1 and 2: every rank's range of the device weights from its owner (NCCL, in place). */
  allGatherWeights(communicator: NcclCommunicator): Promise<void>;
  /**
   * Generation (native/model/generation.h): a KvCache for `sequences` sequences of up to
   * `maxContext` positions each (a rolling buffer of the sliding window), replacing an earlier one.
   */
  startGeneration(options: { sequences: number; maxContext: number }): Promise<void>;
  /** A free sequence slot, or -1 when every slot is taken. */
  acquireSequence(options: Record<string, never>): number;
  releaseSequence(options: { slot: number }): void;
  /**
   * Runs the new tokens of some sequences (counts[i] tokens for slots[i], laid end to end) over
   * their cached ones and writes each sequence's next-token logits, [slots x vocab], into
   * `logits` (the caller's buffer, reused across steps). A fresh
   * sequence's prompt may have any length; a cached one takes one token a call once its window
   * has filled.
   */
  extend(options: { slots: Int32Array; counts: Int32Array; tokens: Int32Array; logits: Float32Array }): Promise<{ logits: Float32Array }>;
  /** Frees the model's memory now; later calls throw. Throws while a call is running. */
  dispose(): void;
}

/**
 * The optional MPI addon (`zn_mpi.node`, built where an MPI compiler wrapper is found): MPI's
 * own collectives over the ranks `mpirun` started (native/parallel/mpi_collectives.h). One
 * collective at a time, entered in the same order on every rank.
 */
export interface MpiAddon {
  /** MPI_Init_thread (once per process); MPI's view of this process. */
  init(): { rank: number; size: number; threadMultiple: boolean; library: string };
  finalize(): void;
  /** Sums the buffer across the ranks, in place on every rank. */
  allReduceSum(options: { data: Float32Array | Float64Array }): Promise<void>;
  /** Rank `root`'s values into every rank's buffer. */
  broadcast(options: { data: Float32Array | Float64Array | Int32Array | Uint8Array; root: number }): Promise<void>;
  /** Every rank's `data`, in rank order, into `out` (ranks x data.length, same element type). */
  allGather<T extends Float32Array | Float64Array | Int32Array | Uint8Array>(options: { data: T; out: T }): Promise<void>;
  /**
   * ZeRO: rank r's part of `data` (counts[r] elements after the parts of the ranks before it)
   * into every rank's data, in place (MPI_Allgatherv).
   */
  allGatherInPlace(options: { data: Float32Array | Uint16Array; counts: Float64Array }): Promise<void>;
  /** ZeRO stage 2: the sum across the ranks of this rank's part, in place; the rest of data is left undefined (MPI_Reduce_scatter). */
  reduceScatterInPlace(options: { data: Float32Array; counts: Float64Array }): Promise<void>;
  barrier(options: Record<string, never>): Promise<void>;
  /** MPI_Abort: the launcher ends every rank with `code`. Never returns. */
  abort(options: { code: number }): never;
}

/** One rank's NCCL communicator (the CUDA addon's; native/parallel/nccl_collectives.h). */
export interface NcclCommunicator {
  /** Joins the communicator on `device`; every rank must, within timeoutSeconds. */
  open(options: { uniqueId: Uint8Array; rank: number; size: number; device: number; timeoutSeconds: number }): Promise<void>;
  /** Finalizes and frees it (after an all-reduce in flight). */
  close(options: Record<string, never>): Promise<void>;
}

/** The CUDA addon's NCCL functions: libnccl.so.2 is loaded at their first call (dlopen). */
export interface NcclAddon {
  /** "NCCL 2.30.7 (<file>)"; throws saying what to install when libnccl.so.2 is absent. */
  ncclLibrary(): string;
  /** ncclGetUniqueId: 128 bytes, made on rank 0 and broadcast to the others. */
  ncclUniqueId(): Uint8Array;
  NcclCommunicator: new () => NcclCommunicator;
}

/** The CUDA addon's NCCL part; a ZnError when the CUDA backend is missing, has no GPU, or predates NCCL. */
export function loadNccl(): NcclAddon {
  const addon = loadCuda() as BackendAddon & Partial<NcclAddon>;
  if (typeof addon.ncclUniqueId !== 'function' || typeof addon.NcclCommunicator !== 'function' || typeof addon.ncclLibrary !== 'function') {
    throw new ZnError('the CUDA addon has no NCCL functions: it is from an older build; rebuild it with `bash scripts/build-cuda.sh`');
  }
  return addon as BackendAddon & NcclAddon;
}

/** Where the MPI addon may have been built, in the order they are tried. */
export function mpiAddonCandidates(): string[] {
  const root = packageRoot();
  const fromEnv = process.env.ZN_MPI_ADDON ? [resolve(process.env.ZN_MPI_ADDON)] : [];
  return [...fromEnv, join(root, 'build', 'Release', 'zn_mpi.node')];
}

let mpiAddon: MpiAddon | null = null;

/** The MPI addon; a ZnError saying how to build it when it is missing or does not load. */
export function loadMpi(): MpiAddon {
  if (mpiAddon) return mpiAddon;
  const candidates = mpiAddonCandidates();
  const file = candidates.find((candidate) => existsSync(candidate));
  if (!file) {
    throw new ZnError(
      `the MPI addon is not built (looked for ${candidates.join(', ')}). Install MPI ` +
        '(`apt-get install -y libopenmpi-dev openmpi-bin`) and rebuild: `npx node-gyp rebuild`',
    );
  }
  try {
    mpiAddon = require(file) as MpiAddon;
  } catch (error) {
    throw new ZnError(`cannot load the MPI addon (${file}): ${(error as Error).message}`);
  }
  return mpiAddon;
}

/** Every dtype name the safetensors format defines (only F32, F16 and BF16 load). */
export type SafetensorsDType =
  | 'F32' | 'F16' | 'BF16' | 'F64' | 'I64' | 'I32' | 'I16' | 'I8' | 'U8' | 'U16' | 'U32' | 'U64'
  | 'BOOL' | 'C64' | 'F8_E5M2' | 'F8_E4M3' | 'F8_E8M0' | 'F8_E4M3FNUZ' | 'F8_E5M2FNUZ'
  | 'F6_E2M3' | 'F6_E3M2' | 'F4';

export interface SafetensorsTensorInfo {
  name: string;
  dtype: SafetensorsDType;
  shape: number[];
  /** Byte range in the data section. */
  dataOffsets: [number, number];
}

export interface SafetensorsHeader {
  tensors: SafetensorsTensorInfo[];
  metadata: Record<string, string>;
}

/** F32 data is a Float32Array; BF16 and F16 data a Uint16Array of bit patterns. */
export type SafetensorsTensorData =
  | { name: string; dtype: 'F32'; shape: number[]; data: Float32Array }
  | { name: string; dtype: 'BF16' | 'F16'; shape: number[]; data: Uint16Array };

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

const loaded = new Map<string, BackendAddon>();

function loadFile<Addon extends BackendAddon>(file: string, what: string): Addon {
  const cached = loaded.get(file);
  if (cached) return cached as Addon;
  let addon: Record<string, unknown>;
  try {
    addon = require(file) as Record<string, unknown>;
  } catch (error) {
    throw new ZnError(`cannot load the ${what} (${file}): ${(error as Error).message}`);
  }
  const missing = BACKEND_MEMBERS.filter((name) => typeof addon[name] !== 'function');
  if (missing.length > 0) {
    throw new ZnError(`the ${what} (${file}) lacks ${missing.join(', ')}: it is from an older build; rebuild it`);
  }
  loaded.set(file, addon as unknown as BackendAddon);
  return addon as unknown as Addon;
}

function loadCpu(): NativeAddon {
  const override = process.env.ZN_ADDON_PATH;
  if (override) return loadFile<NativeAddon>(resolve(override), 'CPU addon named by ZN_ADDON_PATH');
  const root = packageRoot();
  const cached = loaded.get(root);
  if (cached) return cached as NativeAddon;
  try {
    // A local build by name: build/Release may also hold the MPI addon, and node-gyp-build takes
    // whichever .node file the directory lists first. Else node-gyp-build finds the prebuild.
    const local = join(root, 'build', 'Release', 'zn_cpu.node');
    const nodeGypBuild = require('node-gyp-build') as (dir: string) => NativeAddon;
    const addon = existsSync(local) ? (require(local) as NativeAddon) : nodeGypBuild(root);
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

function loadCuda(): BackendAddon {
  const candidates = cudaAddonCandidates();
  const file = candidates.find((candidate) => existsSync(candidate));
  if (!file) {
    throw new ZnError(
      `the CUDA backend is not built (looked for ${candidates.join(', ')}). Build it with ` +
        '`bash scripts/build-cuda.sh` on a machine with the CUDA toolkit',
    );
  }
  const addon = loadFile(file, 'CUDA addon');
  // Loading needs no GPU; info() asks the driver for one, so 'auto' falls back to the CPU when
  // there is no usable GPU and 'cuda' says why.
  try {
    addon.info();
  } catch (error) {
    throw new ZnError(`the CUDA backend (${file}) cannot use a GPU: ${(error as Error).message}`);
  }
  return addon;
}

/**
 * Loads the addon for a device. A missing or broken CUDA backend is a ZnError, never a crash.
 * Only the CPU addon has the host-side functions: `loadNative('cpu')` is typed with them.
 */
export function loadNative(device?: 'cpu'): NativeAddon;
export function loadNative(device: Device): BackendAddon;
export function loadNative(device: Device = 'cpu'): BackendAddon {
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
