import type { CommandModule } from 'yargs';

import { UsageError } from '../errors.js';
import type { ModelDType } from '../model/model.js';
import type { Device } from '../native.js';
import { createServer } from '../serve/server.js';
import { untilStopSignal } from './stop-signals.js';
import { checkModelArg, resolveModelPath } from './hub-args.js';

interface ServeArgs {
  model_name_or_path: string;
  host: string;
  port: number;
  served_model_name?: string;
  api_key?: string;
  insecure: boolean;
  max_batch: number;
  max_queue: number;
  max_context?: number;
  device: Device;
  dtype: ModelDType;
  log_prompts: boolean;
  shutdown_timeout: number;
}

/**
 * `zephyr-native serve`: the OpenAI-compatible server (lib/serve). The first SIGINT or SIGTERM
 * stops accepting and lets requests in flight finish (at most --shutdown_timeout seconds), then
 * the process exits 0; a second one exits at once.
 */
export const serveCommand: CommandModule<object, ServeArgs> = {
  command: 'serve',
  describe: 'Serve a model over the OpenAI chat completions API (continuous batching)',
  builder: (yargs) =>
    yargs
      .option('model_name_or_path', { type: 'string', demandOption: true, describe: 'HF model folder (config.json + safetensors + tokenizer)' })
      .option('host', { type: 'string', default: '127.0.0.1', describe: 'Address to listen on (other than loopback: needs --api_key or --insecure)' })
      .option('port', { type: 'number', default: 8000, describe: 'Port to listen on (0: any free port)' })
      .option('served_model_name', { type: 'string', describe: 'Model name clients send and /v1/models lists (default: the folder name)' })
      .option('api_key', { type: 'string', describe: 'Require Authorization: Bearer KEY on every route but /health (default $ZN_SERVE_API_KEY)' })
      .option('insecure', { type: 'boolean', default: false, describe: 'Allow a non-loopback --host without an API key' })
      .option('max_batch', { type: 'number', default: 8, describe: 'Sequences decoded together' })
      .option('max_queue', { type: 'number', default: 64, describe: 'Sequences that may wait for the batch; more get 429' })
      .option('max_context', { type: 'number', describe: 'Positions a sequence may reach, prompt included (default max_position_embeddings)' })
      .option('device', { choices: ['cpu', 'cuda', 'auto'] as const, default: 'cpu' as Device, describe: 'Backend to run on' })
      .option('dtype', { choices: ['f32', 'bf16'] as const, default: 'f32' as ModelDType, describe: 'f32, or bf16 weights and matmul inputs' })
      .option('log_prompts', { type: 'boolean', default: false, describe: 'Put each request\'s prompt into the access log' })
      .option('shutdown_timeout', { type: 'number', default: 30, describe: 'Seconds requests in flight may take to finish after SIGINT/SIGTERM' })
      .check((args) => {
        checkModelArg('model_name_or_path', args.model_name_or_path);
        if (!(Number.isInteger(args.port) && args.port >= 0 && args.port < 65536)) throw new UsageError(`--port must be an integer in [0, 65535], got ${args.port}`);
        if (!(Number.isSafeInteger(args.max_batch) && args.max_batch >= 1)) throw new UsageError(`--max_batch must be an integer >= 1, got ${args.max_batch}`);
        if (!(Number.isSafeInteger(args.max_queue) && args.max_queue >= 0)) throw new UsageError(`--max_queue must be an integer >= 0, got ${args.max_queue}`);
        if (args.max_context !== undefined && !(Number.isSafeInteger(args.max_context) && args.max_context >= 2)) {
          throw new UsageError(`--max_context must be an integer >= 2, got ${args.max_context}`);
        }
        if (!(args.shutdown_timeout >= 0)) throw new UsageError(`--shutdown_timeout must be >= 0 seconds, got ${args.shutdown_timeout}`);
        return true;
      }),
  handler: async (args) => {
    const dir = await resolveModelPath(args.model_name_or_path);
    await untilStopSignal(async (signal) => {
      const server = await createServer(dir, {
        host: args.host,
        port: args.port,
        servedModelName: args.served_model_name,
        apiKey: args.api_key ?? process.env.ZN_SERVE_API_KEY,
        insecure: args.insecure,
        maxBatch: args.max_batch,
        maxQueue: args.max_queue,
        maxContext: args.max_context,
        device: args.device,
        dtype: args.dtype,
        logPrompts: args.log_prompts,
        shutdownTimeoutMs: args.shutdown_timeout * 1000,
      });
      process.stderr.write(`zephyr-native serve: ${server.cachePlan}\n`);
      process.stderr.write(`zephyr-native serve: ${server.servedModelName} at ${server.url}/v1 (Ctrl-C stops)\n`);
      if (!signal.aborted) await new Promise((resolve) => signal.addEventListener('abort', resolve, { once: true }));
      process.stderr.write('zephyr-native serve: stopping; finishing the requests in flight\n');
      await server.close();
    });
  },
};
