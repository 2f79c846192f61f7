import { extname } from 'node:path';

import type { CommandModule } from 'yargs';

import { UsageError } from '../errors.js';
import { svgToPng } from '../eval/charts.js';
import { curvesSvg, readRunCurves } from '../eval/curves.js';
import { writeFileAtomic } from '../io/atomic.js';

interface PlotArgs {
  run_dir: string[];
  output: string;
  title?: string;
}

/** `zephyr-native plot`: training curves of one or more runs overlaid (lib/eval/curves.ts). */
export const plotCommand: CommandModule<object, PlotArgs> = {
  command: 'plot <run_dir..>',
  describe: 'Plot training curves (loss, learning rate, DPO rewards) of one or more runs, overlaid',
  builder: (yargs) =>
    yargs
      .positional('run_dir', { type: 'string', array: true, demandOption: true, describe: 'Training output folders (their trainer_state.json)' })
      .option('output', { type: 'string', demandOption: true, describe: 'The chart: FILE.svg or FILE.png' })
      .option('title', { type: 'string', describe: 'Chart title (default: the runs)' })
      .check((args) => {
        if (!['.svg', '.png'].includes(extname(args.output).toLowerCase())) throw new UsageError(`--output must end in .svg or .png, got ${args.output}`);
        return true;
      }) as never,
  handler: async (args) => {
    const svg = await curvesSvg(args.run_dir.map(readRunCurves), args.title);
    writeFileAtomic(args.output, extname(args.output).toLowerCase() === '.png' ? await svgToPng(svg) : svg);
    process.stderr.write(`plot: ${args.output}\n`);
  },
};
