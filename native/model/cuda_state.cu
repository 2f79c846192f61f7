// CudaWeights and CudaTrainState (cuda_state.h): the GPU model's parameters in and out, and its
// optimizer step, on the device or offloaded to the host.
#include "model/cuda_state.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>

#include "core/errors.h"
#include "kernels/cpu/adamw.h"
#include "kernels/cuda/adamw.h"
#include "kernels/cuda/check.h"
#include "model/cuda_backend.h"
#include "model/mistral.h"
#include "model/optimizer_state.h"
#include "model/safetensors.h"

namespace zn::model {

void HostFloats::allocate(size_t count, const char* what) {
  memory_ = HugePageMemory(count * sizeof(float));
  ZN_CHECK(!empty() || count == 0, "model: cannot allocate ", count * sizeof(float),
           " bytes of host memory for the offloaded ", what);
}

// Page-locked host memory: what cudaMemcpyAsync copies from and to without blocking the host.
class PinnedBuffer {
 public:
  explicit PinnedBuffer(size_t bytes) { ZN_CUDA_CHECK(cudaMallocHost(&data_, bytes)); }
  ~PinnedBuffer() { cudaFreeHost(data_); }
  PinnedBuffer(const PinnedBuffer&) = delete;
  PinnedBuffer& operator=(const PinnedBuffer&) = delete;
  void* data() const { return data_; }

 private:
  void* data_ = nullptr;
};

// A CUDA event, owned (used here to wait for one copy, not for timing).
class Event {
 public:
  Event() { ZN_CUDA_CHECK(cudaEventCreate(&event_)); }
  ~Event() { cudaEventDestroy(event_); }
  Event(const Event&) = delete;
  Event& operator=(const Event&) = delete;
  cudaEvent_t get() const { return event_; }

