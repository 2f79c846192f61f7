/**
 * Training configuration: one typed table of the keys zephyr-native implements, with TRL /
 * alignment-handbook names, defaults and help text. It drives recipe YAML files and CLI flags
 * alike (every key is also `--key value`; flags win over the file).
 *
 * Nothing is ignored silently. A key is either
 *   - implemented here (honoured),
 *   - a key TRL/transformers know (lib/train/known-keys.json, generated from TRL's dataclasses)
 *     that we do not implement: accepted only when its value leaves behaviour unchanged (the TRL
 *     default, or a value listed in SAME_BEHAVIOUR), otherwise an error saying it is unsupported,
 *   - a key an earlier transformers / TRL / alignment-handbook version defined (known-keys.json's
 *     `removed`, with the version that dropped it): honoured where it is implemented here
 *     (`overwrite_output_dir`, `evaluation_strategy`, `logging_dir`, ...), otherwise accepted at a
 *     value that changes nothing, with a one-line notice, and an error at any other value,
 *   - or unknown: an error naming it (usually a typo).
 */
import { readFileSync } from 'node:fs';

import { parse as parseYaml } from 'yaml';

import { UsageError } from '../errors.js';
import knownKeys from './known-keys.json' with { type: 'json' };

export type Stage = 'sft' | 'dpo';
type Kind = 'number' | 'integer' | 'boolean' | 'string' | 'string-or-list' | 'object' | 'checkpoint';

interface KeySpec {
  kind: Kind;
  /** The value when the key is absent, or given as null (unless `nullable`). */
  default: unknown;
  /** A stage's own default, where TRL's SFTConfig and DPOConfig differ. */
  stageDefault?: Partial<Record<Stage, unknown>>;
  /** null is a value of its own (e.g. "no limit"), not a request for the default. */
  nullable?: true;
  /** A list must hold exactly one value, which the key then has (e.g. `[sigmoid]` -> `sigmoid`). */
  single?: true;
  help: string;
  /** Stages that read the key; absent: both. */
  stages?: readonly Stage[];
  /** Allowed values (for string keys). */
  choices?: readonly string[];
  /** Accepted spellings of the same key (older TRL / handbook names). */
  aliasOf?: string;
}


