// CPU emulation of native/kernels/cuda/ptx.cuh, written from the PTX ISA's description of each
// instruction (the data each lane holds), not from the kernels' use of it.
#pragma once
#include <cstdint>
#include <cstring>
#include <vector>

#include "cuda_bf16.h"

namespace zn::cuda::device {

namespace emu_detail {

inline float bf16_bits_to_float(uint16_t bits) {
  const uint32_t u = uint32_t(bits) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline uint16_t half_of(uint32_t reg, int which) { return uint16_t(which ? reg >> 16 : reg & 0xffffu); }
inline uint32_t pack(uint16_t lo, uint16_t hi) { return uint32_t(lo) | (uint32_t(hi) << 16); }

// ldmatrix .x4: lane i addresses row i % 8 of matrix i / 8 (8 x 8 b16 each). Without .trans lane
// l receives, from matrix j, row l / 4, columns 2 (l % 4) and 2 (l % 4) + 1; with .trans,
// rows 2 (l % 4) and 2 (l % 4) + 1 of column l / 4.
inline void ldmatrix(uint32_t (&r)[4], const void* row, bool trans) {
  const uint16_t* mine = static_cast<const uint16_t*>(row);
  std::vector<unsigned char> all;
  ::emu::warp_exchange(&mine, sizeof mine, all);
  const uint16_t* const* rows = reinterpret_cast<const uint16_t* const*>(all.data());
  const int lane = ::emu::current->lane, g = lane / 4, t = lane % 4;
  for (int j = 0; j < 4; ++j) {
    if (!trans) r[j] = pack(rows[8 * j + g][2 * t], rows[8 * j + g][2 * t + 1]);
    else r[j] = pack(rows[8 * j + 2 * t][g], rows[8 * j + 2 * t + 1][g]);
  }
}

}  // namespace emu_detail

inline void ldmatrix_x4(uint32_t (&r)[4], const void* smem_row) { emu_detail::ldmatrix(r, smem_row, false); }
inline void ldmatrix_x4_trans(uint32_t (&r)[4], const void* smem_row) { emu_detail::ldmatrix(r, smem_row, true); }

// mma.m16n8k16 .row.col bf16 -> f32. With g = lane / 4, t = lane % 4: A (16 x 16) a0..a7 in four
// registers: (g, 2t..2t+1), (g+8, 2t..), (g, 2t+8..), (g+8, 2t+8..); B (16 x 8) b0..b3 in two
// registers: (k = 2t..2t+1, n = g), (k = 2t+8.., n = g); C/D: (g, 2t..2t+1), (g+8, 2t..2t+1).
inline void mma_bf16_16816(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  struct Fragments {
    uint32_t a[4], b[2];
  } mine{{a[0], a[1], a[2], a[3]}, {b0, b1}};
  std::vector<unsigned char> all;
  ::emu::warp_exchange(&mine, sizeof mine, all);
  const Fragments* f = reinterpret_cast<const Fragments*>(all.data());
  auto A = [&](int row, int k) {
    const int lane = (row % 8) * 4 + (k % 8) / 2, reg = (row >= 8 ? 1 : 0) + (k >= 8 ? 2 : 0);
    return emu_detail::bf16_bits_to_float(emu_detail::half_of(f[lane].a[reg], k % 2));
  };
  auto B = [&](int k, int n) {
    const int lane = n * 4 + (k % 8) / 2, reg = k >= 8 ? 1 : 0;
    return emu_detail::bf16_bits_to_float(emu_detail::half_of(f[lane].b[reg], k % 2));
  };
  const int lane = ::emu::current->lane, g = lane / 4, t = lane % 4;
  for (int e = 0; e < 4; ++e) {
    const int row = g + (e / 2) * 8, col = 2 * t + e % 2;
    float sum = d[e];
    for (int k = 0; k < 16; ++k) sum += A(row, k) * B(k, col);
    d[e] = sum;
  }
}

inline void cp_async_16(void* smem, const void* global, bool valid) {
  ::emu::AsyncCopy copy{smem, {}};
  if (valid) std::memcpy(copy.data, global, 16);
  ::emu::current->open.push_back(copy);
}
inline void cp_async_commit() {
  ::emu::current->committed.push_back(std::move(::emu::current->open));
  ::emu::current->open.clear();
}
template <int Pending>
inline void cp_async_wait() {
  auto& groups = ::emu::current->committed;
  while (groups.size() > size_t(Pending)) {
    for (const ::emu::AsyncCopy& copy : groups.front()) std::memcpy(copy.dst, copy.data, 16);
    groups.erase(groups.begin());
  }
}

}  // namespace zn::cuda::device