 private:
  cudaEvent_t event_ = nullptr;
};

// profile_steps' timing of the offloaded step's copies: events just before a chunk's gradient
// copy and around its weight uploads, two of each (alternate chunks, as the buffers). Chunk i's
// uploads are known done once chunk i+2's gradients have arrived (same stream, issued earlier).
struct CopyEvents {
  Event fetch_started[2], upload_started[2], upload_ended[2];
  bool upload_pending[2] = {false, false};
};

// offload_optimizer's copy buffers, two of each kind, used by alternate chunks: while the host
// steps chunk i, chunk i+1's gradients come down and chunk i-1's new compute weights go up.
// grads_arrived[i % 2] marks the end of chunk i's gradient copy.
struct OffloadStaging {
  size_t chunk;  // elements
  PinnedBuffer grads0, grads1, weights0, weights1;
  Event grads_arrived[2];
  std::unique_ptr<CopyEvents> events;  // made by the first profiled step
  OffloadStaging(size_t chunk_elements, size_t weight_bytes)
      : chunk(chunk_elements),
        grads0(chunk * sizeof(float)),
        grads1(chunk * sizeof(float)),
        weights0(chunk * weight_bytes),
        weights1(chunk * weight_bytes) {}
  float* grads(size_t round) const { return static_cast<float*>((round % 2 ? grads1 : grads0).data()); }
  void* weights(size_t round) const { return (round % 2 ? weights1 : weights0).data(); }
};

namespace {

// offload_optimizer moves the gradient down and the compute weights up in chunks of this many
// elements (64 MiB of f32), through two pinned gradient buffers and two pinned weight buffers.
// ZN_OFFLOAD_CHUNK (elements) overrides it: the device check uses an odd size so that chunks
// split parameters, and it is a knob for tuning the copy pipeline on a device.
constexpr size_t kOffloadChunk = size_t(1) << 24;

size_t offload_chunk(size_t params) {
  size_t chunk = kOffloadChunk;
  if (const char* text = std::getenv("ZN_OFFLOAD_CHUNK")) {
    char* end = nullptr;
    const unsigned long long value = std::strtoull(text, &end, 10);
    ZN_CHECK(*text && *end == 0 && value > 0, "ZN_OFFLOAD_CHUNK must be a positive element count, got '", text, "'");
    chunk = size_t(value);
  }
  return std::min(params, chunk);
}

size_t weight_element_bytes(Precision precision) { return precision == Precision::BF16 ? sizeof(bf16) : sizeof(float); }

void sync(cudaStream_t stream) { ZN_CUDA_CHECK(cudaStreamSynchronize(stream)); }

void download(const float* device, size_t count, float* host, cudaStream_t stream) {
  ZN_CUDA_CHECK(cudaMemcpyAsync(host, device, count * sizeof(float), cudaMemcpyDeviceToHost, stream));
  sync(stream);
}

void upload(const float* host, size_t count, float* device, cudaStream_t stream) {
  ZN_CUDA_CHECK(cudaMemcpyAsync(device, host, count * sizeof(float), cudaMemcpyHostToDevice, stream));
  sync(stream);
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Weights

CudaWeights::CudaWeights(const std::vector<ParameterSpec>& table, CudaWeightBuffers buffers, cudaStream_t stream)
    : table_(table), buffers_(buffers), stream_(stream) {
  norm_slots(table, &norm_slots_);
}

// Matmul operand: the bf16 rounding in bf16 mode, else the f32 values.
ConstTensor CudaWeights::weight(const ParameterSpec& p) const {
  if (is_bf16()) return {buffers_.bf16_values + p.offset, DType::BF16};
  return {buffers_.f32_values + p.offset, DType::F32};
}

const float* CudaWeights::norm_weight(const ParameterSpec& p) const {
  if (!is_bf16()) return buffers_.f32_values + p.offset;
  float* values = norm_values(p);
  ZN_CHECK(values, "model: '", p.name, "' is not a norm weight");
  return values;
}

float* CudaWeights::norm_values(const ParameterSpec& p) const {
  const size_t slot = norm_slots_[size_t(&p - table_.data())];
  return is_bf16() && slot != kNoSlot ? buffers_.norms + slot : nullptr;
}

void CudaWeights::assign(const ParameterSpec& p, const float* host) {
  if (!is_bf16()) return upload(host, p.numel, buffers_.f32_values + p.offset, stream_);
  std::vector<bf16> rounded(p.numel);
  round_to_bf16(p.numel, host, rounded.data());
  ZN_CUDA_CHECK(cudaMemcpyAsync(buffers_.bf16_values + p.offset, rounded.data(), p.numel * sizeof(bf16),
                                cudaMemcpyHostToDevice, stream_));
  sync(stream_);
  if (float* norm = norm_values(p)) upload(host, p.numel, norm, stream_);
}

void CudaWeights::assign_range(const ParameterSpec& p, ElementRange range, const float* host) {
  if (range.empty()) return;
  if (!is_bf16()) return upload(host, range.size(), buffers_.f32_values + p.offset + range.begin, stream_);
  std::vector<bf16> rounded(range.size());
  round_to_bf16(range.size(), host, rounded.data());
  ZN_CUDA_CHECK(cudaMemcpyAsync(buffers_.bf16_values + p.offset + range.begin, rounded.data(),
                                range.size() * sizeof(bf16), cudaMemcpyHostToDevice, stream_));
  sync(stream_);
  if (float* norm = norm_values(p)) upload(host, range.size(), norm + range.begin, stream_);
}

void CudaWeights::read(const ParameterSpec& p, float* host) const {
  if (!is_bf16()) return download(buffers_.f32_values + p.offset, p.numel, host, stream_);
  if (const float* norm = norm_values(p)) return download(norm, p.numel, host, stream_);
  std::vector<bf16> values(p.numel);
  ZN_CUDA_CHECK(cudaMemcpyAsync(values.data(), buffers_.bf16_values + p.offset, p.numel * sizeof(bf16),
                                cudaMemcpyDeviceToHost, stream_));
  sync(stream_);
  for (size_t i = 0; i < p.numel; ++i) host[i] = bf16_to_f32(values[i]);
}

// ---------------------------------------------------------------------------------------------
// Train state

size_t CudaTrainState::offload_host_bytes(const ParameterGroup& group, Precision precision, ShardSpec shard) {
  const size_t params = shard_range(group.numel(), shard).size();
  const size_t staging = 2 * offload_chunk(params) * (sizeof(float) + weight_element_bytes(precision));
  return params * 3 * sizeof(float) + staging;
}

CudaTrainState::CudaTrainState(const ParameterGroup& group, bool offload, CudaWeights& weights,
                               CudaTrainBuffers buffers, CudaBackend& backend, cudaStream_t stream, ShardSpec shard)
    : group_(group),
      weights_(weights),
      buffers_(buffers),
      backend_(backend),
      stream_(stream),
      offload_(offload),
      spec_(shard),
      shard_(shard_range(group.numel(), shard)) {
  if (!offload) return;
  const size_t n = shard_.size();
  host_master_.allocate(n, "master weights");
  host_m_.allocate(n, "first moments");
  host_v_.allocate(n, "second moments");
  staging_ = std::make_unique<OffloadStaging>(offload_chunk(n), weights.is_bf16() ? sizeof(bf16) : sizeof(float));
}

CudaTrainState::~CudaTrainState() = default;

// f32 mode on the device: the weights' own values (at the table's offset); bf16: the master
// buffer; offloaded: the host master (both laid out by the group from the shard's first element).
float* CudaTrainState::master_at(const ParameterSpec& p, size_t at) const {
  const size_t index = moment_index(p, at);  // throws naming a frozen parameter
  if (offloaded()) return host_master_.data() + index;
  return weights_.is_bf16() ? buffers_.master + index : weights_.buffers().f32_values + p.offset + at;
}

void CudaTrainState::zero_grad() {
  ZN_CUDA_CHECK(cudaMemsetAsync(buffers_.grads, 0, group_.numel() * sizeof(float), stream_));
  sync(stream_);
}

void CudaTrainState::read_gradient(const ParameterSpec& p, float* host) const {
  download(buffers_.grads + group_.offset(p), p.numel, host, stream_);
}

void CudaTrainState::read_master(const ParameterSpec& p, float* host) const {
  if (!whole_master()) return weights_.read(p, host);
  if (offloaded()) {
    std::memcpy(host, master_at(p, 0), p.numel * sizeof(float));
    return;
  }
  download(master_at(p, 0), p.numel, host, stream_);
}

float* CudaTrainState::host_master(const ParameterSpec& p) const {
  return offloaded() && !sharded() ? master_at(p, 0) : nullptr;
}

void CudaTrainState::write_master(const ParameterSpec& p, const float* host) {
  if (!whole_master()) weights_.assign(p, host);  // the rest of the member is the other ranks' to step
  const ElementRange part = whole_master() ? ElementRange{0, p.numel} : owned(p);
  if (part.empty()) return;
  float* master = master_at(p, part.begin);
  if (!offloaded()) return upload(host + part.begin, part.size(), master, stream_);
  if (host != master) std::memcpy(master, host + part.begin, part.size() * sizeof(float));
}

// bf16 mode's f32 norm weights from the master (AdamW writes the matrices' rounding itself): the
// owned part of each (the whole norm when not sharded).
void CudaTrainState::copy_norms_from_master() {
  for (const ParameterSpec* p : group_.members()) {
    float* norm = weights_.norm_values(*p);
    const ElementRange part = owned(*p);
    if (!norm || part.empty()) continue;
    if (offloaded()) {
      upload(master_at(*p, part.begin), part.size(), norm + part.begin, stream_);
    } else {
      ZN_CUDA_CHECK(cudaMemcpyAsync(norm + part.begin, master_at(*p, part.begin), part.size() * sizeof(float),
                                    cudaMemcpyDeviceToDevice, stream_));
    }
  }
  sync(stream_);
}

void CudaTrainState::publish() {
  if (offloaded()) {
    for (const ParameterSpec* p : group_.members()) {
      const ElementRange part = owned(*p);
      if (!part.empty()) weights_.assign_range(*p, part, master_at(*p, part.begin));
    }
    return;
  }
  if (!weights_.is_bf16()) return;  // f32 mode: the master is the weights
  for (const ParameterSpec* p : group_.members()) {
    const ElementRange part = owned(*p);
    if (part.empty()) continue;
    backend_.round(long(part.size()), master_at(*p, part.begin),
                   {weights_.buffers().bf16_values + p->offset + part.begin, DType::BF16});
  }
  copy_norms_from_master();
}

std::vector<WeightSegment> CudaTrainState::weight_segments() const {
  const CudaWeightBuffers& w = weights_.buffers();
  void* data = weights_.is_bf16() ? static_cast<void*>(w.bf16_values) : static_cast<void*>(w.f32_values);
  return group_weight_segments(group_, spec_.count, data, weights_.is_bf16(),
                               [this](const ParameterSpec& p) { return weights_.norm_values(p); });
}

double CudaTrainState::grad_sum_of_squares(bool shard_only) const {
  const cuda::GradSpan all = shard_only ? cuda::GradSpan{buffers_.grads + shard_.begin, long(shard_.size())}
                                        : cuda::GradSpan{buffers_.grads, long(group_.numel())};
  cuda::sum_of_squares(&all, 1, buffers_.grad_sum_of_squares, stream_);
  double sum_of_squares = 0;
  ZN_CUDA_CHECK(cudaMemcpyAsync(&sum_of_squares, buffers_.grad_sum_of_squares, sizeof(double),
                                cudaMemcpyDeviceToHost, stream_));
  sync(stream_);
  return sum_of_squares;
}

void CudaTrainState::step(const AdamWOptions& hp, double total_squares, StepProfile* profile) {
  ++step_;
  StepTimer timer(profile != nullptr);
  if (offloaded()) {
    offloaded_adamw(hp, std::sqrt(total_squares), profile);
  } else {
    // The device computes the clipping coefficient from the global sum (this group's own when
    // it is the only one: the value it copied back, so the same bits).
    ZN_CUDA_CHECK(cudaMemcpyAsync(buffers_.grad_sum_of_squares, &total_squares, sizeof(double),
                                  cudaMemcpyHostToDevice, stream_));
    device_adamw(hp);
    timer.lap(profile ? &profile->device_adamw : nullptr);
  }
  if (weights_.is_bf16()) {
    timer.lap(nullptr);
    copy_norms_from_master();
    timer.lap(profile ? &profile->norms : nullptr);
  }
}

void CudaTrainState::device_adamw(const AdamWOptions& hp) {
  const CudaTrainBuffers& B = buffers_;
  cuda::clip_coefficient(B.grad_sum_of_squares, hp.max_grad_norm, B.clip_coefficient, stream_);
  std::vector<cuda::AdamWTensor> decay, no_decay;
  bf16* const rounded = weights_.buffers().bf16_values;  // written as AdamW goes (bf16 mode)
  for (const ParameterSpec* p : group_.members()) {  // the owned part of each (every element when not sharded)
    const ElementRange part = owned(*p);
    if (part.empty()) continue;
    const size_t at = group_.offset(*p) + part.begin, moment = moment_index(*p, part.begin);
    (p->decay ? decay : no_decay)
        .push_back({master_at(*p, part.begin), B.grads + at, B.adam_m + moment, B.adam_v + moment,
                    rounded ? rounded + p->offset + part.begin : nullptr, long(part.size())});
  }
  cuda::AdamWStep s{hp.lr, hp.beta1, hp.beta2, hp.eps, hp.weight_decay, step_, 1.0f};
  cuda::adamw_update(decay.data(), int(decay.size()), s, B.clip_coefficient, stream_);
  s.weight_decay = 0.0;
  cuda::adamw_update(no_decay.data(), int(no_decay.size()), s, B.clip_coefficient, stream_);
  sync(stream_);
}

// The CPU model's AdamW over the host master and moments, a chunk of the gradient at a time, on
// a pipeline over the staging buffers: chunk i is stepped on the host while the stream brings
// chunk i+1's gradients down and takes chunk i-1's new compute weights (bf16, or f32 in f32 mode)
// up. Before chunk i the host waits for chunk i's gradients only. That also covers the weight
// buffer it is about to fill: chunk i-2's upload, the last copy to read it, was issued before
// chunk i's gradient copy on the same stream, and a stream completes its copies in order.
// Chunks are ranges of the group's layout; the weights they go up to sit at the table's offsets,
// one copy for each run of members that is contiguous in both (one a chunk for a whole table).
// Sharded, the chunks cover this rank's range only: only its gradients come down, only its
// weights go up (the other ranks' arrive by the all-gather), and the host arrays hold that range.
void CudaTrainState::offloaded_adamw(const AdamWOptions& hp, double norm, StepProfile* profile) {
  OffloadStaging& S = *staging_;
  const float scale = cpu::clip_coefficient(norm, hp.max_grad_norm);
  const bool bf16_mode = weights_.is_bf16();
  const size_t first = shard_.begin, n = shard_.end, weight_bytes = bf16_mode ? sizeof(bf16) : sizeof(float);
  char* device_weights = bf16_mode ? reinterpret_cast<char*>(weights_.buffers().bf16_values)
                                   : reinterpret_cast<char*>(weights_.buffers().f32_values);
  CopyEvents* events = nullptr;
  if (profile) {
    if (!S.events) S.events = std::make_unique<CopyEvents>();
    events = S.events.get();
    events->upload_pending[0] = events->upload_pending[1] = false;
  }
  StepTimer timer(profile != nullptr);
  auto seconds = [](const Event& from, const Event& to) {
    float ms = 0;
    ZN_CUDA_CHECK(cudaEventElapsedTime(&ms, from.get(), to.get()));
    return double(ms) / 1e3;
  };
  auto read_uploads = [&](size_t slot) {  // a finished chunk's uploads, into the profile
    if (!events || !events->upload_pending[slot]) return;
    profile->weight_upload += seconds(events->upload_started[slot], events->upload_ended[slot]);
    events->upload_pending[slot] = false;
  };
  auto fetch = [&](size_t round) {
    const size_t begin = first + round * S.chunk;
    if (begin >= n) return;
    if (events) ZN_CUDA_CHECK(cudaEventRecord(events->fetch_started[round % 2].get(), stream_));
    ZN_CUDA_CHECK(cudaMemcpyAsync(S.grads(round), buffers_.grads + begin, std::min(S.chunk, n - begin) * sizeof(float),
                                  cudaMemcpyDeviceToHost, stream_));
    ZN_CUDA_CHECK(cudaEventRecord(S.grads_arrived[round % 2].get(), stream_));
  };
  fetch(0);
  fetch(1);
  for (size_t begin = first, round = 0; begin < n; begin += S.chunk, ++round) {
    const size_t end = std::min(n, begin + S.chunk);
    timer.lap(nullptr);
    ZN_CUDA_CHECK(cudaEventSynchronize(S.grads_arrived[round % 2].get()));
    if (events) {
      timer.lap(&profile->gradient_wait);
      profile->gradient_copy += seconds(events->fetch_started[round % 2], S.grads_arrived[round % 2]);
      read_uploads(round % 2);  // chunk round-2's: they went before this chunk's gradients
    }
    const float* grads = S.grads(round);
    char* weights = static_cast<char*>(S.weights(round));
    size_t run_begin = 0, run_end = 0, run_table = 0;  // the pending copy: [begin, end) of the group, at run_table
    bool uploading = false;
    auto flush = [&] {
      if (run_end <= run_begin) return;
      if (events && !uploading) ZN_CUDA_CHECK(cudaEventRecord(events->upload_started[round % 2].get(), stream_));
      uploading = true;
      ZN_CUDA_CHECK(cudaMemcpyAsync(device_weights + run_table * weight_bytes, weights + (run_begin - begin) * weight_bytes,
                                    (run_end - run_begin) * weight_bytes, cudaMemcpyHostToDevice, stream_));
    };
    for (const ParameterSpec* p : group_.members()) {
      const size_t at = group_.offset(*p);
      const size_t lo = std::max(begin, at), hi = std::min(end, at + p->numel);
      if (lo >= hi) continue;
      const cpu::AdamWStep s{hp.lr, hp.beta1, hp.beta2, hp.eps, p->decay ? hp.weight_decay : 0.0, step_, scale};
      bf16* copy = bf16_mode ? reinterpret_cast<bf16*>(weights) + (lo - begin) : nullptr;
      const size_t index = lo - first;  // in the host arrays
      cpu::adamw_update(long(hi - lo), s, host_master_.data() + index, grads + (lo - begin), host_m_.data() + index,
                        host_v_.data() + index, copy);
      if (!bf16_mode)
        std::memcpy(weights + (lo - begin) * weight_bytes, host_master_.data() + index, (hi - lo) * sizeof(float));
      const size_t table_at = p->offset + (lo - at);
      if (run_end == lo && run_table + (run_end - run_begin) == table_at) {
        run_end = hi;  // continues the pending run in both layouts
      } else {
        flush();
        run_begin = lo, run_end = hi, run_table = table_at;
      }
    }
    flush();
    if (events && uploading) {
      ZN_CUDA_CHECK(cudaEventRecord(events->upload_ended[round % 2].get(), stream_));
      events->upload_pending[round % 2] = true;
    }
    timer.lap(profile ? &profile->host_adamw : nullptr);
    fetch(round + 2);  // into the gradient buffer just stepped
  }
  timer.lap(nullptr);
  sync(stream_);
  if (events) {
    timer.lap(&profile->upload_wait);
    read_uploads(0);
    read_uploads(1);
  }
}

// The moments pass through host memory whole (write_safetensors takes every tensor at once).
OptimizerMoments CudaTrainState::moments() const {
  ZN_CHECK(!sharded(), "model: this rank holds a shard of the optimizer state (zero_stage): write its shard file");
  const OptimizerShard all = shard_moments(false);
  return {&group_, all.exp_avg, all.exp_avg_sq};
}

// The shard's moments, and bf16 mode's master (f32 mode's is the weights, which the model folder
// holds: the CPU model's shard files leave it out too), as host arrays laid out from shard_.begin.
OptimizerShard CudaTrainState::shard_moments(bool with_master) const {
  const size_t n = shard_.size();
  const bool master = with_master && weights_.is_bf16();
  if (offloaded()) return {&group_, shard_, host_m_.data(), host_v_.data(), master ? host_master_.data() : nullptr};
  moment_copies_.resize((master ? 3 : 2) * n);
  download(buffers_.adam_m, n, moment_copies_.data(), stream_);
  download(buffers_.adam_v, n, moment_copies_.data() + n, stream_);
  if (master) download(buffers_.master, n, moment_copies_.data() + 2 * n, stream_);
  return {&group_, shard_, moment_copies_.data(), moment_copies_.data() + n,
          master ? moment_copies_.data() + 2 * n : nullptr};
}

// Offloaded: read into the host arrays in place. On the device: through host staging, a chunk of
// the range at a time (kOffloadChunk elements, so that a 7B model's moments need no whole host copy).
// A bf16 master found in the files (a sharded bf16 run's) replaces the one the weights file gave.
void CudaTrainState::load_optimizer_state(const std::vector<const SafetensorsFile*>& files) {
  const bool master = weights_.is_bf16();
  bool master_read = false;
  long step = 0;
  if (offloaded()) {
    step = read_optimizer_range(files, {&group_, shard_, host_m_.data(), host_v_.data(), master ? host_master_.data() : nullptr},
                                &master_read);
  } else {
    std::vector<float> staging;
    size_t begin = shard_.begin;
    do {
      const ElementRange chunk{begin, std::min(shard_.end, begin + kOffloadChunk)};
      const size_t n = chunk.size(), at = begin - shard_.begin;
      staging.resize(3 * n);
      step = read_optimizer_range(files, {&group_, chunk, staging.data(), staging.data() + n,
                                          master ? staging.data() + 2 * n : nullptr}, &master_read);
      upload(staging.data(), n, buffers_.adam_m + at, stream_);
      upload(staging.data() + n, n, buffers_.adam_v + at, stream_);
      if (master_read) upload(staging.data() + 2 * n, n, buffers_.master + at, stream_);
      begin = chunk.end;
    } while (begin < shard_.end);
  }
  step_ = step;
  if (master_read) publish();
}

}  // namespace zn::model
