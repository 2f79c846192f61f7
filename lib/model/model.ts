/**
 * A Mistral model in native memory: `loadModel(dir)` reads an HF folder (config.json through
 * config.ts, weight files checked by folder.ts, tensor bytes loaded natively, never through the
 * JS heap), and the object runs forward/backward/log-probs on packed TokenBatches, takes AdamW
 * steps, and saves an HF folder that transformers loads unchanged.
 *
 * One call at a time per model: await each before the next (the native side refuses overlap,
 * since a forward's saved activations belong to the backward that follows it).
 */
import { ZnError } from '../errors.js';
import type { TokenBatch } from '../data/batch.js';
import {
  type AdamWHyperparameters,
  type Device,
  type DpoLossOptions,
  type DpoLossResult,
  type MemoryPlan,
  type NativeModel,
  type NativeModelConfig,
  type NativeModelOptions,
  type NativeParameter,
  type StepProfile,
  type NcclCommunicator,
  loadNative,
} from '../native.js';
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { fsyncDir } from '../io/atomic.js';
import { type CheckpointDType, type MistralConfig, readMistralConfig } from './config.js';
import { checkMistralWeights, copyTokenizerFiles, readCheckpointWeights, SAFETENSORS_METADATA, writeModelFolder } from './folder.js';
import { uniformSampler } from './init.js';
import { mistralParameterShapes } from './parameters.js';
import {
  ADAPTER_WEIGHTS_FILE,
  adapterBaseFolder,
  checkLoraSettings,
  initialAdapterValues,
  isAdapterFolder,
  type LoraSettings,
  peftSavedName,
  readAdapterFolder,
  savedModuleParameters,
  writeAdapterConfig,
} from './peft.js';

export type { Device, DpoLossOptions, DpoLossResult, MemoryPlan, StepProfile };

export type ModelDType = 'f32' | 'bf16';

/** A device a model runs on: 'auto' resolved. */
export type ComputeDevice = Exclude<Device, 'auto'>;

export interface ModelOptions {
  /** 'cpu' (default), 'cuda' or 'auto'. */
  device?: Device;
  /** 'f32' (default): f32 everywhere; 'bf16': bf16 weights and matmul inputs, f32 master weights. */
  dtype?: ModelDType;
  /** The most tokens one call may carry; activations are planned for it (default 2048). */
  maxTokens?: number;
  /** Recompute each decoder layer in backward instead of keeping its activations. */
  gradientCheckpointing?: boolean;
  /** Gradients, optimizer moments and saved activations (default false: a scoring/reference model). */
  trainable?: boolean;
  /**
   * GPU: the f32 master weights and AdamW moments in host memory and the AdamW step on the CPU,
   * so that the device holds only the compute weights, gradients and activations (default false;
   * no effect on the CPU).
   */
  offloadOptimizer?: boolean;
  /**
   * LoRA adapters on the projections, over a frozen base (no gradient, optimizer state or f32
   * master for it): fresh ones initialised as PEFT's default (A Kaiming-uniform, B zero) unless
   * the folder loaded is a PEFT adapter folder, whose settings and tensors are used instead.
   */
  lora?: LoraSettings;
  /** Seed of a fresh adapter's A and of lora_dropout's masks (default 0). */
  loraSeed?: number;
  /** An adapter folder's base model folder, overriding its base_model_name_or_path. */
  baseModel?: string;
  /**
   * CPU: an untied embedding's gradient as one dense buffer (default: by the rows a step
   * touched), so that data-parallel ranks sum whole gradient buffers (gradientBuffers()).
   */
  denseEmbeddingGradient?: boolean;
  /** ZeRO (lib/train/zero.ts): this rank's place among the ranks that shard the optimizer state (CPU and GPU models). */
  shard?: { rank: number; count: number };
  /** Time each optimizer step's parts, read with stepProfile() (default false: nothing timed). */
  profileSteps?: boolean;
  /** GPU: the CUDA device ordinal the model lives on (a data-parallel rank's LOCAL_RANK); default: the current device. */
  cudaDevice?: number;
}

export interface SaveOptions {
  /** Stored weight dtype; default bfloat16 for a bf16 model, float32 for an f32 one. */
  dtype?: CheckpointDType;
  /** Shard size limit, bytes or "5GB" (default 5GB, as transformers 4). */
  maxShardSize?: number | string;
}

export const DEFAULT_MAX_TOKENS = 2048;

