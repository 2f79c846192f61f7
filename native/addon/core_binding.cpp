// Bindings for the core: a parallel self-check that proves the thread pool and the async path
// work through the real addon.
#include <atomic>
#include <cmath>
#include <vector>
#include <memory>

#include "addon/binding.h"
#include "addon/register.h"
#include "core/errors.h"
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

}  // namespace

void register_core(Napi::Env env, Napi::Object exports) {
  exports.Set("sumOfSquares", Napi::Function::New(env, SumOfSquares, "sumOfSquares"));
}

}  // namespace zn::addon
