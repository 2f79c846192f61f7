/**
 * Hugging Face model folders: where the weights are, whether the files agree with each other and
 * with config.json, and how a save is laid out (shards, index, config, generation config,
 * tokenizer files).
 *
 * Weights are `model.safetensors`, or `model-0000k-of-0000n.safetensors` listed by
 * `model.safetensors.index.json` ({metadata: {total_size}, weight_map: {name: file}}); when both
 * exist the single file wins, as in transformers. Pickled `.bin`/`.pt` weights are refused, never
 * unpickled. Tensor bytes never pass through JS: headers are read natively and the native model
 * loads and writes the data; this module plans and checks. Every file written here is atomic
 * (temporary file, fsync, rename), and a shard writer must be too (the native one is).
 */
import { existsSync, mkdirSync, readdirSync, readFileSync, rmSync, statSync } from 'node:fs';
import { join, resolve } from 'node:path';

import { ZnError } from '../errors.js';
import { fsyncDir, writeFileAtomic } from '../io/atomic.js';
import { loadNative, type NativeAddon, type SafetensorsTensorInfo } from '../native.js';
import { mistralConfigJson, stringifyConfigJson, type CheckpointDType, type MistralConfig } from './config.js';
import { mistralParameterShapes } from './parameters.js';

export const SINGLE_WEIGHTS_FILE = 'model.safetensors';
export const WEIGHTS_INDEX_FILE = 'model.safetensors.index.json';
/** transformers 4's default shard limit ("5GB" = 5 * 10^9 bytes); transformers 5 uses "50GB". */
export const DEFAULT_MAX_SHARD_SIZE = 5_000_000_000;
/** transformers refuses safetensors files whose metadata lacks format "pt" (or tf/flax/mlx). */
export const SAFETENSORS_METADATA: Readonly<Record<string, string>> = { format: 'pt' };
/** Tokenizer files a model folder may carry; a save copies those present. */
export const TOKENIZER_FILES = [
  'tokenizer.json',
  'tokenizer_config.json',
  'special_tokens_map.json',
  'tokenizer.model',
  'added_tokens.json',
  'chat_template.jinja',
  'chat_template.json',
  'vocab.json',
  'merges.txt',
];

const SHARD_NAME = /^model-(\d{5})-of-(\d{5})\.safetensors$/;
// Pickled weights as transformers, PyTorch and Mistral name them (not the Trainer's
// optimizer.pt, scheduler.pt, rng_state.pth or training_args.bin, which are not weights).
const PICKLE_NAME = /^(pytorch_model|model|consolidated|adapter_model)([-.].*)?\.(bin|pt|pth|ckpt)$/;

export interface WeightShard {
  path: string;
  tensors: SafetensorsTensorInfo[];
}

export interface CheckpointWeights {
  dir: string;
  /** The index file, or null for a single model.safetensors. */
  indexPath: string | null;
  shards: WeightShard[];
  /** Every tensor in the folder by name, with the shard that holds it. */
  tensors: Map<string, { path: string; info: SafetensorsTensorInfo }>;
}

function readJson(path: string): unknown {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (error) {
    throw new ZnError(`${path}: cannot read (${(error as NodeJS.ErrnoException).code ?? (error as Error).message})`);
  }
  try {
    return JSON.parse(text);
  } catch (error) {
    throw new ZnError(`${path}: not valid JSON (${(error as Error).message})`);
  }
}

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

function pickleRefusal(dir: string, files: string[]): ZnError {
  return new ZnError(
    `${dir}: the weights are pickled PyTorch files (${files.slice(0, 3).join(', ')}), which zephyr-native ` +
      'never loads: unpickling can run arbitrary code. Convert the folder to safetensors first, e.g. ' +
      `python -c "from transformers import AutoModelForCausalLM as M; M.from_pretrained('${dir}').save_pretrained('${dir}-safetensors')"`,
  );
}

