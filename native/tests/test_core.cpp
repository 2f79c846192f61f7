#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "core/bf16.h"
#include "core/cpu_features.h"
#include "core/memory.h"
#include "core/random.h"
#include "core/thread_pool.h"
#include "harness.h"

using namespace zn;

ZN_TEST("core.bf16_round_to_nearest_even") {
  // 1 + 2^-8 lies exactly between two bf16 values (1 and 1 + 2^-7): ties go to even (1).
  EXPECT(bf16_to_f32(f32_to_bf16(1.0f + 1.0f / 256)) == 1.0f);
  // 1 + 3 * 2^-8 lies between 1 + 2^-7 and 1 + 2^-6: ties go to even (1 + 2^-6).
  EXPECT(bf16_to_f32(f32_to_bf16(1.0f + 3.0f / 256)) == 1.0f + 1.0f / 64);
  EXPECT(std::isnan(bf16_to_f32(f32_to_bf16(std::nanf("")))));
  EXPECT(std::isinf(bf16_to_f32(f32_to_bf16(INFINITY))));
  // Above bf16's largest finite value after rounding: overflows to infinity, as the hardware does.
  EXPECT(std::isinf(bf16_to_f32(f32_to_bf16(3.4e38f))));
}

ZN_TEST("core.parallel_for_covers_every_index_once") {
  for (size_t count : {size_t(0), size_t(1), size_t(7), size_t(1000), size_t(100003)}) {
    std::vector<std::atomic<int>> hits(count);
    parallel_for(count, 16, [&](size_t begin, size_t end) {
      for (size_t i = begin; i < end; ++i) hits[i]++;
    });
    for (size_t i = 0; i < count; ++i) EXPECT(hits[i] == 1, "index ", i, " of ", count);
    std::vector<std::atomic<int>> each(count);
    parallel_for_each(count, [&](size_t i) { each[i]++; });
    for (size_t i = 0; i < count; ++i) EXPECT(each[i] == 1, "index ", i, " of ", count);
  }
}

ZN_TEST("core.parallel_for_rethrows_task_errors") {
  bool caught = false;
  try {
    parallel_for(1000, 1, [](size_t begin, size_t) {
      if (begin == 0) throw std::runtime_error("boom");
    });
  } catch (const std::runtime_error& e) {
    caught = std::string(e.what()) == "boom";
  }
  EXPECT(caught);
  // The pool still works after an error.
  std::atomic<size_t> total{0};
  parallel_for(1000, 1, [&](size_t begin, size_t end) { total += end - begin; });
  EXPECT(total == 1000);
}

// On Linux the kernel reports it: more than nothing, and no more than the machine's RAM.
ZN_TEST("core.available_host_memory_is_within_physical_memory") {
#if defined(__linux__)
  const size_t physical = size_t(sysconf(_SC_PHYS_PAGES)) * size_t(sysconf(_SC_PAGESIZE));
  const size_t available = available_host_memory();
  EXPECT(available > 0 && available <= physical, "available ", available, ", physical ", physical);
#endif
}

#if defined(__linux__)
// The THPeligible field of the /proc/self/smaps mapping that holds `p`: -1 when not found.
int thp_eligible(const void* p) {
  std::ifstream smaps("/proc/self/smaps");
  const uintptr_t at = reinterpret_cast<uintptr_t>(p);
  bool inside = false;
  for (std::string line; std::getline(smaps, line);) {
    unsigned long long lo = 0, hi = 0;
    char dash = 0;
    std::istringstream header(line);
    if (header >> std::hex >> lo >> dash >> hi && dash == '-' && line.find(':') > line.find(' ')) {
      inside = lo <= at && at < hi;
    } else if (inside && line.rfind("THPeligible:", 0) == 0) {
      return std::stoi(line.substr(12));
    }
  }
  return -1;
}
#endif

