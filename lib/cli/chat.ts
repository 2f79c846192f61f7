import type { CommandModule } from 'yargs';

import { HfTokenizer } from '../data/tokenizer.js';
import { UsageError } from '../errors.js';
import { Generator } from '../generate/generate.js';
import { resolveGeneration } from '../generate/options.js';
import { computeDevice, loadModel, type ModelDType } from '../model/model.js';
import type { Device } from '../native.js';
import { chatInTerminal, chatOnPipe } from './chat-io.js';
import { generationOptions, withGenerationFlags, type GenerationFlags } from './generation-flags.js';
import { CHAT_COMMANDS_HELP, ChatSession } from './chat-session.js';
import { checkModelArg, resolveModelPath } from './hub-args.js';

interface ChatArgs extends GenerationFlags {
  model_name_or_path: string;
  system?: string;
  device: Device;
  dtype: ModelDType;
  max_context?: number;
}

/** `zephyr-native chat`: talk to a model in a terminal, or script it through a pipe. */
export const chatCommand: CommandModule<object, ChatArgs> = {
  command: 'chat',
  describe: 'Chat with a model in the terminal (or one message a line on a pipe)',
  builder: (yargs) =>
    withGenerationFlags(yargs, 'Sampling seed: the same seed and conversation give the same answer')
      .option('model_name_or_path', { type: 'string', demandOption: true, describe: 'HF model folder (config.json + safetensors + tokenizer)' })
      .option('system', { type: 'string', describe: 'System message the conversation starts with' })
      .option('device', { choices: ['cpu', 'cuda', 'auto'] as const, default: 'cpu' as Device, describe: 'Backend to run on' })
      .option('dtype', { choices: ['f32', 'bf16'] as const, default: 'f32' as ModelDType, describe: 'f32, or bf16 weights and matmul inputs' })
      .option('max_context', { type: 'number', describe: 'Tokens a conversation may fill, answers included (default max_position_embeddings)' })
      .check((args) => {
        checkModelArg('model_name_or_path', args.model_name_or_path);
        if (args.max_context !== undefined && !(Number.isSafeInteger(args.max_context) && args.max_context >= 2)) {
          throw new UsageError(`--max_context must be an integer >= 2, got ${args.max_context}`);
        }
        resolveGeneration(generationOptions(args));
        return true;
      }),
  handler: async (args) => {
    const dir = await resolveModelPath(args.model_name_or_path);
    const tokenizer = HfTokenizer.fromFolder(dir);
    const model = await loadModel(dir, { device: args.device, dtype: args.dtype });
    const generator = await Generator.create(model, tokenizer, { batchSize: 1, maxContext: args.max_context });
    const session = new ChatSession(generator, generationOptions(args), args.system ?? null);
    if (process.stdin.isTTY && process.stdout.isTTY) {
      const where = `${computeDevice(model.options.device)}, ${model.options.dtype}, ${session.maxContext}-token context`;
      const banner = `zephyr-native chat: ${args.model_name_or_path} (${where}; ${generator.engine.cachePlan}). ${CHAT_COMMANDS_HELP} or Ctrl-D; Ctrl-C stops an answer.`;
      await chatInTerminal(session, banner, args.max_new_tokens);
    } else {
      await chatOnPipe(session);
    }
  },
};
