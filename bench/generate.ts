/**
 * `npm run bench:generate -- [--preset small|tiny] [--device cpu|cuda] [--dtype f32|bf16]
 *                            [--batch 1,8,32] [--prompt-tokens 128] [--new-tokens 64]
 *                            [--json FILE] [--no-peer] [--cache-dir DIR]`
 *
 * Generation throughput: zephyr-native's engine (lib/bench/generate-bench.ts, each configuration
 * in its own child process) beside transformers' `generate` with its KV cache
 * (bench/peer_generate.py, its own process), on the very same model folder (the preset's, from
 * the model cache), prompts and thread count, in the same run, alternating per batch size so
 * drift on a shared machine hits both. Greedy, exactly --new-tokens per sequence. Prefill is
 * the time to the batch's first tokens, decode the rest. Prints a Markdown table and writes
 * JSON with --json. Where the reference Python stack is missing, transformers' side is skipped
 * with the reason.
 */
import { spawnSync } from 'node:child_process';
import { join, resolve } from 'node:path';
import { parseArgs } from 'node:util';

import { type GenerateBenchOptions, type GenerateDevice, type GenerateMeasurement } from '../lib/bench/generate-bench.js';
import { defaultBenchCacheDir, ensureBenchModel } from '../lib/bench/model-cache.js';
import { type BenchPrecision, PRESETS, type PresetName } from '../lib/bench/presets.js';
import { choice, count, machineInfo, markdown, mib, ourVersions, runChildScript } from '../lib/bench/run.js';
import { writeJsonAtomic } from '../lib/io/atomic.js';
import { loadNative, packageRoot } from '../lib/native.js';
import { referencePython } from '../test/support/python.js';

interface Peer {
  python: string;
  threads: number;
}

/** transformers' side of one configuration in its own Python process; its stderr is shown only when it fails. */
function runTransformers(peer: Peer, options: GenerateBenchOptions): GenerateMeasurement & { versions: Record<string, string> } {
  const args = [
    join(packageRoot(), 'bench', 'peer_generate.py'),
    ...['--model', options.modelDir, '--preset', options.preset, '--device', options.device, '--precision', options.precision],
    ...['--batch', String(options.batch), '--prompt-tokens', String(options.promptTokens), '--new-tokens', String(options.newTokens)],
    ...['--threads', String(peer.threads)],
  ];
  const result = spawnSync(peer.python, args, { encoding: 'utf8', maxBuffer: 1 << 26, env: { ...process.env, TOKENIZERS_PARALLELISM: 'false' } });
  const last = result.stdout?.trim().split('\n').pop() ?? '';
  if (result.status !== 0 || !last.startsWith('{')) {
    throw new Error(`bench/peer_generate.py batch ${options.batch} failed (${result.status ?? result.signal}):\n${(result.stderr ?? '').split('\n').slice(-25).join('\n')}`);
  }
  return JSON.parse(last);
}

export function formatGenerateResults(results: GenerateMeasurement[]): string {
  const peerOf = (r: GenerateMeasurement) =>
    results.find((p) => p.implementation === 'transformers' && p.batch === r.batch && p.precision === r.precision && p.device === r.device);
  const ratio = (ours: number, theirs: number | undefined) => (theirs ? `${(ours / theirs).toFixed(2)}x` : '-');
  return markdown(
    ['preset', 'device', 'precision', 'implementation', 'batch', 'prompt', 'new', 'prefill tok/s', 'decode tok/s', 'peak memory', 'decode vs transformers', 'memory vs transformers'],
    results.map((r) => {
      const peer = r.implementation === 'zephyr-native' ? peerOf(r) : undefined;
      return [
        r.preset,
        r.device,
        r.precision,
        r.implementation,
        String(r.batch),
        String(r.prompt_tokens),
        String(r.new_tokens),
        r.prefill_tokens_per_s.toFixed(0),
        r.decode_tokens_per_s.toFixed(1),
        mib(r.peak_bytes),
        ratio(r.decode_tokens_per_s, peer?.decode_tokens_per_s),
        peer ? (r.peak_bytes / peer.peak_bytes).toFixed(2) : '-',
      ];
    }),
  );
}

