/**
 * `--nproc_per_node N` (lib/cli/launch-ranks.ts): the launcher's choices (the mpirun options a
 * machine needs, the command line without the flag), what it refuses before anything starts,
 * and, where MPI is installed, the job it runs: `sft --nproc_per_node 2` takes the steps of one
 * process with micro-batch 4 (the reference, as in test/data-parallel.test.ts), a rank's failure
 * is the launcher's exit code, and SIGINT to the launcher stops every rank after a step with a
 * checkpoint equal to the single process's at that step, leaving no process behind.
 * Without mpirun a stand-in `mpirun` on PATH checks what would be run; the MPI tests skip.
 */
import assert from 'node:assert/strict';
import { chmodSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';

import { checkLaunchable, nprocPerNode, refuseLauncherKeys, withoutNprocFlag } from '../lib/cli/launch-ranks.js';
import { type LaunchMachine, ranksCommand, shellLine } from '../lib/model/mpi-launcher.js';
import { sft } from '../lib/train/api.js';
import {
  assertSameTrajectory,
  assertSameWeights,
  CLI,
  descendants,
  environmentWithoutLauncher,
  environOf,
  flags,
  history,
  mpiSkipReason,
  processId,
  type ProcessId,
  runNode,
  stillThere,
  writeSftFixtures,
} from './support/ranks.js';

const OPEN_MPI = { kind: 'open-mpi', command: 'mpirun', version: 'mpirun (Open MPI) 4.1.4' } as const;
const HYDRA = { kind: 'hydra', command: 'mpiexec', version: 'HYDRA build details:' } as const;
const argv = ['/usr/bin/node', '/pkg/main.js', 'sft', '--config', 'r.yaml'];
const machine = (over: Partial<LaunchMachine>): LaunchMachine => ({ cpus: 2, cores: 2, root: false, threadsPerRank: null, ...over });

describe('--nproc_per_node: the launch it makes (no MPI needed)', () => {
  it('reads N as an integer >= 1, once', () => {
    assert.equal(nprocPerNode({}), null);
    assert.equal(nprocPerNode({ nproc_per_node: '4' }), 4);
    for (const bad of ['0', '-1', 'x', '1.5', '', '2e0']) {
      assert.throws(() => nprocPerNode({ nproc_per_node: bad }), new RegExp(`--nproc_per_node must be an integer >= 1 .*got '${bad.replace('.', '\\.')}'`));
    }
    assert.throws(() => nprocPerNode({ nproc_per_node: ['2', '3'] }), /given 2 times \(2, 3\); give it once/);
  });

  it('refuses a launch inside a launch (even of 1), and --isolate with several ranks', () => {
    assert.throws(() => checkLaunchable(1, { isolate: false, env: { RANK: '1', WORLD_SIZE: '2' } }), /--nproc_per_node 1 starts its own ranks, but this process already is rank 1 of 2 \(torchrun's variables are set\)/);
    assert.throws(() => checkLaunchable(2, { isolate: false, env: { PMI_RANK: '0', PMI_SIZE: '1' } }), /already is rank 0 of 1 \(mpirun's variables are set\)/);
    assert.throws(() => checkLaunchable(2, { isolate: true, env: {} }), /--isolate runs the job in one child process/);
    checkLaunchable(1, { isolate: true, env: {} });
    checkLaunchable(4, { isolate: false, env: {} });
  });

  it('runs the same command line less the flag, in either spelling', () => {
    assert.deepEqual(withoutNprocFlag(['sft', '--nproc_per_node', '2', '--max_steps', '5']), ['sft', '--max_steps', '5']);
    assert.deepEqual(withoutNprocFlag(['dpo', '--nproc-per-node=4', '--config', 'r.yaml']), ['dpo', '--config', 'r.yaml']);
    assert.deepEqual(withoutNprocFlag(['sft', '--nproc_per_node=2', '--', '--nproc_per_node', '2']), ['sft', '--', '--nproc_per_node', '2']);
  });

  it("passes Open MPI only the options a machine needs: root, more ranks than cores, a pool of several threads per rank", () => {
    // 2 ranks on 2 cores as a user: one thread each, Open MPI's own binding (a core each).
    assert.deepEqual(ranksCommand(OPEN_MPI, 2, argv, machine({})).args, ['-n', '2', '-x', 'ZN_NUM_THREADS=1', ...argv]);
    assert.deepEqual(ranksCommand(OPEN_MPI, 2, argv, machine({ root: true })).args, ['-n', '2', '--allow-run-as-root', '-x', 'ZN_NUM_THREADS=1', ...argv]);
    // 3 ranks on 2 cores (4 hardware threads): more ranks than Open MPI's slots.
    assert.deepEqual(ranksCommand(OPEN_MPI, 3, argv, machine({ cpus: 4, cores: 2 })).args, ['-n', '3', '--oversubscribe', '-x', 'ZN_NUM_THREADS=1', ...argv]);
    // 2 ranks on 16 cores: 8 threads each, not bound to one core.
    const wide = ranksCommand(OPEN_MPI, 2, argv, machine({ cpus: 16, cores: 16 }));
    assert.equal(wide.threadsPerRank, 8);
    assert.deepEqual(wide.args, ['-n', '2', '--bind-to', 'none', '-x', 'ZN_NUM_THREADS=8', ...argv]);
    // The user's ZN_NUM_THREADS wins.
    assert.deepEqual(ranksCommand(OPEN_MPI, 2, argv, machine({ threadsPerRank: 2 })).args, ['-n', '2', '--bind-to', 'none', '-x', 'ZN_NUM_THREADS=2', ...argv]);
    // Hydra (MPICH, Intel MPI): no binding, no slot limit, root allowed; its own way to set a variable.
    assert.deepEqual(ranksCommand(HYDRA, 3, argv, machine({ root: true })), { command: 'mpiexec', args: ['-n', '3', '-genv', 'ZN_NUM_THREADS', '1', ...argv], threadsPerRank: 1 });
  });

  it('prints a command line a shell takes back word for word', () => {
    assert.equal(shellLine(['mpirun', '-n', '2', 'a b', "it's", '--x=1,2', '$HOME']), `mpirun -n 2 'a b' 'it'\\''s' --x=1,2 '$HOME'`);
  });

  it('refuses nproc_per_node in a recipe, pointing at the flag', () => {
    assert.throws(() => refuseLauncherKeys({ nproc_per_node: 2 }, 'r.yaml'), /r\.yaml: 'nproc_per_node' is a launcher setting, not a recipe key: pass --nproc_per_node N/);
    assert.throws(() => refuseLauncherKeys({ sft: { 'nproc-per-node': 2 } }, 'p.yaml'), /p\.yaml: 'nproc-per-node' is a launcher setting/);
    refuseLauncherKeys({ learning_rate: 1e-5, sft: { max_steps: 3 } }, 'r.yaml');
  });
});

describe('--nproc_per_node on the command line (a stand-in mpirun)', () => {
  const work = mkdtempSync(join(tmpdir(), 'zn-launch-cli-'));
  const bin = join(work, 'bin');
  const marker = join(work, 'launcher-ran');
  let fixtures: { model: string; chats: string };

  /** `mpirun` that answers --version as Open MPI and otherwise records its arguments and exits 3. */
  function fakeLauncher(name: string, version: string): void {
    mkdirSync(bin, { recursive: true });
    const script = join(bin, name);
    writeFileSync(
      script,
      `#!/bin/sh\nif [ "$1" = "--version" ]; then echo '${version}'; exit 0; fi\n` +
        `for a in "$@"; do printf '%s\\n' "$a"; done > '${marker}'\nexit 3\n`,
    );
    chmodSync(script, 0o755);
  }

  /** The CLI in an empty folder, with PATH holding the stand-ins only. */
  async function cli(args: string[], env: NodeJS.ProcessEnv = {}) {
    const cwd = mkdtempSync(join(work, 'cwd-'));
    const finished = await runNode([CLI, ...args], { cwd, env: environmentWithoutLauncher({ PATH: bin, ...env }) });
    return { ...finished, cwd, wrote: readdirSync(cwd) };
  }

  before(async () => {
    fixtures = await writeSftFixtures(work);
    mkdirSync(bin);
  });
  after(() => rmSync(work, { recursive: true, force: true }));

  it('rejects bad values, a nested launch and --isolate before anything starts (exit 2)', async () => {
    fakeLauncher('mpirun', 'mpirun (Open MPI) 4.1.4');
    const stage = ['sft', '--model_name_or_path', fixtures.model, '--dataset_name', fixtures.chats, '--output_dir', 'out'];
    const cases: [string[], NodeJS.ProcessEnv, RegExp][] = [
      [[...stage, '--nproc_per_node', '0'], {}, /--nproc_per_node must be an integer >= 1 \(the ranks to start on this machine\), got '0'/],
      [[...stage, '--nproc_per_node', '-1'], {}, /got '-1'/],
      [[...stage, '--nproc_per_node', 'x'], {}, /got 'x'/],
      [[...stage, '--nproc_per_node', '2'], { OMPI_COMM_WORLD_RANK: '0', OMPI_COMM_WORLD_SIZE: '2' }, /this process already is rank 0 of 2 \(mpirun's variables are set\)/],
      [[...stage, '--nproc_per_node', '2', '--isolate'], {}, /--isolate runs the job in one child process, and --nproc_per_node 2 runs it on 2 ranks/],
    ];
    const runs = await Promise.all(cases.map(([args, env]) => cli(args, env)));
    runs.forEach((run, i) => {
      assert.equal(run.code, 2, `${cases[i][0].join(' ')}: ${run.output}`);
      assert.match(run.output, cases[i][2]);
      assert.deepEqual(run.wrote, [], 'nothing written');
    });
    assert.ok(!existsSync(marker), 'mpirun never started');
  });

  it("runs `mpirun -n N` over the command line without the flag, prints it, and exits with mpirun's code", async () => {
    fakeLauncher('mpirun', 'mpirun (Open MPI) 4.1.4');
    const args = ['sft', '--model_name_or_path', fixtures.model, '--nproc-per-node=2', '--dataset_name', fixtures.chats, '--output_dir', 'out'];
    const run = await cli(args);
    assert.equal(run.code, 3, run.output);
    const launched = readFileSync(marker, 'utf8').trimEnd().split('\n');
    assert.deepEqual(launched.slice(0, 2), ['-n', '2']);
    assert.deepEqual(launched.slice(-args.length), [CLI, ...args.filter((a) => !a.startsWith('--nproc'))]);
    assert.ok(launched.some((a) => /^ZN_NUM_THREADS=\d+$/.test(a)), launched.join(' '));
    assert.match(run.output, /2 ranks \(mpirun \(Open MPI\) 4\.1\.4; \d+ threads? each\):\n {2}mpirun -n 2 .*main\.js sft --model_name_or_path \S+ --dataset_name/);
    rmSync(marker);
  });

  it("takes MPICH's mpiexec where no Open MPI mpirun is installed, and names what to install where neither is", async () => {
    rmSync(bin, { recursive: true, force: true });
    fakeLauncher('mpiexec', 'HYDRA build details:');
    const stage = ['dpo', '--model_name_or_path', fixtures.model, '--dataset_name', fixtures.chats, '--output_dir', 'out', '--nproc_per_node', '3'];
    const hydra = await cli(stage);
    assert.equal(hydra.code, 3, hydra.output);
    assert.deepEqual(readFileSync(marker, 'utf8').split('\n').slice(0, 5), ['-n', '3', '-genv', 'ZN_NUM_THREADS', '1']);
    rmSync(bin, { recursive: true, force: true });
    mkdirSync(bin);
    const none = await cli(stage);
    assert.equal(none.code, 1, none.output);
    assert.match(none.output, /neither mpirun nor mpiexec is on PATH: install Open MPI \(`apt-get install -y libopenmpi-dev openmpi-bin`\) and rebuild the addons/);
    assert.deepEqual(none.wrote, []);
  });

  it('--nproc_per_node 1 is the plain single process (no launcher)', async () => {
    rmSync(marker, { force: true });
    fakeLauncher('mpirun', 'mpirun (Open MPI) 4.1.4');
    const run = await cli(['sft', '--nproc_per_node', '1', '--use_cpu', 'true', '--bf16', 'false', '--model_name_or_path', fixtures.model, '--dataset_name', fixtures.chats, '--output_dir', 'out', '--max_steps', '1', '--max_length', '64']);
    assert.equal(run.code, 0, run.output);
    assert.ok(existsSync(join(run.cwd, 'out', 'model.safetensors')));
    assert.ok(!existsSync(marker), 'mpirun never started');
  });
});

const skip = mpiSkipReason();

describe('--nproc_per_node 2 on MPI ranks', { skip: skip ?? false }, () => {
  const work = mkdtempSync(join(tmpdir(), 'zn-launch-'));
  const common = {
    use_cpu: true,
    bf16: false,
    gradient_checkpointing: false,
    max_length: 64,
    logging_steps: 1,
    learning_rate: 3e-3,
    seed: 7,
    gradient_accumulation_steps: 2,
    save_strategy: 'no',
  };
  let data: { model_name_or_path: string; dataset_name: string };

  before(async () => {
    const fixtures = await writeSftFixtures(work);
    data = { model_name_or_path: fixtures.model, dataset_name: fixtures.chats };
  });
  after(() => rmSync(work, { recursive: true, force: true }));

  it('sft --nproc_per_node 2 x micro-batch 2 == 1 process x micro-batch 4 (losses, grad norms, weights after 3 steps)', async () => {
    const recipe = { ...common, ...data, max_steps: 3 };
    await sft({ ...recipe, output_dir: join(work, 'one'), per_device_train_batch_size: 4 }, { progress: 'silent' });
    const two = await runNode([CLI, 'sft', '--nproc_per_node', '2', ...flags({ ...recipe, output_dir: join(work, 'two'), per_device_train_batch_size: 2 })]);
    assert.equal(two.code, 0, two.output);
    assert.match(two.output, /zephyr-native: 2 ranks .*\n {2}mpirun -n 2 /);
    assert.match(two.output, /data parallel: 2 ranks over MPI/);
    assertSameTrajectory(history(join(work, 'two')), history(join(work, 'one')), ['loss', 'grad_norm', 'learning_rate']);
    await assertSameWeights(join(work, 'two', 'model.safetensors'), join(work, 'one', 'model.safetensors'));
  });

  it("a rank's failure is the launcher's exit code: 1 for an error, 137 for a rank killed by SIGKILL", async () => {
    const failing = await runNode([CLI, 'sft', '--nproc_per_node', '2', ...flags({ ...common, ...data, dataset_name: join(work, 'missing.jsonl'), output_dir: join(work, 'failing') })]);
    assert.equal(failing.code, 1, failing.output);
    assert.match(failing.output, /rank [01] of 2: sft: dataset_name: .*missing\.jsonl: no such file/);

    const dir = join(work, 'killed');
    const killed = await runNode([CLI, 'sft', '--nproc_per_node', '2', ...flags({ ...common, ...data, max_steps: 500, per_device_train_batch_size: 2, output_dir: dir })], {
      onStart: (pid) => {
        const timer = setInterval(() => {
          if (!existsSync(join(dir, 'metrics.jsonl')) || readFileSync(join(dir, 'metrics.jsonl'), 'utf8').split('\n').length < 3) return;
          const rank1 = descendants(pid).find((child) => environOf(child).includes('OMPI_COMM_WORLD_RANK=1'));
          if (rank1 === undefined) return;
          clearInterval(timer);
          process.kill(rank1, 'SIGKILL');
        }, 20);
        timer.unref();
      },
    });
    assert.equal(killed.code, 137, killed.output);
    assert.match(killed.output, /rank 1 .*(exited on signal 9|Killed)/s);
  });

  it('SIGINT to the launcher stops every rank after a step with a good checkpoint, exit 130, no process left', async () => {
    const recipe = { ...common, ...data, max_steps: 500 };
    const dir = join(work, 'interrupted');
    let processes: ProcessId[] = [];
    const stopped = await runNode([CLI, 'sft', '--nproc_per_node', '2', ...flags({ ...recipe, per_device_train_batch_size: 2, output_dir: dir })], {
      onStart: (pid) => {
        const timer = setInterval(() => {
          if (!existsSync(join(dir, 'metrics.jsonl')) || readFileSync(join(dir, 'metrics.jsonl'), 'utf8').split('\n').length < 3) return;
          processes = descendants(pid).map(processId);
          // mpirun and its two ranks.
          if (processes.filter((child) => /OMPI_COMM_WORLD_RANK=/.test(environOf(child.pid))).length < 2) return;
          clearInterval(timer);
          process.kill(pid, 'SIGINT');
        }, 20);
        timer.unref();
      },
    });
    assert.equal(stopped.code, 130, stopped.output);
    assert.match(stopped.output, /stopping every rank after its current step/);
    assert.ok(processes.length >= 3, `mpirun and 2 ranks seen: ${processes.map((p) => p.pid)}`);
    assert.deepEqual(processes.map(stillThere).filter(Boolean), [], 'no process of the job is left');
    const checkpoints = readdirSync(dir).filter((name) => name.startsWith('checkpoint-'));
    assert.equal(checkpoints.length, 1, checkpoints.join(', '));
    const step = Number(checkpoints[0]!.slice('checkpoint-'.length));

    // One process with micro-batch 4, stopped after the same step: the same checkpoint.
    const controller = new AbortController();
    const one = sft({ ...recipe, per_device_train_batch_size: 4, output_dir: join(work, 'interrupted-one') }, { progress: 'silent', signal: controller.signal });
    one.on('log', (entry) => {
      if (entry.step === step && 'loss' in entry) controller.abort();
    });
    await one;
    const expected = join(work, 'interrupted-one', `checkpoint-${step}`);
    assertSameTrajectory(history(join(dir, checkpoints[0]!)), history(expected), ['loss', 'grad_norm', 'learning_rate']);
    await assertSameWeights(join(dir, checkpoints[0]!, 'model.safetensors'), join(expected, 'model.safetensors'));
    await assertSameWeights(join(dir, checkpoints[0]!, 'optimizer.safetensors'), join(expected, 'optimizer.safetensors'));
  });
});
