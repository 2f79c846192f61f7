/**
 * Dataset readers: `.jsonl`, `.json` (an array or `{"data": [...]}`), `.parquet`, and Hugging
 * Face dataset folders (`data/<split>-00000-of-00003.parquet`, or `<split>*.jsonl`/`.json`).
 *
 * Every reader yields rows one at a time with the file and 0-based row index they came from, so
 * callers can name `file:row` in their errors. Nothing holds a whole split twice: JSON Lines are
 * read line by line, JSON arrays are cut into elements by a scanner and parsed one element at a
 * time, and Parquet is decoded one row group at a time (hyparquet, with hyparquet-compressors for
 * zstd, gzip, brotli and lz4 pages).
 */
import { createReadStream, existsSync, readdirSync, statSync } from 'node:fs';
import { open } from 'node:fs/promises';
import { extname, join } from 'node:path';
import { createInterface } from 'node:readline';

import { asyncBufferFromFile, parquetMetadataAsync, parquetReadObjects } from 'hyparquet';
import { compressors } from 'hyparquet-compressors';

import { ZnError } from '../errors.js';

export interface SourceRow {
  row: Record<string, unknown>;
  file: string;
  /** 0-based row number within `file`. */
  index: number;
}

export interface ReadOptions {
  /** Split of an HF dataset folder (`train_sft`, `test_prefs`, ...); ignored for a single file. */
  split?: string;
}

export const DATA_EXTENSIONS = ['.parquet', '.jsonl', '.json'] as const;
const PARQUET_MAGIC = 'PAR1';

/** Rows of a file or of one split of an HF dataset folder, streamed in file order. */
export async function* readRows(path: string, options: ReadOptions = {}): AsyncGenerator<SourceRow> {
  for (const file of datasetFiles(path, options.split)) yield* readFile(file);
}

/** The data files behind a path: the file itself, or one split's shards of a dataset folder. */
function datasetFiles(path: string, split: string | undefined): string[] {
  if (!existsSync(path)) throw new ZnError(`${path}: no such file or folder`);
  return statSync(path).isDirectory() ? splitFiles(path, split) : [path];
}

/** The split names of an HF dataset folder, sorted: `train_prefs`, `test_prefs`, ... */
export function listSplits(folder: string): string[] {
  return [...splitShards(folder).keys()].sort();
}

/**
 * How many rows readRows would yield, cheaply where the format allows: Parquet from its footer,
 * JSON Lines by counting non-blank lines (without parsing them), JSON by scanning.
 */
export async function countRows(path: string, options: ReadOptions = {}): Promise<number> {
  let total = 0;
  for (const file of datasetFiles(path, options.split)) {
    const ext = extname(file).toLowerCase();
    if (ext === '.parquet') total += Number((await openParquet(file)).metadata.num_rows);
    else if (ext === '.jsonl' || ext === '.ndjson') total += await countLines(file);
    else for await (const _ of readFile(file)) total++;
  }
  return total;
}

async function countLines(file: string): Promise<number> {
  let count = 0;
  for await (const line of createInterface({ input: createReadStream(file, { encoding: 'utf8' }), crlfDelay: Infinity })) {
    if (line.trim() !== '') count++;
  }
  return count;
}

/** The files of one split, in shard order. Split names are HF's `\w+(\.\w+)*`: no hyphen. */
function splitFiles(folder: string, split: string | undefined): string[] {
  const shards = splitShards(folder);
  const available = [...shards.keys()].sort();
  if (available.length === 0) {
    throw new ZnError(
      `${folder}: no dataset files (expected data/<split>-00000-of-0000N.parquet, or <split>*.jsonl/.json)`,
    );
  }
  if (split === undefined) {
    if (available.length === 1) return shards.get(available[0])!;
    throw new ZnError(`${folder}: name a split; available: ${available.join(', ')}`);
  }
  const files = shards.get(split);
  if (!files) throw new ZnError(`${folder}: no split '${split}'; available: ${available.join(', ')}`);
  return files;
}