/** The keys zephyr-native implements. */
export const KEYS = {
  // model and output
  model_name_or_path: { kind: 'string', default: null, help: 'Hugging Face model folder to start from' },
  ref_model_name_or_path: { kind: 'string', default: null, stages: ['dpo'], help: 'Frozen reference model folder (default: a copy of the initial policy)' },
  output_dir: { kind: 'string', default: null, help: 'Where the trained model folder, checkpoints and logs go' },
  device: { kind: 'string', default: 'auto', choices: ['cpu', 'cuda', 'auto'] as const, help: 'Backend: cpu, cuda, or auto (cuda when available)' },
  use_cpu: { kind: 'boolean', default: false, help: 'Same as --device cpu (transformers key)' },
  no_cuda: { kind: 'boolean', default: false, aliasOf: 'use_cpu', help: 'Older transformers name of use_cpu' },
  overwrite_output_dir: { kind: 'boolean', default: false, help: 'Start afresh: checkpoints an earlier run left in output_dir are deleted, not resumed (resume_from_checkpoint still wins)' },
  bf16: { kind: 'boolean', default: null, help: 'bf16 weights and matmul inputs with f32 master weights (default: true on GPU, false on CPU)' },
  torch_dtype: { kind: 'string', default: null, help: 'dtype of the weights as loaded (auto, bfloat16, float16, float32); training precision follows bf16' },
  dtype: { kind: 'string', default: null, aliasOf: 'torch_dtype', help: 'transformers 5 name of torch_dtype' },
  gradient_checkpointing: { kind: 'boolean', default: true, help: 'Recompute each decoder layer in backward to save activation memory' },
  offload_optimizer: { kind: 'boolean', default: false, help: 'GPU: f32 master weights and AdamW moments in host memory, the step on the CPU (ZeRO-Offload); no effect on the CPU' },
  // LoRA (TRL ModelConfig names; PEFT's maths)
  use_peft: { kind: 'boolean', default: false, help: 'Train LoRA adapters over a frozen base (output_dir is then a PEFT adapter folder)' },
  lora_r: { kind: 'integer', default: 16, help: 'LoRA rank' },
  lora_alpha: { kind: 'number', default: 32, help: 'LoRA alpha: the adapters scale by alpha / r (alpha / sqrt(r) with use_rslora)' },
  lora_dropout: { kind: 'number', default: 0.05, help: 'Dropout on the adapters\' input while training, in [0, 1) (PEFT\'s nn.Dropout per adapted projection; counter-based masks from seed, step and micro-batch)' },
  lora_target_modules: { kind: 'string-or-list', default: null, help: 'Projections to adapt (q_proj, ..., down_proj) or all-linear (default: PEFT\'s for Mistral, q_proj and v_proj)' },
  use_rslora: { kind: 'boolean', default: false, help: 'rsLoRA scaling alpha / sqrt(r)' },
  lora_modules_to_save: { kind: 'string-or-list', default: null, help: 'Modules trained in full beside the adapters (PEFT modules_to_save, e.g. lm_head, embed_tokens)' },
  // the Hub (lib/hub): ids in the path keys above resolve through the shared cache
  model_revision: { kind: 'string', default: 'main', help: 'Branch, tag or commit of a Hub model id (model_name_or_path, ref_model_name_or_path)' },
  push_to_hub: { kind: 'boolean', default: false, help: 'Upload output_dir to hub_model_id when the stage ends' },
  hub_model_id: { kind: 'string', default: null, help: 'Hub repository (org/name) push_to_hub uploads to' },
  hub_strategy: { kind: 'string', default: 'every_save', choices: ['end', 'every_save', 'checkpoint', 'all_checkpoints'] as const, help: 'What push_to_hub uploads: the model (end, every_save), plus the last checkpoint as last-checkpoint/ (checkpoint), or every checkpoint folder (all_checkpoints)' },
  hub_private_repo: { kind: 'boolean', default: null, help: 'Create the repository private (default: the Hub\'s default for your account)' },
  hub_revision: { kind: 'string', default: null, help: 'Branch push_to_hub commits to (created from main when missing; default main)' },
  hub_token: { kind: 'string', default: null, help: 'Token for push_to_hub (default: HF_TOKEN or the saved login)' },
  // data
  dataset_name: { kind: 'string', default: null, help: 'Dataset file or HF dataset folder' },
  dataset_config: { kind: 'string', default: null, help: 'Dataset configuration name (accepted for HF datasets; folders have one)' },
  dataset_train_split: { kind: 'string', default: 'train', help: 'Split used for training' },
  dataset_test_split: { kind: 'string', default: 'test', help: 'Split used for evaluation' },
  dataset_mixer: { kind: 'object', default: null, help: 'Older alignment-handbook form: {path: fraction}' },
  dataset_splits: { kind: 'string-or-list', default: null, help: 'Splits read with dataset_mixer' },
  dataset_mixture: { kind: 'object', default: null, help: 'alignment-handbook form: {datasets: [{id, config, split, columns, weight}], seed, test_split_size}' },
  chat_template: { kind: 'string', default: null, help: 'Jinja chat template overriding the tokenizer\'s' },
  max_length: { kind: 'integer', default: 1024, nullable: true, help: 'Longest tokenized sequence; longer ones keep their start (null: no limit)' },
  max_seq_length: { kind: 'integer', default: null, stages: ['sft'], aliasOf: 'max_length', help: 'Older TRL name of max_length (SFT)' },
  max_prompt_length: { kind: 'integer', default: null, stages: ['dpo'], help: 'Older TRL rule: keep the last N prompt tokens before max_length applies' },
  packing: { kind: 'boolean', default: false, stages: ['sft'], help: 'Pack examples into max_length rows, documents kept apart' },
  assistant_only_loss: { kind: 'boolean', default: false, stages: ['sft'], help: 'Loss on assistant tokens only' },
  // optimisation
  learning_rate: { kind: 'number', default: 2e-5, stageDefault: { dpo: 1e-6 }, help: 'Peak learning rate (default: 2e-5 for sft, 1e-6 for dpo, as TRL)' },
  num_train_epochs: { kind: 'number', default: 3, help: 'Epochs (ignored when max_steps > 0)' },
  max_steps: { kind: 'integer', default: -1, help: 'Optimizer steps; > 0 overrides num_train_epochs' },
  per_device_train_batch_size: { kind: 'integer', default: 8, help: 'Examples (sft) or pairs (dpo) per micro-batch' },
  per_device_eval_batch_size: { kind: 'integer', default: 8, help: 'Examples or pairs per evaluation batch' },
  gradient_accumulation_steps: { kind: 'integer', default: 1, help: 'Micro-batches per optimizer step' },
  lr_scheduler_type: { kind: 'string', default: 'linear', choices: ['linear', 'cosine', 'constant', 'constant_with_warmup'] as const, help: 'Learning-rate schedule (HF Trainer formulas)' },
  warmup_ratio: { kind: 'number', default: 0, help: 'Warmup as a fraction of the total steps (rounded up; transformers 5.15 folds it into warmup_steps)' },
  warmup_steps: { kind: 'number', default: 0, help: 'Warmup steps; a value below 1 is a ratio (transformers 5)' },
  weight_decay: { kind: 'number', default: 0, help: 'AdamW decoupled weight decay (not applied to norm weights, as HF Trainer)' },
  adam_beta1: { kind: 'number', default: 0.9, help: 'AdamW beta1' },
  adam_beta2: { kind: 'number', default: 0.999, help: 'AdamW beta2' },
  adam_epsilon: { kind: 'number', default: 1e-8, help: 'AdamW epsilon' },
  max_grad_norm: { kind: 'number', default: 1, help: 'Clip the global gradient norm to this (0: no clipping)' },
  seed: { kind: 'integer', default: 42, help: 'Seed for shuffling and sampling' },
  // DPO
  beta: { kind: 'number', default: 0.1, stages: ['dpo'], help: 'DPO temperature beta' },
  loss_type: { kind: 'string-or-list', single: true, default: 'sigmoid', stages: ['dpo'], choices: ['sigmoid', 'ipo', 'hinge'] as const, help: 'DPO loss: sigmoid, ipo or hinge (one at a time)' },
  label_smoothing: { kind: 'number', default: 0, stages: ['dpo'], help: 'Conservative DPO label smoothing' },
  precompute_ref_log_probs: { kind: 'boolean', default: false, stages: ['dpo'], help: 'Compute reference log-probs once up front (cached on disk) and free the reference model' },
  // logging, evaluation, checkpoints
  logging_steps: { kind: 'number', default: 10, help: 'Log every N optimizer steps' },
  logging_first_step: { kind: 'boolean', default: false, help: 'Also log the first step' },
  eval_strategy: { kind: 'string', default: 'no', choices: ['no', 'steps', 'epoch'] as const, help: 'When to evaluate on the test split' },
  evaluation_strategy: { kind: 'string', default: null, aliasOf: 'eval_strategy', choices: ['no', 'steps', 'epoch'] as const, help: 'Older transformers name of eval_strategy' },
  eval_steps: { kind: 'number', default: null, help: 'Evaluate every N steps (default: logging_steps)' },
  eval_on_start: { kind: 'boolean', default: false, help: 'Also evaluate before the first step (logged at the step training starts from)' },
  do_eval: { kind: 'boolean', default: false, help: 'transformers key; evaluation runs when eval_strategy is not "no"' },
  save_strategy: { kind: 'string', default: 'steps', choices: ['no', 'steps', 'epoch'] as const, help: 'When to write checkpoint-<step>/ folders' },
  save_steps: { kind: 'number', default: 500, help: 'Checkpoint every N steps' },
  save_total_limit: { kind: 'integer', default: null, help: 'Keep at most N checkpoints (oldest deleted)' },
  resume_from_checkpoint: { kind: 'checkpoint', default: null, help: 'A checkpoint folder, or true for the latest in output_dir' },
  // data parallel (ranks started by mpirun; lib/model/ranks.ts)
  ddp_timeout: { kind: 'number', default: 1800, help: 'Seconds a rank waits in a collective (mpirun ranks) before it aborts the job, naming what it waited for' },
  zero_stage: { kind: 'integer', default: 0, help: "ZeRO stage on mpirun ranks (DeepSpeed's name): 0 plain data parallel, 1 AdamW state sharded across the ranks, 2 gradients reduce-scattered too (CPU ranks over MPI, GPU ranks over NCCL; no effect on one process)" },
  // where the logs go besides trainer_state.json and metrics.jsonl (HF Trainer's integrations)
  report_to: { kind: 'string-or-list', default: 'none', choices: ['none', 'all', 'tensorboard', 'wandb'] as const, help: 'Also log to tensorboard, wandb, both (all or a list), or none' },
  logging_dir: { kind: 'string', default: null, help: 'TensorBoard folder (default: $TENSORBOARD_LOGGING_DIR, else output_dir/runs/<date>_<host>)' },
  run_name: { kind: 'string', default: null, help: 'The W&B run\'s display name (default: W&B picks one)' },
} satisfies Record<string, KeySpec>;

