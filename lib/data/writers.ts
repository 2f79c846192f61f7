/**
 * Dataset writers. `writeRows` writes `.jsonl` or `.parquet` (by extension) atomically: into a
 * temporary file in the same folder, fsync, then rename over the target, so a crash never leaves
 * a half-written dataset under the real name. `JsonlAppender` is the opposite trade for
 * resumable jobs: each row is appended and handed to the OS as soon as it is done, and a torn
 * last line from a crash is cut off when the file is opened again.
 *
 * Parquet columns get pyarrow's layout (nullable fields, 3-level `LIST` groups with
 * `list`/`element`, structs as groups), so `datasets`/pyarrow read them as `list<struct<...>>`.
 * Column types are inferred from the rows (strings, booleans, numbers as float64, arrays as
 * lists, objects as structs); pass `columns` to fix a type (`int64`, `int32`, ...).
 */
import { randomBytes } from 'node:crypto';
import { type FileHandle, open, rename, rm } from 'node:fs/promises';
import { basename, dirname, extname, join } from 'node:path';

import { ByteWriter, parquetWriteRows } from 'hyparquet-writer';

import { ZnError } from '../errors.js';
import { fsyncDir } from '../io/atomic.js';

/** hyparquet-writer's schema element type (it pins its own hyparquet). */
type SchemaElement = NonNullable<Parameters<typeof parquetWriteRows>[0]['schema']>[number];

/** A Parquet column type: a scalar name, `{list: T}` or `{struct: {field: T}}`. */
export type ColumnType =
  | ScalarType
  | { list: ColumnType }
  | { struct: Record<string, ColumnType> };

export interface WriteOptions {
  /** Types for some or all columns (Parquet only); others are inferred from the first rows. */
  columns?: Record<string, ColumnType>;
  /** Rows per Parquet row group (default 1000): the writer holds one group in memory. */
  rowGroupSize?: number;
}

/** Writes rows to `.jsonl` or `.parquet`, atomically. Resolves to the number of rows written. */
export async function writeRows(
  path: string,
  rows: Iterable<object> | AsyncIterable<object>,
  options: WriteOptions = {},
): Promise<{ rows: number }> {
  const ext = extname(path).toLowerCase();
  if (ext !== '.jsonl' && ext !== '.parquet') {
    throw new ZnError(`${path}: cannot write '${ext || 'no extension'}' (write .jsonl or .parquet)`);
  }
  return atomically(path, (handle) => (ext === '.jsonl' ? writeJsonl(handle, rows) : writeParquet(handle, rows, options)));
}

/**
 * Runs `write` on a temporary file next to `path`, fsyncs it and renames it over `path`: the
 * streaming counterpart of io/atomic.ts's writeFileAtomic, for outputs too big to build in memory.
 */
async function atomically<T>(path: string, write: (handle: FileHandle) => Promise<T>): Promise<T> {
  const temp = join(dirname(path), `.${basename(path)}.${process.pid}.${randomBytes(4).toString('hex')}.tmp`);
  const handle = await open(temp, 'w');
  try {
    const result = await write(handle);
    await handle.sync();
    await handle.close();
    await rename(temp, path);
    fsyncDir(dirname(path));
    return result;
  } catch (error) {
    await handle.close().catch(() => undefined);
    await rm(temp, { force: true });
    throw error;
  }
}

async function writeJsonl(handle: FileHandle, rows: Iterable<object> | AsyncIterable<object>): Promise<{ rows: number }> {
  const flushBytes = 1 << 20;
  let buffer: string[] = [];
  let bufferedChars = 0;
  let count = 0;
  for await (const row of rows) {
    const line = `${JSON.stringify(row)}\n`;
    buffer.push(line);
    bufferedChars += line.length;
    count++;
    if (bufferedChars >= flushBytes) {
      await writeAll(handle, buffer.join(''));
      buffer = [];
      bufferedChars = 0;
    }
  }
  if (buffer.length) await writeAll(handle, buffer.join(''));
  return { rows: count };
}

