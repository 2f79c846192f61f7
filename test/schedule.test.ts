import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { lrAt, warmupSteps, type ScheduleConfig } from '../lib/train/schedule.js';

// Expected values worked by hand from transformers' lr_lambda formulas (optimization.py).
describe('learning-rate schedules', () => {
  const base = { peakLr: 1, totalSteps: 10, warmupSteps: 2 };

  it('linear: warmup then linear decay to zero', () => {
    const config: ScheduleConfig = { ...base, type: 'linear' };
    const expected = [0, 0.5, 1, 7 / 8, 6 / 8, 5 / 8, 4 / 8, 3 / 8, 2 / 8, 1 / 8, 0];
    expected.forEach((value, step) => assert.ok(Math.abs(lrAt(config, step) - value) < 1e-12, `step ${step}`));
  });

  it('cosine: warmup then half a cosine', () => {
    const config: ScheduleConfig = { ...base, type: 'cosine' };
    assert.equal(lrAt(config, 1), 0.5);
    assert.equal(lrAt(config, 2), 1);
    // progress 4/8 = 0.5 -> 0.5 * (1 + cos(pi/2)) = 0.5
    assert.ok(Math.abs(lrAt(config, 6) - 0.5) < 1e-12);
    assert.ok(Math.abs(lrAt(config, 10)) < 1e-12);
  });

  it('constant and constant_with_warmup', () => {
    assert.equal(lrAt({ ...base, type: 'constant' }, 0), 1);
    assert.equal(lrAt({ ...base, type: 'constant_with_warmup' }, 1), 0.5);
    assert.equal(lrAt({ ...base, type: 'constant_with_warmup' }, 9), 1);
  });

  it('warmup steps: ratio rounds up; warmup_steps below 1 is a ratio (transformers 5)', () => {
    assert.equal(warmupSteps(95, { warmup_steps: 0, warmup_ratio: 0.1 }), 10);
    assert.equal(warmupSteps(95, { warmup_steps: 0.1, warmup_ratio: 0 }), 10);
    assert.equal(warmupSteps(95, { warmup_steps: 7, warmup_ratio: 0.5 }), 7);
    assert.throws(() => warmupSteps(10, { warmup_steps: -1, warmup_ratio: 0 }), /non-negative/);
  });
});
