// The step buffer table (model/buffer_plan.h): its layout and checks, and the poisoning that
// makes a read past a buffer's planned lifetime show up as NaN in the decoder's output.
#include <cmath>
#include <string>
#include <vector>

#include "harness.h"
#include "model/cpu_backend.h"
#include "model/cpu_state.h"
#include "model/decoder.h"
#include "model/mistral.h"

using namespace zn;
using namespace zn::model;

namespace {

// The message of the zn::Error `body` throws ("" when it throws none).
template <typename Body>
std::string error_of(Body body) {
  try {
    body();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

bool contains(const std::string& text, const std::string& part) { return text.find(part) != std::string::npos; }

MistralConfig small_config(int layers) {
  MistralConfig c;
  c.vocab_size = 13;
  c.hidden_size = 8;
  c.intermediate_size = 12;
  c.num_layers = layers;
  c.num_heads = 4;
  c.num_kv_heads = 2;
  c.head_dim = 4;
  return c;
}

}  // namespace

ZN_TEST("buffer_plan.own_entries_are_laid_end_to_end_and_counted_by_category") {
  BufferPlan plan(64);
  const int a = plan.add("a", 10, {0, 3});
  const int b = plan.add("b", 64, {1, 1});
  const int c = plan.add("c", 1, {2, 2}, BufferCategory::Workspaces);
  plan.check();
  EXPECT(plan.offset(a) == 0 && plan.offset(b) == 64 && plan.offset(c) == 128);
  EXPECT(plan.total() == 192);
  EXPECT(plan.bytes(BufferCategory::Activations) == 128 && plan.bytes(BufferCategory::Workspaces) == 64);
  // Entries over others add no bytes.
  plan.over("b_later", 64, b, {2, 3});
  plan.in_place("a_again", 8, a, {3, 3});
  plan.check();
  EXPECT(plan.total() == 192 && plan.bytes(BufferCategory::Activations) == 128);
}

ZN_TEST("buffer_plan.sharing_bytes_while_both_live_is_an_error_naming_both") {
  {  // Over its host while the host still lives.
    BufferPlan plan(16);
    const int gate = plan.add("gate", 32, {1, 4});
    plan.over("panel", 32, gate, {4, 4});
    const std::string message = error_of([&] { plan.check(); });
    EXPECT(contains(message, "'panel'") && contains(message, "'gate'"), message);
  }
  {  // Over a dead host, but spanning a neighbour that is live.
    BufferPlan plan(16);
    const int gate = plan.add("gate", 32, {1, 2});
    plan.add("dres", 32, {3, 5});
    plan.over("panel", 64, gate, {4, 4});
    const std::string message = error_of([&] { plan.check(); });
    EXPECT(contains(message, "'panel'") && contains(message, "'dres'"), message);
  }
  {  // In place of a host it outgrows, and over more bytes than the plan has.
    BufferPlan plan(16);
    const int x = plan.add("x", 32, {0, 1});
    EXPECT(contains(error_of([&] { plan.in_place("y", 48, x, {1, 1}); }), "'y' (48 bytes) does not fit"));
    EXPECT(contains(error_of([&] { plan.over("z", 48, x, {2, 2}); }), "runs past"));
    EXPECT(contains(error_of([&] { plan.add("w", 4, {3, 2}); }), "'w' ends (phase 2) before it begins (phase 3)"));
  }
  {  // In place of a live host is the table's word that the op order allows it.
    BufferPlan plan(16);
    const int gate = plan.add("gate", 32, {1, 2});
    plan.in_place("dgate", 32, gate, {2, 2});
    EXPECT(error_of([&] { plan.check(); }).empty());
  }
}

ZN_TEST("buffer_plan.ended_bytes_leave_out_what_is_still_live") {
  BufferPlan plan(16);
  const int x = plan.add("x", 64, {0, 1});
  plan.in_place("x_tail_grad", 16, x, {1, 3});  // lives on in x's first 16 bytes
  const int y = plan.add("y", 32, {0, 2});
  plan.over("y_later", 32, y, {3, 3});
  plan.check();
  const std::vector<ByteRange>& at1 = plan.ended(1);
  EXPECT(at1.size() == 1 && at1[0].offset == 16 && at1[0].bytes == 48, "phase 1: ", at1.size(), " ranges");
  EXPECT(plan.ended(2).size() == 1 && plan.ended(2)[0].offset == 64 && plan.ended(2)[0].bytes == 32);
  EXPECT(plan.ended(3).size() == 2);  // x_tail_grad and y_later
  EXPECT(plan.ended(0).empty() && plan.ended(7).empty());
}

ZN_TEST("buffer_plan.every_cpu_table_passes_its_checks") {
  const MistralConfig c = small_config(3);
  for (int mode = 0; mode < 8; ++mode) {
    ModelOptions o;
    o.max_tokens = 5;  // rows that are no multiple of the alignment
    o.trainable = mode & 1;
    o.gradient_checkpointing = mode & 2;
    o.lora.rank = mode & 4 ? 2 : 0;
    o.lora.target_modules = {"all-linear"};
    DecoderBuffers buffers;
    const BufferPlan plan = plan_activations(c, o, nullptr, buffers);  // throws when a check fails
    EXPECT(plan.total() == plan_memory(c, o).activations, "mode ", mode);
    EXPECT(buffers.head_overwrites_top_mlp == o.trainable, "mode ", mode);
  }
}

// A frozen decoder's forward over the CPU table, then over the same table with one lifetime
// cut short: x_1 (layer 0's output) declared dead after layer 0, though layer 1 reads it. The
// poisoned bytes reach the log-probs as NaN.
ZN_TEST("buffer_plan.a_read_past_a_planned_lifetime_gives_nan") {
  const MistralConfig c = small_config(2);
  ModelOptions o;
  o.max_tokens = 6;
  o.trainable = false;
  const std::vector<ParameterSpec> table = parameter_table(c);
  const ParameterIndex index = index_parameters(c, table);
  CpuWeights weights(table, Precision::F32);
  for (const ParameterSpec& p : table) {
    std::vector<float> w = test::random_f32(p.numel, 0.5f);
    if (p.shape.size() == 1) {
      for (float& x : w) x += 1.0f;
    }
    weights.assign(p, w.data());
  }
  DecoderBuffers buffers;
  std::vector<float> arena(plan_activations(c, o, nullptr, buffers).total() / sizeof(float));
  const BufferPlan truth = plan_activations(c, o, arena.data(), buffers);
  // The same table, x_1's lifetime ending with layer 0 (phase forward(0)).
  const StepPhases P{c.num_layers};
  BufferPlan cut(64);
  for (const BufferEntry& e : truth.entries()) {
    const Lifetime live = e.name == "residual.1" ? Lifetime{P.forward(0), P.forward(0)} : e.live;
    if (e.placement == Placement::Own) cut.add(e.name, e.bytes, live, e.category);
    if (e.placement == Placement::Over) cut.over(e.name, e.bytes, e.host, live);
    if (e.placement == Placement::InPlace) cut.in_place(e.name, e.bytes, e.host, live);
  }
  cut.check();
  EXPECT(cut.total() == truth.total());

  const std::vector<int32_t> ids{1, 5, 7, 2, 9, 4}, positions{0, 1, 2, 3, 0, 1}, targets{5, 7, 2, -100, 4, -100};
  const std::vector<int32_t> cu{0, 4, 6};
  const DeviceBatch batch{6, 2, ids.data(), positions.data(), targets.data(), cu.data()};
  CpuBackend backend;
  Decoder decoder(c, index, backend, Recompute{true, true, true, false});
  buffers.base = arena.data();
  buffers.poison = true;
  auto logp_with = [&](const BufferPlan& plan) {
    buffers.plan = &plan;
    std::vector<float> logp(6);
    decoder.forward(batch, buffers, weights, false, logp.data());
    return logp;
  };
  const std::vector<float> good = logp_with(truth);
  const std::vector<float> poisoned = logp_with(cut);
  for (size_t t = 0; t < good.size(); ++t) {
    EXPECT(std::isfinite(good[t]), "token ", t);
    if (targets[t] != -100) EXPECT(std::isnan(poisoned[t]), "token ", t, ": ", poisoned[t]);
  }
  // Under the true table every poisoned byte is written before it is read again.
  const std::vector<float> again = logp_with(truth);
  for (size_t t = 0; t < good.size(); ++t) EXPECT(again[t] == good[t], "token ", t);
}
