import assert from 'node:assert/strict';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';

import { countRows, listSplits, readRows, type SourceRow } from '../lib/data/readers.js';
import { JsonlAppender, writeRows } from '../lib/data/writers.js';
import { ZnError } from '../lib/errors.js';
import { referencePython, runPython } from './support/python.js';

async function collect(path: string, split?: string): Promise<SourceRow[]> {
  const rows: SourceRow[] = [];
  for await (const row of readRows(path, { split })) rows.push(row);
  return rows;
}

async function rejects(promise: Promise<unknown>, pattern: RegExp): Promise<void> {
  await assert.rejects(promise, (error: unknown) => {
    assert.ok(error instanceof ZnError, `expected a ZnError, got ${String(error)}`);
    assert.match(error.message, pattern);
    return true;
  });
}

/** UltraFeedback-binarized rows with the Hub's column names and nesting. */
function preferenceRows(n: number, tag: string) {
  return Array.from({ length: n }, (_, i) => {
    const prompt = `${tag} question ${i}: "quotes", [brackets], {braces} \\ and é 🤖`;
    const chosen = [
      { content: prompt, role: 'user' },
      { content: `good answer ${i}`, role: 'assistant' },
    ];
    const rejected = [
      { content: prompt, role: 'user' },
      { content: `weak answer ${i}`, role: 'assistant' },
    ];
    return { prompt, prompt_id: `${tag}-${i}`, chosen, rejected, messages: chosen, score_chosen: 8 + i / 4, score_rejected: 5.5 };
  });
}

const pyarrow = referencePython(['pyarrow']);

