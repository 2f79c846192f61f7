import type { CommandModule } from 'yargs';

import { ZnError } from '../errors.js';

/** A subcommand whose implementation has not landed: it says so and exits 1, never pretends. */
export function notAvailableYet(name: string, describe: string): CommandModule<object, object> {
  return {
    command: name,
    describe: `${describe} (not available yet)`,
    builder: (yargs) => yargs.strict(false),
    handler: () => {
      throw new ZnError(`'${name}' is not available yet in this version of zephyr-native`);
    },
  };
}
