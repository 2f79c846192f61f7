/**
 * The demo's AIF step, on-policy: the SFT model answers the preference prompts itself (greedy, as
 * it will answer when judged), the teacher's answer joins it, and the demo's
 * rule-based judge rates each completion on UltraFeedback's four aspects. The rows are raw
 * UltraFeedback rows, so the usual binarization makes the pairs: chosen the best-rated answer,
 * rejected the lower-rated one, which here is the SFT model's own mistake. Prompts the SFT model
 * already answers right give no pair (its answer ties with the teacher's), so DPO spends its steps
 * on what SFT gets wrong.
 */
import { ASPECTS } from '../aif/binarize.js';
import { Generator } from '../generate/generate.js';
import { loadModel } from '../model/model.js';
import { HfTokenizer } from '../data/tokenizer.js';
import { ruleBasedRating } from './judge.js';
import type { Task } from './teacher.js';

/** The judge's 1-10 demo rating on UltraFeedback's 1-5 scale (10: 5, 5: 4, 3: 2, 1: 1). */
function ultrafeedbackRating(rating: number): number {
  return rating >= 10 ? 5 : rating >= 5 ? 4 : rating >= 3 ? 2 : 1;
}

function ratedCompletion(task: Task, model: string, response: string): object {
  const judged = ruleBasedRating(task, response);
  const rating = ultrafeedbackRating(judged);
  return {
    model,
    response,
    annotations: Object.fromEntries(ASPECTS.map((aspect) => [aspect, { Rating: String(rating), Rationale: `rule-based judge: ${judged}/10` }])),
    custom_system_prompt: '',
    principle: 'helpfulness',
    'fine-grained_score': rating,
    overall_score: judged,
    critique: '',
  };
}

/** Raw UltraFeedback rows for `tasks`: the teacher's answer and the model's greedy answer, rated. */
export async function onPolicyRows(modelDir: string, tasks: Task[], options: { maxNewTokens?: number } = {}): Promise<object[]> {
  const model = await loadModel(modelDir);
  try {
    const generator = await Generator.create(model, HfTokenizer.fromFolder(modelDir), { batchSize: 32 });
    const conversations = tasks.map((task) => [{ role: 'user' as const, content: task.prompt }]);
    const greedy = await generator.generate(conversations, { maxNewTokens: options.maxNewTokens ?? 16, doSample: false });
    return tasks.map((task, i) => ({
      source: 'zephyr-native-demo',
      instruction: task.prompt,
      models: ['teacher', 'sft'],
      completions: [
        ratedCompletion(task, 'teacher', task.answer),
        ratedCompletion(task, 'sft', greedy[i][0].text.trim()),
      ],
      correct_answers: [task.answer],
      incorrect_answers: [task.nearMiss],
    }));
  } finally {
    model.dispose();
  }
}
