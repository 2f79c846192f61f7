/**
 * `zephyr-native sft`, `dpo` and `train`: a recipe (`--config file.yaml`, TRL /
 * alignment-handbook keys) and/or flags for every key. `train` with no arguments runs the
 * built-in demo.
 */
import type { Argv, CommandModule } from 'yargs';

import { UsageError } from '../errors.js';
import { dpo, pipelineStages, sft, train, type PipelineConfig, type RunOptions, type TrainingRun } from '../train/api.js';
import { keyAppliesTo, readRecipeFile, resolveStage, type Stage, STAGES } from '../train/config.js';
import { runDemo } from '../demo/demo.js';
import { writeTrainingCurves } from '../eval/curves.js';
import { currentRanks, launchEnvironment } from '../model/ranks.js';
import { checkLaunchable, launchRanks, nprocPerNode, refuseLauncherKeys } from './launch-ranks.js';
import { untilStopSignal } from './stop-signals.js';
import { flagsFrom, recipeWithFlags } from './training-flags.js';

function builder(yargs: Argv): Argv {
  return yargs
    .strict(false)
    .option('config', { type: 'string', describe: 'Recipe YAML with TRL / alignment-handbook keys; every key is also a flag' })
    .option('isolate', { type: 'boolean', default: false, describe: 'Run the job in a child process' })
    .option('nproc_per_node', {
      type: 'string',
      alias: 'nproc-per-node',
      describe: 'Start N ranks on this machine (data parallel over MPI: runs `mpirun -n N` over this command line; 1: one process)',
    })
    .epilogue('Keys: see README "Training configuration". An unknown key is an error.');
}

/**
 * Runs a training job until it ends or Ctrl-C / SIGTERM stops it after the current step with a
 * checkpoint; a stopped run exits 130 (a rank of several: 0). Each stage's folder gets its training_curves.svg/.png.
 */
async function runToEnd(start: (options: RunOptions) => TrainingRun, options: RunOptions): Promise<void> {
  const results = await untilStopSignal((signal) => start({ ...options, signal }).result);
  // Under mpirun, rank 0 draws (it wrote the logs); the other ranks write nothing.
  for (const result of currentRanks().isLeader ? results : []) {
    // The model is saved by now: a chart that cannot be drawn (no step logged) is a note, not a failure.
    const note = await writeTrainingCurves(result.outputDir).catch((error: Error) => `not drawn (${error.message})`);
    process.stderr.write(`training curves: ${note}\n`);
  }
  // A rank stopped on request exits 0: Open MPI takes any other code for a failure and kills the
  // ranks still exiting. --nproc_per_node's launcher exits 130 for the job.
  if (results.at(-1)?.stoppedEarly) process.exitCode = currentRanks().size > 1 ? 0 : 130;
}

/**
 * --nproc_per_node's number of ranks, checked with what it cannot be combined with before
 * anything is read; null: this process runs the job.
 */
function ranksToLaunch(argv: Record<string, unknown>): number | null {
  const ranks = nprocPerNode(argv);
  if (ranks === null) return null;
  checkLaunchable(ranks, { isolate: argv.isolate === true });
  return ranks > 1 ? ranks : null;
}

/**
 * Starts the ranks after the stages' settings resolved here, so that a bad key is one error
 * rather than one per rank; the job's exit code is the launcher's.
 */
async function runOnRanks(ranks: number, stages: { stage: Stage; config: Record<string, unknown> }[], where: string): Promise<void> {
  for (const { stage, config } of stages) resolveStage(stage, [{ values: config, where }]);
  process.exitCode = await launchRanks(ranks);
}

function stageCommand(name: 'sft' | 'dpo', describe: string): CommandModule<object, Record<string, unknown>> {
  return {
    command: name,
    describe,
    builder,
    handler: async (argv) => {
      const ranks = ranksToLaunch(argv);
      const { config, where } = recipeWithFlags(argv, name);
      if (ranks !== null) return runOnRanks(ranks, [{ stage: name, config }], where);
      await runToEnd((options) => (name === 'sft' ? sft : dpo)(config, options), { where, isolate: argv.isolate === true });
    },
  };
}

export const sftCommand = stageCommand('sft', 'Supervised fine-tuning (dSFT) of a Mistral model on chat data');
export const dpoCommand = stageCommand('dpo', 'Direct Preference Optimization (dDPO) against a frozen reference');

/**
 * Flags win over the pipeline file: `--sft.learning_rate 1e-5` reaches one stage, a plain
 * `--learning_rate 1e-5` every stage it applies to.
 */
function pipelineWithFlags(pipeline: PipelineConfig, flags: Record<string, unknown>): PipelineConfig {
  const out: PipelineConfig = { ...pipeline };
  for (const stage of STAGES) {
    if (!pipeline[stage]) continue;
    const plain = Object.fromEntries(Object.entries(flags).filter(([key]) => !STAGES.includes(key as never) && keyAppliesTo(key, stage)));
    const scoped = (flags[stage] ?? {}) as Record<string, unknown>;
    out[stage] = { ...pipeline[stage], ...plain, ...scoped };
  }
  return out;
}

export const trainCommand: CommandModule<object, Record<string, unknown>> = {
  command: 'train',
  describe: 'Run a pipeline (dSFT then dDPO) from a recipe; with no arguments, the built-in demo',
  builder: (yargs) =>
    builder(yargs)
      .option('demo_dir', { type: 'string', describe: 'Where the demo writes its folder (default ./zephyr-demo)' })
      .option('demo_seed', { type: 'number', describe: "The demo's seed: model initialisation and training (default 0)" }),
  handler: async (argv) => {
    const ranks = ranksToLaunch(argv);
    const flags = flagsFrom(argv);
    const demoDir = typeof argv.demo_dir === 'string' ? argv.demo_dir : null;
    const demoSeed = typeof argv.demo_seed === 'number' ? argv.demo_seed : undefined;
    if (demoSeed !== undefined && !(Number.isInteger(demoSeed) && demoSeed >= 0)) throw new UsageError(`--demo_seed must be an integer >= 0, got ${demoSeed}`);
    delete flags.demo_dir;
    delete flags.demo_seed;
    if (typeof argv.config !== 'string') {
      if (ranks !== null) throw new UsageError('train: the built-in demo runs on one process; --nproc_per_node needs a pipeline (--config pipeline.yaml)');
      if (Object.keys(flags).length > 0) throw new UsageError('train: flags need a pipeline (--config pipeline.yaml); with no arguments train runs the demo');
      // Its generation and rating steps would run, and write, once per rank.
      if (launchEnvironment().worldSize > 1) throw new UsageError('train: the built-in demo runs on one process; start it without mpirun');
      await runDemo({ dir: demoDir ?? 'zephyr-demo', seed: demoSeed });
      return;
    }
    const recipe = readRecipeFile(argv.config);
    refuseLauncherKeys(recipe, argv.config);
    const pipeline = pipelineWithFlags(recipe as PipelineConfig, flags);
    if (ranks !== null) return runOnRanks(ranks, pipelineStages(pipeline), argv.config);
    await runToEnd((options) => train(pipeline, options), { where: argv.config, isolate: argv.isolate === true });
  },
};
