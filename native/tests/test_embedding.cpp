// Embedding gather / scatter-add against float64 references, bf16 tables, pad row, bad ids.
#include "harness.h"
#include "kernels/cpu/embedding.h"

using namespace zn;
using namespace zn::test;

namespace {

std::vector<int32_t> random_ids(long tokens, long vocab) {
  std::uniform_int_distribution<int32_t> pick(0, int32_t(vocab - 1));
  std::vector<int32_t> ids(tokens);
  for (auto& id : ids) id = pick(rng());
  return ids;
}

std::vector<double> gather_f64(long tokens, long dim, const std::vector<int32_t>& ids,
                               const std::vector<double>& table) {
  std::vector<double> out(tokens * dim);
  for (long t = 0; t < tokens; ++t)
    for (long j = 0; j < dim; ++j) out[t * dim + j] = table[ids[t] * dim + j];
  return out;
}

void check_forward(long tokens, long dim, long vocab) {
  const std::string shape = "T=" + std::to_string(tokens) + " dim=" + std::to_string(dim);
  const auto ids = random_ids(tokens, vocab);
  const auto table = random_f32(vocab * dim);
  std::vector<float> out(tokens * dim);
  poison(out);
  cpu::embedding_forward(tokens, dim, vocab, ids.data(), table.data(), DType::F32, out.data());
  expect_close(out, gather_f64(tokens, dim, ids, to_f64(table)), kF32RelTol, "embedding f32 " + shape);

  // A bf16 table: the gather is exact on the rounded values, and within bf16 tolerance of the
  // f32 values it was rounded from.
  const auto table_bf16 = to_bf16(table);
  poison(out);
  cpu::embedding_forward(tokens, dim, vocab, ids.data(), table_bf16.data(), DType::BF16, out.data());
  expect_close(out, gather_f64(tokens, dim, ids, to_f64(round_bf16(table))), kF32RelTol,
               "embedding bf16 (rounded table) " + shape);
  expect_close(out, gather_f64(tokens, dim, ids, to_f64(table)), kBf16RelTol, "embedding bf16 " + shape);
}

void check_backward(long tokens, long dim, long vocab, long pad_id, bool finite_differences) {
  const std::string shape = "T=" + std::to_string(tokens) + " dim=" + std::to_string(dim) +
                            " pad=" + std::to_string(pad_id);
  auto ids = random_ids(tokens, vocab);
  if (pad_id >= 0) ids[tokens / 2] = int32_t(pad_id);  // make sure the pad row is used
  const auto dout = random_f32(tokens * dim);
  const auto dtable_start = random_f32(vocab * dim);
  auto dtable = dtable_start;
  cpu::embedding_backward(tokens, dim, vocab, ids.data(), dout.data(), pad_id, dtable.data());

  // Reference: the gradient of L = sum(dout * gather(table)) is a scatter-add, pad row excluded.
  std::vector<double> grad(vocab * dim, 0.0);
  for (long t = 0; t < tokens; ++t)
    if (ids[t] != pad_id)
      for (long j = 0; j < dim; ++j) grad[ids[t] * dim + j] += dout[t * dim + j];
  std::vector<double> expected(vocab * dim);
  for (size_t i = 0; i < expected.size(); ++i) expected[i] = dtable_start[i] + grad[i];
  expect_close(dtable, expected, kF32RelTol, "embedding dtable " + shape);
  if (pad_id >= 0)
    for (long j = 0; j < dim; ++j)
      EXPECT(dtable[pad_id * dim + j] == dtable_start[pad_id * dim + j], "pad row changed at ", j);

  if (!finite_differences || pad_id >= 0) return;
  const auto doutd = to_f64(dout);
  const auto fd = finite_difference(
      [&](const std::vector<double>& table) {
        const auto out = gather_f64(tokens, dim, ids, table);
        double s = 0;
        for (size_t i = 0; i < out.size(); ++i) s += out[i] * doutd[i];
        return s;
      },
      to_f64(random_f32(vocab * dim)));
  expect_close(grad, fd, kFdRelTol, "embedding analytic dtable vs finite differences " + shape);
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

}  // namespace

ZN_TEST("embedding.forward_f32_and_bf16") {
  check_forward(1, 1, 1);
  check_forward(13, 7, 5);
  check_forward(517, 129, 301);  // threaded
}

ZN_TEST("embedding.backward_scatter_add") {
  check_backward(9, 3, 4, -1, true);   // few rows: many repeated ids
  check_backward(9, 3, 4, 2, false);   // pad row gets no gradient
  check_backward(333, 301, 50, 0, false);  // threaded over columns with repeats
  check_backward(333, 301, 50, -1, false);
}

ZN_TEST("embedding.out_of_range_ids_name_the_token") {
  const long dim = 4, vocab = 10;
  std::vector<float> table(vocab * dim, 1.0f), out(3 * dim), dtable(vocab * dim, 0.0f);
  std::vector<int32_t> ids{3, 10, 2};
  const std::string forward = error_of([&] {
    cpu::embedding_forward(3, dim, vocab, ids.data(), table.data(), DType::F32, out.data());
  });
  EXPECT(forward.find("token 1") != std::string::npos && forward.find("id 10") != std::string::npos,
         "message: ", forward);
  ids = {-5, 1, 2};
  const std::string backward = error_of([&] {
    cpu::embedding_backward(3, dim, vocab, ids.data(), out.data(), -1, dtable.data());
  });
  EXPECT(backward.find("token 0") != std::string::npos && backward.find("id -5") != std::string::npos,
         "message: ", backward);
  for (float v : dtable) EXPECT(v == 0.0f, "dtable written before the error");
}
