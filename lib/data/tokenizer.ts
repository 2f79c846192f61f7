/**
 * An HF tokenizer folder (`tokenizer.json` + `tokenizer_config.json`, optionally
 * `special_tokens_map.json` and `chat_template.jinja`) loaded the way transformers 5 loads it,
 * encoded by @huggingface/tokenizers (pure JS; equal to the Rust `tokenizers` token for token on
 * SentencePiece-style BPE with byte fallback, checked in test/conformance/data-tokenizer.test.ts).
 *
 * The transformers rule that matters for Mistral/Llama folders: which class AutoTokenizer picks
 * (tokenizer-class.ts; config.json takes part, so a Mistral model folder gets `TokenizersBackend`
 * and its tokenizer files alone get `LlamaTokenizer`). `TokenizersBackend` runs tokenizer.json as
 * written. `LlamaTokenizer` does not use tokenizer.json's normalizer and pre-tokenizer: transformers
 * 5 (models/llama/tokenization_llama.py) rebuilds the pipeline from the vocab and merges: no
 * normalizer, a `Metaspace` pre-tokenizer (split off) whose prepend scheme is `always` when
 * tokenizer_config says `legacy: true` and `first` otherwise (the default is `legacy: false`),
 * `never` with `add_prefix_space: false`. The old Llama-2/Mistral-v0.1 normalizer (Prepend `▁` +
 * Replace ` ` -> `▁`) is dropped; it differs from Metaspace `always` on text that already starts
 * with a space.
 *
 * BOS/EOS on `addSpecialTokens` come from tokenizer.json's post-processor alone: transformers
 * drops tokenizer_config's `add_bos_token`/`add_eos_token` when a tokenizer.json exists
 * (tokenization_utils_base.py, `_from_pretrained`). Chat-templated text is always encoded without
 * special tokens (the template writes them), as transformers' apply_chat_template does. A
 * `chat_template.jinja` file takes priority over tokenizer_config's `chat_template`, as there.
 */
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';

import { Tokenizer } from '@huggingface/tokenizers';

import { ZnError } from '../errors.js';
import { cutWordsAtUnmergeableBoundaries } from './bpe-words.js';
import { type TokenOffsets, alignTokens, offsetPipeline } from './token-offsets.js';
import { type ModelConfigForTokenizer, type TokenizerClassChoice, chooseTokenizerClass } from './tokenizer-class.js';

/** The parts of tokenizer.json this module reads or rewrites; the rest passes through. */
export interface TokenizerJson {
  model: { type: string; vocab: Record<string, number> | unknown[]; merges?: unknown[]; [key: string]: unknown };
  normalizer: Record<string, unknown> | null;
  pre_tokenizer: Record<string, unknown> | null;
  post_processor: Record<string, unknown> | null;
  decoder: Record<string, unknown> | null;
  added_tokens: AddedTokenJson[];
  [key: string]: unknown;
}

export interface AddedTokenJson {
  id: number;
  content: string;
  special: boolean;
  lstrip?: boolean;
  rstrip?: boolean;
  normalized?: boolean;
  single_word?: boolean;
}

/** A special token in tokenizer_config.json: a string or an AddedToken dict. */
type SpecialTokenValue = string | { content: string } | null | undefined;

export interface TokenizerConfig {
  tokenizer_class?: string;
  legacy?: boolean;
  add_prefix_space?: boolean;
  bos_token?: SpecialTokenValue;
  eos_token?: SpecialTokenValue;
  unk_token?: SpecialTokenValue;
  pad_token?: SpecialTokenValue;
  chat_template?: string | { name: string; template: string }[] | null;
  [key: string]: unknown;
}

const SPIECE_UNDERLINE = '\u2581';
const LLAMA_DEFAULT_SPECIALS = { bos_token: '<s>', eos_token: '</s>', unk_token: '<unk>' } as const;

export interface EncodeOptions {
  /** Add the BOS/EOS the tokenizer's post-processor adds (HF's `add_special_tokens`). */
  addSpecialTokens: boolean;
}

