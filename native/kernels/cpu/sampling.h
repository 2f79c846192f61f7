// Next-token sampling from logits, as transformers' generate processes them (its logits
// processor order): repetition penalty, then greedy argmax, or temperature, top-k, top-p, min-p
// and a draw from what is left.
//   repetition penalty r: each token already in the sequence has s / r if s > 0, else s * r;
//   temperature T: s / T;  top-k: tokens below the k-th largest score drop out (ties stay);
//   top-p: in descending order, token m stays while the tokens before it hold less than p of the
//     probability (transformers' "cumulative ascending probability <= 1 - p drops out");
//   min-p: tokens whose probability is below min_p x the largest drop out;
//   draw: the token where the cumulative probability of what stays passes u x its total.
// logprob is log softmax(logits)[token] of the model's own logits, before any processing (what
// OpenAI's API reports as a token's logprob).
#pragma once
#include <cstdint>

namespace zn::cpu {

struct SamplingParams {
  float temperature = 1.0f;         // <= 0: greedy (the first argmax)
  int top_k = 0;                    // <= 0: off
  float top_p = 1.0f;               // (0, 1]; 1: off
  float min_p = 0.0f;               // [0, 1]; 0: off
  float repetition_penalty = 1.0f;  // > 0; 1: off
};

struct SampleRow {
  const float* logits;     // [vocab]
  const int32_t* history;  // the sequence's tokens so far (prompt and completion), for the penalty
  long history_length;
  SamplingParams params;
  double uniform;  // the draw in (0, 1) (core/random.h's uniform_draw); unused when greedy
};

// Throws zn::Error naming the field when a parameter is out of range.
void validate_sampling(const SamplingParams& params);

// One token per row, rows in parallel; logprob[i] as described above.
void sample_tokens(long rows, long vocab, const SampleRow* in, int32_t* tokens, float* logprobs);

}  // namespace zn::cpu