/** The fields of a parsed config.json that the native model takes. */
export function nativeModelConfig(config: MistralConfig): NativeModelConfig {
  return {
    vocabSize: config.vocabSize,
    hiddenSize: config.hiddenSize,
    intermediateSize: config.intermediateSize,
    numHiddenLayers: config.numHiddenLayers,
    numAttentionHeads: config.numAttentionHeads,
    numKeyValueHeads: config.numKeyValueHeads,
    headDim: config.headDim,
    rmsNormEps: config.rmsNormEps,
    ropeTheta: config.ropeTheta,
    slidingWindow: config.slidingWindow ?? 0,
    tieWordEmbeddings: config.tieWordEmbeddings,
    padTokenId: config.padTokenId ?? -1,
  };
}

/** The native model's options for LoRA: the adapters, and every base parameter frozen but the saved modules'. */
function loraOptions(config: MistralConfig, lora: LoraSettings | undefined, seed: number): Pick<NativeModelOptions, 'lora' | 'frozen'> {
  if (!lora) return {};
  const saved = savedModuleParameters(lora, config, 'lora_modules_to_save');
  return {
    lora: { rank: lora.rank, alpha: lora.alpha, rslora: lora.rslora, targetModules: lora.targetModules, dropout: lora.dropout, dropoutSeed: seed, modulesToSave: saved },
    frozen: mistralParameterShapes(config).map((p) => p.name).filter((name) => !saved.includes(name)),
  };
}

/** The native model's options (what modelMemoryPlan plans) for a config and ModelOptions. */
export function nativeOptions(config: MistralConfig, options: ModelOptions): NativeModelOptions {
  const maxTokens = options.maxTokens ?? DEFAULT_MAX_TOKENS;
  if (!Number.isSafeInteger(maxTokens) || maxTokens <= 0) throw new ZnError(`maxTokens must be a positive integer, got ${maxTokens}`);
  const dtype = options.dtype ?? 'f32';
  if (dtype !== 'f32' && dtype !== 'bf16') throw new ZnError(`dtype must be 'f32' or 'bf16', got '${String(dtype)}'`);
  return {
    config: nativeModelConfig(config),
    dtype,
    maxTokens,
    gradientCheckpointing: options.gradientCheckpointing ?? false,
    trainable: options.trainable ?? false,
    offloadOptimizer: options.offloadOptimizer ?? false,
    denseEmbeddingGradient: options.denseEmbeddingGradient ?? false,
    ...(options.shard && options.shard.count > 1 ? { shard: options.shard } : {}),
    profileSteps: options.profileSteps ?? false,
    ...(options.cudaDevice !== undefined ? { cudaDevice: options.cudaDevice } : {}),
    ...loraOptions(config, options.lora, options.loraSeed ?? 0),
  };
}

/** The device 'auto' means here: cuda when the CUDA addon loads and has a model, else cpu. */
export function computeDevice(device: Device): ComputeDevice {
  if (device !== 'auto') return device;
  const addon = loadNative('auto');
  return addon.info().backend === 'cuda' && typeof addon.Model === 'function' ? 'cuda' : 'cpu';
}

/** The fused DPO loss on a device's backend: per-pair losses, their gradients, TRL's metrics. */
export function dpoLoss(device: Device, options: DpoLossOptions): DpoLossResult {
  return loadNative(device).dpoLoss(options);
}

/** The bytes a model would allocate (weights, grads, optimizer, activations, logits chunks), before allocating. */
export function modelMemoryPlan(config: MistralConfig, options: ModelOptions = {}): MemoryPlan {
  return loadNative(options.device ?? 'cpu').modelMemoryPlan(nativeOptions(config, options));
}

/** The bytes startGeneration would allocate for this many sequences and context (the KvCache). */
export function generationMemory(config: MistralConfig, options: ModelOptions & { sequences: number; maxContext: number }): number {
  const { sequences, maxContext, ...model } = options;
  return loadNative(model.device ?? 'cpu').generationMemory({ ...nativeOptions(config, model), sequences, maxContext });
}

export class MistralModel {
  constructor(
    /** The folder the weights came from (tokenizer files are copied from it on save). */
    readonly dir: string,
    readonly config: MistralConfig,
    readonly options: Readonly<Required<Omit<ModelOptions, 'device' | 'lora' | 'loraSeed' | 'baseModel' | 'shard'>>> & {
      device: Device;
      /** LoRA's settings when the model has adapters. */
      lora: LoraSettings | null;
    },
    private readonly native: NativeModel,
  ) {}

