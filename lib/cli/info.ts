import type { CommandModule } from 'yargs';

import { type Device, loadNative } from '../native.js';

interface InfoArgs {
  device: Device;
}

/** `zephyr-native info`: the addon version, backend, CPU features and thread count. */
export const infoCommand: CommandModule<object, InfoArgs> = {
  command: 'info',
  describe: 'Show the native backend: version, device, CPU features, threads',
  builder: (yargs) =>
    yargs.option('device', {
      choices: ['cpu', 'cuda', 'auto'] as const,
      default: 'cpu' as Device,
      describe: 'Backend to load',
    }),
  handler: (args) => {
    const info = loadNative(args.device).info();
    process.stdout.write(`${JSON.stringify(info, null, 2)}\n`);
  },
};