/** Writes all of `data` (one write call unless the OS takes only part of it). */
async function writeAll(handle: FileHandle, data: string | Uint8Array): Promise<void> {
  const bytes = typeof data === 'string' ? Buffer.from(data, 'utf8') : data;
  for (let offset = 0; offset < bytes.length; ) {
    offset += (await handle.write(bytes, offset, bytes.length - offset)).bytesWritten;
  }
}

/**
 * A hyparquet-writer sink that hands each finished row group to the file, so the writer holds
 * one row group's bytes, not the whole file.
 */
class FileSink extends ByteWriter {
  constructor(private readonly handle: FileHandle) {
    super(1 << 16);
  }

  async flush(): Promise<void> {
    if (this.index === 0) return;
    const bytes = new Uint8Array(this.buffer, 0, this.index).slice();
    this.index = 0;
    await writeAll(this.handle, bytes);
  }

  override finish(): Promise<void> {
    return this.flush();
  }
}

async function writeParquet(
  handle: FileHandle,
  rows: Iterable<object> | AsyncIterable<object>,
  options: WriteOptions,
): Promise<{ rows: number }> {
  const groupSize = options.rowGroupSize ?? 1000;
  const iterator = toAsyncIterator(rows);
  // The schema comes from the first row group's rows (and the caller's explicit types).
  const first: Record<string, unknown>[] = [];
  while (first.length < groupSize) {
    const next = await iterator.next();
    if (next.done) break;
    first.push(asRecord(next.value, first.length));
  }
  const schema = inferSchema(first, options.columns ?? {});
  let count = 0;
  async function* checked(): AsyncGenerator<Record<string, unknown>> {
    for (const row of first) yield checkRow(row, schema, count++);
    for (let next = await iterator.next(); !next.done; next = await iterator.next()) {
      yield checkRow(asRecord(next.value, count), schema, count++);
    }
  }
  await parquetWriteRows({
    writer: new FileSink(handle),
    rows: checked(),
    columns: [...schema.entries()].map(([name]) => ({ name })),
    schema: parquetSchema(schema),
    rowGroupSize: groupSize,
    statistics: false,
  });
  return { rows: count };
}

function toAsyncIterator<T>(rows: Iterable<T> | AsyncIterable<T>): AsyncIterator<T> | Iterator<T> {
  return Symbol.asyncIterator in rows
    ? (rows as AsyncIterable<T>)[Symbol.asyncIterator]()
    : (rows as Iterable<T>)[Symbol.iterator]();
}

function asRecord(value: unknown, index: number): Record<string, unknown> {
  if (value === null || typeof value !== 'object' || Array.isArray(value)) {
    throw new ZnError(`row ${index}: expected an object, found ${Array.isArray(value) ? 'an array' : typeof value}`);
  }
  return value as Record<string, unknown>;
}

type ScalarType = 'string' | 'double' | 'int64' | 'int32' | 'boolean';

/** An observed type; null where only nulls (or empty lists) were seen so far. */
type Inferred = null | ScalarType | { list: Inferred } | { struct: Record<string, Inferred> };

function inferSchema(sample: Record<string, unknown>[], declared: Record<string, ColumnType>): Map<string, ColumnType> {
  const inferred = new Map<string, Inferred>();
  for (const name of Object.keys(declared)) inferred.set(name, declared[name]);
  sample.forEach((row, index) => {
    for (const [name, value] of Object.entries(row)) {
      if (name in declared) continue;
      inferred.set(name, merge(inferred.get(name) ?? null, typeOf(value, `row ${index}: field '${name}'`), `field '${name}'`));
    }
  });
  const schema = new Map<string, ColumnType>();
  for (const [name, type] of inferred) schema.set(name, settle(type));
  if (schema.size === 0) throw new ZnError('cannot write a Parquet file with no columns (no rows, and no column types given)');
  return schema;
}

