/**
 * The Hub in the trainer and the CLI, against a Hub-compatible server on 127.0.0.1: sft from a
 * Hub model id and a Hub dataset id (downloaded into the shared cache), push_to_hub with
 * hub_strategy checkpoint, `zephyr-native upload` / `download`; and one writer per output_dir
 * (a second sft stops at once; after a SIGKILL a new run takes the lock over and resumes).
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';

import { ultrachatRows } from '../lib/demo/teacher.js';
import { writeLlama2TokenizerFolder } from '../lib/data/llama2-tokenizer.js';
import { writeRows } from '../lib/data/writers.js';
import { uploadFolder } from '../lib/hub/upload.js';
import { lockOutput } from '../lib/io/output-lock.js';
import { mistralConfig, writeRandomModel } from '../lib/model/init.js';
import { packageRoot } from '../lib/native.js';
import { listSplits } from '../lib/data/readers.js';
import { pipelineStages, sft } from '../lib/train/api.js';
import { readRecipeFile, resolveStage } from '../lib/train/config.js';
import { resolveHubInputs } from '../lib/train/hub-inputs.js';
import type { TrainingValues } from '../lib/train/config.js';
import { HubPusher } from '../lib/train/hub-push.js';
import { FakeHub, TEST_TOKEN } from './support/fake-hub.js';

const work = mkdtempSync(join(tmpdir(), 'zn-hub-train-'));
const cli = join(packageRoot(), 'dist', 'lib', 'cli', 'main.js');
const hub = new FakeHub();

const common = { use_cpu: true, bf16: false, gradient_checkpointing: false, max_length: 64, logging_steps: 1, per_device_train_batch_size: 4, seed: 1, learning_rate: 1e-3 };

function hubEnv(): NodeJS.ProcessEnv {
  return { ...process.env, HF_HUB_CACHE: join(work, 'cache'), HF_ENDPOINT: hub.url, HF_TOKEN: TEST_TOKEN, HF_HUB_OFFLINE: '' };
}

function files(dir: string, prefix = ''): Record<string, Buffer> {
  const out: Record<string, Buffer> = {};
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    if (entry.isDirectory()) Object.assign(out, files(join(dir, entry.name), `${prefix}${entry.name}/`));
    else out[`${prefix}${entry.name}`] = readFileSync(join(dir, entry.name));
  }
  return out;
}

interface Child {
  pid: number;
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  stderr: () => string;
  kill: () => void;
}

function startCli(args: string[], env: NodeJS.ProcessEnv): Child {
  const child = spawn(process.execPath, [cli, ...args], { env, stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr.setEncoding('utf8').on('data', (chunk: string) => (stderr += chunk));
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => child.on('close', (code, signal) => resolve({ code, signal })));
  return { pid: child.pid!, exited, stderr: () => stderr, kill: () => void child.kill('SIGKILL') };
}

async function waitFor(condition: () => boolean, what: string, child?: Child): Promise<void> {
  const deadline = Date.now() + 60_000;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}: ${child?.stderr() ?? ''}`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

describe('hub: trainer and CLI', () => {
  before(async () => {
    await hub.start();
    writeLlama2TokenizerFolder(join(work, 'tokenizer'));
    const config = mistralConfig({
      vocab_size: 32000, hidden_size: 32, intermediate_size: 64, num_hidden_layers: 2, num_attention_heads: 4,
      num_key_value_heads: 2, max_position_embeddings: 128, sliding_window: 32, tie_word_embeddings: true, bos_token_id: 1, eos_token_id: 2,
    });
    await writeRandomModel(join(work, 'base'), config, { seed: 9, tokenizerDir: join(work, 'tokenizer') });
    mkdirSync(join(work, 'chats', 'data'), { recursive: true });
    await writeRows(join(work, 'chats', 'data', 'train-00000-of-00001.parquet'), ultrachatRows(16, 4));
    hub.addCommit('model', 'test-org/tiny-base', files(join(work, 'base')));
    hub.addCommit('dataset', 'test-org/chats', { ...files(join(work, 'chats')), 'README.md': 'card' });
  });
  after(async () => {
    await hub.stop();
    rmSync(work, { recursive: true, force: true });
  });

  it('sft from Hub ids (cached on the way) and push_to_hub with hub_strategy checkpoint', async () => {
    const saved = { ...process.env };
    Object.assign(process.env, hubEnv());
    try {
      const [result] = await sft({
        ...common,
        model_name_or_path: 'test-org/tiny-base',
        dataset_name: 'test-org/chats',
        output_dir: join(work, 'sft'),
        max_steps: 2,
        save_steps: 1,
        save_total_limit: 1,
        push_to_hub: true,
        hub_model_id: 'test-org/tiny-sft',
        hub_strategy: 'checkpoint',
        hub_private_repo: true,
      }, { progress: 'silent' });
      assert.equal(result!.globalStep, 2);
    } finally {
      process.env = saved;
    }
    // The base model and the dataset came through the shared cache.
    assert.ok(existsSync(join(work, 'cache', 'models--test-org--tiny-base', 'refs', 'main')));
    assert.ok(existsSync(join(work, 'cache', 'datasets--test-org--chats', 'refs', 'main')));
    // The final model folder is on the Hub, byte for byte, with the last checkpoint beside it.
    const pushed = hub.files('model', 'test-org/tiny-sft')!;
    assert.ok(hub.repos.get('model/test-org/tiny-sft')!.private);
    // Commits: the new repository, checkpoint-1's model files, last-checkpoint/, the final model.
    assert.equal(hub.repos.get('model/test-org/tiny-sft')!.commits.size, 4);
    const output = files(join(work, 'sft'));
    for (const name of ['config.json', 'model.safetensors', 'tokenizer.json', 'generation_config.json', 'trainer_state.json']) {
      assert.deepEqual(pushed.get(name), output[name], name);
    }
    // The trainer checkpoints every save_steps before the last step: checkpoint-1 is the latest.
    assert.deepEqual(pushed.get('last-checkpoint/optimizer.safetensors'), output['checkpoint-1/optimizer.safetensors']);
    assert.deepEqual(pushed.get('last-checkpoint/zephyr_state.json'), output['checkpoint-1/zephyr_state.json']);
    assert.ok(![...pushed.keys()].some((path) => path.startsWith('checkpoint-') || path.endsWith('.lock')), [...pushed.keys()].join(', '));
    assert.ok(!existsSync(`${join(work, 'sft')}.lock`));
  });

  it('recipes/zephyr-7b-beta.yaml as written: its Hub ids and splits resolve through the cache', async () => {
    hub.addCommit('model', 'mistralai/Mistral-7B-v0.1', { ...files(join(work, 'base')), 'pytorch_model.bin': 'never fetched' });
    const rows = readFileSync(join(work, 'chats', 'data', 'train-00000-of-00001.parquet'));
    hub.addCommit('dataset', 'HuggingFaceH4/ultrachat_200k', {
      'data/train_sft-00000-of-00001-a3ecf92756993583.parquet': rows, 'data/test_sft-00000-of-00001-f7dfac4afe5b93f4.parquet': rows,
      'data/train_gen-00000-of-00001-3d4cd8309148a71f.parquet': 'not requested',
    });
    hub.addCommit('dataset', 'HuggingFaceH4/ultrafeedback_binarized', { 'data/train_prefs-00000-of-00001.parquet': rows, 'data/test_prefs-00000-of-00001.parquet': rows });
    const stages = pipelineStages(readRecipeFile(join(packageRoot(), 'recipes', 'zephyr-7b-beta.yaml')));
    const saved = { ...process.env };
    Object.assign(process.env, hubEnv());
    try {
      const sftStage = await resolveHubInputs(resolveStage('sft', [{ values: stages[0]!.config, where: 'recipe' }]), 'silent');
      assert.match(sftStage.values.model_name_or_path!, /models--mistralai--Mistral-7B-v0\.1\/snapshots\/[0-9a-f]{40}$/);
      assert.ok(existsSync(join(sftStage.values.model_name_or_path!, 'model.safetensors')) && !existsSync(join(sftStage.values.model_name_or_path!, 'pytorch_model.bin')));
      assert.deepEqual(listSplits(sftStage.values.dataset_name!), ['test_sft', 'train_sft']);
      // The dpo stage starts from the sft stage's output_dir, a local folder once sft has run.
      const dpoKeys = { ...stages[1]!.config, model_name_or_path: join(work, 'base') };
      const dpoStage = await resolveHubInputs(resolveStage('dpo', [{ values: dpoKeys, where: 'recipe' }]), 'silent');
      assert.deepEqual(listSplits(dpoStage.values.dataset_name!), ['test_prefs', 'train_prefs']);
    } finally {
      process.env = saved;
    }
  });

  it('`upload DIR REPO` then `download REPO` gives the same files through the shared cache', async () => {
    const base = files(join(work, 'base'));
    writeFileSync(join(work, 'base', '.gitattributes'), '*.safetensors filter=lfs\n');
    writeFileSync(join(work, 'base', '.config.json.tmp-12-34'), 'half written');
    writeFileSync(join(work, 'base', 'output.lock'), '{}');
    const up = startCli(['upload', join(work, 'base'), 'test-org/uploaded', '--revision', 'v1', '--commit_message', 'first'], hubEnv());
    assert.equal((await up.exited).code, 0, up.stderr());
    const pushed = hub.files('model', 'test-org/uploaded', 'v1')!;
    assert.equal(pushed.get('.gitattributes')?.toString(), '*.safetensors filter=lfs\n');
    assert.ok(!pushed.has('.config.json.tmp-12-34') && !pushed.has('output.lock'));
    for (const name of ['.gitattributes', '.config.json.tmp-12-34', 'output.lock']) rmSync(join(work, 'base', name));
    for (const [name, data] of Object.entries(base)) assert.deepEqual(pushed.get(name), data, name);
    assert.equal(hub.files('model', 'test-org/uploaded', 'main')!.has('config.json'), false);

    const down = spawn(process.execPath, [cli, 'download', 'test-org/uploaded', '--revision', 'v1'], { env: { ...hubEnv(), HF_HUB_CACHE: join(work, 'cache2') }, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    down.stdout.setEncoding('utf8').on('data', (c: string) => (stdout += c));
    down.stderr.setEncoding('utf8').on('data', (c: string) => (stderr += c));
    assert.equal(await new Promise((resolve) => down.on('close', resolve)), 0, stderr);
    const dir = stdout.trim();
    assert.match(dir, /cache2\/models--test-org--uploaded\/snapshots\/[0-9a-f]{40}$/);
    assert.deepEqual(readFileSync(join(dir, 'model.safetensors')), base['model.safetensors']);
    assert.match(stderr, /^download: test-org\/uploaded@[0-9a-f]{40}: \d+ files, [\d.]+ [kM]?B fetched$/m);

    const env = { cacheDir: join(work, 'cache'), offline: false, token: null, endpoint: hub.url };
    await assert.rejects(uploadFolder(join(work, 'base'), 'test-org/other', { env }), /upload to test-org\/other: no Hub token \(set HF_TOKEN, or run `hf auth login`\)/);
    await assert.rejects(uploadFolder(join(work, 'base'), 'test-org/other', { env: { ...env, offline: true, token: TEST_TOKEN } }), /upload to test-org\/other: HF_HUB_OFFLINE is set/);
    await assert.rejects(uploadFolder(join(work, 'base'), 'test-org/other', { env: { ...env, token: 'hf_wrong' }, progress: 'silent' }), /test-org\/other: the Hub refused the token \(HTTP 401 from http:\/\/127\.0\.0\.1:\d+\): it is invalid or has no write access to this repository/);
  });

  it('push_to_hub with hub_model_id as a bare name, or none, goes under the token\'s account (whoami), as HF Trainer', async () => {
    const saved = { ...process.env };
    Object.assign(process.env, hubEnv());
    try {
      const values = { hub_strategy: 'end', hub_revision: null, hub_private_repo: null, hub_token: null } as const;
      await new HubPusher({ ...values, hub_model_id: 'named-model' } as unknown as TrainingValues, join(work, 'base'), () => undefined).finish(true);
      await new HubPusher({ ...values, hub_model_id: null } as unknown as TrainingValues, join(work, 'base'), () => undefined).finish(true);
    } finally {
      process.env = saved;
    }
    assert.deepEqual(hub.files('model', 'test-user/named-model')!.get('config.json'), readFileSync(join(work, 'base', 'config.json')));
    assert.ok(hub.files('model', 'test-user/base')!.has('model.safetensors'));
    assert.throws(() => new HubPusher({ hub_model_id: 'a/b/c' } as unknown as TrainingValues, work, () => undefined), /hub_model_id: 'a\/b\/c' is not a Hub repository name/);
  });

  it('one writer per output_dir: a second sft stops at once; after a SIGKILL the next run takes over and resumes', async () => {
    const outputDir = join(work, 'locked');
    const args = ['sft', '--model_name_or_path', join(work, 'base'), '--dataset_name', join(work, 'chats'), '--output_dir', outputDir,
      '--use_cpu', '--bf16', 'false', '--gradient_checkpointing', 'false', '--max_length', '64', '--per_device_train_batch_size', '1',
      '--learning_rate', '1e-3', '--save_steps', '1', '--max_steps', '100000', '--logging_steps', '1000'];
    const first = startCli(args, process.env);
    await waitFor(() => existsSync(join(outputDir, 'checkpoint-1')), 'the first run\'s first checkpoint', first);
    const second = startCli(args, process.env);
    const { code } = await second.exited;
    assert.equal(code, 1, second.stderr());
    const owner = JSON.parse(readFileSync(`${outputDir}.lock`, 'utf8')) as { pid: number; started: string };
    assert.equal(owner.pid, first.pid);
    assert.equal(second.stderr().trim(), `zephyr-native: output_dir ${outputDir} is being written by another process ${first.pid} (\`zephyr-native ${args.join(' ')}\`, started ${owner.started}); wait for it to finish or stop it (lock file ${outputDir}.lock)`);
    first.kill();
    assert.equal((await first.exited).signal, 'SIGKILL');
    const steps = readdirSync(outputDir).filter((n) => /^checkpoint-\d+$/.test(n)).map((n) => Number(n.slice(11)));
    const last = Math.max(...steps);
    const resumed = startCli([...args.slice(0, -4), '--max_steps', String(last + 1), '--logging_steps', '1', '--resume_from_checkpoint', 'true'], process.env);
    assert.equal((await resumed.exited).code, 0, resumed.stderr());
    assert.match(resumed.stderr(), new RegExp(`^output_dir ${outputDir}: taking over the lock of process ${first.pid} \\(.*\\), which is no longer running$`, 'm'));
    const history = JSON.parse(readFileSync(join(outputDir, 'trainer_state.json'), 'utf8')).log_history as { step: number }[];
    assert.ok(history.some((entry) => entry.step === last + 1), 'the resumed run trained the next step');
    assert.ok(!existsSync(`${outputDir}.lock`));
  });

  it('lockOutput: a live owner (another process) refuses; a dead one is taken over; junk is replaced', async () => {
    const target = join(work, 'x.jsonl');
    const sleeper = spawn('sleep', ['30']);
    const live = { pid: sleeper.pid, hostname: (await import('node:os')).hostname(), procStart: readFileSync(`/proc/${sleeper.pid}/stat`, 'utf8').split(') ')[1]!.split(' ')[19], started: 'then', command: 'sleep 30' };
    writeFileSync(`${target}.lock`, JSON.stringify(live));
    assert.throws(() => lockOutput(target, { what: '--output' }), new RegExp(`--output ${target} is being written by another process ${sleeper.pid} \\(\`sleep 30\`, started then\\)`));
    // The same pid with another start time is a reused pid, not the owner.
    writeFileSync(`${target}.lock`, JSON.stringify({ ...live, procStart: '1' }));
    const messages: string[] = [];
    const lock = lockOutput(target, { what: '--output', log: (line) => messages.push(line) });
    assert.match(messages[0]!, /taking over the lock of process \d+ .* which is no longer running/);
    assert.equal(JSON.parse(readFileSync(`${target}.lock`, 'utf8')).pid, process.pid);
    assert.throws(() => lockOutput(target, { what: '--output' }), /already being written by this process/);
    lock.release();
    assert.ok(!existsSync(`${target}.lock`));
    sleeper.kill();
  });
});
