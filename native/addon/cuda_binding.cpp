// Kernel-level functions of the CUDA addon, with the CPU addon's names and arguments where it has
// them: host typed arrays in, host typed arrays out, the kernel run on the GPU between two copies.
// For tests and cross-checks from JS; the model keeps its tensors on the device instead.
#include <cuda_runtime_api.h>

#include <algorithm>
#include <memory>
#include <string>
#include <vector>

#include "addon/binding.h"
#include "addon/cuda_register.h"
#include "addon/dpo_args.h"
#include "core/bf16.h"
#include "core/random.h"
#include "kernels/cuda/adamw.h"
#include "kernels/cuda/device.h"
#include "kernels/cuda/dpo.h"
#include "kernels/cuda/gemm.h"

namespace zn::addon {

namespace {

using cuda::DeviceBuffer;

template <typename T>
DeviceBuffer<T> upload(const ArrayView<T>& view) {
  DeviceBuffer<T> buffer(view.size);
  buffer.upload(view.data, view.size);
  return buffer;
}

// sumOfSquares({values: Float32Array}) -> Promise<number>: sum of x^2, accumulated in f64 on the GPU.
Napi::Value SumOfSquares(const Napi::CallbackInfo& info) {
  Options options(info, "sumOfSquares");
  ArrayView<float> values = options.f32("values");
  auto total = std::make_shared<double>(0.0);
  return run_async(
      options,
      [values, total] {
        cuda::device_count();  // no GPU: say so before any allocation does
        DeviceBuffer<float> device_values = upload(values);
        DeviceBuffer<double> result(1);
        const cuda::GradSpan span{device_values.data(), long(values.size)};
        cuda::sum_of_squares(&span, 1, result.data(), nullptr);
        ZN_CUDA_CHECK(cudaDeviceSynchronize());
        result.download(total.get(), 1);
      },
      [total](Napi::Env env) { return Napi::Number::New(env, *total); });
}

cuda::DpoLossType loss_type(DpoLossName name) {
  switch (name) {
    case DpoLossName::Ipo: return cuda::DpoLossType::Ipo;
    case DpoLossName::Hinge: return cuda::DpoLossType::Hinge;
    default: return cuda::DpoLossType::Sigmoid;
  }
}

// dpoLoss: the CPU addon's arguments and result (addon/dpo_args.h), computed on the GPU.
Napi::Value DpoLoss(const Napi::CallbackInfo& info) {
  Options options(info, "dpoLoss");
  const DpoArgs a = read_dpo_args(options);
  Napi::Env env = info.Env();
  DpoOutputs outputs(env, a.pairs);
  cuda::DpoMetrics metrics{};
  run_sync(options, [&] {
    cuda::device_count();
    DeviceBuffer<float> pc = upload(a.policy_chosen), pr = upload(a.policy_rejected), rc = upload(a.ref_chosen),
                        rr = upload(a.ref_rejected), out_losses(a.pairs), out_chosen(a.pairs), out_rejected(a.pairs);
    DeviceBuffer<int32_t> nc = a.chosen_tokens.data ? upload(a.chosen_tokens) : DeviceBuffer<int32_t>();
    DeviceBuffer<int32_t> nr = a.rejected_tokens.data ? upload(a.rejected_tokens) : DeviceBuffer<int32_t>();
    DeviceBuffer<cuda::DpoMetrics> device_metrics(1);
    cuda::dpo_loss(long(a.pairs), loss_type(a.loss), float(a.beta), float(a.label_smoothing), pc.data(), pr.data(),
                   rc.data(), rr.data(), out_losses.data(), out_chosen.data(), out_rejected.data(), nc.data(), nr.data(),
                   device_metrics.data(), nullptr);
    ZN_CUDA_CHECK(cudaDeviceSynchronize());
    out_losses.download(outputs.losses.Data(), a.pairs);
    out_chosen.download(outputs.d_chosen.Data(), a.pairs);
    out_rejected.download(outputs.d_rejected.Data(), a.pairs);
    device_metrics.download(&metrics, 1);
  });
  return dpo_result(env, outputs, metrics);
}

// An operand: `<name>` as a Float32Array (f32) or a Uint16Array of bf16 bits.
struct HostOperand {
  const void* data;
  size_t size;
  DType dtype;
};

HostOperand operand(const Options& options, const char* name) {
  if (options.string(std::string(name).append("Dtype").c_str(), "f32") == "bf16") {
    const ArrayView<uint16_t> v = options.u16(name);
    return {v.data, v.size, DType::BF16};
  }
  const ArrayView<float> v = options.f32(name);
  return {v.data, v.size, DType::F32};
}

cuda::GemmImpl gemm_impl(const Options& options) {
  const std::string name = options.string("impl", "auto");
  if (name == "auto") return cuda::GemmImpl::Auto;
  if (name == "cublaslt") return cuda::GemmImpl::CublasLt;
  if (name == "mma") return cuda::GemmImpl::TensorCore;
  if (name == "simple") return cuda::GemmImpl::Simple;
  options.error("'impl' must be auto, cublaslt, mma or simple, got '" + name + "'");
}

// gemm({transA?, transB?, M, N, K, alpha?, beta?, a, aDtype?, b, bDtype?, c?: Float32Array[M*N], impl?})
//   -> Promise<Float32Array[M*N]>: C = alpha op(A) op(B) + beta C (kernels/cuda/gemm.h), dense rows.
Napi::Value Gemm(const Napi::CallbackInfo& info) {
  Options options(info, "gemm");
  const bool ta = options.boolean("transA", false), tb = options.boolean("transB", false);
  const long M = long(options.integer("M")), N = long(options.integer("N")), K = long(options.integer("K"));
  if (M < 0 || N < 0 || K < 0) options.error("M, N and K must not be negative");
  const float alpha = float(options.number("alpha", 1.0)), beta = float(options.number("beta", 0.0));
  const HostOperand a = operand(options, "a"), b = operand(options, "b");
  if (a.size != size_t(M * K)) options.error("'a' must hold M*K = " + std::to_string(M * K) + " values");
  if (b.size != size_t(K * N)) options.error("'b' must hold K*N = " + std::to_string(K * N) + " values");
  const ArrayView<float> c_in = options.f32_or_empty("c");
  if (c_in.data) options.expect_size("c", c_in, size_t(M * N));
  const cuda::GemmImpl impl = gemm_impl(options);
  auto c = std::make_shared<std::vector<float>>(size_t(M * N), 0.0f);
  if (c_in.data) std::copy(c_in.data, c_in.data + c_in.size, c->begin());
  return run_async(
      options,
      [=] {
        cuda::device_count();
        DeviceBuffer<unsigned char> da(a.size * dtype_size(a.dtype)), db(b.size * dtype_size(b.dtype));
        da.upload(static_cast<const unsigned char*>(a.data), da.size());
        db.upload(static_cast<const unsigned char*>(b.data), db.size());
        DeviceBuffer<float> dc(c->size());
        dc.upload(c->data(), c->size());
        cuda::gemm(ta, tb, M, N, K, alpha, cuda::Matrix{da.data(), a.dtype, ta ? M : K},
                   cuda::Matrix{db.data(), b.dtype, tb ? K : N}, beta, cuda::OutMatrix{dc.data(), DType::F32, N},
                   nullptr, impl);
        ZN_CUDA_CHECK(cudaDeviceSynchronize());
        dc.download(c->data(), c->size());
      },
      [c](Napi::Env env) {
        Napi::Float32Array out = Napi::Float32Array::New(env, c->size());
        std::copy(c->begin(), c->end(), out.Data());
        return out;
      });
}

// A CUDA event, owned, for timing.
class TimingEvent {
 public:
  TimingEvent() { ZN_CUDA_CHECK(cudaEventCreate(&event_)); }
  ~TimingEvent() { cudaEventDestroy(event_); }
  TimingEvent(const TimingEvent&) = delete;
  TimingEvent& operator=(const TimingEvent&) = delete;
  cudaEvent_t get() const { return event_; }

