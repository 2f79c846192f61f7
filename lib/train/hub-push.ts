/**
 * `push_to_hub`, as HF Trainer defines it: uploads to `hub_model_id` (on branch `hub_revision`,
 * created `hub_private_repo` when missing), with `hub_strategy`. A `hub_model_id` without an
 * organisation (`zephyr-7b-sft-full`, as the alignment-handbook writes it), or none (then the
 * output_dir's folder name), goes under the token's account, as HF Trainer asks whoami:
 *
 * - `end`: the model folder once, when the stage ends;
 * - `every_save` (HF's default): also the model files of each checkpoint as it is saved
 *   ("Training in progress, step N"), queued so training does not wait;
 * - `checkpoint`: as every_save, plus the latest checkpoint folder as `last-checkpoint/`, which
 *   `resume_from_checkpoint` can start from;
 * - `all_checkpoints`: as every_save, plus every checkpoint folder under its own name.
 *
 * The final upload is output_dir without checkpoint folders (kept with all_checkpoints) and
 * without the DPO reference cache. A failed checkpoint push is reported and training goes on; a
 * failed final push fails the stage (the model stays in output_dir).
 */
import { basename, resolve } from 'node:path';

import { whoAmI } from '@huggingface/hub';

import { UsageError } from '../errors.js';
import { hubEnvironment } from '../hub/environment.js';
import { hubError } from '../hub/hub-errors.js';
import { isRepoId } from '../hub/repo-id.js';
import { uploadFolder, type UploadOptions } from '../hub/upload.js';
import type { TrainingValues } from './config.js';

const CHECKPOINT_DIR = /^checkpoint-\d+\//;
// What a checkpoint holds beside the model files: training state, not part of a model folder.
const TRAINING_STATE = new Set(['optimizer.safetensors', 'zephyr_state.json', 'trainer_state.json']);

export class HubPusher {
  private queue: Promise<void> = Promise.resolve();
  private repo: Promise<string> | null = null;
  private readonly name: string;
  private readonly options: UploadOptions;

  constructor(
    private readonly values: TrainingValues,
    private readonly outputDir: string,
    private readonly log: (line: string) => void,
  ) {
    this.name = values.hub_model_id ?? basename(resolve(outputDir));
    if (!isRepoId(this.name) && !isRepoId(`user/${this.name}`)) throw new UsageError(`hub_model_id: '${this.name}' is not a Hub repository name (org/name, or name)`);
    const env = hubEnvironment();
    // Checked now, not after hours of training.
    if (env.offline) throw new UsageError('push_to_hub: HF_HUB_OFFLINE is set; unset it to upload');
    if (!values.hub_token && !env.token) throw new UsageError('push_to_hub needs a Hub token: set HF_TOKEN (or hub_token), or run `hf auth login`');
    this.options = { env: values.hub_token ? { ...env, token: values.hub_token } : env, revision: values.hub_revision, private: values.hub_private_repo, progress: 'silent' };
  }

  /** `org/name`: hub_model_id as given, or under the token's account. */
  private repoId(): Promise<string> {
    this.repo ??= isRepoId(this.name)
      ? Promise.resolve(this.name)
      : whoAmI({ hubUrl: this.options.env.endpoint, accessToken: this.options.env.token! }).then(
          (me) => `${me.name}/${this.name}`,
          (error: unknown) => {
            throw hubError(error, { type: 'model', id: this.name, revision: 'main' }, this.options.env, undefined, 'upload');
          },
        );
    return this.repo;
  }

  /** Queues the pushes hub_strategy asks for at a checkpoint. */
  checkpoint(dir: string): void {
    const strategy = this.values.hub_strategy;
    if (strategy === 'end') return;
    const name = basename(dir);
    const step = name.replace('checkpoint-', '');
    this.queue = this.queue.then(async () => {
      try {
        const repo = await this.repoId();
        await uploadFolder(dir, repo, { ...this.options, commitMessage: `Training in progress, step ${step}`, filter: (path) => !TRAINING_STATE.has(path) });
        if (strategy === 'checkpoint') await uploadFolder(dir, repo, { ...this.options, pathInRepo: 'last-checkpoint', commitMessage: `Checkpoint at step ${step}` });
        if (strategy === 'all_checkpoints') await uploadFolder(dir, repo, { ...this.options, pathInRepo: name, commitMessage: `Checkpoint at step ${step}` });
        this.log(`push_to_hub: ${name} pushed to ${repo}`);
      } catch (error) {
        this.log(`push_to_hub: pushing ${name} to ${this.name} failed (training goes on): ${(error as Error).message}`);
      }
    });
  }

  /** Waits for queued pushes, then uploads the final model folder when the stage finished. */
  async finish(finished: boolean): Promise<void> {
    await this.queue;
    if (!finished) return;
    const keepCheckpoints = this.values.hub_strategy === 'all_checkpoints';
    const repo = await this.repoId();
    const result = await uploadFolder(this.outputDir, repo, {
      ...this.options,
      progress: 'auto',
      commitMessage: 'End of training',
      filter: (path) => !path.startsWith('cache/') && (keepCheckpoints || !CHECKPOINT_DIR.test(path)),
    });
    this.log(`push_to_hub: ${this.outputDir} pushed to ${repo} (commit ${result.commit}, ${result.files.length} files)`);
  }
}