export class HfTokenizer {
  readonly bosToken: string | null;
  readonly eosToken: string | null;
  readonly unkToken: string | null;
  readonly padToken: string | null;
  /** The Jinja chat template, or null when the folder has none. */
  readonly chatTemplate: string | null;
  /** The class transformers 5 loads the folder as, the pipeline that follows, and why (for `data inspect`). */
  readonly tokenizerClass: TokenizerClassChoice;
  /** How the pre-tokenizer prepends `▁`: what `legacy` resolved to (for `data inspect`). */
  readonly prependScheme: string | null;
  private readonly tokenizer: Tokenizer;
  private readonly effective: TokenizerJson;
  private readonly addedTokens: Map<number, AddedTokenJson>;
  private cachedVocabSize: number | undefined;

  /** `tokenizerClass` defaults to what transformers picks for tokenizer files without config.json. */
  constructor(
    tokenizerJson: TokenizerJson,
    config: TokenizerConfig,
    chatTemplateFile: string | null = null,
    where = 'tokenizer',
    tokenizerClass: TokenizerClassChoice = chooseTokenizerClass(config, null),
  ) {
    this.tokenizerClass = tokenizerClass;
    const isLlama = tokenizerClass.pipeline === 'llama-rebuild';
    this.effective = isLlama && tokenizerJson.model.type === 'BPE' ? llamaPipeline(tokenizerJson, config) : tokenizerJson;
    const specials = { ...(isLlama ? LLAMA_DEFAULT_SPECIALS : {}), ...definedEntries(config) };
    this.bosToken = specialTokenText(specials.bos_token);
    this.eosToken = specialTokenText(specials.eos_token);
    this.unkToken = specialTokenText(specials.unk_token);
    this.padToken = specialTokenText(specials.pad_token);
    this.chatTemplate = chatTemplateOf(config, chatTemplateFile);
    this.prependScheme = (this.effective.pre_tokenizer?.type === 'Metaspace' && (this.effective.pre_tokenizer.prepend_scheme as string)) || null;
    this.addedTokens = new Map(this.effective.added_tokens.map((token) => [token.id, token]));
    try {
      this.tokenizer = new Tokenizer(this.effective, config);
    } catch (error) {
      throw new ZnError(`${where}: cannot build the tokenizer: ${(error as Error).message}`);
    }
    cutWordsAtUnmergeableBoundaries(this.tokenizer, this.effective);
  }

  /**
   * Loads `tokenizer.json` + `tokenizer_config.json` (+ `special_tokens_map.json`,
   * `chat_template.jinja`) as `AutoTokenizer.from_pretrained(folder)` does: `config.json`, when
   * the folder has one, takes part in choosing the class.
   */
  static fromFolder(folder: string): HfTokenizer {
    const jsonPath = join(folder, 'tokenizer.json');
    if (!existsSync(jsonPath)) {
      throw new ZnError(`${folder}: no tokenizer.json (only the fast-tokenizer format is supported; tokenizer.model alone is not)`);
    }
    const tokenizerJson = readJson(jsonPath) as TokenizerJson;
    const configPath = join(folder, 'tokenizer_config.json');
    const config = (existsSync(configPath) ? readJson(configPath) : {}) as TokenizerConfig;
    const mapPath = join(folder, 'special_tokens_map.json');
    const specialMap = (existsSync(mapPath) ? readJson(mapPath) : {}) as TokenizerConfig;
    const templatePath = join(folder, 'chat_template.jinja');
    const templateFile = existsSync(templatePath) ? readFileSync(templatePath, 'utf8') : null;
    const modelConfigPath = join(folder, 'config.json');
    const modelConfig = existsSync(modelConfigPath) ? (readJson(modelConfigPath) as ModelConfigForTokenizer) : null;
    return new HfTokenizer(tokenizerJson, { ...specialMap, ...config }, templateFile, folder, chooseTokenizerClass(config, modelConfig));
  }

  /** The same tokenizer with another chat template (a recipe's `chat_template`, as the handbook sets `tokenizer.chat_template`). */
  withChatTemplate(template: string): HfTokenizer {
    return Object.assign(Object.create(HfTokenizer.prototype) as HfTokenizer, this, { chatTemplate: template });
  }

  get bosTokenId(): number | null {
    return this.bosToken === null ? null : this.tokenToId(this.bosToken);
  }

  get eosTokenId(): number | null {
    return this.eosToken === null ? null : this.tokenToId(this.eosToken);
  }

  /** Tokens in the vocabulary, added tokens included (HF's `len(tokenizer)`). */
  get vocabSize(): number {
    const size = this.cachedVocabSize ?? this.tokenizer.get_vocab(true).size;
    this.cachedVocabSize = size;
    return size;
  }

