/**
 * Hugging Face `config.json` for MistralForCausalLM: read (both transformers generations) and
 * written (as transformers 5 writes it).
 *
 * transformers 4 configs carry `rope_theta` (and `rope_scaling`) at the top level and
 * `torch_dtype`; transformers 5 writes `rope_parameters: {rope_theta, rope_type}` and `dtype`.
 * Missing fields take MistralConfig's defaults (transformers 5.x, configuration_mistral.py), so
 * a config loads here as it does there. Anything that would change the numerics and that the
 * native model does not implement (RoPE scaling, another activation, attention dropout,
 * quantized weights) is an error naming the field, never silently ignored. Every bad field is
 * reported at once, with the file path.
 */
import { readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';

import { ZnError } from '../errors.js';

/** Weight dtypes a checkpoint may declare (config `dtype` / `torch_dtype`). */
export type CheckpointDType = 'float32' | 'bfloat16' | 'float16';

export interface MistralConfig {
  vocabSize: number;
  hiddenSize: number;
  intermediateSize: number;
  numHiddenLayers: number;
  numAttentionHeads: number;
  numKeyValueHeads: number;
  /** `head_dim` when the config sets it, else hiddenSize / numAttentionHeads (floored, as HF). */
  headDim: number;
  maxPositionEmbeddings: number;
  rmsNormEps: number;
  ropeTheta: number;
  /** null: every token sees the whole prefix. */
  slidingWindow: number | null;
  tieWordEmbeddings: boolean;
  bosTokenId: number | null;
  eosTokenId: number | number[] | null;
  /** When set, that embedding row gets no gradient (nn.Embedding padding_idx). */
  padTokenId: number | null;
  /** The dtype the checkpoint's weights are stored in, when the config says. */
  dtype: CheckpointDType | null;
  initializerRange: number;
  useCache: boolean;
}

/** MistralConfig's defaults in transformers 5 (the same values as transformers 4.3x+). */
const DEFAULTS = {
  vocab_size: 32000,
  hidden_size: 4096,
  intermediate_size: 14336,
  num_hidden_layers: 32,
  num_attention_heads: 32,
  num_key_value_heads: 8,
  max_position_embeddings: 4096 * 32,
  initializer_range: 0.02,
  rms_norm_eps: 1e-6,
  use_cache: true,
  pad_token_id: null,
  bos_token_id: 1,
  eos_token_id: 2,
  tie_word_embeddings: false,
  rope_theta: 10000,
  sliding_window: 4096,
  hidden_act: 'silu',
  attention_dropout: 0,
} as const;

const DTYPES: readonly CheckpointDType[] = ['float32', 'bfloat16', 'float16'];

type Json = Record<string, unknown>;

function isObject(value: unknown): value is Json {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

/** Collects every problem with the fields, then throws one error naming them all. */
class FieldReader {
  readonly problems: string[] = [];

  constructor(private readonly raw: Json) {}

  has(field: string): boolean {
    return field in this.raw;
  }

  private value(field: string): unknown {
    return field in this.raw ? this.raw[field] : (DEFAULTS as Record<string, unknown>)[field];
  }

  problem(field: string, message: string): void {
    this.problems.push(`${field} ${message}`);
  }

  /** A positive integer (or non-negative with min 0). */
  integer(field: string, min = 1): number {
    const value = this.value(field);
    if (typeof value !== 'number' || !Number.isSafeInteger(value) || value < min) {
      this.problem(field, `must be an integer >= ${min}, got ${JSON.stringify(value)}`);
      return Number.NaN;
    }
    return value;
  }

  /** null, or an integer >= min. */
  optionalInteger(field: string, min: number): number | null {
    const value = this.value(field);
    if (value === null || value === undefined) return null;
    return this.integer(field, min);
  }

  positiveNumber(field: string, value: unknown = this.value(field)): number {
    if (typeof value !== 'number' || !Number.isFinite(value) || value <= 0) {
      this.problem(field, `must be a positive number, got ${JSON.stringify(value)}`);
      return Number.NaN;
    }
    return value;
  }

  boolean(field: string): boolean {
    const value = this.value(field);
    if (typeof value !== 'boolean') {
      this.problem(field, `must be true or false, got ${JSON.stringify(value)}`);
      return false;
    }
    return value;
  }

  /** A token id: null, or an integer in [0, vocabSize). */
  tokenId(field: string, vocabSize: number): number | null {
    const value = this.value(field);
    if (value === null || value === undefined) return null;
    const inVocab = !Number.isFinite(vocabSize) || (typeof value === 'number' && value < vocabSize);
    if (typeof value !== 'number' || !Number.isSafeInteger(value) || value < 0 || !inVocab) {
      this.problem(field, `must be null or a token id in [0, ${vocabSize}), got ${JSON.stringify(value)}`);
      return null;
    }
    return value;
  }
}

/** rope_parameters (transformers 5) or rope_theta + rope_scaling (transformers 4). */
function readRopeTheta(fields: FieldReader, raw: Json): number {
  const topLevel = 'rope_theta' in raw ? fields.positiveNumber('rope_theta') : null;
  checkNoScaling(fields, raw);
  if (raw.rope_parameters === undefined || raw.rope_parameters === null) return topLevel ?? DEFAULTS.rope_theta;
  const rope = raw.rope_parameters;
  if (!isObject(rope)) {
    fields.problem('rope_parameters', `must be an object {rope_theta, rope_type}, got ${JSON.stringify(rope)}`);
    return Number.NaN;
  }
  const ropeType = rope.rope_type ?? rope.type ?? 'default';
  if (ropeType !== 'default') {
    fields.problem(
      'rope_parameters.rope_type',
      `'${String(ropeType)}' is not supported: zephyr-native implements plain RoPE ('default'), not RoPE scaling`,
    );
  }
  for (const key of Object.keys(rope)) {
    if (!['rope_theta', 'rope_type', 'type'].includes(key)) {
      fields.problem(`rope_parameters.${key}`, 'is not supported (only rope_theta with rope_type "default")');
    }
  }
  const theta = 'rope_theta' in rope ? fields.positiveNumber('rope_parameters.rope_theta', rope.rope_theta) : DEFAULTS.rope_theta;
  if (topLevel !== null && Number.isFinite(theta) && topLevel !== theta) {
    fields.problem('rope_theta', `(${topLevel}) disagrees with rope_parameters.rope_theta (${theta})`);
  }
  return theta;
}

/** transformers 4's rope_scaling: null, or {rope_type|type: 'default'}; any scaling is refused. */
function checkNoScaling(fields: FieldReader, raw: Json): void {
  const scaling = raw.rope_scaling;
  if (scaling === undefined || scaling === null) return;
  const ropeType = isObject(scaling) ? (scaling.rope_type ?? scaling.type) : undefined;
  if (ropeType !== 'default') {
    fields.problem(
      'rope_scaling',
      `${JSON.stringify(scaling)} is not supported: zephyr-native implements plain RoPE, not RoPE scaling`,
    );
  }
}

/** `dtype` (transformers 5) or `torch_dtype` (transformers 4); "auto" and null mean unknown. */
function readDType(fields: FieldReader, raw: Json): CheckpointDType | null {
  const read = (field: string): CheckpointDType | null => {
    const value = raw[field];
    if (value === undefined || value === null || value === 'auto') return null;
    if (typeof value === 'string' && (DTYPES as readonly string[]).includes(value)) return value as CheckpointDType;
    fields.problem(field, `must be one of ${DTYPES.join(', ')} (or null), got ${JSON.stringify(value)}`);
    return null;
  };
  const dtype = read('dtype');
  const torchDtype = read('torch_dtype');
  if (dtype !== null && torchDtype !== null && dtype !== torchDtype) {
    fields.problem('dtype', `('${dtype}') disagrees with torch_dtype ('${torchDtype}')`);
  }
  return dtype ?? torchDtype;
}

function readEosTokenId(fields: FieldReader, raw: Json, vocabSize: number): number | number[] | null {
  const value = 'eos_token_id' in raw ? raw.eos_token_id : DEFAULTS.eos_token_id;
  if (!Array.isArray(value)) return fields.tokenId('eos_token_id', vocabSize);
  const ids = value.filter(
    (id) => typeof id === 'number' && Number.isSafeInteger(id) && id >= 0 && (!Number.isFinite(vocabSize) || id < vocabSize),
  );
  if (ids.length !== value.length) {
    fields.problem('eos_token_id', `must hold token ids in [0, ${vocabSize}), got ${JSON.stringify(value)}`);
  }
  return ids as number[];
}

/** Fields whose presence means weights or numerics the native model does not implement. */
function checkUnsupported(fields: FieldReader, raw: Json): void {
  if ('model_type' in raw && raw.model_type !== 'mistral') {
    fields.problem('model_type', `is ${JSON.stringify(raw.model_type)}, expected "mistral" (MistralForCausalLM)`);
  }
  const act = 'hidden_act' in raw ? raw.hidden_act : DEFAULTS.hidden_act;
  if (act !== 'silu') fields.problem('hidden_act', `${JSON.stringify(act)} is not supported (only "silu")`);
  const dropout = 'attention_dropout' in raw ? raw.attention_dropout : 0;
  if (dropout !== 0) fields.problem('attention_dropout', `${JSON.stringify(dropout)} is not supported (only 0)`);
  if ('quantization_config' in raw && raw.quantization_config !== null) {
    fields.problem('quantization_config', 'is set: quantized checkpoints are not supported (bf16, f16 or f32 weights only)');
  }
}

/** Validates a parsed config.json; `file` names it in errors. */
export function parseMistralConfig(raw: unknown, file: string): MistralConfig {
  if (!isObject(raw)) throw new ZnError(`${file}: expected a JSON object, got ${JSON.stringify(raw)?.slice(0, 40)}`);
  const fields = new FieldReader(raw);
  checkUnsupported(fields, raw);
  const vocabSize = fields.integer('vocab_size');
  const hiddenSize = fields.integer('hidden_size');
  const numAttentionHeads = fields.integer('num_attention_heads');
  const numKeyValueHeads =
    raw.num_key_value_heads === null ? numAttentionHeads : fields.integer('num_key_value_heads');
  if (numAttentionHeads % numKeyValueHeads !== 0) {
    fields.problem('num_key_value_heads', `(${numKeyValueHeads}) must divide num_attention_heads (${numAttentionHeads})`);
  }
  const explicitHeadDim = fields.optionalInteger('head_dim', 1);
  // HF: head_dim if set, else hidden_size // num_attention_heads.
  const headDim = explicitHeadDim ?? Math.floor(hiddenSize / numAttentionHeads);
  if (Number.isFinite(headDim) && (headDim < 2 || headDim % 2 !== 0)) {
    // RoPE rotates pairs of features.
    if (explicitHeadDim !== null) fields.problem('head_dim', `${headDim} must be even and >= 2 (RoPE rotates pairs)`);
    else fields.problem('hidden_size', `/ num_attention_heads gives head_dim ${headDim}, which must be even and >= 2 (RoPE rotates pairs)`);
  }
  const config: MistralConfig = {
    vocabSize,
    hiddenSize,
    intermediateSize: fields.integer('intermediate_size'),
    numHiddenLayers: fields.integer('num_hidden_layers'),
    numAttentionHeads,
    numKeyValueHeads,
    headDim,
    maxPositionEmbeddings: fields.integer('max_position_embeddings'),
    rmsNormEps: fields.positiveNumber('rms_norm_eps'),
    ropeTheta: readRopeTheta(fields, raw),
    slidingWindow: fields.optionalInteger('sliding_window', 1),
    tieWordEmbeddings: fields.boolean('tie_word_embeddings'),
    bosTokenId: fields.tokenId('bos_token_id', vocabSize),
    eosTokenId: readEosTokenId(fields, raw, vocabSize),
    padTokenId: fields.tokenId('pad_token_id', vocabSize),
    dtype: readDType(fields, raw),
    initializerRange: fields.positiveNumber('initializer_range'),
    useCache: fields.boolean('use_cache'),
  };
  if (fields.problems.length > 0) {
    throw new ZnError(`${file}: invalid MistralForCausalLM config: ${fields.problems.join('; ')}`);
  }
  return config;
}

/** Reads `config.json` from a model folder (or the file itself). */
export function readMistralConfig(path: string): MistralConfig {
  let file = path;
  try {
    if (statSync(path).isDirectory()) file = join(path, 'config.json');
  } catch {
    throw new ZnError(`${path}: no such model folder or config file`);
  }
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (error) {
    throw new ZnError(`${file}: cannot read the model config (${(error as NodeJS.ErrnoException).code ?? (error as Error).message})`);
  }
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (error) {
    throw new ZnError(`${file}: not valid JSON (${(error as Error).message})`);
  }
  return parseMistralConfig(raw, file);
}

/** A number that Python's json reads back as a float (transformers 5 configs are type-checked). */
export class PythonFloat {
  constructor(readonly value: number) {}
}

/**
 * The config.json transformers 5 writes for MistralForCausalLM (keys sorted, as it sorts them),
 * plus top-level `rope_theta` and `torch_dtype`, which transformers 5 ignores and transformers 4
 * needs to read the RoPE base and dtype.
 */
export function mistralConfigJson(config: MistralConfig, dtype: CheckpointDType | null = config.dtype): Json {
  const json: Json = {
    architectures: ['MistralForCausalLM'],
    attention_dropout: new PythonFloat(0),
    bos_token_id: config.bosTokenId,
    dtype,
    eos_token_id: config.eosTokenId,
    head_dim: config.headDim,
    hidden_act: 'silu',
    hidden_size: config.hiddenSize,
    initializer_range: new PythonFloat(config.initializerRange),
    intermediate_size: config.intermediateSize,
    max_position_embeddings: config.maxPositionEmbeddings,
    model_type: 'mistral',
    num_attention_heads: config.numAttentionHeads,
    num_hidden_layers: config.numHiddenLayers,
    num_key_value_heads: config.numKeyValueHeads,
    pad_token_id: config.padTokenId,
    rms_norm_eps: new PythonFloat(config.rmsNormEps),
    rope_parameters: { rope_theta: new PythonFloat(config.ropeTheta), rope_type: 'default' },
    rope_theta: new PythonFloat(config.ropeTheta),
    sliding_window: config.slidingWindow,
    tie_word_embeddings: config.tieWordEmbeddings,
    torch_dtype: dtype,
    use_cache: config.useCache,
    vocab_size: config.vocabSize,
  };
  return json;
}

/** Formats a float so Python reads a float: 10000 -> 10000.0, 1e-5 -> 1e-05 (as Python prints). */
function pythonFloat(value: number): string {
  if (!Number.isFinite(value)) throw new ZnError(`cannot write ${value} in a config file`);
  let text = String(value);
  if (/^-?\d+$/.test(text)) return `${text}.0`;
  // JS writes 1e-7 and 1e+21; Python writes 1e-07 and 1e+21.
  text = text.replace(/e([+-])(\d)$/, 'e$10$2');
  return text;
}

/** JSON.stringify with 2-space indent, floats marked by PythonFloat written with a decimal point. */
export function stringifyConfigJson(value: unknown): string {
  const placeholders: string[] = [];
  const text = JSON.stringify(
    value,
    (_key, item: unknown) => {
      if (item instanceof PythonFloat) {
        placeholders.push(pythonFloat(item.value));
        return `\u0000float${placeholders.length - 1}\u0000`;
      }
      return item;
    },
    2,
  );
  return `${text.replace(/"\\u0000float(\d+)\\u0000"/g, (_match, index: string) => placeholders[Number(index)]!)}\n`;
}
