/**
 * MPI's launcher, as zephyr-native starts ranks with it (`--nproc_per_node`, lib/cli/launch-ranks.ts;
 * the multi-rank bench, lib/bench/rank-bench.ts): which one is installed (Open MPI's mpirun, or a
 * Hydra mpiexec: MPICH, Intel MPI), and the command line for N ranks on this machine, with only
 * the options the machine needs.
 */
import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { availableParallelism } from 'node:os';

import { ZnError } from '../errors.js';
import { mpiAddonCandidates } from '../native.js';

const INSTALL_MPI = 'install Open MPI (`apt-get install -y libopenmpi-dev openmpi-bin`) and rebuild the addons (`npx node-gyp rebuild`)';

/** MPI's launcher on PATH: Open MPI's mpirun, or a Hydra mpiexec (MPICH, Intel MPI). */
export interface MpiLauncher {
  kind: 'open-mpi' | 'hydra';
  command: string;
  /** The first line of `--version`, for the log. */
  version: string;
}

/** Asks `mpirun` then `mpiexec` which MPI they are; null when neither answers as one we know. */
export function findMpiLauncher(env: NodeJS.ProcessEnv = process.env): MpiLauncher | null {
  for (const command of ['mpirun', 'mpiexec']) {
    const answer = spawnSync(command, ['--version'], { encoding: 'utf8', env, timeout: 10_000 });
    if (answer.error || answer.status !== 0) continue;
    const text = `${answer.stdout}${answer.stderr}`;
    const version = text.split('\n').find((line) => line.trim() !== '')?.trim() ?? command;
    if (/Open MPI|OpenRTE/i.test(text)) return { kind: 'open-mpi', command, version };
    if (/HYDRA|MPICH|Intel\(R\) MPI/i.test(text)) return { kind: 'hydra', command, version };
  }
  return null;
}

/** What the launch depends on from this machine (a parameter, so the choices are testable). */
export interface LaunchMachine {
  /** Logical CPUs this process may run on. */
  cpus: number;
  /** Physical cores among them: Open MPI's slots on this node. */
  cores: number;
  root: boolean;
  /** The user's ZN_NUM_THREADS, if set: the threads of each rank's pool. */
  threadsPerRank: number | null;
}

export function thisMachine(env: NodeJS.ProcessEnv = process.env): LaunchMachine {
  const cpus = availableParallelism();
  const threads = env.ZN_NUM_THREADS ? Number(env.ZN_NUM_THREADS) : NaN;
  return {
    cpus,
    cores: Math.min(cpus, physicalCores() ?? cpus),
    root: process.getuid?.() === 0,
    threadsPerRank: Number.isSafeInteger(threads) && threads > 0 ? threads : null,
  };
}

/** Distinct (socket, core) pairs in /proc/cpuinfo; null where it cannot be read (not Linux). */
function physicalCores(): number | null {
  let text: string;
  try {
    text = readFileSync('/proc/cpuinfo', 'utf8');
  } catch {
    return null;
  }
  const cores = new Set<string>();
  for (const block of text.split(/\n\s*\n/)) {
    const socket = /^physical id\s*:\s*(\d+)/m.exec(block)?.[1];
    const core = /^core id\s*:\s*(\d+)/m.exec(block)?.[1];
    if (socket !== undefined && core !== undefined) cores.add(`${socket}:${core}`);
  }
  return cores.size > 0 ? cores.size : null;
}

export interface RanksCommand {
  command: string;
  args: string[];
  /** Threads of each rank's pool (ZN_NUM_THREADS, passed through the launcher so remote ranks get it too). */
  threadsPerRank: number;
}

/** `mpirun -n N [options the machine needs] <node> <cli> <args>`. */
export function ranksCommand(launcher: MpiLauncher, ranks: number, rankArgv: string[], machine: LaunchMachine): RanksCommand {
  // One thread pool per rank: N pools of every CPU would each spin for CPUs the others hold
  // (torchrun likewise sets OMP_NUM_THREADS=1 unless told). The user's ZN_NUM_THREADS wins.
  const threadsPerRank = machine.threadsPerRank ?? Math.max(1, Math.floor(machine.cpus / ranks));
  const options: string[] = [];
  if (launcher.kind === 'open-mpi') {
    // Open MPI refuses to start ranks as root unless told (containers often run as root).
    if (machine.root) options.push('--allow-run-as-root');
    // Open MPI gives a node as many slots as physical cores and refuses more ranks than slots.
    if (ranks > machine.cores) options.push('--oversubscribe');
    // Open MPI binds each rank to one core (two ranks or fewer) or one socket; a rank whose pool
    // has several threads would run them all on that one core.
    if (threadsPerRank > 1) options.push('--bind-to', 'none');
    options.push('-x', `ZN_NUM_THREADS=${threadsPerRank}`);
  } else {
    // Hydra neither binds by default nor limits ranks to cores, and runs as root.
    options.push('-genv', 'ZN_NUM_THREADS', String(threadsPerRank));
  }
  return { command: launcher.command, args: ['-n', String(ranks), ...options, ...rankArgv], threadsPerRank };
}

/** A command line as a POSIX shell would take it back. */
export function shellLine(words: string[]): string {
  return words.map((word) => (/^[\w@%+=:,./-]+$/.test(word) ? word : `'${word.replace(/'/g, `'\\''`)}'`)).join(' ');
}

/** MPI's launcher and the MPI addon, or an error naming what to install. */
export function requireMpi(what: string): MpiLauncher {
  const launcher = findMpiLauncher();
  if (!launcher) {
    throw new ZnError(`${what} starts the ranks with MPI's launcher, and neither mpirun nor mpiexec is on PATH: ${INSTALL_MPI}`);
  }
  const addons = mpiAddonCandidates();
  if (!addons.some((file) => existsSync(file))) {
    throw new ZnError(`${what}: the ranks talk through the MPI addon, which is not built (looked for ${addons.join(', ')}): ${INSTALL_MPI}`);
  }
  return launcher;
}
