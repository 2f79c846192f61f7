/**
 * A Hub-compatible HTTP server on 127.0.0.1 for tests: just the endpoints that @huggingface/hub
 * (downloads, uploads) and Python's huggingface_hub (hf_hub_download, snapshot_download) call,
 * with the headers they read. Repositories live in memory as commits of {path: bytes}; files
 * ending in .safetensors or .parquet are LFS files (etag = sha256), others regular (etag = git
 * blob sha1), as on the Hub. Faults for tests: cut a file's transfer after N bytes once, serve
 * corrupted bytes, gate a repository behind a token.
 */
import { createHash } from 'node:crypto';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';

export const TEST_TOKEN = 'hf_test_token_0123456789';

type RepoType = 'model' | 'dataset';

interface Repo {
  type: RepoType;
  id: string;
  gated: boolean;
  private: boolean;
  branches: Map<string, string>;
  commits: Map<string, Map<string, Buffer>>;
}

export interface FakeHubFaults {
  /** Cut the connection after this many bytes of the next GET of the file (once). */
  cutAfter?: { path: string; bytes: number } | null;
  /** Serve this file with its first byte flipped. */
  corrupt?: string | null;
}

export interface RequestRecord {
  method: string;
  url: string;
  range: string | null;
  authorization: string | null;
}

const LFS = /\.(safetensors|parquet)$/;

function sha256(data: Buffer): string {
  return createHash('sha256').update(data).digest('hex');
}

function gitOid(data: Buffer): string {
  return createHash('sha1').update(`blob ${data.length}\0`).update(data).digest('hex');
}

function entryOf(path: string, data: Buffer): Record<string, unknown> {
  const entry: Record<string, unknown> = { type: 'file', oid: gitOid(data), size: data.length, path };
  if (LFS.test(path)) entry.lfs = { oid: sha256(data), size: data.length, pointerSize: 134 };
  return entry;
}

export class FakeHub {
  readonly repos = new Map<string, Repo>();
  readonly requests: RequestRecord[] = [];
  readonly lfsObjects = new Map<string, Buffer>();
  faults: FakeHubFaults = {};
  private server: Server | null = null;
  url = '';
  private commitCounter = 0;

  async start(): Promise<string> {
    this.server = createServer((req, res) => void this.handle(req, res).catch((error) => this.json(res, 500, { error: String(error) })));
    await new Promise<void>((resolve) => this.server!.listen(0, '127.0.0.1', resolve));
    this.url = `http://127.0.0.1:${(this.server.address() as AddressInfo).port}`;
    return this.url;
  }

  async stop(): Promise<void> {
    this.server?.closeAllConnections();
    await new Promise<void>((resolve) => this.server?.close(() => resolve()) ?? resolve());
  }

  /** Adds a commit to a repository (made when missing) on `branch`; returns the commit hash. */
  addCommit(type: RepoType, id: string, files: Record<string, string | Buffer>, options: { branch?: string; gated?: boolean; private?: boolean; replace?: boolean } = {}): string {
    const key = `${type}/${id}`;
    let repo = this.repos.get(key);
    if (!repo) {
      repo = { type, id, gated: options.gated ?? false, private: options.private ?? false, branches: new Map(), commits: new Map() };
      this.repos.set(key, repo);
    }
    const branch = options.branch ?? 'main';
    const parent = repo.branches.get(branch) ?? repo.branches.get('main');
    const tree = new Map(options.replace || !parent ? [] : repo.commits.get(parent)!);
    for (const [path, content] of Object.entries(files)) tree.set(path, Buffer.isBuffer(content) ? content : Buffer.from(content));
    const commit = createHash('sha1').update(`${key}:${branch}:${++this.commitCounter}`).digest('hex');
    repo.commits.set(commit, tree);
    repo.branches.set(branch, commit);
    return commit;
  }

  /** The files of a repository at a revision (tests check uploads with it). */
  files(type: RepoType, id: string, revision = 'main'): Map<string, Buffer> | null {
    const repo = this.repos.get(`${type}/${id}`);
    const commit = repo && (repo.branches.get(revision) ?? (repo.commits.has(revision) ? revision : undefined));
    return commit ? repo!.commits.get(commit)! : null;
  }

  private json(res: ServerResponse, status: number, body: unknown, headers: Record<string, string> = {}): void {
    res.writeHead(status, { 'Content-Type': 'application/json', ...headers });
    res.end(JSON.stringify(body));
  }

  private authorized(req: IncomingMessage): boolean {
    return req.headers.authorization === `Bearer ${TEST_TOKEN}`;
  }

