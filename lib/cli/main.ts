#!/usr/bin/env node
/**
 * `zephyr-native`: the command line. One yargs command module per subcommand (lib/cli/*.ts).
 * Exit codes: 0 done, 1 runtime failure (one line; --verbose adds the stack), 2 usage error.
 */
import yargs from 'yargs';
import { hideBin } from 'yargs/helpers';

import { UsageError } from '../errors.js';
import { VERSION } from '../version.js';
import { commands } from './commands.js';

function reportAndExit(error: unknown, verbose: boolean): never {
  const err = error instanceof Error ? error : new Error(String(error));
  const usage = err instanceof UsageError;
  process.stderr.write(`zephyr-native: ${usage ? 'usage: ' : ''}${err.message.split('\n')[0]}\n`);
  if (verbose && err.stack) process.stderr.write(`${err.stack}\n`);
  process.exit(usage ? 2 : 1);
}

async function main(argv: string[]): Promise<void> {
  const verbose = argv.includes('--verbose');
  let parser = yargs(argv)
    .scriptName('zephyr-native')
    .usage('$0 <command> [options]\n\nThe Zephyr-7B-beta recipe: dSFT, AIF and dDPO for Mistral-architecture models.')
    .version(VERSION)
    .option('verbose', { type: 'boolean', default: false, describe: 'Print stack traces on failure' })
    .strict()
    .demandCommand(1, 'name a command (see --help)')
    .recommendCommands()
    .wrap(Math.min(110, process.stdout.columns || 100))
    .fail((message, error) => {
      // yargs calls this for its own usage errors (message) and for errors thrown by handlers.
      reportAndExit(error ?? new UsageError(message ?? 'invalid command line'), verbose);
    });
  for (const command of commands) parser = parser.command(command);
  await parser.parseAsync();
}

main(hideBin(process.argv)).catch((error) => reportAndExit(error, process.argv.includes('--verbose')));
