/**
 * Which tokenizer class transformers 5 (5.17, 5.18) gives a folder, and so which pipeline runs.
 * `AutoTokenizer.from_pretrained` (models/auto/tokenization_auto.py) reads `config.json` when the
 * folder has one, and the class it picks decides whether tokenizer.json runs as written:
 *
 * 1. The folder's class is tokenizer_config's `tokenizer_class`, else config.json's (`...Fast`
 *    names are the same class).
 * 2. When config.json has a `model_type` whose registered tokenizer class differs from that one
 *    (and tokenizer_config has no `auto_map`), the registration wins where it is the generic
 *    `TokenizersBackend` (mistral, mixtral, ...) or the model type is one whose Hub class
 *    transformers distrusts (MODELS_WITH_INCORRECT_HUB_TOKENIZER_CLASS, e.g. qwen2). So a Mistral
 *    model folder says `LlamaTokenizer` and loads as `TokenizersBackend`, while the same files
 *    without config.json load as `LlamaTokenizer`.
 * 3. With no class named, a registered model_type's class, else `TokenizersBackend`.
 *
 * `LlamaTokenizer` rebuilds the pipeline from vocab and merges (see tokenizer.ts); every other
 * class runs tokenizer.json as written. Not followed here: remote code (`auto_map`), the few Hub
 * ids transformers forces to `TokenizersBackend` (MODEL_IDS_TO_TOKENIZERS_BACKEND, none Mistral),
 * `tekken.json` with mistral-common installed, and the rebuilds of model-specific classes other
 * than Llama's (GemmaTokenizer, Qwen2Tokenizer, ...), which run as written here.
 */

/** The keys of config.json that take part in the choice. */
export interface ModelConfigForTokenizer {
  model_type?: unknown;
  tokenizer_class?: unknown;
}

/** The keys of tokenizer_config.json that take part in the choice. */
export interface TokenizerConfigForClass {
  tokenizer_class?: unknown;
  auto_map?: unknown;
}

export type TokenizerPipeline = 'llama-rebuild' | 'tokenizer.json';

export interface TokenizerClassChoice {
  /** The class transformers instantiates (without `Fast`), e.g. `LlamaTokenizer`, `TokenizersBackend`. */
  tokenizerClass: string;
  /** `llama-rebuild`: Metaspace pipeline rebuilt from vocab and merges; `tokenizer.json`: as written. */
  pipeline: TokenizerPipeline;
  /** One sentence a user can check against the folder's files. */
  reason: string;
}

const BACKEND = 'TokenizersBackend';
const LLAMA_REBUILD_CLASSES = new Set(['LlamaTokenizer', 'CodeLlamaTokenizer']);
/** Registered classes that mean "tokenizer.json as written" (MistralCommonBackend needs tekken.json). */
const GENERIC_CLASSES = new Set([BACKEND, 'PythonBackend', 'PreTrainedTokenizerFast', 'MistralCommonBackend']);

/**
 * Model types whose TOKENIZER_MAPPING_NAMES entry is generic (TokenizersBackend, or
 * MistralCommonBackend when mistral-common is installed), transformers 5.18.
 * test/conformance/data-tokenizer.test.ts checks these tables against the installed transformers.
 */
export const GENERIC_TOKENIZER_MODEL_TYPES: ReadonlySet<string> = new Set([
  'EvollaModel', 'arctic', 'aria', 'bigbird_pegasus', 'camembertv2-base', 'canary', 'chameleon', 'chatlm', 'cohere_asr',
  'deepseek_ocr', 'deepseek_ocr2', 'deepseek_v2', 'deepseek_v3', 'deepseek_v32', 'deepseek_v4', 'deepseek_vl',
  'deepseek_vl_hybrid', 'deepseek_vl_v2', 'ernie4_5', 'ernie4_5_moe', 'flex_olmo', 'fuyu', 'glm', 'glm4', 'glm4_moe',
  'glm4_moe_lite', 'glm4v', 'glm4v_moe', 'glm_image', 'glmasr', 'got_ocr2', 'gpt_bigcode', 'granite', 'granitemoe',
  'granitemoehybrid', 'granitemoeshared', 'h2ovl_chat', 'hyperclovax', 'hyperclovax_vlm', 'internlm2', 'jamba', 'janus',
  'kimi_k25', 'kimi_linear', 'kosmos-2', 'llava', 'llava_next', 'mimo_v2_flash', 'minicpm3', 'minicpmv', 'minicpmv4_6',
  'minicpmv4_7', 'minimax_m2', 'ministral', 'ministral3', 'mistral', 'mistral3', 'mixtral', 'modernbert',
  'modernbert-decoder', 'molmo', 'molmo2', 'nemotron', 'nvfp4', 'nystromformer', 'olmo2', 'olmo3', 'olmo_hybrid',
  'opencua', 'openvla', 'paddleocr_vl', 'pegasus_x', 'persimmon', 'phi3', 'phi3_v', 'phimoe', 'pix2struct', 'pixtral',
  'smolvlm', 'stablelm', 'step3_vl', 'step3p5', 'umt5', 'vipllava', 'voxtral', 'voxtral_realtime', 'xlm-roberta-xl',
]);