/**
 * Known TRL/transformers/handbook keys we do not implement but whose listed values change
 * nothing here (beyond the TRL default, which is always accepted).
 */
const SAME_BEHAVIOUR: Record<string, (value: unknown) => boolean> = {
  // Our attention computes the same function as every transformers implementation.
  attn_implementation: () => true,
  use_flash_attention_2: () => true,
  optim: (v) => v === 'adamw_torch' || v === 'adamw_torch_fused',
  gradient_checkpointing_kwargs: () => true,
  // Processes/workers for preprocessing and loading: ours is single-process streaming.
  dataset_num_proc: () => true,
  preprocessing_num_workers: () => true,
  dataloader_num_workers: () => true,
  dataloader_pin_memory: () => true,
  dataloader_persistent_workers: () => true,
  log_level: () => true,
  log_level_replica: () => true,
  disable_tqdm: () => true,
  remove_unused_columns: () => true,
  // Mistral has no dropout layers (attention_dropout 0), so disabling dropout is a no-op.
  disable_dropout: () => true,
  // Padding-free batches are all we make; the loss is the same either way (and so is eval_loss:
  // transformers weighs each evaluation batch by its rows, padded or not).
  padding_free: () => true,
  packing_strategy: (v) => v === 'bfd',
  truncation_mode: (v) => v === 'keep_start',
  f_divergence_type: (v) => v === 'reverse_kl',
  logging_strategy: (v) => v === 'steps',
  do_train: () => true,
  trust_remote_code: (v) => v === false,
};