/** Maps split name -> its shard files, from `data/` when the folder has one, else the folder itself. */
function splitShards(folder: string): Map<string, string[]> {
  if (!existsSync(folder) || !statSync(folder).isDirectory()) throw new ZnError(`${folder}: not a folder`);
  const dataDir = existsSync(join(folder, 'data')) ? join(folder, 'data') : folder;
  const shards = new Map<string, string[]>();
  for (const name of readdirSync(dataDir).sort()) {
    const ext = DATA_EXTENSIONS.find((e) => name.endsWith(e));
    if (!ext || name.startsWith('.')) continue;
    const split = name.slice(0, name.length - ext.length).split('-')[0];
    if (!/^\w+(\.\w+)*$/.test(split)) continue;
    const list = shards.get(split) ?? [];
    list.push(join(dataDir, name));
    shards.set(split, list);
  }
  return shards;
}

function readFile(file: string): AsyncGenerator<SourceRow> {
  switch (extname(file).toLowerCase()) {
    case '.jsonl':
    case '.ndjson':
      return readJsonl(file);
    case '.json':
      return readJsonArray(file);
    case '.parquet':
      return readParquet(file);
    default:
      throw new ZnError(`${file}: unknown dataset format '${extname(file)}' (expected .jsonl, .json or .parquet)`);
  }
}

/** The first bytes of a file, to tell a misnamed file from a broken one. */
async function head(file: string, bytes: number): Promise<Buffer> {
  const handle = await open(file, 'r');
  try {
    const buffer = Buffer.alloc(bytes);
    const { bytesRead } = await handle.read(buffer, 0, bytes, 0);
    return buffer.subarray(0, bytesRead);
  } finally {
    await handle.close();
  }
}

async function refuseParquetAsJson(file: string, what: string): Promise<void> {
  if ((await head(file, 4)).toString('latin1') === PARQUET_MAGIC) {
    throw new ZnError(`${file}: this is a Parquet file, not ${what}; rename it to .parquet`);
  }
}

function asRow(value: unknown, file: string, line: number): Record<string, unknown> {
  if (value === null || typeof value !== 'object' || Array.isArray(value)) {
    const found = value === null ? 'null' : Array.isArray(value) ? 'an array' : typeof value;
    throw new ZnError(`${file}:${line}: expected a JSON object per row, found ${found}`);
  }
  return value as Record<string, unknown>;
}