 private:
  cudaEvent_t event_ = nullptr;
};

// measureGemmPeak({M?, N?, K?, repeats?}) -> Promise<{tflops, ms, shape, impl}>: this GPU's bf16
// GEMM rate (bf16 operands drawn N(0, 1), f32 accumulation, bf16 out, the model's GEMM path:
// cuBLASLt where present), the fastest of `repeats` runs after two warm-up runs, timed by CUDA
// events: the measured peak the bench's MFU divides by. Default 8192 x 8192 x 8192.
Napi::Value MeasureGemmPeak(const Napi::CallbackInfo& info) {
  Options options(info, "measureGemmPeak");
  const long M = long(options.integer("M", 8192)), N = long(options.integer("N", 8192)), K = long(options.integer("K", 8192));
  const int repeats = int(options.integer("repeats", 10));
  if (M <= 0 || N <= 0 || K <= 0 || repeats <= 0) options.error("M, N, K and repeats must be positive");
  auto best_ms = std::make_shared<double>(0.0);
  const cuda::GemmImpl impl = cuda::gemm_auto_impl(DType::BF16, DType::BF16, DType::BF16);
  return run_async(
      options,
      [=] {
        cuda::device_count();
        std::vector<bf16> host(size_t(std::max(M, N) * K));
        DeviceBuffer<bf16> a(size_t(M * K)), b(size_t(N * K)), c(size_t(M * N));
        fill_normal(a.size(), 1, 0, 1.0, host.data());
        a.upload(host.data(), a.size());
        fill_normal(b.size(), 1, 1, 1.0, host.data());
        b.upload(host.data(), b.size());
        // y = x W^T, as the model's projections: A [M, K], B [N, K] transposed.
        auto run = [&] {
          cuda::gemm(false, true, M, N, K, 1.0f, cuda::Matrix{a.data(), DType::BF16, K}, cuda::Matrix{b.data(), DType::BF16, K},
                     0.0f, cuda::OutMatrix{c.data(), DType::BF16, N}, nullptr);
        };
        run();
        run();
        TimingEvent start, stop;
        double best = 0;
        for (int i = 0; i < repeats; ++i) {
          ZN_CUDA_CHECK(cudaEventRecord(start.get(), nullptr));
          run();
          ZN_CUDA_CHECK(cudaEventRecord(stop.get(), nullptr));
          ZN_CUDA_CHECK(cudaEventSynchronize(stop.get()));
          float ms = 0;
          ZN_CUDA_CHECK(cudaEventElapsedTime(&ms, start.get(), stop.get()));
          if (i == 0 || ms < best) best = ms;
        }
        *best_ms = best;
      },
      [=](Napi::Env env) {
        Napi::Object out = Napi::Object::New(env);
        out.Set("tflops", 2.0 * double(M) * double(N) * double(K) / (*best_ms * 1e-3) / 1e12);
        out.Set("ms", *best_ms);
        out.Set("shape", std::to_string(M) + "x" + std::to_string(N) + "x" + std::to_string(K));
        out.Set("impl", cuda::gemm_impl_name(impl));
        return out;
      });
}

}  // namespace

void register_cuda_kernels(Napi::Env env, Napi::Object exports) {
  exports.Set("measureGemmPeak", Napi::Function::New(env, MeasureGemmPeak, "measureGemmPeak"));
  exports.Set("sumOfSquares", Napi::Function::New(env, SumOfSquares, "sumOfSquares"));
  exports.Set("dpoLoss", Napi::Function::New(env, DpoLoss, "dpoLoss"));
  exports.Set("gemm", Napi::Function::New(env, Gemm, "gemm"));
}

}  // namespace zn::addon
