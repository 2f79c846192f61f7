import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { loadNative } from '../lib/native.js';

// Closed forms in float64 (DESIGN.md): loss = -log sigmoid(beta * ((pi_c - ref_c) - (pi_r - ref_r))).
const logSigmoid = (x: number): number => (x >= 0 ? -Math.log1p(Math.exp(-x)) : x - Math.log1p(Math.exp(x)));
const sigmoid = (x: number): number => 1 / (1 + Math.exp(-x));

function random(n: number, scale: number): Float32Array {
  return Float32Array.from({ length: n }, () => (Math.random() - 0.5) * scale);
}

describe('dpoLoss through the addon', () => {
  const addon = loadNative('cpu');
  const pairs = 37;
  const policyChosen = random(pairs, 40);
  const policyRejected = random(pairs, 40);
  const refChosen = random(pairs, 40);
  const refRejected = random(pairs, 40);

  it('sigmoid loss, gradients and TRL metrics match float64 closed forms', () => {
    const beta = 0.1;
    const out = addon.dpoLoss({ policyChosen, policyRejected, refChosen, refRejected, beta });
    let loss = 0;
    let accuracy = 0;
    for (let i = 0; i < pairs; i++) {
      const z = beta * (policyChosen[i] - refChosen[i] - (policyRejected[i] - refRejected[i]));
      assert.ok(Math.abs(out.losses[i] + logSigmoid(z)) <= 1e-5 * Math.max(1, Math.abs(logSigmoid(z))), `loss ${i}`);
      const grad = -beta * sigmoid(-z);
      assert.ok(Math.abs(out.dPolicyChosen[i] - grad) <= 1e-6, `d chosen ${i}`);
      assert.ok(Math.abs(out.dPolicyRejected[i] + grad) <= 1e-6, `d rejected ${i}`);
      loss += -logSigmoid(z) / pairs;
      const rc = beta * (policyChosen[i] - refChosen[i]);
      const rr = beta * (policyRejected[i] - refRejected[i]);
      accuracy += (rc > rr ? 1 : 0) / pairs;
    }
    assert.ok(Math.abs(out.metrics.loss - loss) < 1e-5);
    assert.ok(Math.abs(out.metrics['rewards/accuracies'] - accuracy) < 1e-9);
  });

  it('hinge loss', () => {
    const beta = 0.5;
    const out = addon.dpoLoss({ policyChosen, policyRejected, refChosen, refRejected, beta, lossType: 'hinge' });
    for (let i = 0; i < pairs; i++) {
      const z = beta * (policyChosen[i] - refChosen[i] - (policyRejected[i] - refRejected[i]));
      assert.ok(Math.abs(out.losses[i] - Math.max(0, 1 - z)) < 1e-5, `loss ${i}`);
    }
  });

  it('rejects mismatched lengths and bad options with a message naming the field', () => {
    assert.throws(
      () => addon.dpoLoss({ policyChosen, policyRejected: random(3, 1), refChosen, refRejected, beta: 0.1 }),
      /dpoLoss: 'policyRejected' has 3 elements, expected 37/,
    );
    assert.throws(() => addon.dpoLoss({ policyChosen, policyRejected, refChosen, refRejected, beta: 0 }), /'beta' must be positive/);
    assert.throws(
      () => addon.dpoLoss({ policyChosen, policyRejected, refChosen, refRejected, beta: 0.1, lossType: 'kto' as never }),
      /lossType/,
    );
  });
});