  get maxTokens(): number {
    return this.options.maxTokens;
  }

  parameters(): NativeParameter[] {
    return this.native.parameters();
  }

  memoryPlan(): MemoryPlan {
    return this.native.memoryPlan();
  }

  /** LoRA's adapter parameters, named as PEFT saves them (none without adapters). */
  adapterParameters(): NativeParameter[] {
    return this.native.adapterParameters();
  }

  /**
   * Off: every later call runs the base model alone (TRL's DPO reference for a fresh adapter).
   * The saved modules (modules_to_save) keep their trained values: unlike PEFT's
   * disable_adapter(), this is not the base model when there are any.
   */
  setAdaptersEnabled(enabled: boolean): void {
    this.native.setAdaptersEnabled({ enabled });
  }

  /** Replaces the adapters and saved modules with the tensors of PEFT adapter files (e.g. a checkpoint's). */
  async loadAdapters(files: string[]): Promise<void> {
    checkAdapterLoad(files.join(', '), await this.native.loadAdapters({ files }), true);
  }

  /** Folds the adapters into the base weights, W += s B A (PEFT's merge_and_unload; CPU, dtype f32). */
  mergeAdapters(): Promise<void> {
    return this.native.mergeAdapters({});
  }

  /**
   * Writes a PEFT adapter folder: adapter_model.safetensors (f32, PEFT's tensor names),
   * adapter_config.json naming the base, and the base folder's tokenizer files; peft's
   * PeftModel.from_pretrained loads it.
   */
  async saveAdapter(dir: string, baseModelNameOrPath: string = this.dir): Promise<void> {
    if (!this.options.lora) throw new ZnError('saveAdapter: this model has no LoRA adapters');
    mkdirSync(dir, { recursive: true });
    const names = [...this.adapterParameters().map((p) => p.name), ...this.savedModuleParameters().map(peftSavedName)];
    await this.native.saveWeights({ path: join(dir, ADAPTER_WEIGHTS_FILE), names, dtype: 'F32', metadata: { ...SAFETENSORS_METADATA } });
    writeAdapterConfig(dir, this.options.lora, baseModelNameOrPath);
    copyTokenizerFiles(this.dir, dir);
    fsyncDir(dir);
  }

  /** The base parameters trained beside the adapters (modules_to_save), by base name. */
  savedModuleParameters(): string[] {
    return this.options.lora ? savedModuleParameters(this.options.lora, this.config, 'lora_modules_to_save') : [];
  }

  /** Per-token log p(target) (0 where the target is -100), keeping activations for backward(). */
  async forward(batch: TokenBatch): Promise<Float32Array> {
    return (await this.native.forward(batch)).logp;
  }

  /** Per-token log-probs without keeping anything for backward. */
  async logprobs(batch: TokenBatch): Promise<Float32Array> {
    return (await this.native.logprobs(batch)).logp;
  }

  /** Logits of the next token after each document of the batch: [documents x vocab]. */
  async nextTokenLogits(batch: TokenBatch): Promise<Float32Array> {
    return (await this.native.nextTokenLogits(batch)).logits;
  }

  /**
   * Generation: a KvCache for `sequences` sequences of up to `maxContext` positions (Mistral's
   * rolling buffer: min(sliding window, maxContext) of them held per sequence), replacing an
   * earlier one. lib/generate's engine drives it.
   */
  startGeneration(sequences: number, maxContext: number): Promise<void> {
    return this.native.startGeneration({ sequences, maxContext });
  }

  /** A free sequence slot, or -1 when all are taken. */
  acquireSequence(): number {
    return this.native.acquireSequence({});
  }

  releaseSequence(slot: number): void {
    this.native.releaseSequence({ slot });
  }

  /**
   * New tokens of some sequences (counts[i] for slots[i], end to end); each one's next-token
   * logits [slots x vocab], written into `logits` when given (a buffer a decoding loop reuses).
   */
  async extend(slots: Int32Array, counts: Int32Array, tokens: Int32Array, logits?: Float32Array): Promise<Float32Array> {
    const out = logits ?? new Float32Array(slots.length * this.config.vocabSize);
    return (await this.native.extend({ slots, counts, tokens, logits: out })).logits;
  }

  /** Accumulates gradients of a loss whose derivative w.r.t. each token's log-prob is dlogp. */
  backward(dlogp: Float32Array): Promise<void> {
    return this.native.backward({ dlogp });
  }

