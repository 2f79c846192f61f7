/**
 * PEFT's LoRA adapter folders, as `peft` writes and reads them: `adapter_config.json`
 * (peft_type LORA, r, lora_alpha, target_modules, use_rslora, base_model_name_or_path, ...) and
 * `adapter_model.safetensors`, whose tensors are named
 * `base_model.model.<module>.lora_A.weight` / `.lora_B.weight` (the adapter name dropped), the
 * names the native model gives its adapter parameters (native/model/lora.h).
 *
 * Read: target_modules may be suffixes (`q_proj`), `all-linear`, or the full module names PEFT
 * writes after resolving `all-linear` (`model.layers.0.self_attn.q_proj`); full names must cover
 * every layer for each projection they name (adapters on some layers only are not supported).
 * Options that change the maths and are not implemented are errors naming them.
 *
 * modules_to_save (base modules trained in full beside the adapters, e.g. `lm_head`): PEFT saves
 * them in the same file as `base_model.model.<module>.weight` (`base_model.model.lm_head.weight`,
 * the wrapper's `modules_to_save.<adapter>` dropped) and lists them in adapter_config.json as given.
 */
import { existsSync, readFileSync } from 'node:fs';
import { isAbsolute, join, resolve } from 'node:path';

import { ZnError } from '../errors.js';
import { writeJsonAtomic } from '../io/atomic.js';
import type { MistralConfig } from './config.js';
import { mistralParameterShapes } from './parameters.js';

export const ADAPTER_CONFIG_FILE = 'adapter_config.json';
export const ADAPTER_WEIGHTS_FILE = 'adapter_model.safetensors';

/** The projections LoRA can target in a Mistral decoder layer (PEFT's module names). */
export const LORA_MODULES = ['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj'] as const;

/** LoRA's settings (PEFT LoraConfig / TRL ModelConfig), as the native model takes them. */
export interface LoraSettings {
  rank: number;
  alpha: number;
  rslora: boolean;
  /** Module suffixes (`q_proj`, ...) or `all-linear`. */
  targetModules: string[];
  /** lora_dropout, in [0, 1): applied to the adapters' input in training forwards only. */
  dropout: number;
  /** PEFT's modules_to_save as given (`lm_head`, `embed_tokens`, ...): trained in full beside the adapters. */
  modulesToSave?: string[];
}

export interface AdapterFolder {
  dir: string;
  lora: LoraSettings;
  /** As PEFT recorded it (a path or a Hub id). */
  baseModelNameOrPath: string | null;
  weightsFile: string;
}

export function isAdapterFolder(dir: string): boolean {
  return existsSync(join(dir, ADAPTER_CONFIG_FILE));
}

/** adapter_config.json's modules_to_save: null or a list of module names. */
function modulesToSaveOf(value: unknown, where: string): string[] {
  if (value === undefined || value === null) return [];
  if (typeof value === 'string') return [value];
  if (!Array.isArray(value) || value.some((v) => typeof v !== 'string')) throw new ZnError(`${where}: modules_to_save must be null or a list of module names`);
  return value as string[];
}

/**
 * modules_to_save as the base parameters they train. PEFT wraps every module whose name ends with
 * an entry (`key.endswith(name)`, peft/utils/other.py _set_trainable), so `norm` is the final norm
 * and every layer norm. Each entry must match only modules that hold a weight themselves
 * (embed_tokens, the norms, lm_head, projections), none of them a LoRA target: a container such as
 * `mlp` would be trained whole by PEFT, and a module both adapted and saved is not supported.
 */
export function savedModuleParameters(lora: LoraSettings, config: MistralConfig, where: string): string[] {
  const names = mistralParameterShapes(config).map((p) => p.name);
  const modules = names.map((name) => name.slice(0, -'.weight'.length));
  const containers = new Set(modules.flatMap((m) => m.split('.').slice(0, -1).map((_, i, parts) => parts.slice(0, i + 1).join('.'))));
  for (const m of modules) containers.delete(m);
  const adapted = (module: string) => lora.targetModules.some((t) => t === 'all-linear' ? (LORA_MODULES as readonly string[]).some((p) => module.endsWith(`.${p}`)) : module.endsWith(`.${t}`));
  const saved = new Set<string>();
  for (const entry of lora.modulesToSave ?? []) {
    const container = [...containers].find((c) => entry !== '' && c.endsWith(entry));
    if (entry === '' || container !== undefined) {
      throw new ZnError(`${where}: modules_to_save '${entry}' names ${container ? `'${container}', a module holding other modules` : 'no module'}; name modules that hold a weight (embed_tokens, norm, input_layernorm, post_attention_layernorm, lm_head, a projection)`);
    }
    const matched = modules.filter((m) => m.endsWith(entry));
    if (config.tieWordEmbeddings && matched.includes('model.embed_tokens')) {
      // PEFT trains a copy for the input side while the lm_head keeps the tied original; here one matrix is both.
      throw new ZnError(`${where}: modules_to_save '${entry}' names embed_tokens, which is tied to the lm_head (tie_word_embeddings is true); not supported`);
    }
    if (matched.length === 0) {
      const tied = entry.endsWith('lm_head') && config.tieWordEmbeddings ? ' (the lm_head is tied to embed_tokens: tie_word_embeddings is true)' : '';
      throw new ZnError(`${where}: modules_to_save '${entry}' matches no module of the model that holds a weight${tied}`);
    }
    const both = matched.find(adapted);
    if (both) throw new ZnError(`${where}: modules_to_save '${entry}' names '${both}', which LoRA also adapts (target_modules); a module is either adapted or saved`);
    for (const m of matched) saved.add(`${m}.weight`);
  }
  return names.filter((n) => saved.has(n));
}

