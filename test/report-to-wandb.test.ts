/**
 * report_to wandb online, through the real W&B JavaScript client, against a stand-in for the W&B
 * API on 127.0.0.1 (WANDB_BASE_URL): the run is created in WANDB_PROJECT with the run config,
 * and every logged entry arrives as a history row under HF Trainer's names with
 * `train/global_step`; the client's process handlers are gone once the run is open.
 */
import assert from 'node:assert/strict';
import { createServer, type IncomingMessage, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { after, before, describe, it } from 'node:test';

import { closeReporters, openReporters } from '../lib/train/report-to.js';

interface Received {
  authorization: string[];
  runs: Record<string, unknown>[];
  history: Record<string, unknown>[];
  completed: boolean;
}

const received: Received = { authorization: [], runs: [], history: [], completed: false };

function body(request: IncomingMessage): Promise<Record<string, unknown>> {
  return new Promise((resolve, reject) => {
    let text = '';
    request.setEncoding('utf8');
    request.on('data', (chunk: string) => (text += chunk));
    request.on('end', () => resolve(text ? (JSON.parse(text) as Record<string, unknown>) : {}));
    request.on('error', reject);
  });
}

/** The two endpoints the client uses: GraphQL (viewer, upsertBucket) and the run's file stream. */
function fakeWandb(): Server {
  return createServer(async (request, response) => {
    const message = await body(request);
    received.authorization.push(String(request.headers.authorization ?? ''));
    let reply: unknown = {};
    if (request.url === '/graphql') {
      const query = String(message.query);
      const variables = message.variables as Record<string, unknown>;
      if (query.includes('upsertBucket')) {
        received.runs.push(variables);
        reply = { data: { upsertBucket: { bucket: { id: 'b1', name: variables.name, displayName: 'stand-in-run', project: { id: 'p1', name: variables.project, entity: { id: 'e1', name: variables.entity } } } } } };
      } else {
        reply = { data: { viewer: { id: 'v1', entity: 'tester', flags: null, teams: { edges: [] } } } };
      }
    } else if (request.url?.endsWith('/file_stream')) {
      const files = (message.files ?? {}) as Record<string, { content: string[] }>;
      for (const line of files['wandb-history.jsonl']?.content ?? []) received.history.push(JSON.parse(line) as Record<string, unknown>);
      if (message.complete) received.completed = true;
    }
    response.writeHead(200, { 'content-type': 'application/json' });
    response.end(JSON.stringify(reply));
  });
}

describe('report_to wandb (online, stand-in W&B API on 127.0.0.1)', () => {
  const server = fakeWandb();
  const saved = { ...process.env };

  before(async () => {
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    process.env.WANDB_BASE_URL = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
    process.env.WANDB_API_KEY = 'k'.repeat(40);
    process.env.WANDB_PROJECT = 'zephyr-test';
    delete process.env.WANDB_MODE;
    delete process.env.WANDB_ENTITY;
  });

  after(() => {
    for (const name of ['WANDB_BASE_URL', 'WANDB_API_KEY', 'WANDB_PROJECT', 'WANDB_MODE', 'WANDB_ENTITY']) {
      if (saved[name] === undefined) delete process.env[name];
      else process.env[name] = saved[name];
    }
    server.close();
  });

  it('creates the run with its config and sends every entry under HF names', async () => {
    const sigintBefore = process.listenerCount('SIGINT');
    const notices: string[] = [];
    const config = { stage: 'dpo', beta: 0.01, learning_rate: 5e-7 };
    const reporters = await openReporters({ report_to: ['wandb'], logging_dir: null, run_name: 'zephyr-dpo' }, '/nonexistent', config, (line) => notices.push(line));
    assert.equal(reporters.length, 1);
    assert.equal(process.listenerCount('SIGINT'), sigintBefore, 'the client\'s SIGINT handler was removed');
    assert.match(notices.join('\n'), /report_to wandb: logging to http:\/\/127\.0\.0\.1:\d+\/tester\/zephyr-test\/runs\//);
    reporters[0].log({ loss: 0.69, 'rewards/margins': 0.01, learning_rate: 5e-7, epoch: 0.1, step: 10 });
    reporters[0].log({ eval_loss: 0.68, epoch: 0.1, step: 10 });
    await closeReporters(reporters);

    assert.equal(received.runs.length, 1);
    const run = received.runs[0];
    assert.equal(run.project, 'zephyr-test');
    assert.equal(run.entity, 'tester', 'the default entity from the viewer query');
    assert.equal(run.displayName, 'zephyr-dpo');
    assert.deepEqual(JSON.parse(String(run.config)), config);
    assert.ok(received.authorization.every((header) => header === `Basic ${Buffer.from(`api:${'k'.repeat(40)}`).toString('base64')}`));
    const rows = received.history.map(({ _runtime, _timestamp, _step, ...row }) => row);
    assert.deepEqual(rows, [
      { 'train/loss': 0.69, 'train/rewards/margins': 0.01, 'train/learning_rate': 5e-7, 'train/epoch': 0.1, 'train/global_step': 10 },
      { 'eval/loss': 0.68, 'train/epoch': 0.1, 'train/global_step': 10 },
    ]);
    assert.ok(received.completed, 'the run was finished');
  });
});