// HugePageMemory: zeroed, 2 MiB aligned, every byte writable, moves hand the mapping over, and
// where the kernel has transparent huge pages (mode always or madvise) the mapping is eligible.
ZN_TEST("core.huge_page_memory_is_zeroed_aligned_and_thp_eligible") {
  const size_t bytes = (size_t(5) << 20) + 123;
  HugePageMemory memory(bytes);
  EXPECT(memory.data() != nullptr && memory.size() >= bytes, "mapping of ", bytes, " bytes failed");
  EXPECT(reinterpret_cast<uintptr_t>(memory.data()) % (size_t(2) << 20) == 0, "not 2 MiB aligned: ", memory.data());
  auto* bytes_at = static_cast<unsigned char*>(memory.data());
  size_t nonzero = 0;
  for (size_t i = 0; i < memory.size(); ++i) nonzero += bytes_at[i] != 0;
  EXPECT(nonzero == 0, nonzero, " bytes not zero");
  std::memset(bytes_at, 0x5a, memory.size());
#if defined(__linux__)
  std::ifstream mode_file("/sys/kernel/mm/transparent_hugepage/enabled");
  std::string mode;
  std::getline(mode_file, mode);
  if (mode.find("[always]") != std::string::npos || mode.find("[madvise]") != std::string::npos) {
    EXPECT(thp_eligible(memory.data()) == 1, "THP mode '", mode, "' but the mapping's THPeligible is ",
           thp_eligible(memory.data()));
  } else {
    std::printf("     transparent huge pages: '%s' here, eligibility not checked\n", mode.c_str());
  }
#endif
  HugePageMemory moved(std::move(memory));
  EXPECT(memory.data() == nullptr && memory.size() == 0, "the moved-from buffer still owns memory");
  EXPECT(static_cast<unsigned char*>(moved.data())[bytes - 1] == 0x5a, "the moved buffer lost its contents");
  HugePageMemory empty(0);
  EXPECT(empty.data() == nullptr, "a zero-byte buffer maps memory");
}

// Normal draws: the moments and the one-sigma mass of N(0, std^2) within a few standard errors
// over 2^20 draws; a prefix of a longer fill equals the shorter fill (counter-based, so chunking
// and thread count cannot matter); streams and seeds differ; bf16 is the rounding of f32.
ZN_TEST("core.fill_normal_draws_seeded_normals") {
  const size_t n = size_t(1) << 20;
  const double sigma = 0.02;
  std::vector<float> a(n), prefix(n / 3 + 7), other(64), reseeded(64);
  fill_normal(n, 42, 5, sigma, a.data());
  double sum = 0, squares = 0;
  size_t within = 0;
  for (float x : a) {
    sum += x;
    squares += double(x) * x;
    within += std::fabs(x) < sigma;
  }
  const double mean = sum / double(n), var = squares / double(n) - mean * mean;
  EXPECT(std::fabs(mean) < 5 * sigma / std::sqrt(double(n)), "mean ", mean);
  // Var of the sample variance of a normal: 2 sigma^4 / n.
  EXPECT(std::fabs(var - sigma * sigma) < 5 * std::sqrt(2.0 / double(n)) * sigma * sigma, "variance ", var);
  const double p = std::erf(1 / std::sqrt(2.0));  // 0.6827
  EXPECT(std::fabs(double(within) / double(n) - p) < 5 * std::sqrt(p * (1 - p) / double(n)), "mass ", within);

  fill_normal(prefix.size(), 42, 5, sigma, prefix.data());
  EXPECT(std::equal(prefix.begin(), prefix.end(), a.begin()));
  fill_normal(other.size(), 42, 6, sigma, other.data());
  fill_normal(reseeded.size(), 43, 5, sigma, reseeded.data());
  size_t same_stream = 0, same_seed = 0;
  for (size_t i = 0; i < other.size(); ++i) {
    same_stream += other[i] == a[i];
    same_seed += reseeded[i] == a[i];
  }
  EXPECT(same_stream == 0 && same_seed == 0, same_stream, " ", same_seed);

  std::vector<bf16> rounded(prefix.size());
  fill_normal(rounded.size(), 42, 5, sigma, rounded.data());
  for (size_t i = 0; i < rounded.size(); ++i)
    EXPECT(rounded[i].bits == f32_to_bf16(a[i]).bits, "bf16 [", i, "]");
}

// Kernels that take an explicit CpuPath refuse one the CPU lacks by cpu_path_supported: it must
// accept the path cpu_path() picks (also under ZN_CPU_PATH) and follow the feature bits.
ZN_TEST("core.cpu_path_supported_follows_the_features") {
  const CpuFeatures& f = cpu_features();
  EXPECT(cpu_path_supported(cpu_path()), "cpu_path() = ", cpu_path_name(cpu_path()));
  EXPECT(cpu_path_supported(CpuPath::Scalar));
  EXPECT(cpu_path_supported(CpuPath::Avx2) == (f.avx2 && f.fma), cpu_features_string());
  EXPECT(cpu_path_supported(CpuPath::Avx512Bf16) ==
             (f.avx512f && f.avx512bw && f.avx512bf16 && f.avx2 && f.fma),
         cpu_features_string());
}