/** Checks LoRA settings from a recipe or a file; `where` names the source in errors. */
export function checkLoraSettings(lora: LoraSettings, where: string): LoraSettings {
  if (!Number.isSafeInteger(lora.rank) || lora.rank <= 0) throw new ZnError(`${where}: lora_r must be a positive integer, got ${lora.rank}`);
  if (!(lora.alpha > 0) || !Number.isFinite(lora.alpha)) throw new ZnError(`${where}: lora_alpha must be positive, got ${lora.alpha}`);
  if (!(lora.dropout >= 0 && lora.dropout < 1)) throw new ZnError(`${where}: lora_dropout must be in [0, 1), got ${lora.dropout}`);
  if (lora.targetModules.length === 0) throw new ZnError(`${where}: lora_target_modules is empty`);
  if ((lora.modulesToSave ?? []).some((m) => typeof m !== 'string' || m === '')) throw new ZnError(`${where}: lora_modules_to_save must be module names`);
  for (const m of lora.targetModules) {
    if (m !== 'all-linear' && !(LORA_MODULES as readonly string[]).includes(m)) {
      throw new ZnError(`${where}: lora_target_modules names '${m}', which is not a Mistral projection (${LORA_MODULES.join(', ')}) or all-linear`);
    }
  }
  return lora;
}

/**
 * PEFT's target_modules (string, suffix list, or full names) as suffixes; with numLayers, full
 * names must cover every layer for each projection they name.
 */
export function targetModuleSuffixes(value: unknown, numLayers: number | undefined, where: string): string[] {
  if (typeof value === 'string') return [value];
  if (!Array.isArray(value) || value.some((v) => typeof v !== 'string')) {
    throw new ZnError(`${where}: target_modules must be a string or a list of strings`);
  }
  const layersBySuffix = new Map<string, Set<number>>();
  const suffixes = new Set<string>();
  for (const name of value as string[]) {
    const full = /^(?:base_model\.model\.)?model\.layers\.(\d+)\.(?:self_attn|mlp)\.(\w+)$/.exec(name);
    if (!full) {
      suffixes.add(name);
      continue;
    }
    const [, layer, suffix] = full;
    if (!layersBySuffix.has(suffix)) layersBySuffix.set(suffix, new Set());
    layersBySuffix.get(suffix)!.add(Number(layer));
  }
  for (const [suffix, layers] of layersBySuffix) {
    if (numLayers !== undefined && layers.size !== numLayers) {
      throw new ZnError(`${where}: target_modules adapts ${suffix} on ${layers.size} of ${numLayers} layers; adapters on some layers only are not supported`);
    }
    suffixes.add(suffix);
  }
  return [...suffixes];
}

/** Options PEFT's LoraConfig has that change the maths, and the value at which they change nothing. */
const NEUTRAL_OPTIONS: Record<string, (v: unknown) => boolean> = {
  bias: (v) => v === undefined || v === 'none',
  use_dora: (v) => !v,
  fan_in_fan_out: (v) => !v,
  lora_bias: (v) => !v,
  layers_to_transform: (v) => v === undefined || v === null,
  layer_replication: (v) => v === undefined || v === null,
  rank_pattern: (v) => v === undefined || v === null || (typeof v === 'object' && Object.keys(v as object).length === 0),
  alpha_pattern: (v) => v === undefined || v === null || (typeof v === 'object' && Object.keys(v as object).length === 0),
  exclude_modules: (v) => v === undefined || v === null,
  trainable_token_indices: (v) => v === undefined || v === null,
};