function typeOf(value: unknown, where: string): Inferred {
  if (value === null || value === undefined) return null;
  switch (typeof value) {
    case 'string':
      return 'string';
    case 'boolean':
      return 'boolean';
    case 'number':
      return 'double';
    case 'bigint':
      return 'int64';
    case 'object': {
      if (Array.isArray(value)) {
        let element: Inferred = null;
        value.forEach((v, i) => {
          element = merge(element, typeOf(v, `${where}[${i}]`), where);
        });
        return { list: element };
      }
      const struct: Record<string, Inferred> = {};
      for (const [key, inner] of Object.entries(value)) struct[key] = typeOf(inner, `${where}.${key}`);
      return { struct };
    }
    default:
      throw new ZnError(`${where}: cannot store a ${typeof value} in Parquet`);
  }
}

/** Unifies two observed types; struct fields are unioned, a null side takes the other. */
function merge(a: Inferred, b: Inferred, where: string): Inferred {
  if (a === null) return b;
  if (b === null) return a;
  if (typeof a === 'string' || typeof b === 'string') {
    if (a === b) return a;
    throw new ZnError(`${where}: mixed types ${describe(a)} and ${describe(b)}; write .jsonl, or declare the column type`);
  }
  if ('list' in a && 'list' in b) return { list: merge(a.list, b.list, `${where}[]`) };
  if ('struct' in a && 'struct' in b) {
    const struct: Record<string, Inferred> = { ...a.struct };
    for (const [key, type] of Object.entries(b.struct)) {
      struct[key] = merge(struct[key] ?? null, type, `${where}.${key}`);
    }
    return { struct };
  }
  throw new ZnError(`${where}: mixed types ${describe(a)} and ${describe(b)}; write .jsonl, or declare the column type`);
}

/** Types never seen with a value are stored as nullable strings (pyarrow would say `null`). */
function settle(type: Inferred): ColumnType {
  if (type === null) return 'string';
  if (typeof type === 'string') return type;
  if ('list' in type) return { list: settle(type.list) };
  const struct: Record<string, ColumnType> = {};
  for (const [key, inner] of Object.entries(type.struct)) struct[key] = settle(inner);
  return { struct };
}

function describe(type: Inferred): string {
  if (type === null) return 'null';
  if (typeof type === 'string') return type;
  if ('list' in type) return `list<${describe(type.list)}>`;
  return `struct<${Object.entries(type.struct).map(([k, t]) => `${k}: ${describe(t)}`).join(', ')}>`;
}

/**
 * Checks a row against the schema (every value fits, no unknown fields) and converts int64
 * numbers to bigint, as hyparquet-writer expects. Returns a new row; the input is untouched.
 */
function checkRow(row: Record<string, unknown>, schema: Map<string, ColumnType>, index: number): Record<string, unknown> {
  for (const name of Object.keys(row)) {
    if (!schema.has(name)) {
      throw new ZnError(`row ${index}: field '${name}' is not in the Parquet schema (fixed by the first rows); declare it in columns`);
    }
  }
  const out: Record<string, unknown> = {};
  for (const [name, type] of schema) out[name] = checkValue(row[name], type, () => `row ${index}: field '${name}'`);
  return out;
}

function checkValue(value: unknown, type: ColumnType, where: () => string): unknown {
  if (value === null || value === undefined) return null;
  const mismatch = (): never => {
    throw new ZnError(`${where()}: expected ${describe(type)}, found ${JSON.stringify(value)?.slice(0, 60)}`);
  };
  if (typeof type === 'string') {
    switch (type) {
      case 'string':
        return typeof value === 'string' ? value : mismatch();
      case 'boolean':
        return typeof value === 'boolean' ? value : mismatch();
      case 'double':
        return typeof value === 'number' ? value : mismatch();
      case 'int32':
        return Number.isInteger(value) && Math.abs(value as number) <= 2 ** 31 ? value : mismatch();
      case 'int64':
        if (typeof value === 'bigint') return value;
        return Number.isSafeInteger(value) ? BigInt(value as number) : mismatch();
    }
  }
  if ('list' in type) {
    if (!Array.isArray(value)) return mismatch();
    return value.map((v, i) => checkValue(v, type.list, () => `${where()}[${i}]`));
  }
  if (typeof value !== 'object' || Array.isArray(value)) return mismatch();
  const record = value as Record<string, unknown>;
  for (const key of Object.keys(record)) {
    if (!(key in type.struct)) throw new ZnError(`${where()}: field '${key}' is not in the Parquet schema`);
  }
  const out: Record<string, unknown> = {};
  for (const [key, inner] of Object.entries(type.struct)) out[key] = checkValue(record[key], inner, () => `${where()}.${key}`);
  return out;
}

