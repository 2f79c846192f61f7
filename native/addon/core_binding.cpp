// Bindings for the core: a parallel self-check that proves the thread pool and the async path
// work through the real addon, and seeded normal draws for initialising weights.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <memory>
#include <string>
#include <vector>

#include "addon/binding.h"
#include "addon/register.h"
#include "core/bf16.h"
#include "core/errors.h"
#include "core/random.h"
#include "core/thread_pool.h"

namespace zn::addon {

namespace {

// sumOfSquares({values: Float32Array}) -> Promise<number>: sum of x^2 in f64 across the pool.
Napi::Value SumOfSquares(const Napi::CallbackInfo& info) {
  Options options(info, "sumOfSquares");
  ArrayView<float> values = options.f32("values");
  auto total = std::make_shared<double>(0.0);
  return run_async(
      options,
      [values, total] {
        std::vector<double> partial(size_t(num_threads()) * 8, 0.0);
        std::atomic<size_t> slot{0};
        parallel_for(values.size, 4096, [&](size_t begin, size_t end) {
          double sum = 0;
          for (size_t i = begin; i < end; ++i) {
            ZN_CHECK(std::isfinite(values.data[i]), "values[", i, "] is not finite");
            sum += double(values.data[i]) * values.data[i];
          }
          partial[slot.fetch_add(1)] = sum;
        });
        for (double p : partial) *total += p;
      },
      [total](Napi::Env env) { return Napi::Number::New(env, *total); });
}

// randomNormal({count, seed, stream, std, dtype: 'f32'|'bf16'}) -> Promise<Float32Array |
// Uint16Array (bf16 bits)>: N(0, std^2) draws of core/random.h, drawn on the pool.
Napi::Value RandomNormal(const Napi::CallbackInfo& info) {
  Options options(info, "randomNormal");
  const int64_t count = options.integer("count");
  if (count < 0) options.error("'count' must be >= 0, got " + std::to_string(count));
  const int64_t seed = options.integer("seed"), stream = options.integer("stream", 0);
  const double std = options.number("std");
  if (!(std >= 0) || !std::isfinite(std)) options.error("'std' must be a finite number >= 0");
  const std::string dtype = options.string("dtype", "f32");
  if (dtype != "f32" && dtype != "bf16") options.error("'dtype' must be 'f32' or 'bf16', got '" + dtype + "'");
  const bool bf16_out = dtype == "bf16";
  auto values = std::make_shared<std::vector<uint8_t>>(size_t(count) * (bf16_out ? 2 : 4));
  return run_async(
      options,
      [values, count, seed, stream, std, bf16_out] {
        if (bf16_out) {
          fill_normal(size_t(count), uint64_t(seed), uint64_t(stream), std, reinterpret_cast<bf16*>(values->data()));
        } else {
          fill_normal(size_t(count), uint64_t(seed), uint64_t(stream), std, reinterpret_cast<float*>(values->data()));
        }
      },
      [values, count, bf16_out](Napi::Env env) -> Napi::Value {
        Napi::ArrayBuffer buffer = Napi::ArrayBuffer::New(env, values->size());
        std::copy(values->begin(), values->end(), static_cast<uint8_t*>(buffer.Data()));
        if (bf16_out) return Napi::Uint16Array::New(env, size_t(count), buffer, 0);
        return Napi::Float32Array::New(env, size_t(count), buffer, 0);
      });
}

}  // namespace

void register_core(Napi::Env env, Napi::Object exports) {
  exports.Set("sumOfSquares", Napi::Function::New(env, SumOfSquares, "sumOfSquares"));
  exports.Set("randomNormal", Napi::Function::New(env, RandomNormal, "randomNormal"));
}

}  // namespace zn::addon
