/**
 * Hub ids against a Hub-compatible server on 127.0.0.1 (test/support/fake-hub.ts) and a cache
 * laid out as huggingface_hub lays it out: resolution from the cache (refs, symlinked snapshots,
 * a second revision, offline), downloads (resumed, hash-checked, 401, 404) and, where Python's
 * huggingface_hub is installed, the same cache read and written by both.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, lstatSync, mkdirSync, mkdtempSync, readFileSync, readlinkSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { createServer, type AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join, relative } from 'node:path';
import { after, before, describe, it } from 'node:test';

import { resolveQuestionsFile } from '../lib/cli/hub-args.js';
import { downloadRepo } from '../lib/hub/download.js';
import { type HubEnvironment, hubEnvironment } from '../lib/hub/environment.js';
import { fnmatchRegExp, selectFiles } from '../lib/hub/file-selection.js';
import { resolveDatasetPath, resolveModelPath } from '../lib/hub/resolve.js';
import { FakeHub, TEST_TOKEN } from './support/fake-hub.js';
import { referencePython } from './support/python.js';

const MODEL = 'test-org/tiny-mistral';
const DATASET = 'test-org/chats';

function modelFiles(tag: string): Record<string, string | Buffer> {
  return {
    'config.json': JSON.stringify({ model_type: 'mistral', tag }),
    'tokenizer.json': '{"version": "1.0"}',
    'tokenizer_config.json': '{"tokenizer_class": "LlamaTokenizer"}',
    'model.safetensors.index.json': JSON.stringify({ metadata: {}, weight_map: { 'a.weight': 'model-00001-of-00002.safetensors', 'b.weight': 'model-00002-of-00002.safetensors' } }),
    'model-00001-of-00002.safetensors': Buffer.alloc(300_000, tag.charCodeAt(0)),
    'model-00002-of-00002.safetensors': Buffer.from(`second shard ${tag}`),
    'pytorch_model.bin': 'pickled: never fetched',
    'README.md': '# card',
  };
}

function sha256(data: Buffer | string): string {
  return createHash('sha256').update(data).digest('hex');
}

function env(cacheDir: string, hub: FakeHub, extra: Partial<HubEnvironment> = {}): HubEnvironment {
  return { cacheDir, offline: false, token: null, endpoint: hub.url, ...extra };
}

/** A fetch that fails the test if called: offline and cached paths must not touch the network. */
const noNetwork: typeof fetch = () => {
  throw new Error('the network was used');
};

/** A port nothing listens on (one the system just handed out and took back). */
async function closedPort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}

function execPython(python: string, script: string, environment: NodeJS.ProcessEnv): Promise<string> {
  return new Promise((resolve, reject) => {
    execFile(python, ['-c', script], { env: environment, encoding: 'utf8', timeout: 120_000 }, (error, stdout, stderr) => (error ? reject(new Error(`${error.message}\n${stderr}`)) : resolve(stdout)));
  });
}

