// Binding for the measured multiply-add peak (native/core/peak.h), the denominator of MFU in
// `zephyr-native bench`. Takes about a second per loop: runs off the main thread.
#include <memory>

#include "addon/binding.h"
#include "addon/register.h"
#include "core/peak.h"

namespace zn::addon {

namespace {

// measurePeak({secondsPerLoop?}) -> Promise<{f32, bf16: GFLOP/s, threads, loops: [{name, dtype, gflops}]}>
Napi::Value MeasurePeak(const Napi::CallbackInfo& info) {
  Options options(info, "measurePeak");
  const double seconds = options.number("secondsPerLoop", 0.5);
  if (!(seconds > 0 && seconds <= 60)) options.error("'secondsPerLoop' must be in (0, 60]");
  auto peaks = std::make_shared<Peaks>();
  return run_async(
      options, [peaks, seconds] { *peaks = measure_peaks(seconds); },
      [peaks](Napi::Env env) {
        Napi::Object out = Napi::Object::New(env);
        out.Set("f32", peaks->f32);
        out.Set("bf16", peaks->bf16);
        out.Set("threads", peaks->threads);
        Napi::Array loops = Napi::Array::New(env, peaks->loops.size());
        for (size_t i = 0; i < peaks->loops.size(); ++i) {
          Napi::Object loop = Napi::Object::New(env);
          loop.Set("name", peaks->loops[i].name);
          loop.Set("dtype", peaks->loops[i].dtype);
          loop.Set("gflops", peaks->loops[i].gflops);
          loops.Set(uint32_t(i), loop);
        }
        out.Set("loops", loops);
        return out;
      });
}

}  // namespace

void register_peak(Napi::Env env, Napi::Object exports) {
  exports.Set("measurePeak", Napi::Function::New(env, MeasurePeak, "measurePeak"));
}

}  // namespace zn::addon
