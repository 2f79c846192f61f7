/** Every subcommand, in the order `--help` lists them. */
import type { CommandModule } from 'yargs';

import { benchCommand } from './bench.js';
import { binarizeCommand } from './binarize.js';
import { chatCommand } from './chat.js';
import { dataCommand } from './data.js';
import { evalCommand } from './eval.js';
import { plotCommand } from './plot.js';
import { generateCommand } from './generate.js';
import { downloadCommand, uploadCommand } from './hub.js';
import { infoCommand } from './info.js';
import { mergeCommand } from './merge.js';
import { rateCommand } from './rate.js';
import { dpoCommand, sftCommand, trainCommand } from './train-commands.js';
import { scoreCommand } from './score.js';
import { serveCommand } from './serve.js';

export const commands: CommandModule<object, any>[] = [
  trainCommand,
  sftCommand,
  dpoCommand,
  generateCommand,
  binarizeCommand,
  rateCommand,
  scoreCommand,
  evalCommand,
  plotCommand,
  chatCommand,
  serveCommand,
  mergeCommand,
  benchCommand,
  dataCommand,
  downloadCommand,
  uploadCommand,
  infoCommand,
];
