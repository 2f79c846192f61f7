/** zephyr-native's public library API: what a Node service imports. */
export { loadNative, type AddonInfo, type Device, type NativeAddon } from './native.js';
export { UsageError, ZnError } from './errors.js';
export { VERSION } from './version.js';
export { countRows, listSplits, readRows, type ReadOptions, type SourceRow } from './data/readers.js';
export { JsonlAppender, writeRows, type ColumnType, type WriteOptions } from './data/writers.js';
export {
  binarize,
  Binarizer,
  splitTrainTest,
  type BinarizeOptions,
  type BinarizeStats,
  type PreferenceRow,
  type ScoreRule,
} from './aif/binarize.js';
export { writePreferences, type PreferenceFormat } from './aif/preference-files.js';
export { rate, rateFile, type RateOptions, type RateProgress, type RateStats } from './aif/rate.js';
export { JudgeClient, JudgeConfigError, JudgeRejectedError, JudgeUnavailableError, type JudgeOptions } from './aif/judge.js';