/** The weight files of a model folder (index validated, every listed file present). */
export function locateWeights(dir: string): { files: string[]; indexPath: string | null; weightMap: Map<string, string> | null } {
  if (!existsSync(dir) || !statSync(dir).isDirectory()) throw new ZnError(`${dir}: no such model folder`);
  if (existsSync(join(dir, SINGLE_WEIGHTS_FILE))) {
    return { files: [join(dir, SINGLE_WEIGHTS_FILE)], indexPath: null, weightMap: null };
  }
  const indexPath = join(dir, WEIGHTS_INDEX_FILE);
  if (existsSync(indexPath)) {
    const weightMap = readWeightMap(indexPath);
    const names = [...new Set(weightMap.values())].sort();
    const missing = names.filter((name) => !existsSync(join(dir, name)));
    if (missing.length > 0) {
      throw new ZnError(`${indexPath}: lists shard files that do not exist: ${missing.join(', ')}`);
    }
    return { files: names.map((name) => join(dir, name)), indexPath, weightMap };
  }
  const entries = readdirSync(dir);
  const pickles = entries.filter((name) => PICKLE_NAME.test(name));
  if (pickles.length > 0) throw pickleRefusal(dir, pickles);
  if (entries.includes('adapter_config.json')) {
    throw new ZnError(`${dir}: is a PEFT adapter folder (adapter_config.json), not a full model: load its base model and the adapter`);
  }
  throw new ZnError(`${dir}: no model weights (expected ${SINGLE_WEIGHTS_FILE} or ${WEIGHTS_INDEX_FILE})`);
}

/** weight_map of an index file, each entry a plain file name in the same folder. */
function readWeightMap(indexPath: string): Map<string, string> {
  const index = readJson(indexPath);
  if (!isObject(index) || !isObject(index.weight_map)) {
    throw new ZnError(`${indexPath}: expected an object with a "weight_map" object`);
  }
  if ('metadata' in index && index.metadata !== null && !isObject(index.metadata)) {
    throw new ZnError(`${indexPath}: "metadata" must be an object`);
  }
  const weightMap = new Map<string, string>();
  for (const [name, file] of Object.entries(index.weight_map)) {
    // A plain name: the index may not point outside its folder.
    if (typeof file !== 'string' || file === '' || file.includes('/') || file.includes('\\') || file === '..' || file === '.') {
      throw new ZnError(`${indexPath}: weight_map["${name}"] must be a file name in the model folder, got ${JSON.stringify(file)}`);
    }
    if (PICKLE_NAME.test(file)) throw pickleRefusal(indexPath, [file]);
    weightMap.set(name, file);
  }
  if (weightMap.size === 0) throw new ZnError(`${indexPath}: weight_map is empty`);
  return weightMap;
}

/**
 * Reads and validates every weight file's header: each tensor in exactly one file, and with an
 * index, each listed tensor in the file the index names and no file holding unlisted tensors.
 */
export function readCheckpointWeights(dir: string, addon: NativeAddon = loadNative('cpu')): CheckpointWeights {
  const { files, indexPath, weightMap } = locateWeights(dir);
  const shards = files.map((path) => ({ path, tensors: addon.readSafetensorsHeader({ path }).tensors }));
  const tensors = new Map<string, { path: string; info: SafetensorsTensorInfo }>();
  for (const shard of shards) {
    for (const info of shard.tensors) {
      const other = tensors.get(info.name);
      if (other) throw new ZnError(`${dir}: tensor '${info.name}' is in both ${other.path} and ${shard.path}`);
      tensors.set(info.name, { path: shard.path, info });
    }
  }
  if (indexPath && weightMap) {
    const problems: string[] = [];
    for (const [name, file] of weightMap) {
      const found = tensors.get(name);
      if (!found) problems.push(`'${name}' is not in ${file}`);
      else if (found.path !== join(dir, file)) problems.push(`'${name}' is listed in ${file} but stored in ${found.path}`);
    }
    for (const name of tensors.keys()) {
      if (!weightMap.has(name)) problems.push(`'${name}' (in ${tensors.get(name)!.path}) is not listed`);
    }
    if (problems.length > 0) throw new ZnError(`${indexPath}: does not match the shard files: ${summarize(problems)}`);
  }
  return { dir, indexPath, shards, tensors };
}

function summarize(problems: string[], limit = 8): string {
  const shown = problems.slice(0, limit).join('; ');
  return problems.length > limit ? `${shown}; and ${problems.length - limit} more` : shown;
}

const LOADABLE_DTYPES = new Set(['F32', 'F16', 'BF16']);

export interface WeightsCheck {
  /** The files to load and, per file, the model's tensors in it (what the native loader takes). */
  shards: { path: string; names: string[] }[];
  /** Tensors in the folder that the model does not use (transformers ignores them too). */
  unused: string[];
}

