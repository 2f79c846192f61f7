import { existsSync, statSync } from 'node:fs';

import type { CommandModule } from 'yargs';

import { HfTokenizer } from '../data/tokenizer.js';
import { UsageError } from '../errors.js';
import { Generator } from '../generate/generate.js';
import { type GenerationOptions, resolveGeneration } from '../generate/options.js';
import { computeDevice, loadModel, type ModelDType } from '../model/model.js';
import type { Device } from '../native.js';
import { chatInTerminal, chatOnPipe } from './chat-io.js';
import { CHAT_COMMANDS_HELP, ChatSession } from './chat-session.js';

interface ChatArgs {
  model_name_or_path: string;
  system?: string;
  device: Device;
  dtype: ModelDType;
  max_context?: number;
  max_new_tokens?: number;
  do_sample?: boolean;
  temperature?: number;
  top_k?: number;
  top_p?: number;
  min_p?: number;
  repetition_penalty?: number;
  seed?: number;
}

/** The sampling flags given (the others come from the model's generation_config.json). */
function generationOptions(args: ChatArgs): GenerationOptions {
  return {
    maxNewTokens: args.max_new_tokens,
    doSample: args.do_sample,
    temperature: args.temperature,
    topK: args.top_k,
    topP: args.top_p,
    minP: args.min_p,
    repetitionPenalty: args.repetition_penalty,
    seed: args.seed,
  };
}

/** `zephyr-native chat`: talk to a model in a terminal, or script it through a pipe. */
export const chatCommand: CommandModule<object, ChatArgs> = {
  command: 'chat',
  describe: 'Chat with a model in the terminal (or one message a line on a pipe)',
  builder: (yargs) =>
    yargs
      .option('model_name_or_path', { type: 'string', demandOption: true, describe: 'HF model folder (config.json + safetensors + tokenizer)' })
      .option('system', { type: 'string', describe: 'System message the conversation starts with' })
      .option('device', { choices: ['cpu', 'cuda', 'auto'] as const, default: 'cpu' as Device, describe: 'Backend to run on' })
      .option('dtype', { choices: ['f32', 'bf16'] as const, default: 'f32' as ModelDType, describe: 'f32, or bf16 weights and matmul inputs' })
      .option('max_context', { type: 'number', describe: 'Tokens a conversation may fill, answers included (default max_position_embeddings)' })
      .option('max_new_tokens', { type: 'number', describe: 'Longest answer in tokens (default generation_config.json, else 512)' })
      .option('do_sample', { type: 'boolean', describe: 'Sample (default generation_config.json; a --temperature above 0 samples)' })
      .option('temperature', { type: 'number', describe: 'Sampling temperature (0: greedy)' })
      .option('top_k', { type: 'number', describe: 'Sample among the k most likely tokens (0: all)' })
      .option('top_p', { type: 'number', describe: 'Nucleus sampling: the smallest set of tokens with this probability, in (0, 1]' })
      .option('min_p', { type: 'number', describe: 'Drop tokens below min_p times the most likely one, in [0, 1]' })
      .option('repetition_penalty', { type: 'number', describe: 'Divide the logits of tokens already in the conversation (> 0; 1: none)' })
      .option('seed', { type: 'number', describe: 'Sampling seed: the same seed and conversation give the same answer' })
      .check((args) => {
        const dir = args.model_name_or_path;
        if (!existsSync(dir) || !statSync(dir).isDirectory()) throw new UsageError(`--model_name_or_path: no such model folder: ${dir}`);
        if (args.max_context !== undefined && !(Number.isSafeInteger(args.max_context) && args.max_context >= 2)) {
          throw new UsageError(`--max_context must be an integer >= 2, got ${args.max_context}`);
        }
        resolveGeneration(generationOptions(args));
        return true;
      }),
  handler: async (args) => {
    const tokenizer = HfTokenizer.fromFolder(args.model_name_or_path);
    const model = await loadModel(args.model_name_or_path, { device: args.device, dtype: args.dtype });
    const generator = await Generator.create(model, tokenizer, { batchSize: 1, maxContext: args.max_context });
    const session = new ChatSession(generator, generationOptions(args), args.system ?? null);
    if (process.stdin.isTTY && process.stdout.isTTY) {
      const where = `${computeDevice(model.options.device)}, ${model.options.dtype}, ${session.maxContext}-token context`;
      const banner = `zephyr-native chat: ${args.model_name_or_path} (${where}). ${CHAT_COMMANDS_HELP} or Ctrl-D; Ctrl-C stops an answer.`;
      await chatInTerminal(session, banner, args.max_new_tokens);
    } else {
      await chatOnPipe(session);
    }
  },
};