interface KnownKeys {
  source: string;
  keys: Record<string, { default: unknown; in: string[] }>;
  /** Keys earlier versions defined: the release that dropped each, and its default there. */
  removed: Record<string, { default: unknown; removed_in: string }>;
}

const known = knownKeys as KnownKeys;

type Keys = typeof KEYS;

/** The keys a stage's values hold: every implemented key but the alternative spellings. */
export type KeyName = { [K in keyof Keys]: Keys[K] extends { aliasOf: string } ? never : K }[keyof Keys];

interface KindValue {
  number: number;
  integer: number;
  boolean: boolean;
  string: string;
  'string-or-list': string | string[];
  object: Record<string, unknown>;
  /** resume_from_checkpoint: a folder, or true for the latest in output_dir (false: none). */
  checkpoint: string | boolean;
}

type ValueOf<S> =
  | (S extends { choices: readonly (infer C)[] }
      ? S extends { kind: 'string-or-list'; single?: undefined } ? C | C[] : C
      : S extends { kind: infer K extends keyof KindValue } ? KindValue[K] : never)
  | (S extends { default: null } | { nullable: true } ? null : never);

/** A stage's settings, each key typed by its entry in KEYS. */
export type TrainingValues = { [K in KeyName]: ValueOf<Keys[K]> };

export interface StageConfig {
  stage: Stage;
  /** One line per accepted key that changes nothing here (an older version's key), to log when the stage starts. */
  notices: string[];
  /** Every key, typed; keys the stage does not read hold their defaults. */
  values: TrainingValues;
  /** Where each value came from, for error messages ("recipe.yaml", "--flag", "default"). */
  origin: Partial<Record<KeyName, string>>;
}

function deepEqual(a: unknown, b: unknown): boolean {
  return JSON.stringify(a) === JSON.stringify(b);
}

