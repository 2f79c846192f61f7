/**
 * Every training key is also a flag (`--learning_rate 5e-7`): flags are collected from the
 * parsed command line, `--key-name` spelled with hyphens too, and layered over the recipe.
 */
import { checkKeys, isBooleanKey, readRecipeFile, type Stage } from '../train/config.js';
import { refuseLauncherKeys } from './launch-ranks.js';

// --nproc_per_node is the launcher's (lib/cli/launch-ranks.ts), not a training key.
const YARGS_KEYS = new Set(['_', '$0', 'config', 'verbose', 'help', 'version', 'isolate', 'nproc_per_node', 'nproc-per-node', 'nprocPerNode']);

export function flagsFrom(argv: Record<string, unknown>): Record<string, unknown> {
  const hyphenated = Object.keys(argv).filter((key) => key.includes('-'));
  const camelAliases = new Set(hyphenated.map((key) => key.replace(/-([a-z])/g, (_, c: string) => c.toUpperCase())));
  const flags: Record<string, unknown> = {};
  for (const [key, value] of Object.entries(argv)) {
    if (YARGS_KEYS.has(key) || camelAliases.has(key)) continue;
    const name = key.replace(/-/g, '_');
    // transformers' HfArgumentParser spells `X: false` for a boolean X as `--no_X` (TRL's example
    // commands use `--no_remove_unused_columns`).
    const negated = name.startsWith('no_') && !isBooleanKey(name) && isBooleanKey(name.slice(3));
    if (negated && (value === true || value === 'true')) flags[name.slice(3)] = false;
    else flags[name] = value;
  }
  return flags;
}

/**
 * The recipe file's keys (if --config was given) with the flags on top. The flags are checked
 * here, so that an error in one names the command line rather than the file.
 */
export function recipeWithFlags(argv: Record<string, unknown>, stage: Stage): { config: Record<string, unknown>; where: string } {
  const file = typeof argv.config === 'string' ? argv.config : null;
  const recipe = file ? readRecipeFile(file) : {};
  if (file) refuseLauncherKeys(recipe, file);
  const flags = flagsFrom(argv);
  checkKeys(flags, stage, 'command line');
  return { config: { ...recipe, ...flags }, where: file ?? 'command line' };
}
