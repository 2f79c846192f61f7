// RoPE against float64 references: the rotate-half layout and its backward, analytic and by
// finite differences; HF's float32 angles at large positions.
#include <cmath>

#include "harness.h"
#include "kernels/cpu/rope.h"

using namespace zn;
using namespace zn::test;

namespace {

struct Shape {
  long tokens;
  int heads;
  int head_dim;
};

// angle(t, i) in float64: position * theta^(-2i/D).
std::vector<double> angles_f64(const Shape& s, double theta, const std::vector<int32_t>& positions) {
  const int half = s.head_dim / 2;
  std::vector<double> angles(s.tokens * half);
  for (long t = 0; t < s.tokens; ++t)
    for (int i = 0; i < half; ++i)
      angles[t * half + i] = positions[t] * std::pow(theta, -2.0 * i / s.head_dim);
  return angles;
}

// The angle HF computes: every step rounded to float32 as torch does (see rope.cpp). Used where
// large positions make the f32 rounding of the angle itself visible.
std::vector<double> angles_hf_f32(const Shape& s, float theta, const std::vector<int32_t>& positions) {
  const int half = s.head_dim / 2;
  std::vector<double> angles(s.tokens * half);
  for (long t = 0; t < s.tokens; ++t)
    for (int i = 0; i < half; ++i) {
      const float inv_freq = 1.0f / float(std::pow(double(theta), double(float(2 * i) / float(s.head_dim))));
      angles[t * half + i] = double(float(positions[t]) * inv_freq);
    }
  return angles;
}

// x'[i] = x[i] cos - x[i + D/2] sin, x'[i + D/2] = x[i + D/2] cos + x[i] sin; sign -1 rotates back.
std::vector<double> rotate_f64(const Shape& s, const std::vector<double>& angles,
                               const std::vector<double>& x, double sign) {
  const int half = s.head_dim / 2;
  std::vector<double> out(x.size());
  for (long t = 0; t < s.tokens; ++t)
    for (int h = 0; h < s.heads; ++h)
      for (int i = 0; i < half; ++i) {
        const size_t base = (t * s.heads + h) * s.head_dim;
        const double c = std::cos(angles[t * half + i]), sn = sign * std::sin(angles[t * half + i]);
        out[base + i] = x[base + i] * c - x[base + i + half] * sn;
        out[base + i + half] = x[base + i + half] * c + x[base + i] * sn;
      }
  return out;
}

// Packed documents: positions restart at 0 at each boundary.
std::vector<int32_t> packed_positions(long tokens, const std::vector<long>& doc_lengths) {
  std::vector<int32_t> positions;
  for (long length : doc_lengths)
    for (long p = 0; p < length; ++p) positions.push_back(int32_t(p));
  while (long(positions.size()) < tokens) positions.push_back(int32_t(positions.size()));
  positions.resize(tokens);
  return positions;
}

double dot(const std::vector<double>& a, const std::vector<double>& b) {
  double s = 0;
  for (size_t i = 0; i < a.size(); ++i) s += a[i] * b[i];
  return s;
}

void check_case(const Shape& s, float theta, const std::vector<int32_t>& positions,
                const std::vector<double>& reference_angles, bool finite_differences) {
  const std::string shape = "T=" + std::to_string(s.tokens) + " H=" + std::to_string(s.heads) +
                            " D=" + std::to_string(s.head_dim);
  const auto x = random_f32(s.tokens * s.heads * s.head_dim);
  auto out = x;
  cpu::rope_forward(s.tokens, s.heads, s.head_dim, theta, positions.data(), out.data());
  expect_close(out, rotate_f64(s, reference_angles, to_f64(x), 1.0), kF32RelTol, "rope forward " + shape);

  // L = sum(dy * rope(x)): dL/dx is dy rotated back.
  const auto dy = random_f32(x.size());
  auto dx = dy;
  cpu::rope_backward(s.tokens, s.heads, s.head_dim, theta, positions.data(), dx.data());
  const auto dx_ref = rotate_f64(s, reference_angles, to_f64(dy), -1.0);
  expect_close(dx, dx_ref, kF32RelTol, "rope backward " + shape);

  if (!finite_differences) return;
  const auto dyd = to_f64(dy);
  const auto dx_fd = finite_difference(
      [&](const std::vector<double>& xv) { return dot(rotate_f64(s, reference_angles, xv, 1.0), dyd); },
      to_f64(x));
  expect_close(dx_ref, dx_fd, kFdRelTol, "rope analytic backward vs finite differences " + shape);
}

}  // namespace

ZN_TEST("rope.small_positions_against_float64_angles") {
  // Positions below 64: the f32 rounding of the angle stays far below the f32 tolerance, so the
  // plain float64 formula is the reference.
  for (Shape s : {Shape{5, 1, 2}, Shape{13, 3, 6}, Shape{31, 4, 10}}) {
    const auto positions = packed_positions(s.tokens, {7, 3, 11});
    check_case(s, 10000.0f, positions, angles_f64(s, 10000.0, positions), true);
  }
  const Shape s{40, 2, 128};
  const auto positions = packed_positions(s.tokens, {40});
  check_case(s, 1000000.0f, positions, angles_f64(s, 1e6, positions), false);
}

ZN_TEST("rope.large_positions_use_hf_float32_angles") {
  // Positions up to 32k, threaded: the kernel reproduces HF's f32 angle (inv_freq and
  // position * inv_freq rounded to f32) and rotates exactly.
  const Shape s{257, 4, 128};
  std::vector<int32_t> positions(s.tokens);
  for (long t = 0; t < s.tokens; ++t) positions[t] = int32_t((t * 127 + 5) % 32768);
  check_case(s, 10000.0f, positions, angles_hf_f32(s, 10000.0f, positions), false);
  // And the f32 angles matter there: the exact float64 angles differ by far more than 1e-5.
  auto out = random_f32(s.tokens * s.heads * s.head_dim);
  const auto x = to_f64(out);
  cpu::rope_forward(s.tokens, s.heads, s.head_dim, 10000.0f, positions.data(), out.data());
  EXPECT(rel_error(out, rotate_f64(s, angles_f64(s, 10000.0, positions), x, 1.0)) > 1e-5);
}

ZN_TEST("rope.rejects_odd_head_dim") {
  std::vector<float> x(6);
  std::vector<int32_t> positions{0, 1};
  bool caught = false;
  try {
    cpu::rope_forward(2, 1, 3, 10000.0f, positions.data(), x.data());
  } catch (const Error& e) {
    caught = std::string(e.what()).find("head_dim") != std::string::npos;
  }
  EXPECT(caught);
}
