/**
 * `push_to_hub`, as HF Trainer defines it: uploads to `hub_model_id` (on branch `hub_revision`,
 * created `hub_private_repo` when missing), with `hub_strategy`:
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
import { basename } from 'node:path';

import { UsageError } from '../errors.js';
import { hubEnvironment } from '../hub/environment.js';
import { isRepoId } from '../hub/repo-id.js';
import { uploadFolder, type UploadOptions } from '../hub/upload.js';
import type { TrainingValues } from './config.js';

const CHECKPOINT_DIR = /^checkpoint-\d+\//;
// What a checkpoint holds beside the model files: training state, not part of a model folder.
const TRAINING_STATE = new Set(['optimizer.safetensors', 'zephyr_state.json', 'trainer_state.json']);

export class HubPusher {
  private queue: Promise<void> = Promise.resolve();
  private readonly repo: string;
  private readonly options: UploadOptions;

  constructor(
    private readonly values: TrainingValues,
    private readonly outputDir: string,
    private readonly log: (line: string) => void,
  ) {
    if (!values.hub_model_id) throw new UsageError('push_to_hub needs hub_model_id (the org/name repository to upload to)');
    if (!isRepoId(values.hub_model_id)) throw new UsageError(`hub_model_id: '${values.hub_model_id}' is not a Hub repository id (expected org/name)`);
    this.repo = values.hub_model_id;
    const env = hubEnvironment();
    // Checked now, not after hours of training.
    if (!values.hub_token && !env.token) throw new UsageError('push_to_hub needs a Hub token: set HF_TOKEN (or hub_token), or run `hf auth login`');
    this.options = { env: values.hub_token ? { ...env, token: values.hub_token } : env, revision: values.hub_revision, private: values.hub_private_repo, progress: 'silent' };
  }

  /** Queues the pushes hub_strategy asks for at a checkpoint. */
  checkpoint(dir: string): void {
    const strategy = this.values.hub_strategy;
    if (strategy === 'end') return;
    const name = basename(dir);
    const step = name.replace('checkpoint-', '');
    this.queue = this.queue.then(async () => {
      try {
        await uploadFolder(dir, this.repo, { ...this.options, commitMessage: `Training in progress, step ${step}`, filter: (path) => !TRAINING_STATE.has(path) });
        if (strategy === 'checkpoint') await uploadFolder(dir, this.repo, { ...this.options, pathInRepo: 'last-checkpoint', commitMessage: `Checkpoint at step ${step}` });
        if (strategy === 'all_checkpoints') await uploadFolder(dir, this.repo, { ...this.options, pathInRepo: name, commitMessage: `Checkpoint at step ${step}` });
        this.log(`push_to_hub: ${name} pushed to ${this.repo}`);
      } catch (error) {
        this.log(`push_to_hub: pushing ${name} to ${this.repo} failed (training goes on): ${(error as Error).message}`);
      }
    });
  }

  /** Waits for queued pushes, then uploads the final model folder when the stage finished. */
  async finish(finished: boolean): Promise<void> {
    await this.queue;
    if (!finished) return;
    const keepCheckpoints = this.values.hub_strategy === 'all_checkpoints';
    const result = await uploadFolder(this.outputDir, this.repo, {
      ...this.options,
      progress: 'auto',
      commitMessage: 'End of training',
      filter: (path) => !path.startsWith('cache/') && (keepCheckpoints || !CHECKPOINT_DIR.test(path)),
    });
    this.log(`push_to_hub: ${this.outputDir} pushed to ${this.repo} (commit ${result.commit}, ${result.files.length} files)`);
  }
}
