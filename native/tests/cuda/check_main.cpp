// zn_cuda_check [--json FILE] [--only PREFIX] [--no-checks] [--no-bench] [--quick]
// Prints the device, runs every kernel check (PASS/FAIL lines), then the timings, and ends with a
// summary; exit status 1 when any check failed, 2 when no GPU could be used.
#include <cuda_runtime_api.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <fstream>
#include <sstream>

#include "check.h"
#include "core/bf16.h"
#include "core/cpu_features.h"
#include "kernels/cuda/check.h"
#include "kernels/cuda/gemm.h"

namespace zn::cuda::check {

namespace {

std::string json_string(const std::string& s) {
  std::string out = "\"";
  for (char c : s) {
    if (c == '"' || c == '\\') out += '\\', out += c;
    else if (c == '\n') out += "\\n";
    else if (static_cast<unsigned char>(c) < 0x20) out += ' ';
    else out += c;
  }
  return out + "\"";
}

std::string json_number(double x) {
  if (!std::isfinite(x)) return "null";
  std::ostringstream s;
  s.precision(6);
  s << x;
  return s.str();
}

}  // namespace

Report::Report(std::string json_path) : json_path_(std::move(json_path)) {
  if (!json_path_.empty()) std::ofstream(json_path_, std::ios::trunc);
}

void Report::write(const std::string& line) {
  if (json_path_.empty()) return;
  std::ofstream out(json_path_, std::ios::app);
  out << line << "\n";
}

void Report::compare(const std::string& op, const std::string& what, const std::string& against,
                     double error, double tol) {
  const bool pass = error <= tol;
  (pass ? passes_ : failures_)++;
  std::printf("%-4s %-10s %-44s vs %-5s rel err %9.2e  (tol %.0e)\n", pass ? "PASS" : "FAIL",
              op.c_str(), what.c_str(), against.c_str(), error, tol);
  std::fflush(stdout);
  write("{\"kind\":\"check\",\"op\":" + json_string(op) + ",\"case\":" + json_string(what) +
        ",\"against\":" + json_string(against) + ",\"rel_err\":" + json_number(error) +
        ",\"tol\":" + json_number(tol) + ",\"pass\":" + (pass ? "true" : "false") + "}");
}

void Report::failure(const std::string& op, const std::string& what, const std::string& message) {
  failures_++;
  std::printf("FAIL %-10s %-44s error: %s\n", op.c_str(), what.c_str(), message.c_str());
  std::fflush(stdout);
  write("{\"kind\":\"check\",\"op\":" + json_string(op) + ",\"case\":" + json_string(what) +
        ",\"pass\":false,\"error\":" + json_string(message) + "}");
}

void Report::timing(const std::string& op, const std::string& shape, const std::string& impl,
                    double ms, double flops, double bytes) {
  const double tflops = flops > 0 ? flops / (ms * 1e-3) / 1e12 : 0;
  const double gbps = bytes > 0 ? bytes / (ms * 1e-3) / 1e9 : 0;
  std::printf("TIME %-10s %-40s %-9s %9.3f ms", op.c_str(), shape.c_str(), impl.c_str(), ms);
  if (flops > 0) std::printf("  %7.1f TFLOP/s", tflops);
  if (bytes > 0) std::printf("  %7.1f GB/s", gbps);
  std::printf("\n");
  std::fflush(stdout);
  write("{\"kind\":\"bench\",\"source\":\"ours\",\"op\":" + json_string(op) + ",\"shape\":" +
        json_string(shape) + ",\"impl\":" + json_string(impl) + ",\"ms\":" + json_number(ms) +
        ",\"tflops\":" + json_number(flops > 0 ? tflops : NAN) + ",\"gbps\":" +
        json_number(bytes > 0 ? gbps : NAN) + "}");
}

void Report::note(const std::string& key, const std::string& value) {
  write("{\"kind\":\"info\",\"key\":" + json_string(key) + ",\"value\":" + json_string(value) + "}");
}

std::mt19937_64& rng() {
  static std::mt19937_64 engine = [] {
    const char* fixed = std::getenv("ZN_TEST_SEED");
    const uint64_t seed = fixed ? std::strtoull(fixed, nullptr, 10)
                                : uint64_t(std::chrono::steady_clock::now().time_since_epoch().count());
    std::printf("ZN_TEST_SEED=%llu\n", static_cast<unsigned long long>(seed));
    return std::mt19937_64(seed);
  }();
  return engine;
}

std::vector<float> random_normal(size_t n, float scale) {
  std::normal_distribution<float> normal(0.0f, scale);
  std::vector<float> v(n);
  for (float& x : v) x = normal(rng());
  return v;
}

std::vector<float> quantize(std::vector<float> v, DType dtype) {
  if (dtype == DType::BF16)
    for (float& x : v) x = bf16_to_f32(f32_to_bf16(x));
  return v;
}

std::vector<double> to_f64(const std::vector<float>& v) { return {v.begin(), v.end()}; }

double rel_error(const std::vector<float>& out, const std::vector<double>& ref) {
  if (out.size() != ref.size()) return INFINITY;
  double diff = 0, norm = 0;
  for (size_t i = 0; i < out.size(); ++i) {
    if (!std::isfinite(out[i])) return INFINITY;
    diff += (double(out[i]) - ref[i]) * (double(out[i]) - ref[i]);
    norm += ref[i] * ref[i];
  }
  return std::sqrt(diff) / std::max(std::sqrt(norm), 1e-30);
}

double rel_error(const std::vector<float>& out, const std::vector<float>& ref) {
  return rel_error(out, to_f64(ref));
}

DeviceArray::DeviceArray(size_t n, DType dtype)
    : buffer_(n * dtype_size(dtype)), n_(n), dtype_(dtype) {
  if (n) ZN_CUDA_CHECK(cudaMemset(buffer_.data(), 0xff, buffer_.bytes()));
}

DeviceArray::DeviceArray(const std::vector<float>& host, DType dtype)
    : buffer_(host.size() * dtype_size(dtype)), n_(host.size()), dtype_(dtype) {
  if (dtype == DType::F32) {
    buffer_.upload(reinterpret_cast<const unsigned char*>(host.data()), buffer_.bytes());
  } else {
    std::vector<bf16> converted(host.size());
    for (size_t i = 0; i < host.size(); ++i) converted[i] = f32_to_bf16(host[i]);
    buffer_.upload(reinterpret_cast<const unsigned char*>(converted.data()), buffer_.bytes());
  }
}

std::vector<float> DeviceArray::read() const {
  ZN_CUDA_CHECK(cudaDeviceSynchronize());
  std::vector<float> out(n_);
  if (dtype_ == DType::F32) {
    buffer_.download(reinterpret_cast<unsigned char*>(out.data()), buffer_.bytes());
  } else {
    std::vector<bf16> raw(n_);
    buffer_.download(reinterpret_cast<unsigned char*>(raw.data()), buffer_.bytes());
    for (size_t i = 0; i < n_; ++i) out[i] = bf16_to_f32(raw[i]);
  }
  return out;
}

float* DeviceArray::f32() const {
  ZN_CHECK(dtype_ == DType::F32, "DeviceArray::f32 on a bf16 array");
  return reinterpret_cast<float*>(buffer_.data());
}

DeviceBuffer<int32_t> upload_i32(const std::vector<int32_t>& host) {
  DeviceBuffer<int32_t> buffer(host.size());
  buffer.upload(host.data(), host.size());
  return buffer;
}

double time_ms(const std::function<void()>& run, cudaStream_t stream, int warmup, int reps) {
  for (int i = 0; i < warmup; ++i) run();
  std::vector<cudaEvent_t> events(static_cast<size_t>(2 * reps));
  for (cudaEvent_t& e : events) ZN_CUDA_CHECK(cudaEventCreate(&e));
  for (int i = 0; i < reps; ++i) {
    ZN_CUDA_CHECK(cudaEventRecord(events[2 * i], stream));
    run();
    ZN_CUDA_CHECK(cudaEventRecord(events[2 * i + 1], stream));
  }
  ZN_CUDA_CHECK(cudaStreamSynchronize(stream));
  std::vector<float> ms(static_cast<size_t>(reps));
  for (int i = 0; i < reps; ++i) ZN_CUDA_CHECK(cudaEventElapsedTime(&ms[i], events[2 * i], events[2 * i + 1]));
  for (cudaEvent_t e : events) cudaEventDestroy(e);
  std::sort(ms.begin(), ms.end());
  return ms[ms.size() / 2];
}

void guarded(Report& report, const std::string& op, const std::string& what,
             const std::function<void()>& body) {
  try {
    body();
    ZN_CUDA_CHECK(cudaDeviceSynchronize());
  } catch (const std::exception& e) {
    report.failure(op, what, e.what());
    // A fault inside a kernel poisons the context; later checks would only repeat it.
    const cudaError_t sticky = cudaDeviceSynchronize();
    if (sticky != cudaSuccess && sticky != cudaErrorInvalidValue) {
      std::printf("fatal CUDA error, stopping: %s\n", cudaGetErrorString(sticky));
      std::exit(1);
    }
  }
}

}  // namespace zn::cuda::check

