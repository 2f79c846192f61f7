// Binding for next-token sampling (kernels/cpu/sampling.h): a host op over logits that any
// device's generation returns, so it lives in the CPU addon only.
#include <string>
#include <vector>

#include "addon/binding.h"
#include "addon/register.h"
#include "core/random.h"
#include "kernels/cpu/sampling.h"

namespace zn::addon {

namespace {

// sampleTokens({logits: Float32Array [rows x vocab], vocab, temperature, topP, minP,
//   repetitionPenalty: Float32Array [rows], topK, seedLow, seedHigh, draws: Int32Array [rows],
//   history: Int32Array, historyOffsets: Int32Array [rows + 1]}) -> {tokens: Int32Array,
//   logprobs: Float32Array}. Row r's draw is uniform_draw(seed, 0, draws[r]) with seed =
//   seedHigh * 2^32 + seedLow, so a sequence's k-th token depends on its seed and k only.
// Synchronous, on the pool: it reads the logits where they are (a decoding step's work is a
// few milliseconds; copying 128 KiB of logits a row off the JS heap for a worker cost more).
Napi::Value SampleTokens(const Napi::CallbackInfo& info) {
  Options options(info, "sampleTokens");
  const long vocab = long(options.integer("vocab"));
  if (vocab <= 0) options.error("'vocab' must be positive, got " + std::to_string(vocab));
  ArrayView<float> logits = options.f32("logits");
  if (logits.size % size_t(vocab) != 0) options.error("'logits' must hold rows x vocab values");
  const size_t rows = logits.size / size_t(vocab);
  ArrayView<float> temperature = options.f32("temperature"), top_p = options.f32("topP"), min_p = options.f32("minP"),
                   penalty = options.f32("repetitionPenalty");
  ArrayView<int32_t> top_k = options.i32("topK"), seed_low = options.i32("seedLow"),
                     seed_high = options.i32("seedHigh"), draws = options.i32("draws");
  ArrayView<int32_t> history = options.i32("history"), offsets = options.i32("historyOffsets");
  for (auto [name, size] : {std::pair<const char*, size_t>{"temperature", temperature.size}, {"topP", top_p.size},
                            {"minP", min_p.size}, {"repetitionPenalty", penalty.size}, {"topK", top_k.size},
                            {"seedLow", seed_low.size}, {"seedHigh", seed_high.size}, {"draws", draws.size}}) {
    if (size != rows) options.error("'" + std::string(name) + "' must hold one value per row (" + std::to_string(rows) + ")");
  }
  options.expect_size("historyOffsets", offsets, rows + 1);
  std::vector<cpu::SampleRow> in(rows);
  for (size_t r = 0; r < rows; ++r) {
    const int32_t begin = offsets.data[r], end = offsets.data[r + 1];
    if (begin < 0 || end < begin || size_t(end) > history.size) options.error("'historyOffsets' must rise within 'history'");
    const uint64_t seed = (uint64_t(uint32_t(seed_high.data[r])) << 32) | uint32_t(seed_low.data[r]);
    in[r] = {logits.data + r * size_t(vocab), history.data + begin, long(end - begin),
             {temperature.data[r], top_k.data[r], top_p.data[r], min_p.data[r], penalty.data[r]},
             uniform_draw(seed, 0, uint64_t(uint32_t(draws.data[r])))};
  }
  Napi::Env env = info.Env();
  Napi::Int32Array tokens = Napi::Int32Array::New(env, rows);
  Napi::Float32Array logprobs = Napi::Float32Array::New(env, rows);
  run_sync(options, [&] { cpu::sample_tokens(long(rows), vocab, in.data(), tokens.Data(), logprobs.Data()); });
  Napi::Object out = Napi::Object::New(env);
  out.Set("tokens", tokens);
  out.Set("logprobs", logprobs);
  return out;
}

}  // namespace

void register_sampling(Napi::Env env, Napi::Object exports) {
  exports.Set("sampleTokens", Napi::Function::New(env, SampleTokens, "sampleTokens"));
}

}  // namespace zn::addon