  /**
   * forward(batch) then backward(dlogp) in one call, for a loss whose dlogp does not depend on the
   * log-probs (SFT's token mean); returns the log-probs. On either backend the lm_head's logits
   * are computed once instead of again in backward.
   */
  async forwardBackward(batch: TokenBatch, dlogp: Float32Array): Promise<Float32Array> {
    return (await this.native.forwardBackward({ ...batch, dlogp })).logp;
  }

  zeroGrad(): Promise<void> {
    return this.native.zeroGrad({});
  }

  /** Clips the global grad norm as torch does (when maxGradNorm > 0) and takes one AdamW step. */
  clipAndStep(hp: AdamWHyperparameters & { gradSumOfSquares?: number }): Promise<{ gradNorm: number; step: number }> {
    return this.native.clipAndStep(hp);
  }

  /** AdamW steps taken so far (restored by loadOptimizerState). */
  get optimizerStep(): number {
    return this.native.optimizerStep();
  }

  /** Seconds of the last optimizer step's parts (created with profileSteps; else null). */
  stepProfile(): StepProfile | null {
    return this.native.stepProfile();
  }

  /** Replaces every parameter with the tensors of these safetensors files (e.g. a checkpoint's). */
  async loadWeights(files: string[]): Promise<void> {
    await this.native.loadWeights({ files });
  }

  saveOptimizerState(path: string): Promise<void> {
    return this.native.saveOptimizerState({ path });
  }

  /** One process's optimizer file, or every rank's shard files of a ZeRO checkpoint (any rank count, either device's): this model's range of them. */
  loadOptimizerState(path: string | string[]): Promise<void> {
    return this.native.loadOptimizerState(typeof path === 'string' ? { path } : { paths: path });
  }

  /** ZeRO: this rank's shard of the optimizer state, as its own file. */
  saveOptimizerShard(path: string): Promise<void> {
    return this.native.saveOptimizerShard({ path });
  }

  /** ZeRO: per trained group's gradient buffer (gradientBuffers' order), each rank's element count. */
  gradientShardCounts(): number[][] {
    return this.native.gradientShardCounts({});
  }

  /** ZeRO stage 2: the sum of squares of this rank's shard of the gradients. */
  shardGradSumOfSquares(): Promise<number> {
    return this.native.shardGradSumOfSquares({});
  }

  /** ZeRO (CPU): views over the weight runs the ranks all-gather in place after a sharded step. */
  weightSegments(): { data: Float32Array | Uint16Array; counts: number[] }[] {
    return this.native.weightSegments();
  }

  /** A copy of a parameter's f32 master weights (a frozen bf16 model holds only bf16 values: those, widened). */
  getParameter(name: string): Float32Array {
    return this.native.getParameter({ name });
  }

  /**
   * Views (no copy) over each trained group's gradient buffer (CPU model; the base group when it
   * trains anything, then the adapters): what data-parallel ranks sum in place. Valid until
   * dispose(); an untied embedding needs denseEmbeddingGradient.
   */
  gradientBuffers(): Float32Array[] {
    return this.native.gradientBuffers();
  }

  /** GPU model: each trained group's gradients summed across the ranks of an open NCCL communicator, in place on the device. */
  allReduceGradients(communicator: NcclCommunicator): Promise<void> {
    return this.native.allReduceGradients(communicator);
  }

  /** GPU model, ZeRO stage 2: this rank's range of each trained group's device gradients summed across the communicator's ranks. */
  reduceScatterGradients(communicator: NcclCommunicator): Promise<void> {
    return this.native.reduceScatterGradients(communicator);
  }

  /** GPU model, ZeRO stages 1 and 2: after a sharded step, every rank's range of the device weights from its owner. */
  allGatherWeights(communicator: NcclCommunicator): Promise<void> {
    return this.native.allGatherWeights(communicator);
  }

  /** A copy of a parameter's accumulated gradient (trainable models). */
  getGradient(name: string): Float32Array {
    return this.native.getGradient({ name });
  }

  /**
   * Frees the model's memory (host, and device for a GPU model) now: the garbage collector does
   * not see it, and a 7B model holds tens of GiB. Later calls throw; so does disposing while a
   * call is running.
   */
  dispose(): void {
    this.native.dispose();
  }

