/**
 * `--nproc_per_node N` (torchrun's flag name) on `train`, `sft` and `dpo`: this process starts N
 * local ranks itself. Ranks here talk over MPI, and MPI processes find each other only through
 * MPI's launcher, so the ranks are `mpirun -n N` (Open MPI; MPICH's or Intel's Hydra `mpiexec`
 * where that is what is installed) over the same command line without the flag. The command is
 * printed, so that the same job can be started across nodes by hand (README "Launching ranks").
 *
 * Stopping: the launcher puts MPI's launcher in a session of its own, so a terminal's Ctrl-C
 * reaches this process alone (Open MPI's mpirun answers SIGINT by killing every rank within a
 * second, which would not leave time to finish a step). The first SIGINT or SIGTERM is passed on
 * as SIGUSR2, which both launchers forward to every rank and the ranks take as a stop request
 * (lib/cli/stop-signals.ts): every rank finishes its step, rank 0 writes a checkpoint, all exit
 * 0, and this process exits 130, as one process would. A second one (or SIGHUP) sends SIGTERM:
 * MPI's launcher ends every rank at once. Otherwise the exit code is MPI's launcher's (the first
 * failed rank's; 128 + signal when the launcher itself was killed).
 */
import { spawn } from 'node:child_process';
import { constants } from 'node:os';
import { resolve } from 'node:path';

import { UsageError, ZnError } from '../errors.js';
import { ranksCommand, requireMpi, shellLine, thisMachine } from '../model/mpi-launcher.js';
import { launchEnvironment } from '../model/ranks.js';

/** The flag as torchrun spells it, and its hyphenated form (torchrun accepts both). */
export const NPROC_FLAGS = ['nproc_per_node', 'nproc-per-node'] as const;

/** The rank count a command line asked for; null when the flag is absent. */
export function nprocPerNode(argv: Record<string, unknown>): number | null {
  const value = argv.nproc_per_node;
  if (value === undefined) return null;
  if (Array.isArray(value)) throw new UsageError(`--nproc_per_node given ${value.length} times (${value.join(', ')}); give it once`);
  const text = String(value).trim();
  const n = /^[0-9]+$/.test(text) ? Number(text) : NaN;
  if (!Number.isSafeInteger(n) || n < 1) throw new UsageError(`--nproc_per_node must be an integer >= 1 (the ranks to start on this machine), got '${value}'`);
  return n;
}

/**
 * A recipe holds what each process trains with (TrainingArguments' keys), and every rank reads
 * the same file; how many processes to start is the launcher's business (torchrun's flag,
 * accelerate's own config file), so the key is refused in a recipe with a pointer to the flag.
 */
export function refuseLauncherKeys(recipe: Record<string, unknown>, where: string): void {
  const scopes = [recipe, ...['sft', 'dpo'].map((stage) => recipe[stage]).filter((v): v is Record<string, unknown> => typeof v === 'object' && v !== null)];
  for (const scope of scopes) {
    for (const name of NPROC_FLAGS) {
      if (name in scope) throw new UsageError(`${where}: '${name}' is a launcher setting, not a recipe key: pass --nproc_per_node N on the command line`);
    }
  }
}

/** The command line `args` without `--nproc_per_node N` / `--nproc_per_node=N` (either spelling). */
export function withoutNprocFlag(args: string[]): string[] {
  const out: string[] = [];
  for (let i = 0; i < args.length; i++) {
    const arg = args[i]!;
    if (arg === '--') {
      out.push(...args.slice(i));
      break;
    }
    if (NPROC_FLAGS.some((name) => arg === `--${name}`)) {
      i++;
      continue;
    }
    if (NPROC_FLAGS.some((name) => arg.startsWith(`--${name}=`))) continue;
    out.push(arg);
  }
  return out;
}

/**
 * Refuses what cannot be launched, before anything starts: a process that already is a rank
 * (mpirun's, MPICH's or torchrun's variables: a launch inside a launch) and --isolate.
 */
export function checkLaunchable(ranks: number, options: { isolate: boolean; env?: NodeJS.ProcessEnv }): void {
  // Even 1: the flag says how many processes this command is, and a launcher already decided.
  const launch = launchEnvironment(options.env ?? process.env);
  if (launch.launcher !== 'none') {
    throw new UsageError(
      `--nproc_per_node ${ranks} starts its own ranks, but this process already is rank ${launch.rank} of ${launch.worldSize} ` +
        `(${launch.launcher}'s variables are set): ` +
        `drop --nproc_per_node under ${launch.launcher}, or run it outside`,
    );
  }
  if (options.isolate && ranks > 1) {
    throw new UsageError(`--isolate runs the job in one child process, and --nproc_per_node ${ranks} runs it on ${ranks} ranks: use one of them`);
  }
}

/**
 * Runs the command line of this process (less --nproc_per_node) on `ranks` local ranks under
 * MPI's launcher, and resolves to the exit code to leave with.
 */
export async function launchRanks(ranks: number): Promise<number> {
  const launcher = requireMpi(`--nproc_per_node ${ranks}`);
  const script = resolve(process.argv[1]!);
  const rankArgv = [process.execPath, ...process.execArgv, script, ...withoutNprocFlag(process.argv.slice(2))];
  const { command, args, threadsPerRank } = ranksCommand(launcher, ranks, rankArgv, thisMachine());
  process.stderr.write(`zephyr-native: ${ranks} ranks (${launcher.version}; ${threadsPerRank} thread${threadsPerRank > 1 ? 's' : ''} each):\n  ${shellLine([command, ...args])}\n`);
  return runLauncher(command, args);
}

/** Runs MPI's launcher to its end, passing on stop signals as described above. */
function runLauncher(command: string, args: string[]): Promise<number> {
  return new Promise((resolveExit, reject) => {
    // stdin ignored: mpirun forwards its stdin to rank 0, and reading a terminal from outside the
    // foreground process group would stop it (SIGTTIN).
    const child = spawn(command, args, { stdio: ['ignore', 'inherit', 'inherit'], detached: true });
    let stops = 0;
    const stop = (): void => {
      stops += 1;
      if (stops === 1) {
        process.stderr.write('zephyr-native: stopping every rank after its current step (a checkpoint is written); again to end them at once\n');
        child.kill('SIGUSR2');
      } else {
        child.kill('SIGTERM');
      }
    };
    const hangUp = (): void => void child.kill('SIGTERM');
    // If this process ends for any other reason, the ranks must not run on without it.
    const onExit = (): void => void child.kill('SIGTERM');
    process.on('SIGINT', stop);
    process.on('SIGTERM', stop);
    process.on('SIGHUP', hangUp);
    process.on('exit', onExit);
    const cleanUp = (): void => {
      process.off('SIGINT', stop);
      process.off('SIGTERM', stop);
      process.off('SIGHUP', hangUp);
      process.off('exit', onExit);
    };
    child.on('error', (error) => {
      cleanUp();
      reject(new ZnError(`cannot start ${command}: ${error.message}`));
    });
    child.on('close', (code, signal) => {
      cleanUp();
      // Stopped ranks exit 0 (lib/cli/train-commands.ts); the job, like one process, exits 130.
      if (stops > 0 && code === 0) {
        process.stderr.write('zephyr-native: stopped on request; the last checkpoint is in output_dir\n');
        resolveExit(130);
        return;
      }
      resolveExit(code ?? 128 + (signal ? signalNumber(signal) : 0));
    });
  });
}

function signalNumber(signal: NodeJS.Signals): number {
  return (constants.signals as Record<string, number>)[signal] ?? 0;
}
