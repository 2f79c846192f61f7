/** Every subcommand, in the order `--help` lists them. */
import type { CommandModule } from 'yargs';

import { binarizeCommand } from './binarize.js';
import { dataCommand } from './data.js';
import { infoCommand } from './info.js';
import { notAvailableYet } from './not-available.js';
import { rateCommand } from './rate.js';

export const commands: CommandModule<object, any>[] = [
  trainCommand,
  sftCommand,
  dpoCommand,
  binarizeCommand,
  rateCommand,
  notAvailableYet('score', 'Summed completion log-probabilities of a model on a dataset'),
  notAvailableYet('bench', 'Time SFT and DPO steps (tokens/s, MFU, peak memory)'),
  dataCommand,
  infoCommand,
];