function coerce(name: string, spec: KeySpec, value: unknown, where: string): unknown {
  if (value === null || value === undefined) return null;
  const fail = (expected: string): never => {
    throw new UsageError(`${where}: '${name}' must be ${expected}, got ${JSON.stringify(value)}`);
  };
  switch (spec.kind) {
    case 'number':
    case 'integer': {
      const n = typeof value === 'string' && value.trim() !== '' ? Number(value) : value;
      if (typeof n !== 'number' || !Number.isFinite(n)) fail('a number');
      if (spec.kind === 'integer' && !Number.isInteger(n)) fail('an integer');
      return n;
    }
    case 'boolean':
      return booleanOf(value) ?? fail('true or false');
    case 'string':
      if (typeof value !== 'string') fail('a string');
      if (spec.choices && !spec.choices.includes(value as string)) fail(`one of ${spec.choices.join(', ')}`);
      return value;
    case 'string-or-list': {
      const list = Array.isArray(value) ? value : [value];
      if (!list.every((v) => typeof v === 'string')) fail('a string or a list of strings');
      if (spec.choices) {
        for (const v of list) if (!spec.choices.includes(v as string)) fail(`one of ${spec.choices.join(', ')}`);
      }
      if (!spec.single) return value;
      return list.length === 1 ? list[0] : fail('one value (zephyr-native runs one at a time)');
    }
    case 'object':
      if (typeof value !== 'object' || Array.isArray(value)) fail('a mapping');
      return value;
    case 'checkpoint':
      if (typeof value === 'string' && value !== 'true' && value !== 'false' && value !== '') return value;
      return booleanOf(value) ?? fail('a checkpoint folder or true');
  }
}

/** true / false, as YAML or a flag's text spells them; null for anything else. */
function booleanOf(value: unknown): boolean | null {
  if (typeof value === 'boolean') return value;
  if (value === 'true' || value === 'True') return true;
  if (value === 'false' || value === 'False') return false;
  return null;
}

/** A flag's text read as its default's type ("true" -> true, "0.5" -> 0.5), for comparison. */
function likeDefault(value: unknown, defaultValue: unknown): unknown {
  if (typeof value !== 'string') return value;
  if (typeof defaultValue === 'boolean' && (value === 'true' || value === 'false')) return value === 'true';
  if (typeof defaultValue === 'number' && value.trim() !== '' && Number.isFinite(Number(value))) return Number(value);
  return value;
}

/**
 * Known keys whose non-default values ask for something zephyr-native does differently without
 * changing the result's meaning: accepted, with the notice saying what happens instead.
 */
const NOTICED: Record<string, (value: unknown) => string | null> = {
  // cuBLASLt runs f32 matmuls with CUBLAS_COMPUTE_32F (native/kernels/cuda/gemm.cu); bf16 ones
  // accumulate in f32 either way. TF32 would trade precision for speed; we keep the precision.
  tf32: (v) => (v === true ? "'tf32: true': f32 matmuls stay full f32 here (no TF32), so results are at least as precise" : null),
};

/**
 * Keys whose old default asked for something not implemented here: only these values are
 * accepted, the default included or not.
 */
const ONLY_VALUES: Partial<Record<string, (value: unknown) => boolean>> = {
  // The H4 handbook inserted an empty system turn when a chat had none and the template knew the
  // system role (its default, true); TRL's trainers, and this package, never do.
  auto_insert_empty_system_msg: (v) => v === false,
};

/** Whether a key (implemented, known or an older version's) takes true/false. */
export function isBooleanKey(name: string): boolean {
  const spec = (KEYS as Record<string, KeySpec>)[name];
  if (spec) return spec.kind === 'boolean';
  const entry = known.keys[name] ?? known.removed[name];
  return typeof entry?.default === 'boolean';
}

/** The release that dropped a key (e.g. 'transformers 5.0'), or null for a current key. */
export function removedIn(name: string): string | null {
  return known.removed[name]?.removed_in ?? null;
}

/**
 * Checks raw key/value pairs (from YAML or flags) for one stage and returns the implemented
 * ones, coerced. Throws UsageError naming the key for unknown or unsupported keys; an older
 * version's key accepted without effect adds a line to `notices`.
 */