  /**
   * Writes an HF model folder: weight shards (written natively, atomically), the index when
   * sharded, config.json, generation_config.json and the source folder's tokenizer files.
   */
  async save(dir: string, options: SaveOptions = {}): Promise<void> {
    const dtype = options.dtype ?? (this.options.dtype === 'bf16' ? 'bfloat16' : 'float32');
    await writeModelFolder(dir, this.parameters(), {
      config: this.config,
      dtype,
      maxShardSize: options.maxShardSize,
      sourceDir: this.dir,
      writeShard: (path, tensors, metadata) =>
        this.native.saveWeights({ path, names: tensors.map((t) => t.name), dtype: tensors[0]?.dtype ?? 'F32', metadata }),
    });
  }
}

/**
 * Loads an HF MistralForCausalLM folder (config.json + safetensors weights) into native memory;
 * or a PEFT LoRA adapter folder: its base model (base_model_name_or_path, or options.baseModel)
 * with the adapters on it.
 */
export async function loadModel(dir: string, options: ModelOptions = {}): Promise<MistralModel> {
  let adapterWeights: string | null = null;
  if (isAdapterFolder(dir)) {
    const base = adapterBaseFolder(readAdapterFolder(dir), options.baseModel);
    const adapter = readAdapterFolder(dir, readMistralConfig(base).numHiddenLayers);
    options = { ...options, lora: adapter.lora };
    adapterWeights = adapter.weightsFile;
    dir = base;
  }
  const config = readMistralConfig(dir);
  const device = options.device ?? 'cpu';
  const addon = loadNative(device);  // checked to have a Model (lib/native.ts BACKEND_MEMBERS)
  // File headers are the CPU addon's to read (every install builds it); the device's addon
  // holds device work only.
  const { shards } = checkMistralWeights(readCheckpointWeights(dir), config);
  if (options.lora) checkLoraSettings(options.lora, 'lora');
  const resolved = nativeOptions(config, options);
  const native = new addon.Model(resolved);
  await native.loadWeights({ files: shards.map((shard) => shard.path) });
  if (options.lora) await loadAdapterTensors(native, adapterWeights, options.loraSeed ?? 0);
  return new MistralModel(
    dir,
    config,
    {
      device,
      dtype: resolved.dtype!,
      maxTokens: resolved.maxTokens,
      gradientCheckpointing: resolved.gradientCheckpointing!,
      trainable: resolved.trainable!,
      offloadOptimizer: resolved.offloadOptimizer!,
      denseEmbeddingGradient: resolved.denseEmbeddingGradient!,
      profileSteps: resolved.profileSteps!,
      cudaDevice: resolved.cudaDevice ?? -1,
      lora: options.lora ?? null,
    },
    native,
  );
}

/** Every tensor of an adapter file is an adapter or saved module of the model, and (`complete`) every saved module is there. */
function checkAdapterLoad(file: string, { unexpected, absent }: { unexpected: string[]; absent: string[] }, complete: boolean): void {
  const list = (names: string[]) => `${names.slice(0, 5).join(', ')}${names.length > 5 ? ', ...' : ''}`;
  if (unexpected.length > 0) throw new ZnError(`${file}: holds tensors that are not adapters or saved modules of this model: ${list(unexpected)}`);
  if (complete && absent.length > 0) throw new ZnError(`${file}: lacks the modules_to_save tensors ${list(absent.map(peftSavedName))}`);
}

/** The adapters from a PEFT file, or fresh ones (PEFT's initialisation) through a temporary file. */
async function loadAdapterTensors(native: NativeModel, file: string | null, seed: number): Promise<void> {
  let temp: string | null = null;
  if (!file) {
    temp = mkdtempSync(join(tmpdir(), 'zn-adapter-'));
    file = join(temp, ADAPTER_WEIGHTS_FILE);
    const uniform = uniformSampler(seed);
    const tensors = native.adapterParameters().map(({ name, shape }) => ({
      name,
      dtype: 'F32' as const,
      shape,
      data: initialAdapterValues(shape, name.endsWith('lora_A.weight') ? 'A' : 'B', uniform),
    }));
    await loadNative('cpu').writeSafetensors({ path: file, tensors, metadata: { ...SAFETENSORS_METADATA } });
  }
  try {
    // A fresh adapter's saved modules start as the base's (PEFT copies the module).
    checkAdapterLoad(file, await native.loadAdapters({ files: [file] }), temp === null);
  } finally {
    if (temp) rmSync(temp, { recursive: true, force: true });
  }
}
