#!/usr/bin/env node
// Dumps everything a training step of a small random Mistral produces (per-token log-probs,
// every parameter gradient, logprobs() and nextTokenLogits() outputs, the weights after an AdamW
// step and a second step's gradients) to one binary file, for the CPU addon named by
// ZN_ADDON_PATH. Two builds that must give bit-identical numerics (a memory-layout refactor of
// native/model/mistral.cpp, say) are compared with `cmp`:
//
//   ZN_ADDON_PATH=build-a/Release/zn_cpu.node node scripts/model-fingerprint.mjs /tmp/a.bin
//   ZN_ADDON_PATH=build-b/Release/zn_cpu.node node scripts/model-fingerprint.mjs /tmp/b.bin
//   cmp /tmp/a.bin /tmp/b.bin
//
// Cases: f32 and bf16, with and without gradient checkpointing, tied and untied embeddings, a
// narrow MLP. The file is a sequence of records: a length-prefixed UTF-8 label, then a
// length-prefixed payload of raw bytes (f32, or f64 for the grad norm); labels make a difference
// easy to locate: `--list` prints each record's checksum and label.
import { createRequire } from 'node:module';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { createHash } from 'node:crypto';

const addonPath = process.env.ZN_ADDON_PATH;
if (!addonPath || process.argv.length < 3) {
  console.error('usage: ZN_ADDON_PATH=.../zn_cpu.node node scripts/model-fingerprint.mjs OUT.bin [--list]');
  process.exit(2);
}
const addon = createRequire(import.meta.url)(resolve(addonPath));
const out = process.argv[2];
const list = process.argv.includes('--list');

// Sizes chosen so that the threaded paths split (N * ffn > 16K elements, several row tasks).
// The narrow one has intermediate < hidden < heads * head_dim, so buffers shared between the MLP
// and the attention are sized by the attention.
function config(tied, narrow = false) {
  return {
    vocabSize: 301,
    hiddenSize: narrow ? 48 : 64,
    intermediateSize: narrow ? 16 : 176,
    numHiddenLayers: 3,
    numAttentionHeads: narrow ? 6 : 4,
    numKeyValueHeads: narrow ? 3 : 2,
    headDim: 16,
    rmsNormEps: 1e-5,
    ropeTheta: 10000,
    slidingWindow: 24,
    tieWordEmbeddings: tied,
    padTokenId: 0,
  };
}

function xorshift(seed) {
  let state = (seed * 2654435761 + 1) >>> 0;
  return () => {
    state ^= state << 13;
    state >>>= 0;
    state ^= state >>> 17;
    state ^= state << 5;
    state >>>= 0;
    return state / 2 ** 32;
  };
}

// Documents of the given lengths laid end to end; every 7th target ignored.
function batch(lengths, vocab, seed) {
  const next = xorshift(seed);
  const n = lengths.reduce((a, b) => a + b, 0);
  const inputIds = new Int32Array(n), positionIds = new Int32Array(n), targets = new Int32Array(n);
  const cuSeqlens = new Int32Array(lengths.length + 1);
  let t = 0;
  lengths.forEach((len, doc) => {
    for (let i = 0; i < len; i++, t++) {
      inputIds[t] = Math.floor(next() * vocab);
      positionIds[t] = i;
      targets[t] = t % 7 === 3 ? -100 : Math.floor(next() * vocab);
    }
    cuSeqlens[doc + 1] = t;
  });
  return { inputIds, positionIds, targets, cuSeqlens };
}

const records = [];
function record(label, floats) {
  records.push({ label, bytes: Buffer.from(floats.buffer, floats.byteOffset, floats.byteLength) });
}