export function checkKeys(raw: Record<string, unknown>, stage: Stage, where: string, notices: string[] = []): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const [name, rawValue] of Object.entries(raw)) {
    const spec = (KEYS as Record<string, KeySpec>)[name];
    if (spec) {
      if (spec.stages && !spec.stages.includes(stage)) {
        throw new UsageError(`${where}: '${name}' is a ${spec.stages.join('/')} key, not a ${stage} key`);
      }
      out[spec.aliasOf ?? name] = coerce(name, spec, rawValue, where);
      continue;
    }
    const entry = known.keys[name] ?? known.removed[name];
    if (!entry) {
      throw new UsageError(`${where}: unknown key '${name}' (not a zephyr-native, TRL or transformers setting)`);
    }
    const value = likeDefault(rawValue, entry.default);
    const same = SAME_BEHAVIOUR[name];
    const dropped = removedIn(name);
    const noticed = NOTICED[name]?.(value) ?? null;
    if (noticed) {
      notices.push(`${where}: ${noticed}; accepted`);
      continue;
    }
    const only = ONLY_VALUES[name];
    if (only ? only(value) : value === null || deepEqual(value, entry.default) || (same && same(value))) {
      if (dropped) notices.push(`${where}: '${name}' (dropped in ${dropped}) changes nothing here; accepted`);
      continue;
    }
    const accepted = only ? 'this value is not implemented' : `only the default ${JSON.stringify(entry.default)} is accepted`;
    throw new UsageError(
      `${where}: '${name}: ${JSON.stringify(value)}' is not supported by zephyr-native (${accepted}${dropped ? `; the key was dropped in ${dropped}` : ''})`,
    );
  }
  return out;
}

/** Parses a YAML recipe file into a plain mapping, with the file named in errors. */
export function readRecipeFile(path: string): Record<string, unknown> {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (error) {
    throw new UsageError(`cannot read recipe ${path}: ${(error as Error).message}`);
  }
  let document: unknown;
  try {
    document = parseYaml(text);
  } catch (error) {
    throw new UsageError(`${path}: not valid YAML: ${(error as Error).message.split('\n')[0]}`);
  }
  if (document === null || document === undefined) return {};
  if (typeof document !== 'object' || Array.isArray(document)) {
    throw new UsageError(`${path}: a recipe must be a mapping of keys to values`);
  }
  return document as Record<string, unknown>;
}

function defaultOf(spec: KeySpec, stage: Stage): unknown {
  return spec.stageDefault?.[stage] ?? spec.default;
}

/**
 * Builds one stage's configuration from layers applied in order (later wins): defaults, then
 * each layer (e.g. the recipe file, then CLI flags). A key given as null takes its default,
 * unless null means something of its own for that key (`nullable`).
 */
export function resolveStage(stage: Stage, layers: { values: Record<string, unknown>; where: string }[]): StageConfig {
  const values: Record<string, unknown> = {};
  const origin: StageConfig['origin'] = {};
  const notices: string[] = [];
  const specs = Object.entries(KEYS as Record<string, KeySpec>).filter(([, spec]) => !spec.aliasOf);
  for (const [name, spec] of specs) {
    values[name] = defaultOf(spec, stage);
    origin[name as KeyName] = 'default';
  }
  for (const layer of layers) {
    for (const [name, value] of Object.entries(checkKeys(layer.values, stage, layer.where, notices))) {
      const spec = (KEYS as Record<string, KeySpec>)[name];
      values[name] = value === null && !spec.nullable ? defaultOf(spec, stage) : value;
      origin[name as KeyName] = layer.where;
    }
  }
  return { stage, notices, values: values as TrainingValues, origin };
}

/** Help lines for every implemented key of a stage (for --help and the README). */
export function describeKeys(stage: Stage): { name: string; kind: string; default: unknown; help: string; removedIn: string | null }[] {
  return (Object.entries(KEYS) as [string, KeySpec][])
    .filter(([, spec]) => !spec.stages || spec.stages.includes(stage))
    .map(([name, spec]) => ({ name, kind: spec.kind, default: defaultOf(spec, stage), help: spec.help, removedIn: removedIn(name) }));
}

export const STAGES: readonly Stage[] = ['sft', 'dpo'];

/** Whether a key given for a whole pipeline applies to a stage (stage-only keys go to theirs). */
export function keyAppliesTo(name: string, stage: Stage): boolean {
  const spec = (KEYS as Record<string, KeySpec>)[name];
  return !spec?.stages || spec.stages.includes(stage);
}