int main(int argc, char** argv) {
  using namespace zn::cuda;
  std::string json_path, only;
  bool checks = true, bench = true, quick = false;
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--json") && i + 1 < argc) json_path = argv[++i];
    else if (!std::strcmp(argv[i], "--only") && i + 1 < argc) only = argv[++i];
    else if (!std::strcmp(argv[i], "--no-checks")) checks = false;
    else if (!std::strcmp(argv[i], "--no-bench")) bench = false;
    else if (!std::strcmp(argv[i], "--quick")) quick = true;
    else {
      std::fprintf(stderr, "usage: zn_cuda_check [--json FILE] [--only PREFIX] [--no-checks] [--no-bench] [--quick]\n");
      return 2;
    }
  }
  check::Report report(json_path);
  try {
    const DeviceInfo info = device_info();
    std::printf("device %d: %s, sm_%d%d, %d SMs, %.1f GiB (%.1f free), driver %d, runtime %d, cuBLASLt %s\n",
                info.index, info.name.c_str(), info.major, info.minor, info.multiprocessors,
                info.total_memory / 1073741824.0, info.free_memory / 1073741824.0,
                info.driver_version, info.runtime_version, have_cublaslt() ? "yes" : "no");
#ifdef ZN_CUDA_CHECK_CPU
    std::printf("host: %s (cpu path %s)\n", zn::cpu_features_string().c_str(),
                zn::cpu_path_name(zn::cpu_path()));
#else
    std::printf("host: CPU kernels not built in (ZN_CUDA_CHECK_CPU=OFF): float64 references only\n");
#endif
    report.note("device", info.name);
    report.note("compute_capability", std::to_string(info.major) + "." + std::to_string(info.minor));
    report.note("cublaslt", have_cublaslt() ? "yes" : "no");
  } catch (const std::exception& e) {
    std::printf("no GPU: %s\n", e.what());
    report.failure("device", "device_info", e.what());
    return 2;
  }
  cudaStream_t stream;
  ZN_CUDA_CHECK(cudaStreamCreate(&stream));
  if (checks) check::run_op_checks(report, stream, only, quick);
  if (checks) check::run_model_checks(report, only, quick);
  if (checks) check::run_frozen_checks(report, only);
  if (checks) check::run_zero_checks(report, only);
  if (checks) check::run_lora_checks(report, only);
  if (checks) check::run_lora_plan(report, only);
  if (checks) check::run_generation_checks(report, only);
  if (bench) check::run_benchmarks(report, stream, only);
  if (bench) check::run_model_timing(report, only);
  std::printf("\nchecks: %d passed, %d failed\n", report.passes(), report.failures());
  cudaStreamDestroy(stream);
  return report.failures() ? 1 : 0;
}