  /** Special tokens by their tokenizer_config names, as chat templates see them. */
  get specialTokensMap(): Record<string, string> {
    const entries: [string, string | null][] = [
      ['bos_token', this.bosToken],
      ['eos_token', this.eosToken],
      ['unk_token', this.unkToken],
      ['pad_token', this.padToken],
    ];
    return Object.fromEntries(entries.filter((entry): entry is [string, string] => entry[1] !== null));
  }

  encode(text: string, options: EncodeOptions): number[] {
    return this.tokenizer.encode(text, { add_special_tokens: options.addSpecialTokens }).ids;
  }

  /**
   * Ids of `text` (no special tokens added) with each token's [start, end) in `text` (UTF-16
   * units), as the Rust tokenizer's offsets: byte-fallback pieces of one character all carry that
   * character's span; a prepended `▁` carries the span of the character it precedes.
   */
  encodeWithOffsets(text: string): { ids: number[]; offsets: TokenOffsets[] } {
    const { ids, tokens } = this.tokenizer.encode(text, { add_special_tokens: false });
    const pipeline = offsetPipeline(this.effective);
    const offsets = alignTokens(text, tokens, ids.map((id: number) => this.addedTokens.get(id) ?? null), pipeline);
    return { ids, offsets };
  }

  decode(ids: number[], options: { skipSpecialTokens?: boolean } = {}): string {
    if (ids.length === 0) return '';
    return this.tokenizer.decode(ids, { skip_special_tokens: options.skipSpecialTokens ?? false });
  }

  /** The token string of an id (e.g. `▁Hello`, `<0x0A>`), or null outside the vocabulary. */
  idToToken(id: number): string | null {
    return this.tokenizer.id_to_token(id) ?? null;
  }

  tokenToId(token: string): number | null {
    return this.tokenizer.token_to_id(token) ?? null;
  }

  isSpecialId(id: number): boolean {
    return this.addedTokens.get(id)?.special ?? false;
  }
}

/** The pipeline `LlamaTokenizer.__init__` builds from tokenizer.json's vocab and merges. */
function llamaPipeline(json: TokenizerJson, config: TokenizerConfig): TokenizerJson {
  const addPrefixSpace = config.add_prefix_space ?? true;
  const prependScheme = !addPrefixSpace ? 'never' : config.legacy === true ? 'always' : 'first';
  const decoders: Record<string, unknown>[] = [
    { type: 'Replace', pattern: { String: SPIECE_UNDERLINE }, content: ' ' },
    { type: 'ByteFallback' },
    { type: 'Fuse' },
  ];
  if (addPrefixSpace) decoders.push({ type: 'Strip', content: ' ', start: 1, stop: 0 });
  return {
    ...json,
    normalizer: null,
    pre_tokenizer: { type: 'Metaspace', replacement: SPIECE_UNDERLINE, prepend_scheme: prependScheme, split: false },
    decoder: { type: 'Sequence', decoders },
    // transformers builds BPE(vocab, merges, fuse_unk=True, byte_fallback=True) with no unk token.
    model: { ...json.model, fuse_unk: true, byte_fallback: true, dropout: null },
  };
}

function specialTokenText(value: SpecialTokenValue): string | null {
  if (value === null || value === undefined) return null;
  return typeof value === 'string' ? value : value.content;
}

function definedEntries(config: TokenizerConfig): Partial<Record<'bos_token' | 'eos_token' | 'unk_token' | 'pad_token', SpecialTokenValue>> {
  const out: Record<string, SpecialTokenValue> = {};
  for (const key of ['bos_token', 'eos_token', 'unk_token', 'pad_token'] as const) {
    if (key in config) out[key] = config[key];
  }
  return out;
}

/** chat_template.jinja, else tokenizer_config's `chat_template` (a string, or named templates: the `default` one). */
function chatTemplateOf(config: TokenizerConfig, file: string | null): string | null {
  if (file !== null) return file;
  const value = config.chat_template;
  if (typeof value === 'string') return value;
  if (Array.isArray(value)) return value.find((entry) => entry.name === 'default')?.template ?? null;
  return null;
}

function readJson(path: string): unknown {
  try {
    return JSON.parse(readFileSync(path, 'utf8'));
  } catch (error) {
    throw new ZnError(`${path}: not valid JSON: ${(error as Error).message}`);
  }
}
