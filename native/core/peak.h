// This machine's measured multiply-add peak: tight FMA loops (and vdpbf16ps where the bf16 GEMM
// uses it) on every pool thread at once, with independent accumulator chains to cover the
// instruction latency. MFU divides achieved FLOP/s by these figures, so a kernel's fraction of
// peak is measured against what the silicon actually sustains here, not a datasheet number.
#pragma once
#include <vector>

namespace zn {

struct PeakLoop {
  const char* name;   // "fma-ymm", "fma-zmm", "vdpbf16ps"
  const char* dtype;  // "f32" or "bf16"
  double gflops;
};

struct Peaks {
  double f32 = 0;   // best f32 multiply-add rate (what f32 GEMM and AVX2 bf16 GEMM run on)
  double bf16 = 0;  // rate of the instruction bf16 GEMM runs on in this build and CPU
  int threads = 0;
  std::vector<PeakLoop> loops;  // every loop timed, in order
};

// Each loop keeps its best run over about `seconds_per_loop` (a shared machine disturbs some
// runs; the least disturbed one is the truer peak). Zero rates on CPUs without AVX2/FMA.
// With `thread_cpu_time` (one pool thread only) runs are timed by the calling thread's CPU
// clock, so time the OS gives to other processes does not count: the peak of one core on a
// loaded machine, to set beside kernels timed the same way (zn_bench's ZN_BENCH_CPU_TIME).
Peaks measure_peaks(double seconds_per_loop = 0.5, bool thread_cpu_time = false);

}  // namespace zn