/** pyarrow's Parquet layout: every field nullable, lists as 3-level `LIST` groups. */
function parquetSchema(schema: Map<string, ColumnType>): SchemaElement[] {
  const elements: SchemaElement[] = [{ name: 'schema', num_children: schema.size }];
  for (const [name, type] of schema) elements.push(...columnElements(name, type));
  return elements;
}

function columnElements(name: string, type: ColumnType): SchemaElement[] {
  if (typeof type === 'string') {
    const base = { name, repetition_type: 'OPTIONAL' as const };
    switch (type) {
      case 'string':
        return [{ ...base, type: 'BYTE_ARRAY', converted_type: 'UTF8' }];
      case 'boolean':
        return [{ ...base, type: 'BOOLEAN' }];
      case 'double':
        return [{ ...base, type: 'DOUBLE' }];
      case 'int32':
        return [{ ...base, type: 'INT32' }];
      case 'int64':
        return [{ ...base, type: 'INT64' }];
    }
  }
  if ('list' in type) {
    return [
      { name, repetition_type: 'OPTIONAL', converted_type: 'LIST', num_children: 1 },
      { name: 'list', repetition_type: 'REPEATED', num_children: 1 },
      ...columnElements('element', type.list),
    ];
  }
  const fields = Object.entries(type.struct);
  return [
    { name, repetition_type: 'OPTIONAL', num_children: fields.length },
    ...fields.flatMap(([key, inner]) => columnElements(key, inner)),
  ];
}

/**
 * Appends JSON lines to a file, one `write` per row as soon as the row is done, so a killed
 * process loses only rows not yet appended. Opening cuts a torn last line (a crash mid-write)
 * back to the last newline. Appends are serialised: call `append` from concurrent tasks freely.
 */
export class JsonlAppender {
  private queue: Promise<void> = Promise.resolve();

  private constructor(
    private readonly handle: FileHandle,
    readonly path: string,
  ) {}

  static async open(path: string): Promise<JsonlAppender> {
    await cutTornLine(path);
    return new JsonlAppender(await open(path, 'a'), path);
  }

  append(row: object): Promise<void> {
    const line = `${JSON.stringify(row)}\n`;
    const done = this.queue.then(() => writeAll(this.handle, line));
    this.queue = done.catch(() => undefined);
    return done;
  }

  /** Waits for pending appends, fsyncs and closes. */
  async close(): Promise<void> {
    await this.queue;
    await this.handle.sync();
    await this.handle.close();
  }
}

/** Truncates `path` after its last newline, if it has bytes after it. A missing file is fine. */
export async function cutTornLine(path: string): Promise<void> {
  const handle = await open(path, 'r+').catch((error: NodeJS.ErrnoException) => {
    if (error.code === 'ENOENT') return undefined;
    throw error;
  });
  if (!handle) return;
  try {
    const { size } = await handle.stat();
    const window = Buffer.alloc(64 * 1024);
    let end = size;
    while (end > 0) {
      const start = Math.max(0, end - window.length);
      const { bytesRead } = await handle.read(window, 0, end - start, start);
      const newline = window.subarray(0, bytesRead).lastIndexOf(0x0a);
      if (newline >= 0) {
        if (start + newline + 1 < size) await handle.truncate(start + newline + 1);
        return;
      }
      end = start;
    }
    if (size > 0) await handle.truncate(0);
  } finally {
    await handle.close();
  }
}