async function writeWeights(dir, cfg) {
  const shapesModel = new addon.Model({ config: cfg, maxTokens: 1 });
  const next = xorshift(7);
  const tensors = shapesModel.parameters().map(({ name, shape }) => {
    const n = shape.reduce((a, b) => a * b, 1);
    const isNorm = name.endsWith('norm.weight');
    const data = Float32Array.from({ length: n }, () => (isNorm ? 1 + 0.2 * (next() - 0.5) : 0.3 * (next() - 0.5)));
    return { name, dtype: 'F32', shape, data };
  });
  const path = join(dir, `model-${cfg.tieWordEmbeddings ? 'tied' : 'untied'}-${cfg.hiddenSize}.safetensors`);
  await addon.writeSafetensors({ path, tensors });
  return path;
}

async function runCase(file, cfg, dtype, gradientCheckpointing) {
  const shape = cfg.intermediateSize < cfg.hiddenSize ? '-narrow' : '';
  const tag = `${dtype}${gradientCheckpointing ? '-ckpt' : ''}${cfg.tieWordEmbeddings ? '-tied' : ''}${shape}`;
  const maxTokens = 140;
  const model = new addon.Model({ config: cfg, dtype, maxTokens, gradientCheckpointing, trainable: true });
  await model.loadWeights({ files: [file] });
  const names = model.parameters().map((p) => p.name);
  const grads = (step) => {
    for (const name of names) record(`${tag} step${step} grad ${name}`, model.getGradient({ name }));
  };
  const a = batch([50, 1, 61, 28], cfg.vocabSize, 11); // 140 tokens: the full plan
  const b = batch([37, 40], cfg.vocabSize, 12); // fewer tokens than planned
  const dlogp = (n, seed) => {
    const next = xorshift(seed);
    return Float32Array.from({ length: n }, () => next() - 0.5);
  };

  await model.zeroGrad({});
  const first = await model.forward(a);
  record(`${tag} step1 logp`, first.logp);
  await model.backward({ dlogp: dlogp(140, 21) });
  grads(1);
  const { gradNorm } = await model.clipAndStep({ lr: 1e-3, weightDecay: 0.01, maxGradNorm: 1 });
  record(`${tag} step1 grad_norm`, Float64Array.of(gradNorm));
  for (const name of names) record(`${tag} step1 weights ${name}`, model.getParameter({ name }));

  await model.zeroGrad({});
  const second = await model.forward(b);
  record(`${tag} step2 logp`, second.logp);
  await model.backward({ dlogp: dlogp(77, 22) });
  // Accumulate a second micro-batch into the same gradients.
  await model.forward(a);
  await model.backward({ dlogp: dlogp(140, 23) });
  grads(2);

  record(`${tag} logprobs`, (await model.logprobs(a)).logp);
  record(`${tag} next_token_logits`, (await model.nextTokenLogits(b)).logits);

  const frozen = new addon.Model({ config: cfg, dtype, maxTokens, trainable: false });
  await frozen.loadWeights({ files: [file] });
  record(`${tag} frozen logprobs`, (await frozen.logprobs(a)).logp);
}

const work = mkdtempSync(join(tmpdir(), 'zn-fingerprint-'));
try {
  for (const cfg of [config(false), config(true), config(false, true)]) {
    const file = await writeWeights(work, cfg);
    for (const dtype of ['f32', 'bf16']) {
      for (const ckpt of [false, true]) await runCase(file, cfg, dtype, ckpt);
    }
  }
} finally {
  rmSync(work, { recursive: true, force: true });
}

const parts = [];
for (const { label, bytes } of records) {
  const head = Buffer.alloc(8);
  const name = Buffer.from(label, 'utf8');
  head.writeUInt32LE(name.length, 0);
  head.writeUInt32LE(bytes.length, 4);
  parts.push(head, name, bytes);
  if (list) console.log(createHash('sha256').update(bytes).digest('hex').slice(0, 16), label);
}
writeFileSync(out, Buffer.concat(parts));
console.log(`${records.length} records, ${parts.reduce((s, p) => s + p.length, 0)} bytes -> ${out}`);
