import { basename, resolve } from 'node:path';

import type { CommandModule } from 'yargs';

import { JudgeClient, judgeApiKeyFromEnv } from '../aif/judge.js';
import { UsageError, ZnError } from '../errors.js';
import { evaluate, type EvalReport } from '../eval/evaluate.js';
import { resultsTable } from '../eval/results.js';
import { computeDevice, type ModelDType } from '../model/model.js';
import type { Device } from '../native.js';
import { lockOutputFile, resolveModelPath, resolveQuestionsFile } from './hub-args.js';
import { untilStopSignal } from './stop-signals.js';

interface EvalArgs {
  model_name_or_path: string[];
  model_id?: string[];
  questions: string;
  judge_url: string;
  judge_model: string;
  output_dir: string;
  reference_answers?: string;
  judge_prompts?: string;
  mode: 'single' | 'pairwise';
  baseline?: string;
  max_new_tokens: number;
  batch_size: number;
  seed: number;
  device: Device;
  dtype?: ModelDType;
  concurrency: number;
  timeout: number;
  max_retries: number;
  judge_max_tokens: number;
}

/** `zephyr-native eval`: MT-Bench-style answers, judgments, scores and the radar chart (lib/eval/). */
export const evalCommand: CommandModule<object, EvalArgs> = {
  command: 'eval',
  describe: 'MT-Bench-style evaluation: answer questions, have a judge grade them, score by category (FastChat formats)',
  builder: (yargs) =>
    yargs
      .option('model_name_or_path', { type: 'string', array: true, default: [], describe: 'Model folder that answers; repeat for several (loaded one at a time)' })
      .option('model_id', { type: 'string', array: true, describe: 'Id of each model, in the same order (default: the folder name): model_answer/<id>.jsonl; ids beyond the folders are judged from answer files already there' })
      .option('questions', { type: 'string', demandOption: true, describe: "FastChat question.jsonl: {question_id, category, turns, reference?}" })
      .option('judge_url', { type: 'string', demandOption: true, describe: 'OpenAI-compatible base URL of the judge (https://host/v1) or .../chat/completions' })
      .option('judge_model', { type: 'string', demandOption: true, describe: 'Judge model name (also names model_judgment/<judge_model>_single.jsonl)' })
      .option('output_dir', { type: 'string', demandOption: true, describe: 'Where model_answer/, model_judgment/, results.json and radar.svg/png go; rerun to resume' })
      .option('reference_answers', { type: 'string', describe: "FastChat answer file of reference answers (e.g. reference_answer/gpt-4.jsonl)" })
      .option('judge_prompts', { type: 'string', describe: "FastChat judge_prompts.jsonl (default: built-in prompts with FastChat's names)" })
      .option('mode', { choices: ['single', 'pairwise'] as const, default: 'single' as const, describe: 'single: a 1-10 rating per answer; pairwise: each model against --baseline' })
      .option('baseline', { type: 'string', describe: 'Pairwise: the model id every other model plays (its answers may already be in model_answer/)' })
      .option('max_new_tokens', { type: 'number', default: 1024, describe: "New tokens per turn at most (FastChat's default 1024)" })
      .option('batch_size', { type: 'number', default: 8, describe: 'Sequences decoded at once' })
      .option('seed', { type: 'number', default: 0, describe: 'Seed of sampled answers (writing, roleplay, stem, humanities): answer seeds derive from (seed, model id, question id)' })
      .option('device', { choices: ['cpu', 'cuda', 'auto'] as const, default: 'auto' as Device, describe: 'Where the models run' })
      .option('dtype', { choices: ['f32', 'bf16'] as const, describe: 'Compute precision (default bf16 on cuda, f32 on cpu)' })
      .option('concurrency', { type: 'number', default: 8, describe: 'Judge requests in flight at once' })
      .option('timeout', { type: 'number', default: 120, describe: 'Seconds per judge request attempt' })
      .option('max_retries', { type: 'number', default: 6, describe: 'Judge retries on 429, 5xx, timeouts and network errors' })
      .option('judge_max_tokens', { type: 'number', default: 2048, describe: "Longest judge reply, in tokens (FastChat's 2048)" })
      .check((args) => {
        if (args.model_id !== undefined && args.model_id.length < args.model_name_or_path.length) {
          throw new UsageError(`--model_id is given ${args.model_id.length} times for ${args.model_name_or_path.length} --model_name_or_path (one per folder, in order)`);
        }
        for (const name of ['max_new_tokens', 'batch_size', 'concurrency'] as const) {
          if (!Number.isInteger(args[name]) || args[name] < 1) throw new UsageError(`--${name} must be a positive integer, got ${args[name]}`);
        }
        if (!Number.isInteger(args.max_retries) || args.max_retries < 0) throw new UsageError(`--max_retries must be an integer >= 0, got ${args.max_retries}`);
        if (!(args.timeout > 0)) throw new UsageError(`--timeout must be a positive number of seconds, got ${args.timeout}`);
        try {
          new URL(args.judge_url);
        } catch {
          throw new UsageError(`--judge_url is not a URL: ${args.judge_url}`);
        }
        return true;
      }),
  handler: async (args) => {
    lockOutputFile(args.output_dir, 'output_dir');
    const device = computeDevice(args.device);
    const models: { path: string; id: string }[] = [];
    for (const [i, path] of args.model_name_or_path.entries()) {
      models.push({ path: await resolveModelPath(path), id: args.model_id?.[i] ?? basename(resolve(path)) });
    }
    const questions = await resolveQuestionsFile(args.questions);
    const apiKey = judgeApiKeyFromEnv();
    const client = new JudgeClient({
      url: args.judge_url,
      model: args.judge_model,
      apiKey,
      timeoutMs: args.timeout * 1000,
      maxRetries: args.max_retries,
      maxTokens: args.judge_max_tokens,
      temperature: 0,
    });
    const say = (line: string) => process.stderr.write(`eval: ${line}\n`);
    let lastShown = 0;
    const report = await untilStopSignal((signal) =>
      evaluate({
        models,
        answered: args.model_id?.slice(models.length),
        questions,
        referenceAnswers: args.reference_answers,
        judgePrompts: args.judge_prompts,
        mode: args.mode,
        baseline: args.baseline,
        outputDir: args.output_dir,
        judge: { model: args.judge_model, complete: (messages, s) => client.complete(messages, s) },
        concurrency: args.concurrency,
        signal,
        answering: {
          maxNewTokens: args.max_new_tokens,
          batchSize: args.batch_size,
          device,
          dtype: args.dtype ?? (device === 'cuda' ? 'bf16' : 'f32'),
          seed: args.seed,
          onProgress: ({ model, done, total }) => {
            if (done === total || Date.now() - lastShown > 10_000) {
              lastShown = Date.now();
              say(`${model}: ${done}/${total} questions answered`);
            }
          },
        },
        onJudgeProgress: ({ done, total }) => {
          if (done === total || Date.now() - lastShown > 10_000) {
            lastShown = Date.now();
            say(`judge: ${done}/${total} judgments`);
          }
        },
      }),
    );
    process.stderr.write(summary(report, client));
    process.stdout.write(`${resultsTable(report.results)}\n`);
    if (report.judging.unavailable > 0) {
      throw new ZnError(`${report.judging.unavailable} judgments were not made (the judge stayed unavailable); run the same command again to make them`);
    }
  },
};

function summary(report: EvalReport, client: JudgeClient): string {
  const j = report.judging;
  const lines = [
    ...report.answers.map((a) => `eval: ${a.model}: ${a.answered} questions answered this run, ${a.resumed} already in ${a.file} (${a.newTokens} new tokens in ${a.seconds.toFixed(1)}s)`),
    `eval: judge: ${j.judged} judgments this run, ${j.resumed} already in ${j.file}; ${j.failed} recorded as failed (unreadable twice or refused), ${j.reasked} asked again, ${j.unavailable} not made (judge unavailable)`,
    `  ${client.requests} requests, ${client.retries} retries${j.missingAnswers ? `; ${j.missingAnswers} answers missing (not judged)` : ''}${j.unjudgedTurns ? `; ${j.unjudgedTurns} turns after the second answered but not judged` : ''}`,
    ...j.examples.map((e) => `  e.g. ${e}`),
    `eval: results: ${report.files.results}; radar chart: ${report.files.radarSvg}, ${report.files.radarPng}`,
  ];
  return `${lines.join('\n')}\n`;
}
