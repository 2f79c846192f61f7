/** Every subcommand, in the order `--help` lists them. */
import type { CommandModule } from 'yargs';

import { binarizeCommand } from './binarize.js';
import { dataCommand } from './data.js';
import { infoCommand } from './info.js';
import { notAvailableYet } from './not-available.js';
import { rateCommand } from './rate.js';
import { dpoCommand, sftCommand, trainCommand } from './train-commands.js';
import { scoreCommand } from './score.js';

export const commands: CommandModule<object, any>[] = [
  trainCommand,
  sftCommand,
  dpoCommand,
  binarizeCommand,
  rateCommand,
  scoreCommand,
  notAvailableYet('bench', 'Time SFT and DPO steps (tokens/s, MFU, peak memory)'),
  dataCommand,
  infoCommand,
];