describe('readers', () => {
  let dir: string;
  before(() => {
    dir = mkdtempSync(join(tmpdir(), 'zn-readers-'));
  });
  after(() => rmSync(dir, { recursive: true, force: true }));

  it('jsonl: rows in order with 0-based indices, blank lines skipped, CRLF accepted', async () => {
    const file = join(dir, 'a.jsonl');
    writeFileSync(file, '{"a":1}\r\n\n{"a":2,"m":[{"role":"user","content":"x"}]}\n   \n{"a":3}');
    const rows = await collect(file);
    assert.deepEqual(
      rows.map((r) => [r.row, r.index, r.file]),
      [
        [{ a: 1 }, 0, file],
        [{ a: 2, m: [{ role: 'user', content: 'x' }] }, 1, file],
        [{ a: 3 }, 2, file],
      ],
    );
  });

  it('jsonl: a bad line is an error naming file:line, after the rows before it were streamed', async () => {
    const file = join(dir, 'bad.jsonl');
    writeFileSync(file, '{"a":1}\n{"a":2}\n\n{"a": oops}\n');
    const seen: unknown[] = [];
    await rejects(
      (async () => {
        for await (const { row } of readRows(file)) seen.push(row);
      })(),
      new RegExp(`^${file.replace(/[.]/g, '\\.')}:4: invalid JSON`),
    );
    assert.deepEqual(seen, [{ a: 1 }, { a: 2 }]);
    writeFileSync(file, '{"a":1}\n[1,2]\n');
    await rejects(collect(file), /bad\.jsonl:2: expected a JSON object per row, found an array/);
  });

  it('json: an array or {"data": [...]}, streamed element by element across chunk boundaries', async () => {
    // Over 1 MiB so the scanner sees several read chunks, with strings full of brackets/escapes.
    const rows = Array.from({ length: 3000 }, (_, i) => ({
      i,
      text: `row ${i} ]}[{ "\\" , \n tab\t é 🤖 ${'x'.repeat(i % 700)}`,
      nested: { list: [i, [i + 1], { deep: `}${i}` }], empty: [] },
    }));
    const arrayFile = join(dir, 'rows.json');
    writeFileSync(arrayFile, `\ufeff${JSON.stringify(rows, null, 1)}`);
    const wrappedFile = join(dir, 'wrapped.json');
    writeFileSync(wrappedFile, JSON.stringify({ version: '1.0', count: 3000, data: rows }));
    assert.ok(readFileSync(arrayFile).length > 1 << 20);
    for (const file of [arrayFile, wrappedFile]) {
      const read = await collect(file);
      assert.equal(read.length, rows.length);
      assert.deepEqual(
        read.map((r) => r.row),
        rows,
      );
      assert.deepEqual(
        read.map((r) => r.index),
        rows.map((_, i) => i),
      );
    }
    const empty = join(dir, 'empty.json');
    writeFileSync(empty, '{"data": []}');
    assert.deepEqual(await collect(empty), []);
  });

  it('json: malformed and misnamed files get clear errors', async () => {
    const cases: [string, RegExp][] = [
      ['[{"a":1},\n{"a":2},\n{"a": nope}]', /:3: invalid JSON/],
      ['[{"a":1}, 7]', /:1: expected a JSON object per row, found number/],
      ['{"a":1}\n{"a":2}\n', /:1: the top-level object has no "data" array of rows \(JSON Lines\? name the file \.jsonl\)/],
      ['{"rows": [{"a":1}]}', /an object with a "data" array/],
      ['[{"a":1}', /not a complete JSON document \(it ends before the row array closes\)/],
      ['', /not a complete JSON document \(it is empty\)/],
      ['"text"', /expected a JSON array of rows/],
    ];
    for (const [content, pattern] of cases) {
      const file = join(dir, 'case.json');
      writeFileSync(file, content);
      await rejects(collect(file), pattern);
    }
  });

  it('parquet: our writer round-trips nested list<struct>, lists, nulls and unicode', async () => {
    const rows = [
      ...preferenceRows(5, 'rt'),
      { prompt: null, prompt_id: 'null-row', chosen: null, rejected: [], messages: [], score_chosen: null, score_rejected: 1 },
    ];
    const file = join(dir, 'roundtrip.parquet');
    assert.deepEqual(await writeRows(file, rows, { rowGroupSize: 2 }), { rows: 6 });
    const read = await collect(file);
    assert.deepEqual(
      read.map((r) => r.row),
      rows,
    );
    assert.deepEqual(
      read.map((r) => r.index),
      [0, 1, 2, 3, 4, 5],
    );
  });

  it('parquet: files written by pyarrow (snappy, zstd, gzip; several row groups) read as pyarrow reads them', { skip: pyarrow.skipReason ?? false }, async () => {
    const script = join(dir, 'write_parquet.py');
    writeFileSync(
      script,
      `import json, sys
import pyarrow as pa, pyarrow.parquet as pq
rows = json.load(open(sys.argv[1]))
for i, row in enumerate(rows):
    row["input_ids"] = list(range(i, i + 3))
    row["n_turns"] = i
table = pa.Table.from_pylist(rows)
table = table.cast(table.schema.set(table.schema.get_field_index("n_turns"), pa.field("n_turns", pa.int64())))
for codec in ["snappy", "zstd", "gzip"]:
    pq.write_table(table, f"{sys.argv[2]}/{codec}.parquet", compression=codec, row_group_size=3)
json.dump(table.to_pylist(), open(f"{sys.argv[2]}/expected.json", "w"))
`,
    );
    const source = join(dir, 'source.json');
    writeFileSync(source, JSON.stringify(preferenceRows(8, 'py')));
    const out = join(dir, 'pyarrow');
    mkdirSync(out, { recursive: true });
    runPython(pyarrow.python!, script, [source, out]);
    const expected = JSON.parse(readFileSync(join(out, 'expected.json'), 'utf8'));
    for (const codec of ['snappy', 'zstd', 'gzip']) {
      const read = await collect(join(out, `${codec}.parquet`));
      assert.deepEqual(
        read.map((r) => r.row),
        expected,
        codec,
      );
    }
  });

  it('parquet: pyarrow reads our files with the Hub schema (list<struct<content, role>>)', { skip: pyarrow.skipReason ?? false }, async () => {
    const rows = preferenceRows(7, 'ours');
    const file = join(dir, 'ours.parquet');
    await writeRows(file, rows, { rowGroupSize: 3, columns: { n: 'int64' } });
    const script = join(dir, 'read_parquet.py');
    writeFileSync(
      script,
      `import json, sys
import pyarrow.parquet as pq
f = pq.ParquetFile(sys.argv[1])
t = f.read()
print(json.dumps({"schema": str(t.schema.field("chosen").type), "score": str(t.schema.field("score_chosen").type),
                  "n": str(t.schema.field("n").type), "groups": f.num_row_groups, "rows": t.to_pylist()}))
`,
    );
    const result = JSON.parse(runPython(pyarrow.python!, script, [file]));
    assert.equal(result.schema, 'list<element: struct<content: string, role: string>>');
    assert.equal(result.score, 'double');
    assert.equal(result.n, 'int64');
    assert.equal(result.groups, 3);
    assert.deepEqual(
      result.rows,
      rows.map((row) => ({ ...row, n: null })),
    );
  });

  it('parquet: a text file named .parquet, and a Parquet file named .jsonl/.json, are refused clearly', async () => {
    const fake = join(dir, 'fake.parquet');
    writeFileSync(fake, '{"a": 1}\n');
    await rejects(collect(fake), /fake\.parquet: not a Parquet file \(no PAR1 magic\); it looks like JSON/);
    const real = join(dir, 'real.parquet');
    await writeRows(real, [{ a: 1 }]);
    for (const ext of ['jsonl', 'json']) {
      const misnamed = join(dir, `misnamed.${ext}`);
      writeFileSync(misnamed, readFileSync(real));
      await rejects(collect(misnamed), /this is a Parquet file, not JSON/);
    }
    const truncated = join(dir, 'truncated.parquet');
    writeFileSync(truncated, readFileSync(real).subarray(0, 40));
    await rejects(collect(truncated), /truncated\.parquet: unreadable Parquet footer/);
    await rejects(collect(join(dir, 'rows.csv')), /no such file/);
    writeFileSync(join(dir, 'rows.csv'), 'a,b\n');
    await rejects(collect(join(dir, 'rows.csv')), /unknown dataset format '\.csv'/);
  });

  it('an HF dataset folder laid out like ultrafeedback_binarized loads by split', async () => {
    const folder = join(dir, 'ultrafeedback_binarized');
    mkdirSync(join(folder, 'data'), { recursive: true });
    writeFileSync(join(folder, 'README.md'), '---\ndataset_info: ...\n---\n');
    const splits = { train_prefs: 5, test_prefs: 3, train_gen: 2, test_gen: 1 };
    for (const [split, n] of Object.entries(splits)) {
      await writeRows(join(folder, 'data', `${split}-00000-of-00001.parquet`), preferenceRows(n, split));
    }
    // A split in two shards: read in shard order.
    await writeRows(join(folder, 'data', 'train_sft-00001-of-00002.parquet'), preferenceRows(2, 'second'));
    await writeRows(join(folder, 'data', 'train_sft-00000-of-00002.parquet'), preferenceRows(3, 'first'));

    assert.deepEqual(listSplits(folder), ['test_gen', 'test_prefs', 'train_gen', 'train_prefs', 'train_sft']);
    const train = await collect(folder, 'train_prefs');
    assert.deepEqual(
      train.map((r) => r.row),
      preferenceRows(5, 'train_prefs'),
    );
    assert.match(train[0].file, /data\/train_prefs-00000-of-00001\.parquet$/);
    const sft = await collect(folder, 'train_sft');
    assert.deepEqual(
      sft.map((r) => r.row.prompt_id),
      ['first-0', 'first-1', 'first-2', 'second-0', 'second-1'],
    );
    assert.deepEqual(
      sft.map((r) => r.index),
      [0, 1, 2, 0, 1],
    );
    assert.equal(await countRows(folder, { split: 'train_sft' }), 5);
    assert.equal(await countRows(folder, { split: 'test_prefs' }), 3);
    await rejects(collect(folder, 'validation'), /no split 'validation'; available: test_gen, test_prefs, train_gen, train_prefs, train_sft/);
    await rejects(collect(folder), /name a split; available: test_gen, test_prefs/);
  });

  it('an HF folder of jsonl/json shards, without data/, and a single-split folder', async () => {
    const folder = join(dir, 'jsonl-folder');
    mkdirSync(folder);
    await writeRows(join(folder, 'train-00000-of-00002.jsonl'), [{ x: 1 }, { x: 2 }]);
    writeFileSync(join(folder, 'train-00001-of-00002.json'), '[{"x": 3}]');
    writeFileSync(join(folder, 'test.jsonl'), '{"x": 9}\n');
    assert.deepEqual(listSplits(folder), ['test', 'train']);
    assert.deepEqual(
      (await collect(folder, 'train')).map((r) => r.row.x),
      [1, 2, 3],
    );
    assert.equal(await countRows(folder, { split: 'train' }), 3);
    const single = join(dir, 'single');
    mkdirSync(join(single, 'data'), { recursive: true });
    await writeRows(join(single, 'data', 'train-00000-of-00001.parquet'), [{ x: 5 }]);
    assert.deepEqual(
      (await collect(single)).map((r) => r.row),
      [{ x: 5 }],
    );
    const none = join(dir, 'no-data');
    mkdirSync(none);
    await rejects(collect(none), /no dataset files/);
  });
});

