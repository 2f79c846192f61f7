#include "cpu_features.h"

#include <cstdlib>
#include <cstring>

#if defined(__x86_64__) || defined(_M_X64)
#include <cpuid.h>
#define ZN_X86 1
#endif

namespace zn {

namespace {

#ifdef ZN_X86
unsigned long long read_xcr0() {
  unsigned lo, hi;
  __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
  return (static_cast<unsigned long long>(hi) << 32) | lo;
}
#endif

CpuFeatures detect() {
  CpuFeatures f;
#ifdef ZN_X86
  unsigned a, b, c, d;
  if (!__get_cpuid(1, &a, &b, &c, &d)) return f;
  const bool osxsave = c & (1u << 27);
  if (!osxsave) return f;
  const unsigned long long xcr0 = read_xcr0();
  const bool ymm_enabled = (xcr0 & 0x6) == 0x6;
  const bool zmm_enabled = (xcr0 & 0xe6) == 0xe6;
  f.fma = ymm_enabled && (c & (1u << 12));
  if (__get_cpuid_count(7, 0, &a, &b, &c, &d)) {
    f.avx2 = ymm_enabled && (b & (1u << 5));
    f.avx512f = zmm_enabled && (b & (1u << 16));
    f.avx512bw = zmm_enabled && (b & (1u << 30));
  }
  if (f.avx512f && __get_cpuid_count(7, 1, &a, &b, &c, &d)) f.avx512bf16 = a & (1u << 5);
#endif
  return f;
}

}  // namespace

const CpuFeatures& cpu_features() {
  static const CpuFeatures features = detect();
  return features;
}

std::string cpu_features_string() {
  const CpuFeatures& f = cpu_features();
  std::string out;
  auto add = [&](bool present, const char* name) {
    if (!present) return;
    if (!out.empty()) out += ",";
    out += name;
  };
  add(f.avx2, "avx2");
  add(f.fma, "fma");
  add(f.avx512f, "avx512f");
  add(f.avx512bw, "avx512bw");
  add(f.avx512bf16, "avx512bf16");
  return out;
}

CpuPath cpu_path() {
  static const CpuPath path = [] {
    const CpuFeatures& f = cpu_features();
    CpuPath best = CpuPath::Scalar;
    if (f.avx2 && f.fma) best = CpuPath::Avx2;
    if (f.avx512f && f.avx512bw && f.avx512bf16) best = CpuPath::Avx512Bf16;
    const char* forced = std::getenv("ZN_CPU_PATH");
    if (forced && std::strcmp(forced, "scalar") == 0) return CpuPath::Scalar;
    if (forced && std::strcmp(forced, "avx2") == 0 && best != CpuPath::Scalar) return CpuPath::Avx2;
    return best;
  }();
  return path;
}

bool cpu_path_supported(CpuPath path) {
  const CpuFeatures& f = cpu_features();
  switch (path) {
    case CpuPath::Avx512Bf16: return f.avx512f && f.avx512bw && f.avx512bf16 && f.avx2 && f.fma;
    case CpuPath::Avx2: return f.avx2 && f.fma;
    default: return true;
  }
}

const char* cpu_path_name(CpuPath path) {
  switch (path) {
    case CpuPath::Avx512Bf16: return "avx512bf16";
    case CpuPath::Avx2: return "avx2";
    default: return "scalar";
  }
}

}  // namespace zn