/** Model types whose Hub `tokenizer_class` transformers ignores for a model-specific registered class. */
export const HUB_CLASS_OVERRIDES: Readonly<Record<string, string>> = {
  hyperclovax_vision_v2: 'GPT2Tokenizer',
  qwen2: 'Qwen2Tokenizer',
  qwen3_5: 'Qwen3_5Tokenizer',
  qwen3_5_moe: 'Qwen3_5Tokenizer',
  qwen3_5_moe_text: 'Qwen3_5Tokenizer',
  qwen4_exp: 'Qwen3_5Tokenizer',
};

/** Model types registered to a Llama class: with no class named, they still rebuild. */
export const LLAMA_TOKENIZER_MODEL_TYPES: Readonly<Record<string, string>> = {
  code_llama: 'CodeLlamaTokenizer',
  idefics: 'LlamaTokenizer',
  idefics2: 'LlamaTokenizer',
};

/** The class transformers 5 resolves for a folder: `modelConfig` is config.json, null when the folder has none. */
export function chooseTokenizerClass(tokenizerConfig: TokenizerConfigForClass, modelConfig: ModelConfigForTokenizer | null): TokenizerClassChoice {
  const fromTokenizerConfig = nonEmptyString(tokenizerConfig.tokenizer_class);
  const named = fromTokenizerConfig ?? nonEmptyString(modelConfig?.tokenizer_class);
  const namedWhere = fromTokenizerConfig ? "tokenizer_config.json's tokenizer_class" : "config.json's tokenizer_class";
  const modelType = nonEmptyString(modelConfig?.model_type);
  const registered = modelType === null ? null : registeredClass(modelType);

  if (named !== null && modelType !== null && registered !== null && !hasTokenizerAutoMap(tokenizerConfig) && registered !== withoutFast(named)) {
    if (registered === BACKEND) {
      return choice(BACKEND, `config.json's model_type '${modelType}' registers ${BACKEND}, which transformers uses over ${namedWhere} ${named}`);
    }
    if (modelType in HUB_CLASS_OVERRIDES) {
      return choice(registered, `config.json's model_type '${modelType}' registers ${registered}, which transformers uses over ${namedWhere} ${named}`);
    }
  }
  if (named !== null) {
    const where = modelConfig === null ? 'no config.json' : modelType === null ? 'config.json has no model_type' : `config.json's model_type '${modelType}' does not override it`;
    return choice(namedClass(named), `${namedWhere} is ${named} (${where})`);
  }
  if (registered !== null) {
    return choice(registered, `no tokenizer_class; config.json's model_type '${modelType}' registers ${registered}`);
  }
  const source = modelConfig === null ? 'no config.json' : modelType === null ? 'config.json has no model_type' : `model_type '${modelType}' registers no Llama class`;
  return choice(BACKEND, `no tokenizer_class (${source}): tokenizer.json as written, as transformers' ${BACKEND}`);
}

function choice(tokenizerClass: string, reason: string): TokenizerClassChoice {
  return { tokenizerClass, pipeline: LLAMA_REBUILD_CLASSES.has(tokenizerClass) ? 'llama-rebuild' : 'tokenizer.json', reason };
}

/**
 * A model type's registered class where the choice depends on it: generic (as TokenizersBackend),
 * a Hub-class override or a Llama class; null for the rest (unknown to transformers, or a
 * model-specific class that a named class overrides and that runs as written here anyway).
 */
function registeredClass(modelType: string): string | null {
  if (GENERIC_TOKENIZER_MODEL_TYPES.has(modelType)) return BACKEND;
  return HUB_CLASS_OVERRIDES[modelType] ?? LLAMA_TOKENIZER_MODEL_TYPES[modelType] ?? null;
}

/** transformers' tokenizer_class_from_name: `...Fast` aliases the class; PreTrainedTokenizerFast is the backend. */
function namedClass(name: string): string {
  const base = withoutFast(name);
  return GENERIC_CLASSES.has(name) || GENERIC_CLASSES.has(base) ? BACKEND : base;
}

/** tokenizer_config's `auto_map` for AutoTokenizer (remote code): a list, or a dict's `AutoTokenizer` entry. */
function hasTokenizerAutoMap(tokenizerConfig: TokenizerConfigForClass): boolean {
  const autoMap = tokenizerConfig.auto_map;
  if (Array.isArray(autoMap)) return true;
  return typeof autoMap === 'object' && autoMap !== null && (autoMap as Record<string, unknown>).AutoTokenizer != null;
}

function withoutFast(name: string): string {
  return name.endsWith('Fast') ? name.slice(0, -4) : name;
}

function nonEmptyString(value: unknown): string | null {
  return typeof value === 'string' && value !== '' ? value : null;
}