  /** The repository and commit a request names, or an error response already sent. */
  private lookup(req: IncomingMessage, res: ServerResponse, type: RepoType, id: string, revision: string | null): { repo: Repo; commit: string } | null {
    const repo = this.repos.get(`${type}/${id}`);
    if (!repo || (repo.private && !this.authorized(req))) {
      this.json(res, 404, { error: 'Repository not found' }, { 'X-Error-Code': 'RepoNotFound' });
      return null;
    }
    if (repo.gated && !this.authorized(req)) {
      this.json(res, 401, { error: `Access to model ${id} is restricted. You must have access to it and be authenticated to access it. Please log in.` }, { 'X-Error-Code': 'GatedRepo' });
      return null;
    }
    const rev = revision === null || revision === 'HEAD' ? 'main' : decodeURIComponent(revision);
    const commit = repo.branches.get(rev) ?? (repo.commits.has(rev) ? rev : undefined);
    if (!commit) {
      this.json(res, 404, { error: `Invalid rev id: ${rev}` }, { 'X-Error-Code': 'RevisionNotFound' });
      return null;
    }
    return { repo, commit };
  }

  private async body(req: IncomingMessage): Promise<Buffer> {
    const chunks: Buffer[] = [];
    for await (const chunk of req) chunks.push(chunk as Buffer);
    return Buffer.concat(chunks);
  }