describe('hub: environment', () => {
  it('reads HF_HOME, HF_HUB_CACHE, HF_HUB_OFFLINE, HF_TOKEN and HF_ENDPOINT as huggingface_hub does', () => {
    const home = mkdtempSync(join(tmpdir(), 'zn-hf-home-'));
    writeFileSync(join(home, 'token'), 'hf_from_file\n');
    const fromHome = hubEnvironment({ HF_HOME: home, HF_HUB_OFFLINE: 'yes' });
    assert.deepEqual(fromHome, { cacheDir: join(home, 'hub'), offline: true, token: 'hf_from_file', endpoint: 'https://huggingface.co' });
    const explicit = hubEnvironment({ HF_HOME: home, HF_HUB_CACHE: '/x/cache', HF_TOKEN: 'hf_env', HF_ENDPOINT: 'http://127.0.0.1:9/', HF_HUB_OFFLINE: '0' });
    assert.deepEqual(explicit, { cacheDir: '/x/cache', offline: false, token: 'hf_env', endpoint: 'http://127.0.0.1:9' });
    assert.equal(hubEnvironment({ XDG_CACHE_HOME: '/xdg', HF_HUB_OFFLINE: 'TRUE', HF_TOKEN_PATH: '/nonexistent' }).cacheDir, '/xdg/huggingface/hub');
    rmSync(home, { recursive: true, force: true });
  });

  it('selects the files the recipe\'s repositories need, from their file lists on the Hub', () => {
    const mistral = ['.gitattributes', 'README.md', 'config.json', 'generation_config.json', 'model-00001-of-00002.safetensors', 'model-00002-of-00002.safetensors',
      'model.safetensors.index.json', 'pytorch_model-00001-of-00002.bin', 'pytorch_model-00002-of-00002.bin', 'pytorch_model.bin.index.json', 'special_tokens_map.json',
      'tokenizer.json', 'tokenizer.model', 'tokenizer_config.json'];
    assert.deepEqual(selectFiles(mistral, { type: 'model' }, 'mistralai/Mistral-7B-v0.1').sort(), ['config.json', 'generation_config.json', 'model-00001-of-00002.safetensors',
      'model-00002-of-00002.safetensors', 'model.safetensors.index.json', 'special_tokens_map.json', 'tokenizer.json', 'tokenizer.model', 'tokenizer_config.json']);
    assert.throws(() => selectFiles(['config.json', 'pytorch_model.bin'], { type: 'model' }, 'x/y'), /x\/y: the repository has only pickled PyTorch weights \(pytorch_model\.bin\)/);
    const ultrachat = ['.gitattributes', 'README.md', 'data/test_gen-00000-of-00001-3d4cd8309148a71f.parquet', 'data/test_sft-00000-of-00001-f7dfac4afe5b93f4.parquet',
      'data/train_gen-00000-of-00003-a6c9fb894be3e50b.parquet', 'data/train_sft-00000-of-00003-a3ecf92756993583.parquet', 'data/train_sft-00001-of-00003-0a1804bcb6ae68c6.parquet',
      'data/train_sft-00002-of-00003-ee46ed25cfae92c6.parquet'];
    assert.deepEqual(selectFiles(ultrachat, { type: 'dataset', splits: ['train_sft', 'test_sft'] }, 'HuggingFaceH4/ultrachat_200k'), [
      'data/test_sft-00000-of-00001-f7dfac4afe5b93f4.parquet', 'data/train_sft-00000-of-00003-a3ecf92756993583.parquet',
      'data/train_sft-00001-of-00003-0a1804bcb6ae68c6.parquet', 'data/train_sft-00002-of-00003-ee46ed25cfae92c6.parquet']);
    assert.deepEqual(selectFiles(ultrachat, { type: 'dataset', include: ['*.md'] }, 'x/y'), ['README.md']);
  });

  it('matches include patterns as fnmatch does (* crosses /)', () => {
    assert.ok(fnmatchRegExp('*.json').test('sub/dir/config.json'));
    assert.ok(fnmatchRegExp('model-0000[12]-*').test('model-00002-of-00002.safetensors'));
    assert.ok(!fnmatchRegExp('model-0000[!12]-*').test('model-00002-of-00002.safetensors'));
    assert.ok(!fnmatchRegExp('config.json').test('xconfig.json'));
  });
});