/** Checks that the folder holds every parameter config.json implies, with its shape and a loadable dtype. */
export function checkMistralWeights(weights: CheckpointWeights, config: MistralConfig): WeightsCheck {
  const problems: string[] = [];
  const byPath = new Map<string, string[]>(weights.shards.map((shard) => [shard.path, []]));
  const expected = mistralParameterShapes(config);
  for (const { name, shape } of expected) {
    const found = weights.tensors.get(name);
    if (!found) {
      problems.push(`missing tensor '${name}'`);
      continue;
    }
    if (found.info.shape.join(',') !== shape.join(',')) {
      problems.push(`tensor '${name}' has shape [${found.info.shape.join(', ')}], config.json implies [${shape.join(', ')}]`);
    }
    if (!LOADABLE_DTYPES.has(found.info.dtype)) {
      problems.push(`tensor '${name}' has dtype ${found.info.dtype} (supported: BF16, F16, F32)`);
    }
    byPath.get(found.path)!.push(name);
  }
  if (problems.length > 0) {
    throw new ZnError(`${weights.dir}: the weights do not match config.json: ${summarize(problems)}`);
  }
  const used = new Set(expected.map((p) => p.name));
  return {
    shards: [...byPath].filter(([, names]) => names.length > 0).map(([path, names]) => ({ path, names })),
    unused: [...weights.tensors.keys()].filter((name) => !used.has(name)),
  };
}

// ---------------------------------------------------------------------------------------------
// Saving

export type StoredDType = 'F32' | 'BF16' | 'F16';

export const STORED_DTYPE: Record<CheckpointDType, StoredDType> = { float32: 'F32', bfloat16: 'BF16', float16: 'F16' };

export interface TensorPlan {
  name: string;
  shape: number[];
  dtype: StoredDType;
  bytes: number;
}

export interface ShardPlan {
  file: string;
  tensors: TensorPlan[];
  bytes: number;
}

export interface SavePlan {
  shards: ShardPlan[];
  /** true when an index file lists the shards (more than one file). */
  sharded: boolean;
  totalSize: number;
  totalParameters: number;
}

const SIZE_UNITS: Record<string, number> = { KB: 1e3, MB: 1e6, GB: 1e9, TB: 1e12 };

/** A shard size limit: bytes, or "5GB"-style text with huggingface_hub's units (KB..TB, powers of 10). */
export function parseShardSize(size: number | string): number {
  if (typeof size === 'number') {
    if (Number.isSafeInteger(size) && size > 0) return size;
    throw new ZnError(`max_shard_size must be a positive number of bytes, got ${size}`);
  }
  const match = /^\s*(\d+(?:\.\d+)?)\s*(KB|MB|GB|TB)?\s*$/i.exec(size);
  const bytes = match ? Math.floor(Number(match[1]) * (match[2] ? SIZE_UNITS[match[2].toUpperCase()]! : 1)) : NaN;
  if (!(bytes > 0)) {
    throw new ZnError(`max_shard_size '${size}' is not a size (bytes, or a number with KB, MB, GB or TB, e.g. "5GB")`);
  }
  return bytes;
}

function elementBytes(dtype: StoredDType): number {
  return dtype === 'F32' ? 4 : 2;
}

/**
 * Splits tensors into shards of at most maxShardSize bytes, in order, as huggingface_hub does:
 * a tensor that would tip a shard over the limit starts the next one, and a tensor larger than
 * the limit gets a shard of its own.
 */
export function planShards(
  tensors: { name: string; shape: number[]; dtype: StoredDType }[],
  maxShardSize: number | string = DEFAULT_MAX_SHARD_SIZE,
): SavePlan {
  const limit = parseShardSize(maxShardSize);
  const groups: TensorPlan[][] = [];
  let current: TensorPlan[] = [];
  let currentBytes = 0;
  let totalSize = 0;
  let totalParameters = 0;
  for (const tensor of tensors) {
    const numel = tensor.shape.reduce((a, b) => a * b, 1);
    const bytes = numel * elementBytes(tensor.dtype);
    totalSize += bytes;
    totalParameters += numel;
    const planned = { ...tensor, bytes };
    if (current.length > 0 && (bytes > limit || currentBytes + bytes > limit)) {
      groups.push(current);
      current = [];
      currentBytes = 0;
    }
    current.push(planned);
    currentBytes += bytes;
  }
  if (current.length > 0 || groups.length === 0) groups.push(current);
  const n = groups.length;
  const pad = (k: number) => String(k).padStart(5, '0');
  const shards = groups.map((group, k) => ({
    file: n === 1 ? SINGLE_WEIGHTS_FILE : `model-${pad(k + 1)}-of-${pad(n)}.safetensors`,
    tensors: group,
    bytes: group.reduce((sum, t) => sum + t.bytes, 0),
  }));
  return { shards, sharded: n > 1, totalSize, totalParameters };
}