  private async handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const url = new URL(req.url!, this.url);
    const path = url.pathname;
    this.requests.push({ method: req.method!, url: req.url!, range: req.headers.range ?? null, authorization: req.headers.authorization ?? null });
    let m: RegExpExecArray | null;
    if ((m = /^\/api\/(models|datasets)\/([^/]+\/[^/]+)\/revision\/(.+)$/.exec(path))) return this.info(req, res, m[1] === 'models' ? 'model' : 'dataset', m[2]!, m[3]!);
    if ((m = /^\/api\/(models|datasets)\/([^/]+\/[^/]+)\/tree\/([^/]+)(\/.*)?$/.exec(path))) return this.tree(req, res, m[1] === 'models' ? 'model' : 'dataset', m[2]!, m[3]!);
    if ((m = /^\/(datasets\/)?([^/]+\/[^/]+)\/resolve\/([^/]+)\/(.+)$/.exec(path))) return this.resolve(req, res, m[1] ? 'dataset' : 'model', m[2]!, m[3]!, decodeURIComponent(m[4]!));
    if (path === '/api/whoami-v2') return this.authorized(req) ? this.json(res, 200, { type: 'user', name: 'test-user', auth: { type: 'access_token' } }) : this.json(res, 401, { error: 'Invalid credentials in Authorization header' });
    if (path === '/api/repos/create' && req.method === 'POST') return this.createRepo(req, res);
    if ((m = /^\/api\/(models|datasets)\/([^/]+\/[^/]+)\/branch\/(.+)$/.exec(path)) && req.method === 'POST') return this.createBranch(req, res, m[1] === 'models' ? 'model' : 'dataset', m[2]!, decodeURIComponent(m[3]!));
    if ((m = /^\/api\/(models|datasets)\/([^/]+\/[^/]+)\/preupload\/(.+)$/.exec(path))) return this.preupload(req, res);
    if ((m = /^\/(datasets\/)?([^/]+\/[^/]+)\.git\/info\/lfs\/objects\/batch$/.exec(path))) return this.lfsBatch(req, res);
    if ((m = /^\/lfs-upload\/([0-9a-f]{64})$/.exec(path)) && req.method === 'PUT') return this.lfsUpload(req, res, m[1]!);
    if ((m = /^\/api\/(models|datasets)\/([^/]+\/[^/]+)\/commit\/(.+)$/.exec(path))) return this.commit(req, res, m[1] === 'models' ? 'model' : 'dataset', m[2]!, decodeURIComponent(m[3]!));
    this.json(res, 404, { error: `fake hub: no route ${req.method} ${path}` });
  }

  private info(req: IncomingMessage, res: ServerResponse, type: RepoType, id: string, revision: string): void {
    const found = this.lookup(req, res, type, id, revision);
    if (!found) return;
    const tree = found.repo.commits.get(found.commit)!;
    this.json(res, 200, {
      _id: `id-${id}`, id, sha: found.commit, private: found.repo.private, gated: found.repo.gated, downloads: 0, likes: 0,
      lastModified: '2026-01-01T00:00:00.000Z', siblings: [...tree.keys()].map((rfilename) => ({ rfilename })),
    });
  }

  private tree(req: IncomingMessage, res: ServerResponse, type: RepoType, id: string, revision: string): void {
    const found = this.lookup(req, res, type, id, revision);
    if (!found) return;
    const tree = found.repo.commits.get(found.commit)!;
    this.json(res, 200, [...tree].map(([path, data]) => entryOf(path, data)));
  }

  private resolve(req: IncomingMessage, res: ServerResponse, type: RepoType, id: string, revision: string, file: string): void {
    const found = this.lookup(req, res, type, id, revision);
    if (!found) return;
    let data = found.repo.commits.get(found.commit)!.get(file);
    if (!data) return this.json(res, 404, { error: 'Entry not found' }, { 'X-Error-Code': 'EntryNotFound' });
    const entry = entryOf(file, data);
    const etag = (entry.lfs as { oid: string } | undefined)?.oid ?? (entry.oid as string);
    if (this.faults.corrupt === file) {
      data = Buffer.from(data);
      data[0] = data[0]! ^ 0xff;
    }
    const headers: Record<string, string> = { 'X-Repo-Commit': found.commit, ETag: `"${entry.oid as string}"`, 'Accept-Ranges': 'bytes', 'Content-Type': 'application/octet-stream' };
    if (entry.lfs) {
      headers['X-Linked-Etag'] = `"${etag}"`;
      headers['X-Linked-Size'] = String(data.length);
    }
    const range = /^bytes=(\d+)-(\d*)$/.exec(req.headers.range ?? '');
    let start = 0;
    let end = data.length - 1;
    let status = 200;
    if (range) {
      start = Number(range[1]);
      end = range[2] ? Math.min(Number(range[2]), data.length - 1) : data.length - 1;
      status = 206;
      headers['Content-Range'] = `bytes ${start}-${end}/${data.length}`;
    }
    const body = data.subarray(start, end + 1);
    headers['Content-Length'] = String(body.length);
    res.writeHead(status, headers);
    if (req.method === 'HEAD') return void res.end();
    const cut = this.faults.cutAfter;
    if (cut && cut.path === file && body.length > cut.bytes) {
      this.faults.cutAfter = null;
      // A FIN after the partial body (not a reset, which could drop bytes the client has not read yet).
      res.write(body.subarray(0, cut.bytes), () => res.socket?.end());
      return;
    }
    res.end(body);
  }

  private async createRepo(req: IncomingMessage, res: ServerResponse): Promise<void> {
    if (!this.authorized(req)) return this.json(res, 401, { error: 'Invalid credentials in Authorization header' });
    const body = JSON.parse((await this.body(req)).toString()) as { name: string; organization: string; type?: RepoType; visibility?: string };
    const id = `${body.organization}/${body.name}`;
    const type = body.type ?? 'model';
    if (this.repos.has(`${type}/${id}`)) return this.json(res, 409, { error: 'You already created this model repo', url: `${this.url}/${id}` });
    this.addCommit(type, id, { '.gitattributes': '*.safetensors filter=lfs diff=lfs merge=lfs -text\n' }, { private: body.visibility === 'private' });
    this.json(res, 200, { url: `${this.url}/${id}`, name: id });
  }

  private async createBranch(req: IncomingMessage, res: ServerResponse, type: RepoType, id: string, branch: string): Promise<void> {
    await this.body(req);
    const found = this.lookup(req, res, type, id, 'main');
    if (!found) return;
    if (found.repo.branches.has(branch)) return this.json(res, 409, { error: `Reference already exists: refs/heads/${branch}` });
    found.repo.branches.set(branch, found.commit);
    this.json(res, 200, {});
  }

  private async preupload(req: IncomingMessage, res: ServerResponse): Promise<void> {
    if (!this.authorized(req)) return this.json(res, 401, { error: 'Invalid credentials in Authorization header' });
    const body = JSON.parse((await this.body(req)).toString()) as { files: { path: string }[] };
    this.json(res, 200, { files: body.files.map((f) => ({ path: f.path, uploadMode: LFS.test(f.path) ? 'lfs' : 'regular', shouldIgnore: false })) });
  }

  private async lfsBatch(req: IncomingMessage, res: ServerResponse): Promise<void> {
    if (!this.authorized(req)) return this.json(res, 401, { message: 'Invalid credentials' });
    const body = JSON.parse((await this.body(req)).toString()) as { objects: { oid: string; size: number }[] };
    this.json(res, 200, {
      transfer: 'basic',
      objects: body.objects.map((o) => (this.lfsObjects.has(o.oid) ? { oid: o.oid, size: o.size } : { oid: o.oid, size: o.size, actions: { upload: { href: `${this.url}/lfs-upload/${o.oid}` } } })),
    }, { 'Content-Type': 'application/vnd.git-lfs+json' });
  }

  private async lfsUpload(req: IncomingMessage, res: ServerResponse, oid: string): Promise<void> {
    const data = await this.body(req);
    if (sha256(data) !== oid) return this.json(res, 400, { error: 'sha256 mismatch' });
    this.lfsObjects.set(oid, data);
    res.writeHead(200, { ETag: `"${oid}"` });
    res.end();
  }

  private async commit(req: IncomingMessage, res: ServerResponse, type: RepoType, id: string, branch: string): Promise<void> {
    const lines = (await this.body(req)).toString().split('\n').filter(Boolean).map((line) => JSON.parse(line) as { key: string; value: Record<string, unknown> });
    if (!this.authorized(req)) return this.json(res, 401, { error: 'Invalid credentials in Authorization header' });
    const found = this.lookup(req, res, type, id, branch);
    if (!found) return;
    const files: Record<string, Buffer> = {};
    for (const { key, value } of lines) {
      if (key === 'file') files[value.path as string] = Buffer.from(value.content as string, 'base64');
      else if (key === 'lfsFile') {
        const data = this.lfsObjects.get(value.oid as string);
        if (!data) return this.json(res, 400, { error: `LFS object ${value.oid as string} was not uploaded` });
        files[value.path as string] = data;
      }
    }
    const commit = this.addCommit(type, id, files, { branch });
    this.json(res, 200, { success: true, commitOid: commit, commitUrl: `${this.url}/${id}/commit/${commit}` });
  }
}
