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
#include "core/bf16.h"
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

cuda::DpoLossType loss_type(const Options& options) {
  const std::string name = options.string("lossType", "sigmoid");
  if (name == "sigmoid") return cuda::DpoLossType::Sigmoid;
  if (name == "ipo") return cuda::DpoLossType::Ipo;
  if (name == "hinge") return cuda::DpoLossType::Hinge;
  options.error("'lossType' must be sigmoid, ipo or hinge, got '" + name + "'");
}

// dpoLoss: the CPU addon's arguments and result (native/addon/dpo_binding.cpp), computed on the GPU.
Napi::Value DpoLoss(const Napi::CallbackInfo& info) {
  Options options(info, "dpoLoss");
  const ArrayView<float> policy_chosen = options.f32("policyChosen");
  const size_t pairs = policy_chosen.size;
  const ArrayView<float> policy_rejected = options.f32("policyRejected");
  const ArrayView<float> ref_chosen = options.f32("refChosen");
  const ArrayView<float> ref_rejected = options.f32("refRejected");
  options.expect_size("policyRejected", policy_rejected, pairs);
  options.expect_size("refChosen", ref_chosen, pairs);
  options.expect_size("refRejected", ref_rejected, pairs);
  const ArrayView<int32_t> chosen_tokens = options.i32_or_empty("chosenTokens");
  const ArrayView<int32_t> rejected_tokens = options.i32_or_empty("rejectedTokens");
  if (chosen_tokens.data) options.expect_size("chosenTokens", chosen_tokens, pairs);
  if (rejected_tokens.data) options.expect_size("rejectedTokens", rejected_tokens, pairs);
  const double beta = options.number("beta");
  if (!(beta > 0)) options.error("'beta' must be positive");
  const double label_smoothing = options.number("labelSmoothing", 0.0);
  if (!(label_smoothing >= 0 && label_smoothing < 0.5)) options.error("'labelSmoothing' must be in [0, 0.5)");
  const cuda::DpoLossType type = loss_type(options);

  Napi::Env env = info.Env();
  Napi::Float32Array losses = Napi::Float32Array::New(env, pairs);
  Napi::Float32Array d_chosen = Napi::Float32Array::New(env, pairs);
  Napi::Float32Array d_rejected = Napi::Float32Array::New(env, pairs);
  cuda::DpoMetrics metrics{};
  run_sync(options, [&] {
    cuda::device_count();
    DeviceBuffer<float> pc = upload(policy_chosen), pr = upload(policy_rejected), rc = upload(ref_chosen),
                        rr = upload(ref_rejected), out_losses(pairs), out_chosen(pairs), out_rejected(pairs);
    DeviceBuffer<int32_t> nc = chosen_tokens.data ? upload(chosen_tokens) : DeviceBuffer<int32_t>();
    DeviceBuffer<int32_t> nr = rejected_tokens.data ? upload(rejected_tokens) : DeviceBuffer<int32_t>();
    DeviceBuffer<cuda::DpoMetrics> device_metrics(1);
    cuda::dpo_loss(long(pairs), type, float(beta), float(label_smoothing), pc.data(), pr.data(), rc.data(),
                   rr.data(), out_losses.data(), out_chosen.data(), out_rejected.data(), nc.data(), nr.data(),
                   device_metrics.data(), nullptr);
    ZN_CUDA_CHECK(cudaDeviceSynchronize());
    out_losses.download(losses.Data(), pairs);
    out_chosen.download(d_chosen.Data(), pairs);
    out_rejected.download(d_rejected.Data(), pairs);
    device_metrics.download(&metrics, 1);
  });
  Napi::Object out = Napi::Object::New(env);
  out.Set("losses", losses);
  out.Set("dPolicyChosen", d_chosen);
  out.Set("dPolicyRejected", d_rejected);
  Napi::Object m = Napi::Object::New(env);
  m.Set("loss", metrics.loss_mean);
  m.Set("rewards/chosen", metrics.rewards_chosen);
  m.Set("rewards/rejected", metrics.rewards_rejected);
  m.Set("rewards/accuracies", metrics.rewards_accuracies);
  m.Set("rewards/margins", metrics.rewards_margins);
  m.Set("logps/chosen", metrics.logps_chosen);
  m.Set("logps/rejected", metrics.logps_rejected);
  out.Set("metrics", m);
  return out;
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

}  // namespace

void register_cuda_kernels(Napi::Env env, Napi::Object exports) {
  exports.Set("sumOfSquares", Napi::Function::New(env, SumOfSquares, "sumOfSquares"));
  exports.Set("dpoLoss", Napi::Function::New(env, DpoLoss, "dpoLoss"));
  exports.Set("gemm", Napi::Function::New(env, Gemm, "gemm"));
}

}  // namespace zn::addon