/** The index file transformers writes: keys sorted, 2-space indent. */
export function weightsIndexJson(plan: SavePlan): string {
  const weightMap: Record<string, string> = {};
  const entries = plan.shards.flatMap((shard) => shard.tensors.map((t) => [t.name, shard.file] as const));
  for (const [name, file] of entries.sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))) weightMap[name] = file;
  const index = { metadata: { total_parameters: plan.totalParameters, total_size: plan.totalSize }, weight_map: weightMap };
  return `${JSON.stringify(index, null, 2)}\n`;
}

/** generation_config.json as transformers derives it from a model config. */
export function generationConfigFromModel(config: MistralConfig): Record<string, unknown> {
  const out: Record<string, unknown> = { _from_model_config: true, bos_token_id: config.bosTokenId, eos_token_id: config.eosTokenId };
  if (config.padTokenId !== null) out.pad_token_id = config.padTokenId;
  return out;
}

/** A folder's generation_config.json, or null when it has none. */
export function readGenerationConfig(dir: string): Record<string, unknown> | null {
  const path = join(dir, 'generation_config.json');
  if (!existsSync(path)) return null;
  const value = readJson(path);
  if (!isObject(value)) throw new ZnError(`${path}: expected a JSON object`);
  return value;
}

export interface ModelFolderOptions {
  config: MistralConfig;
  /** The dtype the weights are stored in (written to config.json as `dtype`). */
  dtype: CheckpointDType;
  /** Shard size limit (bytes or "5GB"); default 5GB. */
  maxShardSize?: number | string;
  /**
   * Writes one safetensors file atomically holding exactly these tensors, in this order, with
   * this metadata (the native model's save; tests may write from arrays).
   */
  writeShard(path: string, tensors: TensorPlan[], metadata: Record<string, string>): Promise<void>;
  /** The folder the model came from: its tokenizer files (and generation_config.json) carry over. */
  sourceDir?: string | null;
  /** generation_config.json to write; default: the source folder's, else derived from config. */
  generationConfig?: Record<string, unknown> | null;
}

function removeStaleWeights(dir: string, plan: SavePlan): void {
  const keep = new Set(plan.shards.map((shard) => shard.file));
  for (const name of readdirSync(dir)) {
    const stale =
      (SHARD_NAME.test(name) && !keep.has(name)) ||
      (name === SINGLE_WEIGHTS_FILE && plan.sharded) ||
      (name === WEIGHTS_INDEX_FILE && !plan.sharded);
    if (stale) rmSync(join(dir, name), { force: true });
  }
}

export function copyTokenizerFiles(from: string, to: string): void {
  if (resolve(from) === resolve(to)) return;
  for (const name of TOKENIZER_FILES) {
    const source = join(from, name);
    if (existsSync(source)) writeFileAtomic(join(to, name), readFileSync(source));
  }
}

/**
 * Writes a model folder: weight shards (through `writeShard`), the index when sharded,
 * config.json, generation_config.json and the tokenizer files. Weight files of an earlier save
 * that the new layout does not use are removed once the new ones are in place.
 */
export async function writeModelFolder(
  dir: string,
  tensors: { name: string; shape: number[] }[],
  options: ModelFolderOptions,
): Promise<SavePlan> {
  const dtype = STORED_DTYPE[options.dtype];
  if (!dtype) throw new ZnError(`cannot save weights as '${String(options.dtype)}': expected float32, bfloat16 or float16`);
  const plan = planShards(
    tensors.map((t) => ({ ...t, dtype })),
    options.maxShardSize ?? DEFAULT_MAX_SHARD_SIZE,
  );
  mkdirSync(dir, { recursive: true });
  for (const shard of plan.shards) await options.writeShard(join(dir, shard.file), shard.tensors, { ...SAFETENSORS_METADATA });
  if (plan.sharded) writeFileAtomic(join(dir, WEIGHTS_INDEX_FILE), weightsIndexJson(plan));
  removeStaleWeights(dir, plan);
  writeFileAtomic(join(dir, 'config.json'), stringifyConfigJson(mistralConfigJson(options.config, options.dtype)));
  const source = options.sourceDir ?? null;
  const generation =
    options.generationConfig ?? (source ? readGenerationConfig(source) : null) ?? generationConfigFromModel(options.config);
  writeFileAtomic(join(dir, 'generation_config.json'), `${JSON.stringify(generation, null, 2)}\n`);
  if (source) copyTokenizerFiles(source, dir);
  fsyncDir(dir);
  return plan;
}
