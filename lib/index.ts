/** zephyr-native's public library API: what a Node service imports. */
export { loadNative, type AddonInfo, type BackendAddon, type Device, type NativeAddon } from './native.js';
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
export { HfTokenizer, type TokenizerConfig, type TokenizerJson } from './data/tokenizer.js';
export { ChatTemplate, ZEPHYR_CHAT_TEMPLATE, type ChatMessage } from './data/chat-template.js';
export { loadLlama2Tokenizer, writeLlama2TokenizerFolder } from './data/llama2-tokenizer.js';
export { DEFAULT_SFT_OPTIONS, SftTokenizer, labelsOf, type SftExample, type SftOptions } from './data/sft-examples.js';
export { DEFAULT_DPO_OPTIONS, DpoTokenizer, type DpoOptions, type PreferencePair } from './data/dpo-tokenize.js';
export { packExamples, type PackedRow } from './data/packing.js';
export { collatePreference, collateSft } from './data/collate.js';
export { IGNORE_INDEX, type PreferenceBatch, type TokenBatch } from './data/batch.js';
export { planDatasets, type DataConfig, type DatasetPlan } from './data/dataset-config.js';
export { loadDpoData, loadSftData, type DataSource, type LoadedData, type LoadOptions, type SftItem } from './data/load.js';
export { DatasetReport, SKIP_REASONS, type SkipReason } from './data/validation.js';
export { seededPermutation, seededShuffle } from './data/shuffle.js';
export {
  DEFAULT_MAX_TOKENS,
  generationMemory,
  loadModel,
  MistralModel,
  modelMemoryPlan,
  nativeModelConfig,
  type ModelDType,
  type ModelOptions,
  type SaveOptions,
} from './model/model.js';
export { isAdapterFolder, readAdapterFolder, type AdapterFolder, type LoraSettings } from './model/peft.js';
export { scoreRows, type ScoredRow, type ScoreOptions } from './model/score.js';
export type { AdamWHyperparameters, MemoryPlan, NativeModel, NativeParameter, NativeTokenBatch, StepProfile } from './native.js';
export { dpo, sft, train, TrainingRun, type PipelineConfig, type RunOptions, type Recipe } from './train/api.js';
export type { StageResult } from './train/stage.js';
export type { LogEntry } from './train/state.js';
export { greedyChat, Generator, type GenerationInput, type GeneratorOptions, type RequestOptions } from './generate/generate.js';
export { GenerationEngine, type Completion, type FinishReason, type GeneratedToken } from './generate/engine.js';
export type { TokenLogprob } from './generate/top-logprobs.js';
export { resolveGeneration, type GenerationOptions } from './generate/options.js';
export { generateFile, type GenerateFileOptions, type GenerateProgress, type GenerateStats } from './generate/generate-file.js';
export { mistralConfig, writeRandomModel } from './model/init.js';
export { readMistralConfig, type MistralConfig } from './model/config.js';
export { createServer, type ServeOptions, type ZephyrServer } from './serve/server.js';
export { evaluate, type EvalOptions, type EvalReport } from './eval/evaluate.js';
export { readQuestions, readReferenceAnswers, type Question } from './eval/questions.js';
export { DEFAULT_JUDGE_PROMPTS, readJudgePrompts, type JudgePrompt } from './eval/judge-prompts.js';
export type { EvalJudge } from './eval/judgments.js';
export { resultsTable, type EvalResults, type PairResult, type SingleResult } from './eval/results.js';
export { radarSpec, radarSvg, svgToPng } from './eval/charts.js';
export { curvesSvg, readRunCurves, writeTrainingCurves } from './eval/curves.js';
export { hubEnvironment, type HubEnvironment } from './hub/environment.js';
export { resolveDatasetPath, resolveModelPath, type DatasetResolveOptions, type ResolveOptions } from './hub/resolve.js';
export { downloadRepo, type DownloadOptions, type DownloadProgress, type DownloadResult } from './hub/download.js';
export { uploadFolder, type UploadOptions, type UploadResult } from './hub/upload.js';
export { lockOutput, type LockOptions, type OutputLock } from './io/output-lock.js';
