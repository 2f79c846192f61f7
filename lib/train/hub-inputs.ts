/**
 * A stage's Hub ids -> local folders, before anything else reads them: `model_name_or_path` and
 * `ref_model_name_or_path` at `model_revision`, `dataset_name` (its train and test splits),
 * `dataset_mixer` keys (the splits `dataset_splits` names) and `dataset_mixture` ids (each at
 * its own `revision`, as the alignment-handbook writes them). Local paths pass through.
 */
import type { DataConfig, DatasetMixtureEntry } from '../data/dataset-config.js';
import type { ProgressMode } from '../hub/progress.js';
import { resolveDatasetPath, resolveModelPath } from '../hub/resolve.js';
import type { StageConfig, TrainingValues } from './config.js';

type Mixture = NonNullable<DataConfig['dataset_mixture']>;

async function resolveMixer(mixer: Record<string, number>, splits: string | string[] | null, progress: ProgressMode): Promise<Record<string, number>> {
  const names = splits === null ? ['train', 'test'] : Array.isArray(splits) ? splits : [splits];
  const ordered = [...names.filter((s) => s.includes('train')), ...names.filter((s) => !s.includes('train'))];
  const out: Record<string, number> = {};
  for (const [id, fraction] of Object.entries(mixer)) {
    const requiredSplits = ordered.filter((s) => s.includes('train')).length;
    out[await resolveDatasetPath(id, { splits: ordered, requiredSplits, progress })] = fraction;
  }
  return out;
}

async function resolveMixture(mixture: Mixture, progress: ProgressMode): Promise<Mixture> {
  const datasets: DatasetMixtureEntry[] = [];
  for (const entry of mixture.datasets ?? []) {
    if (typeof entry?.id !== 'string') {
      datasets.push(entry);
      continue;
    }
    const id = await resolveDatasetPath(entry.id, { revision: entry.revision ?? null, splits: [entry.split ?? 'train'], config: entry.config ?? null, progress });
    datasets.push({ ...entry, id });
  }
  return { ...mixture, datasets };
}

export async function resolveHubInputs(config: StageConfig, progress: ProgressMode = 'auto'): Promise<StageConfig> {
  const values: TrainingValues = { ...config.values };
  const revision = values.model_revision;
  if (values.model_name_or_path) values.model_name_or_path = await resolveModelPath(values.model_name_or_path, { revision, progress });
  if (values.ref_model_name_or_path) values.ref_model_name_or_path = await resolveModelPath(values.ref_model_name_or_path, { revision, progress });
  if (values.dataset_name) {
    const splits = [values.dataset_train_split, values.dataset_test_split];
    values.dataset_name = await resolveDatasetPath(values.dataset_name, { splits, requiredSplits: 1, config: values.dataset_config, progress });
  }
  if (values.dataset_mixer) values.dataset_mixer = await resolveMixer(values.dataset_mixer as Record<string, number>, values.dataset_splits, progress);
  if (values.dataset_mixture) values.dataset_mixture = (await resolveMixture(values.dataset_mixture as Mixture, progress)) as unknown as Record<string, unknown>;
  return { ...config, values };
}
