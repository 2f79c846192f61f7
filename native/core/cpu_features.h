// What the running x86-64 processor can do, read once with cpuid/xgetbv. Kernels pick their
// fastest path from this at run time, so one binary serves every x86-64 machine.
#pragma once
#include <string>

namespace zn {

struct CpuFeatures {
  bool avx2 = false;
  bool fma = false;
  bool avx512f = false;
  bool avx512bw = false;
  bool avx512bf16 = false;
};

const CpuFeatures& cpu_features();

// Comma-separated list of the features above that are present (for diagnostics).
std::string cpu_features_string();

// The SIMD path kernels will take: "avx512bf16", "avx2" or "scalar". ZN_CPU_PATH=avx2|scalar
// forces a slower path (for tests and benchmarks of every path on one machine).
enum class CpuPath { Scalar, Avx2, Avx512Bf16 };
CpuPath cpu_path();
const char* cpu_path_name(CpuPath path);
// Whether this CPU can run `path` (kernels that take an explicit path check it first).
bool cpu_path_supported(CpuPath path);

}  // namespace zn
