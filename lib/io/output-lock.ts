/**
 * One writer per output: an advisory lock file beside the output (`<output>.lock`) for the life
 * of the process. It holds the owner's pid, host, start time and command line; a second writer
 * that finds a live owner stops at once with an error naming the output and that process. A lock
 * left by a process that died without releasing it (SIGKILL, power loss) is taken over, with a
 * message: its pid no longer runs, or runs a different program (the kernel's start time of the
 * pid differs from the one recorded, so a reused pid is not mistaken for the owner).
 *
 * The lock is created with O_EXCL, so two processes racing for a free output cannot both win;
 * a stale lock is moved aside with an atomic rename before it is replaced, and put back if what
 * was moved turns out to be a live owner's fresh lock.
 */
import { closeSync, existsSync, fsyncSync, linkSync, openSync, readFileSync, renameSync, rmSync, statSync, writeSync } from 'node:fs';
import { hostname } from 'node:os';

import { ZnError } from '../errors.js';

export interface LockOwner {
  pid: number;
  hostname: string;
  /** The pid's start time in clock ticks since boot (/proc/<pid>/stat), where the system has it. */
  procStart: string | null;
  started: string;
  command: string;
}

export interface OutputLock {
  readonly path: string;
  release(): void;
}

export interface LockOptions {
  /** What the output is, for messages ("output_dir", "--output"). */
  what: string;
  /** Where takeover messages go (default: stderr). */
  log?: (line: string) => void;
  /** The lock file (default `<output>.lock`). */
  lockPath?: string;
}

/** A lock file being written this very moment is given this long before it counts as junk. */
const UNREADABLE_GRACE_MS = 2000;

function procStartOf(pid: number): string | null {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // Field 22 (starttime), counted after the command name, which may itself hold spaces.
    return stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19] ?? null;
  } catch {
    return null;
  }
}

function ownerOfThisProcess(): LockOwner {
  return {
    pid: process.pid,
    hostname: hostname(),
    procStart: procStartOf(process.pid),
    started: new Date().toISOString(),
    command: process.argv.slice(1).map((arg) => arg.replace(/^.*\/(dist\/lib\/cli\/main\.js)$/, 'zephyr-native')).join(' '),
  };
}

function readOwner(path: string): LockOwner | 'missing' | 'unreadable' {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return 'missing';
    throw error;
  }
  try {
    const owner = JSON.parse(text) as LockOwner;
    return Number.isInteger(owner.pid) && typeof owner.hostname === 'string' ? owner : 'unreadable';
  } catch {
    return 'unreadable';
  }
}

/** Whether the owner still runs; an owner on another host is assumed alive (its pid cannot be checked here). */
export function ownerAlive(owner: LockOwner): boolean {
  if (owner.hostname !== hostname()) return true;
  try {
    process.kill(owner.pid, 0);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ESRCH') return false;
  }
  const now = procStartOf(owner.pid);
  return owner.procStart === null || now === null || now === owner.procStart;
}

function describeOwner(owner: LockOwner): string {
  const host = owner.hostname === hostname() ? '' : ` on host ${owner.hostname}`;
  return `process ${owner.pid}${host} (\`${owner.command}\`, started ${owner.started})`;
}

function writeLockFile(path: string, owner: LockOwner): boolean {
  let fd: number;
  try {
    fd = openSync(path, 'wx');
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'EEXIST') return false;
    throw new ZnError(`cannot create the lock file ${path}: ${(error as Error).message}`);
  }
  try {
    writeSync(fd, `${JSON.stringify(owner)}\n`);
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
  return true;
}

/** Moves a dead owner's lock aside; true when it was the dead owner's (and is now gone). */
function removeStaleLock(path: string, dead: LockOwner): boolean {
  const aside = `${path}.stale-${process.pid}`;
  try {
    renameSync(path, aside);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return false;
    throw error;
  }
  const moved = readOwner(aside);
  const wasDead = typeof moved === 'object' && moved.pid === dead.pid && moved.started === dead.started;
  if (!wasDead) {
    // Another process replaced the stale lock between our read and our rename: give its lock back.
    try {
      linkSync(aside, path);
    } catch {
      // A third process holds the path now; it is that one's lock.
    }
  }
  rmSync(aside, { force: true });
  return wasDead;
}

function ageMs(path: string): number {
  try {
    return Date.now() - statSync(path).mtimeMs;
  } catch {
    return 0;
  }
}

function sleepSync(ms: number): void {
  Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);
}

/**
 * Takes the lock of `output` for this process, or throws a ZnError naming the output and the
 * process that holds it. The lock is released by `release()` or when the process exits.
 */
export function lockOutput(output: string, options: LockOptions): OutputLock {
  const path = options.lockPath ?? `${output.replace(/\/+$/, '')}.lock`;
  const log = options.log ?? ((line: string) => process.stderr.write(`${line}\n`));
  const me = ownerOfThisProcess();
  for (let attempt = 0; attempt < 50; attempt++) {
    if (writeLockFile(path, me)) return heldLock(path, me);
    const owner = readOwner(path);
    if (owner === 'missing') continue;
    if (owner === 'unreadable') {
      if (ageMs(path) < UNREADABLE_GRACE_MS) {
        sleepSync(50);
        continue;
      }
      rmSync(path, { force: true });
      log(`${options.what} ${output}: removed an unreadable lock file ${path}`);
      continue;
    }
    if (owner.pid === process.pid && owner.hostname === me.hostname) {
      throw new ZnError(`${options.what} ${output} is already being written by this process (lock ${path})`);
    }
    if (ownerAlive(owner)) {
      throw new ZnError(
        `${options.what} ${output} is being written by another ${describeOwner(owner)}; ` +
          `wait for it to finish or stop it (lock file ${path})`,
      );
    }
    if (removeStaleLock(path, owner)) {
      log(`${options.what} ${output}: taking over the lock of ${describeOwner(owner)}, which is no longer running`);
    }
  }
  throw new ZnError(`${options.what} ${output}: could not take the lock ${path} (other processes keep taking it)`);
}

function heldLock(path: string, me: LockOwner): OutputLock {
  let held = true;
  const release = (): void => {
    if (!held) return;
    held = false;
    process.removeListener('exit', release);
    // Only our own lock file is removed, never one another process took over meanwhile.
    const owner = existsSync(path) ? readOwner(path) : 'missing';
    if (typeof owner === 'object' && owner.pid === me.pid && owner.started === me.started) rmSync(path, { force: true });
  };
  process.on('exit', release);
  return { path, release };
}