export async function main(argv: string[]): Promise<void> {
  const { values } = parseArgs({
    args: argv,
    options: {
      preset: { type: 'string', default: 'small' },
      device: { type: 'string', default: 'cpu' },
      dtype: { type: 'string', default: 'f32' },
      batch: { type: 'string', default: '1,8,32' },
      'prompt-tokens': { type: 'string', default: '128' },
      'new-tokens': { type: 'string', default: '64' },
      json: { type: 'string' },
      'cache-dir': { type: 'string', default: defaultBenchCacheDir() },
      'no-peer': { type: 'boolean', default: false },
    },
  });
  const preset: PresetName = choice('preset', values.preset!, ['tiny', 'small', 'mistral-7b'] as const);
  const device: GenerateDevice = choice('device', values.device!, ['cpu', 'cuda'] as const);
  const precision: BenchPrecision = choice('dtype', values.dtype!, ['f32', 'bf16'] as const);
  const batches = values.batch!.split(',').map((b) => count('batch', b.trim(), 1));
  const promptTokens = count('prompt-tokens', values['prompt-tokens']!, 1);
  const newTokens = count('new-tokens', values['new-tokens']!, 2);
  if (PRESETS[preset].gpuOnly && device !== 'cuda') throw new Error(`--preset ${preset} runs on the GPU only (--device cuda)`);
  const threads = loadNative('cpu').info().threads;

  let peer: Peer | null = null;
  if (!values['no-peer']) {
    const reference = referencePython(['torch', 'transformers']);
    if (reference.python) peer = { python: reference.python, threads };
    else console.error(`transformers side skipped: ${reference.skipReason}`);
  }
  const modelDir = await ensureBenchModel(PRESETS[preset], resolve(values['cache-dir']!));
  console.error(`model folder: ${modelDir}; threads: zephyr-native ${threads} (ZN_NUM_THREADS / addon info), torch ${threads} (torch.set_num_threads)`);

  const results: GenerateMeasurement[] = [];
  let peerVersions: Record<string, string> = {};
  for (const batch of batches) {
    const options: GenerateBenchOptions = { preset, device, precision, batch, promptTokens, newTokens, modelDir };
    console.error(`${preset} ${device} ${precision} batch ${batch}: zephyr-native ...`);
    const ours = await runChildScript<GenerateBenchOptions, GenerateMeasurement>('./generate-child.js', options, `bench:generate batch ${batch}`);
    console.error(`result: ${JSON.stringify(ours)}`);
    results.push(ours);
    if (peer) {
      console.error(`${preset} ${device} ${precision} batch ${batch}: transformers ...`);
      const { versions, ...theirs } = runTransformers(peer, options);
      peerVersions = versions;
      console.error(`result: ${JSON.stringify(theirs)}`);
      results.push(theirs);
    }
  }
  console.log(formatGenerateResults(results));
  console.log(
    '\nprefill tok/s = batch x prompt tokens / time to the batch\'s first new tokens; decode tok/s = batch x (new tokens - 1) / the rest; ' +
      (device === 'cuda' ? 'peak memory = device memory taken (free before the model, less the lowest free seen), both sides' : 'peak memory = max RSS of each configuration\'s own process, both sides'),
  );
  if (values.json) {
    writeJsonAtomic(resolve(values.json), {
      results,
      machine: { ...machineInfo(null), gpu: device === 'cuda' ? loadNative('cuda').info() : null },
      versions: { ...ourVersions(), ...peerVersions },
      settings: { preset, device, precision, batches, prompt_tokens: promptTokens, new_tokens: newTokens, threads, preset_shape: PRESETS[preset].model },
    });
    console.error(`wrote ${values.json}`);
  }
}

main(process.argv.slice(2)).catch((error: Error) => {
  console.error(`bench:generate: ${error.message}`);
  process.exitCode = 1;
});