describe('writers', () => {
  let dir: string;
  before(() => {
    dir = mkdtempSync(join(tmpdir(), 'zn-writers-'));
  });
  after(() => rmSync(dir, { recursive: true, force: true }));

  it('writes atomically: a failing row source leaves the old file and no temporary file', async () => {
    for (const ext of ['jsonl', 'parquet']) {
      const file = join(dir, `out.${ext}`);
      await writeRows(file, [{ a: 'old' }]);
      const before = readFileSync(file);
      async function* failing() {
        for (let i = 0; i < 2500; i++) yield { a: `new ${i}` };
        throw new Error('source broke');
      }
      await assert.rejects(writeRows(file, failing(), { rowGroupSize: 1000 }), /source broke/);
      assert.deepEqual(readFileSync(file), before, ext);
      assert.deepEqual(
        readdirSync(dir).filter((name) => name.endsWith('.tmp')),
        [],
      );
    }
  });

  it('jsonl output is one JSON object per line, streamed from an async source', async () => {
    const file = join(dir, 'stream.jsonl');
    async function* rows() {
      for (let i = 0; i < 3; i++) yield { i, s: `é${i}` };
    }
    assert.deepEqual(await writeRows(file, rows()), { rows: 3 });
    assert.equal(readFileSync(file, 'utf8'), '{"i":0,"s":"é0"}\n{"i":1,"s":"é1"}\n{"i":2,"s":"é2"}\n');
  });

  it('parquet: values that do not fit the schema are errors naming row and field', async () => {
    const file = join(dir, 'bad.parquet');
    await rejects(writeRows(file, [{ a: 1 }, { a: 'two' }]), /field 'a': mixed types double and string/);
    await rejects(writeRows(file, [{ a: 1 }, { a: 2, b: 3 }], { rowGroupSize: 1 }), /row 1: field 'b' is not in the Parquet schema/);
    await rejects(writeRows(file, [{ a: 1 }, { a: 'x' }], { rowGroupSize: 1 }), /row 1: field 'a': expected double, found "x"/);
    await rejects(
      writeRows(file, [{ m: [{ role: 'user' }] }, { m: [{ role: 7 }] }], { rowGroupSize: 1 }),
      /row 1: field 'm'\[0\]\.role: expected string, found 7/,
    );
    await rejects(writeRows(file, [{ n: 1.5 }], { columns: { n: 'int64' } }), /field 'n': expected int64, found 1.5/);
    await rejects(writeRows(join(dir, 'out.csv'), [{ a: 1 }]), /cannot write '\.csv'/);
    assert.equal(existsSync(file), false);
  });

  it('JsonlAppender: concurrent appends all land; a torn last line is cut on reopen', async () => {
    const file = join(dir, 'append.jsonl');
    const appender = await JsonlAppender.open(file);
    await Promise.all(Array.from({ length: 50 }, (_, i) => appender.append({ i })));
    await appender.close();
    const lines = readFileSync(file, 'utf8').trim().split('\n').map((l) => JSON.parse(l).i);
    assert.deepEqual(
      [...lines].sort((a, b) => a - b),
      Array.from({ length: 50 }, (_, i) => i),
    );
    writeFileSync(file, '{"i":0}\n{"i":1}\n{"i":2, "par', { flag: 'w' });
    const reopened = await JsonlAppender.open(file);
    await reopened.append({ i: 3 });
    await reopened.close();
    assert.equal(readFileSync(file, 'utf8'), '{"i":0}\n{"i":1}\n{"i":3}\n');
  });
});