describe('hub: cache layout as huggingface_hub writes it', () => {
  let cache: string;
  const commitA = 'a'.repeat(40);
  const commitB = 'b'.repeat(40);
  before(() => {
    // models--org--name/{blobs, snapshots/<commit>/ (relative symlinks), refs/main, refs/v2}
    cache = mkdtempSync(join(tmpdir(), 'zn-hf-cache-'));
    const repoDir = join(cache, 'models--test-org--tiny-mistral');
    for (const [commit, files] of [[commitA, modelFiles('A')], [commitB, modelFiles('B')]] as const) {
      for (const [path, content] of Object.entries(files)) {
        if (path.endsWith('.bin')) continue;
        const etag = sha256(content);
        mkdirSync(join(repoDir, 'blobs'), { recursive: true });
        writeFileSync(join(repoDir, 'blobs', etag), content);
        const pointer = join(repoDir, 'snapshots', commit, path);
        mkdirSync(join(pointer, '..'), { recursive: true });
        symlinkSync(relative(join(pointer, '..'), join(repoDir, 'blobs', etag)), pointer);
      }
    }
    mkdirSync(join(repoDir, 'refs'), { recursive: true });
    writeFileSync(join(repoDir, 'refs', 'main'), commitA);
    writeFileSync(join(repoDir, 'refs', 'v2'), commitB);
  });
  after(() => rmSync(cache, { recursive: true, force: true }));

  const offline = (cacheDir: string): HubEnvironment => ({ cacheDir, offline: true, token: null, endpoint: 'http://127.0.0.1:9' });

  it('resolves main through refs/main, a tag through refs/<tag>, and a commit hash directly, without the network', async () => {
    const repoDir = join(cache, 'models--test-org--tiny-mistral');
    assert.equal(await resolveModelPath(MODEL, { env: offline(cache), fetch: noNetwork }), join(repoDir, 'snapshots', commitA));
    assert.equal(await resolveModelPath(MODEL, { env: offline(cache), revision: 'v2', fetch: noNetwork }), join(repoDir, 'snapshots', commitB));
    assert.equal(await resolveModelPath(MODEL, { env: offline(cache), revision: commitB, fetch: noNetwork }), join(repoDir, 'snapshots', commitB));
    // Online too: a complete cached snapshot is used as it is.
    const online = { ...offline(cache), offline: false };
    const dir = await resolveModelPath(MODEL, { env: online, fetch: noNetwork });
    assert.equal(JSON.parse(readFileSync(join(dir, 'config.json'), 'utf8')).tag, 'A');
  });

  it('leaves existing local paths and non-ids alone', async () => {
    assert.equal(await resolveModelPath(cache, { env: offline(cache) }), cache);
    assert.equal(await resolveModelPath('no-slash-here', { env: offline(cache) }), 'no-slash-here');
    assert.equal(await resolveModelPath('a/b/c', { env: offline(cache) }), 'a/b/c');
  });

  it('HF_HUB_OFFLINE with a missing repository or revision is an error at once, not a request', async () => {
    await assert.rejects(resolveModelPath('test-org/absent', { env: offline(cache), fetch: noNetwork }), /test-org\/absent: HF_HUB_OFFLINE is set and it is neither a local folder nor in the cache/);
    await assert.rejects(resolveModelPath(MODEL, { env: offline(cache), revision: 'v3', fetch: noNetwork }), /tiny-mistral@v3: HF_HUB_OFFLINE is set/);
    await assert.rejects(resolveDatasetPath(DATASET, { env: offline(cache), splits: ['train'], fetch: noNetwork }), /dataset test-org\/chats: HF_HUB_OFFLINE/);
  });
});

