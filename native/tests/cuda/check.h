// The device check (zn_cuda_check): every CUDA kernel against its own float64 reference and, where
// the CPU kernel of its family is built, against the CPU kernel, on fresh random inputs with
// poisoned outputs; then timings. Results go to stdout as a table and to a JSON-lines file.
#pragma once
#include <cuda_runtime_api.h>

#include <cstdint>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "kernels/cuda/array.h"
#include "kernels/cuda/device.h"

namespace zn::cuda::check {

// Tolerances on ||out - ref|| / ||ref|| (see ../../shared/DESIGN.md, Numerics; METHOD.md): f32
// arithmetic lands far under kF32Tol; bf16 storage of inputs only (f32 accumulation, f32
// outputs) under kBf16InputTol; bf16 outputs or bf16 intermediates (attention's P and dS) under
// kBf16Tol.
constexpr double kF32Tol = 1e-5;
constexpr double kBf16InputTol = 1e-4;
constexpr double kBf16Tol = 1e-2;

class Report {
 public:
  explicit Report(std::string json_path);
  // One comparison: PASS when error <= tol (NaN fails).
  void compare(const std::string& op, const std::string& what, const std::string& against,
               double error, double tol);
  // A check that threw (a CUDA error, a shape the kernel refused): FAIL with the message.
  void failure(const std::string& op, const std::string& what, const std::string& message);
  // A timing: flops (0 when not meaningful) and bytes moved give TFLOP/s and GB/s.
  void timing(const std::string& op, const std::string& shape, const std::string& impl,
              double ms, double flops, double bytes);
  void note(const std::string& key, const std::string& value);  // device facts into the JSON
  int failures() const { return failures_; }
  int passes() const { return passes_; }

 private:
  void write(const std::string& line);
  std::string json_path_;
  int failures_ = 0, passes_ = 0;
};

std::mt19937_64& rng();
std::vector<float> random_normal(size_t n, float scale = 1.0f);
// Rounds to what a buffer of `dtype` holds (bf16: round to nearest even), so references see
// exactly the kernel's inputs.
std::vector<float> quantize(std::vector<float> v, DType dtype);
std::vector<double> to_f64(const std::vector<float>& v);

double rel_error(const std::vector<float>& out, const std::vector<double>& ref);
double rel_error(const std::vector<float>& out, const std::vector<float>& ref);

// A device array of f32 or bf16 elements filled from / read into host f32 vectors.
class DeviceArray {
 public:
  DeviceArray(size_t n, DType dtype);  // poisoned: every byte 0xff (NaN in both dtypes)
  DeviceArray(const std::vector<float>& host, DType dtype);
  std::vector<float> read() const;
  Array array() { return {buffer_.data(), dtype_}; }
  ConstArray carray() const { return ConstArray(buffer_.data(), dtype_); }
  void* data() const { return buffer_.data(); }
  float* f32() const;  // requires dtype F32
  size_t size() const { return n_; }
  DType dtype() const { return dtype_; }

 private:
  DeviceBuffer<unsigned char> buffer_;
  size_t n_;
  DType dtype_;
};

DeviceBuffer<int32_t> upload_i32(const std::vector<int32_t>& host);

// Uniform values in [-1, 1), generated on the device (check_fill.cu): large timing inputs.
DeviceArray random_device(size_t n, DType dtype);

// Median milliseconds of `reps` runs after `warmup` runs, timed with events on `stream`.
double time_ms(const std::function<void()>& run, cudaStream_t stream, int warmup, int reps);

// Runs body, turning an exception into a FAIL line for (op, what).
void guarded(Report& report, const std::string& op, const std::string& what,
             const std::function<void()>& body);

// quick: smaller attention cases and no large cross-checks (for the CPU emulator, run.sh).
void run_op_checks(Report& report, cudaStream_t stream, const std::string& only, bool quick);
void run_benchmarks(Report& report, cudaStream_t stream, const std::string& only);
// The CPU and CUDA Mistral models trained side by side (check_model.cpp); quick: fewer cases.
void run_model_checks(Report& report, const std::string& only, bool quick);
// The same with frozen parameters (a trained parameter group short of the table).
void run_frozen_checks(Report& report, const std::string& only);
void run_zero_checks(Report& report, const std::string& only);
// LoRA adapters trained on both devices (check_model.cpp, "lora").
void run_lora_checks(Report& report, const std::string& only);
// The CPU and CUDA models' generation (KvCache extend calls) side by side (check_model.cpp).
void run_generation_checks(Report& report, const std::string& only);
// The device plan of a Mistral-7B LoRA DPO step against 24 GiB (check_model.cpp, "lora-plan").
void run_lora_plan(Report& report, const std::string& only);
// A Mistral-7B DPO step on the GPU model as one 80 GB GPU runs it (check_model.cpp, "step7b").
void run_model_timing(Report& report, const std::string& only);

}  // namespace zn::cuda::check
