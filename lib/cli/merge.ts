import type { CommandModule } from 'yargs';

import type { CheckpointDType } from '../model/config.js';
import { loadModel } from '../model/model.js';

interface MergeArgs {
  adapter: string;
  output: string;
  dtype: CheckpointDType;
  base_model?: string;
}

/**
 * `zephyr-native merge`: a PEFT LoRA adapter folder folded into its base (W += s B A in f32, as
 * PEFT's merge_and_unload), written as a plain HF model folder with the base's tokenizer files.
 */
export const mergeCommand: CommandModule<object, MergeArgs> = {
  command: 'merge',
  describe: 'Fold a LoRA adapter folder into its base model and write a plain model folder',
  builder: (yargs) =>
    yargs
      .option('adapter', { type: 'string', demandOption: true, describe: 'PEFT adapter folder (adapter_config.json, adapter_model.safetensors)' })
      .option('output', { type: 'string', demandOption: true, describe: 'Model folder to write' })
      .option('dtype', {
        choices: ['float32', 'bfloat16', 'float16'] as const,
        default: 'bfloat16' as CheckpointDType,
        describe: 'Stored weight dtype',
      })
      .option('base_model', { type: 'string', describe: "Base model folder (default: the adapter's base_model_name_or_path)" }),
  handler: async (args) => {
    const model = await loadModel(args.adapter, { dtype: 'f32', maxTokens: 1, baseModel: args.base_model });
    await model.mergeAdapters();
    await model.save(args.output, { dtype: args.dtype });
    model.dispose();
    process.stderr.write(`merge: ${args.adapter} folded into ${model.dir}, written to ${args.output} (${args.dtype})\n`);
  },
};
