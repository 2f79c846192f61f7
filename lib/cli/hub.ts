/**
 * `zephyr-native download REPO`: a Hub repository's files into the shared cache ahead of time
 * (prints the snapshot folder); `zephyr-native upload DIR REPO`: a folder to a Hub repository in
 * one commit. Both read HF_HUB_CACHE / HF_HOME, HF_TOKEN and HF_ENDPOINT as huggingface_hub does.
 */
import type { CommandModule } from 'yargs';

import { UsageError } from '../errors.js';
import { downloadRepo } from '../hub/download.js';
import { hubEnvironment } from '../hub/environment.js';
import { formatBytes, transferReporter } from '../hub/progress.js';
import { checkRepoId, type RepoType } from '../hub/repo-id.js';
import { uploadFolder } from '../hub/upload.js';

interface DownloadArgs {
  repo: string;
  repo_type: RepoType;
  revision: string;
  include?: string[];
  split?: string[];
}

export const downloadCommand: CommandModule<object, DownloadArgs> = {
  command: 'download <repo>',
  describe: 'Download a Hub model or dataset into the shared Hugging Face cache',
  builder: (yargs) =>
    yargs
      .positional('repo', { type: 'string', demandOption: true, describe: 'Repository id (org/name)' })
      .option('repo_type', { choices: ['model', 'dataset'] as const, default: 'model' as RepoType, describe: 'A model or a dataset repository' })
      .option('revision', { type: 'string', default: 'main', describe: 'Branch, tag or commit' })
      .option('include', { type: 'string', array: true, describe: 'Only files matching these patterns (fnmatch, as huggingface_hub allow_patterns)' })
      .option('split', { type: 'string', array: true, describe: 'Dataset splits to fetch (default: all)' })
      .check((args) => {
        checkRepoId(args.repo, 'download');
        return true;
      }),
  handler: async (args) => {
    const env = hubEnvironment();
    if (env.offline) throw new UsageError('download: HF_HUB_OFFLINE is set; unset it to download');
    const reporter = transferReporter('auto', 'download');
    try {
      const result = await downloadRepo(
        { type: args.repo_type, id: args.repo, revision: args.revision },
        { include: args.include ?? null, splits: args.split ?? null },
        { env, onProgress: (p) => reporter.update(p), onFile: (f, b) => reporter.file(f, b) },
      );
      reporter.stop();
      process.stderr.write(`download: ${args.repo}@${result.commit}: ${result.files.length} files, ${formatBytes(result.fetchedBytes)} fetched\n`);
      process.stdout.write(`${result.dir}\n`);
    } finally {
      reporter.stop();
    }
  },
};

interface UploadArgs {
  dir: string;
  repo: string;
  repo_type: RepoType;
  revision?: string;
  private?: boolean;
  commit_message?: string;
  path_in_repo?: string;
}

export const uploadCommand: CommandModule<object, UploadArgs> = {
  command: 'upload <dir> <repo>',
  describe: 'Upload a folder (model, adapter, dataset) to a Hub repository in one commit',
  builder: (yargs) =>
    yargs
      .positional('dir', { type: 'string', demandOption: true, describe: 'Local folder' })
      .positional('repo', { type: 'string', demandOption: true, describe: 'Repository id (org/name); created when missing' })
      .option('repo_type', { choices: ['model', 'dataset'] as const, default: 'model' as RepoType, describe: 'A model or a dataset repository' })
      .option('revision', { type: 'string', describe: 'Branch to commit to (created from main when missing)' })
      .option('private', { type: 'boolean', describe: 'Create the repository private' })
      .option('commit_message', { type: 'string', describe: 'Commit title' })
      .option('path_in_repo', { type: 'string', describe: 'Folder in the repository to put the files under' })
      .check((args) => {
        checkRepoId(args.repo, 'upload');
        return true;
      }),
  handler: async (args) => {
    const result = await uploadFolder(args.dir, args.repo, {
      env: hubEnvironment(),
      type: args.repo_type,
      revision: args.revision ?? null,
      private: args.private ?? null,
      ...(args.commit_message ? { commitMessage: args.commit_message } : {}),
      ...(args.path_in_repo ? { pathInRepo: args.path_in_repo } : {}),
    });
    process.stderr.write(`upload: ${result.files.length} files to ${args.repo} (commit ${result.commit})\n`);
    process.stdout.write(`${result.url}\n`);
  },
};