async function* readJsonl(file: string): AsyncGenerator<SourceRow> {
  await refuseParquetAsJson(file, 'JSON Lines');
  const lines = createInterface({ input: createReadStream(file, { encoding: 'utf8' }), crlfDelay: Infinity });
  let lineNumber = 0;
  let index = 0;
  for await (const line of lines) {
    lineNumber++;
    if (line.trim() === '') continue;
    let value: unknown;
    try {
      value = JSON.parse(line);
    } catch (error) {
      const hint = lineNumber === 1 && /^\s*\[/.test(line) ? ' (a JSON array? name the file .json)' : '';
      throw new ZnError(`${file}:${lineNumber}: invalid JSON: ${(error as Error).message}${hint}`);
    }
    yield { row: asRow(value, file, lineNumber), file, index: index++ };
  }
}

/**
 * A `.json` file: a top-level array of row objects, or an object whose `data` member is one.
 * A scanner finds each element's extent (tracking strings, escapes and nesting depth) and
 * JSON.parse decodes one element at a time, so the file is never held whole.
 */
async function* readJsonArray(file: string): AsyncGenerator<SourceRow> {
  await refuseParquetAsJson(file, 'JSON');
  const scanner = new JsonArrayScanner(file);
  let index = 0;
  for await (const chunk of createReadStream(file, { encoding: 'utf8', highWaterMark: 1 << 20 })) {
    for (const element of scanner.push(chunk as string)) {
      yield { row: parseElement(element, file), file, index: index++ };
    }
  }
  scanner.end();
}

function parseElement(element: { text: string; line: number }, file: string): Record<string, unknown> {
  try {
    return asRow(JSON.parse(element.text), file, element.line);
  } catch (error) {
    if (error instanceof ZnError) throw error;
    throw new ZnError(`${file}:${element.line}: invalid JSON: ${(error as Error).message}`);
  }
}

type ScanState = 'before-root' | 'in-wrapper' | 'before-data-array' | 'in-array' | 'after-array';

interface JsonElement {
  text: string;
  line: number;
}

/** Splits a streamed JSON document into the raw text of its row array's elements. */
class JsonArrayScanner {
  private state: ScanState = 'before-root';
  private line = 1;
  /** The wrapper object's text up to the `"data":` key. */
  private wrapper = '';
  /** The current element's text from earlier chunks; `collecting` while one is open. */
  private pending = '';
  private collecting = false;
  private elementLine = 1;
  private depth = 0;
  private inString = false;
  private escaped = false;

  constructor(private readonly file: string) {}

  *push(chunk: string): Generator<JsonElement> {
    let start = 0;
    for (let i = 0; i < chunk.length; i++) {
      const ch = chunk[i];
      if (ch === '\n') this.line++;
      if (this.state !== 'in-array') {
        this.outsideArray(ch);
        continue;
      }
      if (!this.collecting) {
        if (ch === ']') this.state = 'after-array';
        else if (ch !== ',' && !isSpace(ch)) {
          this.collecting = true;
          this.elementLine = this.line;
          start = i;
          if (this.stepInElement(ch)) yield this.take(chunk, start, i + 1);
        }
        continue;
      }
      if (this.depth === 0 && !this.inString && (ch === ',' || ch === ']' || isSpace(ch))) {
        // A scalar element (number, true, "text") ends at a separator: asRow rejects it by line.
        yield this.take(chunk, start, i);
        if (ch === ']') this.state = 'after-array';
        continue;
      }
      if (this.stepInElement(ch)) yield this.take(chunk, start, i + 1);
    }
    if (this.collecting) this.pending += chunk.slice(start);
  }

  end(): void {
    if (this.state !== 'after-array') {
      const where = this.state === 'before-root' ? 'it is empty' : 'it ends before the row array closes';
      throw new ZnError(`${this.file}: not a complete JSON document (${where})`);
    }
  }

  private fail(message: string): never {
    throw new ZnError(`${this.file}:${this.line}: ${message}`);
  }

  /** Tracks strings and nesting inside an element; true when a container element closes. */
  private stepInElement(ch: string): boolean {
    if (this.inString) {
      if (this.escaped) this.escaped = false;
      else if (ch === '\\') this.escaped = true;
      else if (ch === '"') this.inString = false;
      return false;
    }
    if (ch === '"') this.inString = true;
    else if (ch === '{' || ch === '[') this.depth++;
    else if (ch === '}' || ch === ']') {
      this.depth--;
      if (this.depth < 0) this.fail('unbalanced brackets');
      return this.depth === 0;
    }
    return false;
  }

  private take(chunk: string, start: number, end: number): JsonElement {
    const element = { text: this.pending + chunk.slice(start, end), line: this.elementLine };
    this.pending = '';
    this.collecting = false;
    return element;
  }

  /**
   * Before the row array: a top-level `[`, or `{` followed by members up to `"data": [`.
   * Members before `data` may only be scalars (the scanner does not skip nested values).
   */
  private outsideArray(ch: string): void {
    switch (this.state) {
      case 'before-root':
        if (isSpace(ch) || ch === '\ufeff') return;
        if (ch === '[') this.state = 'in-array';
        else if (ch === '{') this.state = 'in-wrapper';
        else this.fail(`expected a JSON array of rows or {"data": [...]}, found '${ch}'`);
        return;
      case 'before-data-array':
        if (isSpace(ch)) return;
        if (ch === '[') this.state = 'in-array';
        else this.fail(`"data" must be an array of rows, found '${ch}'`);
        return;
      case 'in-wrapper':
        this.wrapper += ch;
        if (this.inString) {
          this.stepInElement(ch);
          return;
        }
        if (ch === '"') this.inString = true;
        else if (ch === ':' && /"data"\s*:$/.test(this.wrapper)) this.state = 'before-data-array';
        else if (ch === '}') this.fail('the top-level object has no "data" array of rows (JSON Lines? name the file .jsonl)');
        else if (ch === '{' || ch === '[') {
          this.fail('expected a JSON array of rows or an object with a "data" array (before any nested member)');
        }
        return;
      default:
        return;
    }
  }
}

function isSpace(ch: string): boolean {
  return ch === ' ' || ch === '\n' || ch === '\r' || ch === '\t';
}

/**
 * A Parquet file, one row group at a time. INT64 values become numbers (an error if one is
 * beyond 2^53), typed arrays become plain arrays, so rows are plain JSON-like values.
 */
async function* readParquet(file: string): AsyncGenerator<SourceRow> {
  const { buffer, metadata } = await openParquet(file);
  let rowStart = 0;
  for (const group of metadata.row_groups) {
    const rowEnd = rowStart + Number(group.num_rows);
    let rows: Record<string, unknown>[];
    try {
      rows = await parquetReadObjects({ file: buffer, metadata, rowStart, rowEnd, compressors });
    } catch (error) {
      throw new ZnError(`${file}: rows ${rowStart}-${rowEnd - 1}: cannot decode: ${(error as Error).message}`);
    }
    for (let k = 0; k < rows.length; k++) {
      const index = rowStart + k;
      yield { row: plainRow(rows[k], file, index), file, index };
      rows[k] = undefined as never; // let the row go as soon as the consumer is done with it
    }
    rowStart = rowEnd;
  }
}

async function openParquet(file: string) {
  const magic = await head(file, 4);
  if (magic.toString('latin1') !== PARQUET_MAGIC) {
    const looksJson = /^\s*[[{]/.test(magic.toString('utf8'));
    throw new ZnError(
      `${file}: not a Parquet file (no PAR1 magic)${looksJson ? '; it looks like JSON: name it .json or .jsonl' : ''}`,
    );
  }
  const buffer = await asyncBufferFromFile(file);
  try {
    return { buffer, metadata: await parquetMetadataAsync(buffer) };
  } catch (error) {
    throw new ZnError(`${file}: unreadable Parquet footer: ${(error as Error).message}`);
  }
}

function plainRow(row: Record<string, unknown>, file: string, index: number): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const [key, value] of Object.entries(row)) out[key] = plainValue(value, () => `${file}: row ${index}: field '${key}'`);
  return out;
}

function plainValue(value: unknown, where: () => string): unknown {
  if (typeof value === 'bigint') {
    if (value > BigInt(Number.MAX_SAFE_INTEGER) || value < BigInt(Number.MIN_SAFE_INTEGER)) {
      throw new ZnError(`${where()}: integer ${value} does not fit a JavaScript number exactly`);
    }
    return Number(value);
  }
  if (value === null || typeof value !== 'object' || value instanceof Date) return value;
  if (ArrayBuffer.isView(value) && !(value instanceof Uint8Array)) {
    return Array.from(value as unknown as ArrayLike<number | bigint>, (v) => plainValue(v, where));
  }
  if (value instanceof Uint8Array) return value;
  if (Array.isArray(value)) return value.map((v) => plainValue(v, where));
  const out: Record<string, unknown> = {};
  for (const [key, inner] of Object.entries(value)) out[key] = plainValue(inner, where);
  return out;
}