/** Reads and checks an adapter folder's adapter_config.json (numLayers: the base's, when known). */
export function readAdapterFolder(dir: string, numLayers?: number): AdapterFolder {
  const path = join(dir, ADAPTER_CONFIG_FILE);
  let json: Record<string, unknown>;
  try {
    json = JSON.parse(readFileSync(path, 'utf8')) as Record<string, unknown>;
  } catch (error) {
    throw new ZnError(`${path}: not a readable adapter config (${(error as Error).message})`);
  }
  if (json.peft_type !== 'LORA') throw new ZnError(`${path}: peft_type is ${JSON.stringify(json.peft_type)}; only LORA adapters are supported`);
  if (json.task_type !== undefined && json.task_type !== null && json.task_type !== 'CAUSAL_LM') {
    throw new ZnError(`${path}: task_type is ${JSON.stringify(json.task_type)}; a Mistral language model's adapter is CAUSAL_LM`);
  }
  for (const [key, neutral] of Object.entries(NEUTRAL_OPTIONS)) {
    if (!neutral(json[key])) throw new ZnError(`${path}: ${key} = ${JSON.stringify(json[key])} is not supported`);
  }
  const lora = checkLoraSettings(
    {
      rank: Number(json.r),
      alpha: Number(json.lora_alpha),
      rslora: json.use_rslora === true,
      targetModules: targetModuleSuffixes(json.target_modules, numLayers, path),
      dropout: Number(json.lora_dropout ?? 0),
    },
    path,
  );
  const modulesToSave = modulesToSaveOf(json.modules_to_save, path);
  if (modulesToSave.length > 0) lora.modulesToSave = modulesToSave;
  const weightsFile = join(dir, ADAPTER_WEIGHTS_FILE);
  if (!existsSync(weightsFile)) throw new ZnError(`${dir}: no ${ADAPTER_WEIGHTS_FILE} beside ${ADAPTER_CONFIG_FILE}`);
  const base = typeof json.base_model_name_or_path === 'string' ? json.base_model_name_or_path : null;
  return { dir, lora, baseModelNameOrPath: base, weightsFile };
}

/**
 * The base model folder of an adapter folder: `base` when given, else base_model_name_or_path as
 * a local path (absolute, or relative to the working directory, then to the adapter folder).
 */
export function adapterBaseFolder(adapter: AdapterFolder, base?: string): string {
  if (base) return base;
  const recorded = adapter.baseModelNameOrPath;
  if (!recorded) throw new ZnError(`${join(adapter.dir, ADAPTER_CONFIG_FILE)}: base_model_name_or_path is empty; name the base model folder`);
  const candidates = isAbsolute(recorded) ? [recorded] : [resolve(recorded), resolve(adapter.dir, recorded)];
  const found = candidates.find((c) => existsSync(join(c, 'config.json')));
  if (!found) {
    throw new ZnError(`${join(adapter.dir, ADAPTER_CONFIG_FILE)}: base model '${recorded}' is not a model folder here (looked in ${candidates.join(', ')})`);
  }
  return found;
}

/** The folder holding a model's config.json and weights: `dir`, or an adapter folder's base. */
export function baseFolderOf(dir: string): string {
  return isAdapterFolder(dir) ? adapterBaseFolder(readAdapterFolder(dir)) : dir;
}

/** The weight files a model folder's values come from: its shards, or an adapter's and its base's. */
export function weightFilesOf(dir: string, locate: (dir: string) => string[]): string[] {
  return isAdapterFolder(dir) ? [join(dir, ADAPTER_WEIGHTS_FILE), ...locate(baseFolderOf(dir))] : locate(dir);
}

/** adapter_config.json as PEFT 0.21 writes it for a LoRA adapter on a causal LM. */
export function adapterConfigJson(lora: LoraSettings, baseModelNameOrPath: string | null): Record<string, unknown> {
  return {
    alpha_pattern: {},
    base_model_name_or_path: baseModelNameOrPath,
    bias: 'none',
    fan_in_fan_out: false,
    inference_mode: true,
    init_lora_weights: true,
    layer_replication: null,
    layers_pattern: null,
    layers_to_transform: null,
    lora_alpha: lora.alpha,
    lora_bias: false,
    lora_dropout: lora.dropout,
    modules_to_save: lora.modulesToSave?.length ? [...lora.modulesToSave] : null,
    peft_type: 'LORA',
    r: lora.rank,
    rank_pattern: {},
    revision: null,
    target_modules: lora.targetModules.includes('all-linear') ? [...LORA_MODULES] : [...lora.targetModules],
    task_type: 'CAUSAL_LM',
    use_dora: false,
    use_rslora: lora.rslora,
  };
}

export function writeAdapterConfig(dir: string, lora: LoraSettings, baseModelNameOrPath: string | null): void {
  writeJsonAtomic(join(dir, ADAPTER_CONFIG_FILE), adapterConfigJson(lora, baseModelNameOrPath));
}

/** PEFT's name for a saved module's parameter in adapter_model.safetensors (native/model/lora.h peft_saved_name). */
export function peftSavedName(parameter: string): string {
  return `base_model.model.${parameter}`;
}

/**
 * PEFT's default initialisation: A Kaiming-uniform with a = sqrt(5) (bound 1 / sqrt(fan_in)), B
 * zero, so a fresh adapter leaves the model unchanged. `uniform` draws in (0, 1).
 */
export function initialAdapterValues(shape: number[], matrix: 'A' | 'B', uniform: () => number): Float32Array {
  const values = new Float32Array(shape[0] * shape[1]);
  if (matrix === 'B') return values;
  const bound = 1 / Math.sqrt(shape[1]);
  for (let i = 0; i < values.length; i++) values[i] = (2 * uniform() - 1) * bound;
  return values;
}