describe('hub: downloads from a Hub-compatible server', () => {
  const hub = new FakeHub();
  let cache: string;
  let mainCommit: string;
  before(async () => {
    await hub.start();
    cache = mkdtempSync(join(tmpdir(), 'zn-hf-dl-'));
    mainCommit = hub.addCommit('model', MODEL, modelFiles('A'));
    hub.addCommit('model', MODEL, { 'config.json': JSON.stringify({ model_type: 'mistral', tag: 'B' }) }, { branch: 'v2' });
    hub.addCommit('model', 'test-org/gated', modelFiles('G'), { gated: true });
    hub.addCommit('dataset', DATASET, {
      'data/train_sft-00000-of-00002.parquet': 'train part 0',
      'data/train_sft-00001-of-00002.parquet': 'train part 1',
      'data/test_sft-00000-of-00001.parquet': 'test part',
      'data/train_gen-00000-of-00001.parquet': 'not requested',
      'README.md': 'card',
    });
  });
  after(async () => {
    await hub.stop();
    rmSync(cache, { recursive: true, force: true });
  });

  it('fetches only config, tokenizer and safetensors files into blobs + snapshot links + refs/main', async () => {
    const dir = await resolveModelPath(MODEL, { env: env(cache, hub), progress: 'silent' });
    const repoDir = join(cache, 'models--test-org--tiny-mistral');
    assert.equal(dir, join(repoDir, 'snapshots', mainCommit));
    assert.equal(readFileSync(join(repoDir, 'refs', 'main'), 'utf8'), mainCommit);
    const shard = join(dir, 'model-00001-of-00002.safetensors');
    assert.ok(lstatSync(shard).isSymbolicLink());
    const expected = modelFiles('A')['model-00001-of-00002.safetensors'] as Buffer;
    assert.equal(readlinkSync(shard), `../../blobs/${sha256(expected)}`);
    assert.deepEqual(readFileSync(shard), expected);
    // Small files are named by their git blob sha1, as the Hub's ETag (and Python) names them.
    const config = modelFiles('A')['config.json'] as string;
    const gitSha1 = createHash('sha1').update(`blob ${Buffer.byteLength(config)}\0${config}`).digest('hex');
    assert.equal(readlinkSync(join(dir, 'config.json')), `../../blobs/${gitSha1}`);
    assert.ok(!existsSync(join(dir, 'pytorch_model.bin')));
    assert.ok(!existsSync(join(dir, 'README.md')));
    // Python's marker for files the revision does not have.
    assert.ok(existsSync(join(repoDir, '.no_exist', mainCommit, 'generation_config.json')));
    // Cached now: a second resolution makes no request.
    const before = hub.requests.length;
    assert.equal(await resolveModelPath(MODEL, { env: env(cache, hub), fetch: noNetwork }), dir);
    assert.equal(hub.requests.length, before);
  });

  it('fetches a second revision into its own snapshot, sharing unchanged blobs', async () => {
    const dir = await resolveModelPath(MODEL, { env: env(cache, hub), revision: 'v2', progress: 'silent' });
    assert.equal(JSON.parse(readFileSync(join(dir, 'config.json'), 'utf8')).tag, 'B');
    const repoDir = join(cache, 'models--test-org--tiny-mistral');
    assert.equal(readFileSync(join(repoDir, 'refs', 'v2'), 'utf8'), dir.split('/').pop());
    assert.equal(readlinkSync(join(dir, 'model-00001-of-00002.safetensors')), readlinkSync(join(repoDir, 'snapshots', mainCommit, 'model-00001-of-00002.safetensors')));
  });

  it('resumes an interrupted download from where it stopped (Range request), then checks the hash', async () => {
    const fresh = mkdtempSync(join(tmpdir(), 'zn-hf-resume-'));
    hub.faults.cutAfter = { path: 'model-00001-of-00002.safetensors', bytes: 100_000 };
    await assert.rejects(downloadRepo({ type: 'model', id: MODEL, revision: 'main' }, {}, { env: env(fresh, hub) }));
    const blob = join(fresh, 'models--test-org--tiny-mistral', 'blobs', sha256(modelFiles('A')['model-00001-of-00002.safetensors'] as Buffer));
    // What reached the disk before the cut (at most what was sent) is kept and resumed from.
    const partial = lstatSync(`${blob}.incomplete`).size;
    assert.ok(partial > 0 && partial <= 100_000, `${partial} bytes kept`);
    const start = hub.requests.length;
    const result = await downloadRepo({ type: 'model', id: MODEL, revision: 'main' }, {}, { env: env(fresh, hub) });
    const ranged = hub.requests.slice(start).filter((r) => r.url.includes('model-00001') && r.range !== 'bytes=0-0');
    assert.deepEqual(ranged.map((r) => r.range), [`bytes=${partial}-299999`]);
    assert.deepEqual(readFileSync(join(result.dir, 'model-00001-of-00002.safetensors')), modelFiles('A')['model-00001-of-00002.safetensors']);
    assert.ok(!existsSync(`${blob}.incomplete`));
    // The rest of the shard, and the small files after it (config.json comes last).
    const after = ['model-00002-of-00002.safetensors', 'config.json'].reduce((sum, name) => sum + Buffer.byteLength(modelFiles('A')[name]!), 0);
    assert.equal(result.fetchedBytes, 300_000 - partial + after);
    rmSync(fresh, { recursive: true, force: true });
  });

  it('refuses a file whose bytes do not match the Hub hash, keeping nothing of it', async () => {
    const fresh = mkdtempSync(join(tmpdir(), 'zn-hf-bad-'));
    hub.faults.corrupt = 'model-00002-of-00002.safetensors';
    try {
      await assert.rejects(resolveModelPath(MODEL, { env: env(fresh, hub), progress: 'silent' }), /model-00002-of-00002\.safetensors: the downloaded file does not match the Hub's hash \(sha256 [0-9a-f]{64}, expected [0-9a-f]{64}\); refused/);
    } finally {
      hub.faults.corrupt = null;
    }
    const blob = join(fresh, 'models--test-org--tiny-mistral', 'blobs', sha256(modelFiles('A')['model-00002-of-00002.safetensors'] as Buffer));
    assert.ok(!existsSync(blob) && !existsSync(`${blob}.incomplete`));
    assert.ok(!existsSync(join(fresh, 'models--test-org--tiny-mistral', 'snapshots', mainCommit, 'model-00002-of-00002.safetensors')));
    rmSync(fresh, { recursive: true, force: true });
  });

  it('a gated repository is a 401 error saying what to do; with HF_TOKEN it downloads', async () => {
    await assert.rejects(resolveModelPath('test-org/gated', { env: env(cache, hub), progress: 'silent' }), /test-org\/gated: the repository is gated: accept its conditions on its Hub page, then no token is set \(HF_TOKEN, or `hf auth login`\) \(HTTP 401/);
    const dir = await resolveModelPath('test-org/gated', { env: env(cache, hub, { token: TEST_TOKEN }), progress: 'silent' });
    assert.equal(JSON.parse(readFileSync(join(dir, 'config.json'), 'utf8')).tag, 'G');
    assert.ok(hub.requests.some((r) => r.authorization === `Bearer ${TEST_TOKEN}`));
  });

  it('a missing repository or revision is a 404 error naming it', async () => {
    await assert.rejects(resolveModelPath('test-org/nope', { env: env(cache, hub), progress: 'silent' }), /test-org\/nope: no local folder of that name, and no such repository on the Hub \(or it is private and needs HF_TOKEN\) \(HTTP 404/);
    await assert.rejects(resolveModelPath(MODEL, { env: env(cache, hub), revision: 'v9', progress: 'silent' }), /tiny-mistral@v9: revision 'v9' does not exist \(HTTP 404/);
  });

  it('no network and nothing cached is an error naming the endpoint, not a hang', async () => {
    const fresh = mkdtempSync(join(tmpdir(), 'zn-hf-nonet-'));
    const closed = await closedPort();
    const endpoint = `http://127.0.0.1:${closed}`;
    await assert.rejects(resolveModelPath(MODEL, { env: { cacheDir: fresh, offline: false, token: null, endpoint }, progress: 'silent' }), new RegExp(`cannot reach the Hub at ${endpoint} \\(ECONNREFUSED\\) and the files are not in the cache`));
    rmSync(fresh, { recursive: true, force: true });
  });

  it('fetches a dataset\'s parquet files for the requested splits only', async () => {
    const dir = await resolveDatasetPath(DATASET, { env: env(cache, hub), splits: ['train_sft', 'test_sft'], progress: 'silent' });
    assert.match(dir, /datasets--test-org--chats\/snapshots\/[0-9a-f]{40}$/);
    assert.deepEqual(readFileSync(join(dir, 'data', 'train_sft-00001-of-00002.parquet'), 'utf8'), 'train part 1');
    assert.ok(existsSync(join(dir, 'data', 'test_sft-00000-of-00001.parquet')));
    assert.ok(!existsSync(join(dir, 'data', 'train_gen-00000-of-00001.parquet')));
    assert.equal(await resolveDatasetPath(DATASET, { env: env(cache, hub), splits: ['train_sft'], fetch: noNetwork }), dir);
  });

  it('eval --questions: a Hub dataset laid out as FastChat\'s data/<bench>/question.jsonl', async () => {
    hub.addCommit('dataset', 'test-org/bench', { 'data/mt_bench/question.jsonl': '{"question_id": 81, "category": "writing", "turns": ["Hi"]}\n', 'README.md': 'card' });
    const saved = { ...process.env };
    Object.assign(process.env, { HF_HUB_CACHE: cache, HF_ENDPOINT: hub.url, HF_HUB_OFFLINE: '', HF_TOKEN: '' });
    try {
      const file = await resolveQuestionsFile('test-org/bench');
      assert.match(file, /datasets--test-org--bench\/snapshots\/[0-9a-f]{40}\/data\/mt_bench\/question\.jsonl$/);
      assert.equal(JSON.parse(readFileSync(file, 'utf8')).question_id, 81);
      assert.equal(await resolveQuestionsFile(join(cache, 'local.jsonl')), join(cache, 'local.jsonl'));
    } finally {
      process.env = saved;
    }
  });

  describe('the same cache as Python huggingface_hub', () => {
    const { python, skipReason } = referencePython(['huggingface_hub']);
    const pyEnv = (cacheDir: string): NodeJS.ProcessEnv => ({ ...process.env, HF_HUB_CACHE: cacheDir, HF_ENDPOINT: hub.url, HF_HUB_DISABLE_TELEMETRY: '1', HF_HUB_DISABLE_PROGRESS_BARS: '1', HF_TOKEN: '' });

    it('Python reads what we downloaded, offline (hf_hub_download, snapshot_download)', { skip: skipReason ?? false }, async () => {
      const out = await execPython(
        python!,
        `import json, os
from huggingface_hub import hf_hub_download, snapshot_download
os.environ["HF_HUB_OFFLINE"] = "1"
a = hf_hub_download("${MODEL}", "model-00001-of-00002.safetensors", local_files_only=True)
b = snapshot_download("${MODEL}", local_files_only=True)
c = snapshot_download("${MODEL}", revision="v2", local_files_only=True)
d = snapshot_download("${DATASET}", repo_type="dataset", local_files_only=True)
print(json.dumps([a, b, c, d, open(os.path.join(c, "config.json")).read()]))`,
        pyEnv(cache),
      );
      const [a, b, c, d, config] = JSON.parse(out) as string[];
      const repoDir = join(cache, 'models--test-org--tiny-mistral');
      assert.equal(a, join(repoDir, 'snapshots', mainCommit, 'model-00001-of-00002.safetensors'));
      assert.equal(b, join(repoDir, 'snapshots', mainCommit));
      assert.equal(c, join(repoDir, 'snapshots', readFileSync(join(repoDir, 'refs', 'v2'), 'utf8')));
      assert.match(d!, /datasets--test-org--chats\/snapshots\//);
      assert.equal(JSON.parse(config!).tag, 'B');
    });

    it('we read, offline, what Python downloaded (snapshot_download from the same server)', { skip: skipReason ?? false }, async () => {
      const pyCache = mkdtempSync(join(tmpdir(), 'zn-hf-py-'));
      const out = await execPython(
        python!,
        `from huggingface_hub import snapshot_download
print(snapshot_download("${MODEL}", allow_patterns=["*.json", "*.safetensors"]))
print(snapshot_download("${MODEL}", revision="v2", allow_patterns=["*.json", "*.safetensors"]))`,
        pyEnv(pyCache),
      );
      const [mainDir, v2Dir] = out.trim().split('\n');
      const offline: HubEnvironment = { cacheDir: pyCache, offline: true, token: null, endpoint: hub.url };
      assert.equal(await resolveModelPath(MODEL, { env: offline, fetch: noNetwork }), mainDir);
      const v2 = await resolveModelPath(MODEL, { env: offline, revision: 'v2', fetch: noNetwork });
      assert.equal(v2, v2Dir);
      assert.equal(JSON.parse(readFileSync(join(v2, 'config.json'), 'utf8')).tag, 'B');
      rmSync(pyCache, { recursive: true, force: true });
    });
  });
});
