// NCCL through dlopen: the entry points are resolved from libnccl.so.2 at the first use and
// called with nccl.h's types (the header the build found: the nvidia-nccl-cu13 wheel's or the
// toolkit's). Not run on a GPU yet: bench/device-check.sh's NCCL part is its first run.
#include "parallel/nccl_collectives.h"

#include <chrono>
#include <string>
#include <thread>

#include "core/errors.h"

#if ZN_HAVE_NCCL
#include <dlfcn.h>
#include <nccl.h>

#include <cstring>
#include <memory>
#include <mutex>
#include <vector>

#include "kernels/cuda/check.h"
#endif

namespace zn::parallel {

#if ZN_HAVE_NCCL

namespace {

// NCCL 2.14 brought non-blocking communicators (ncclConfig_t.blocking, ncclInProgress) and
// ncclCommFinalize. A config from a newer nccl.h is read by an older library up to its own size
// (its ncclConfig_t starts with the same fields), so the wheel's header serves 2.14 and later.
constexpr int kMinimumVersion = 21400;  // NCCL_VERSION(2, 14, 0)

struct NcclApi {
  std::string file;
  int version = 0;
  decltype(&ncclGetVersion) get_version = nullptr;
  decltype(&ncclGetErrorString) error_string = nullptr;
  decltype(&ncclGetLastError) last_error = nullptr;
  decltype(&ncclGetUniqueId) get_unique_id = nullptr;
  decltype(&ncclCommInitRankConfig) init_rank_config = nullptr;
  decltype(&ncclCommGetAsyncError) get_async_error = nullptr;
  decltype(&ncclAllReduce) all_reduce = nullptr;
  decltype(&ncclReduce) reduce = nullptr;
  decltype(&ncclBroadcast) broadcast = nullptr;
  decltype(&ncclGroupStart) group_start = nullptr;
  decltype(&ncclGroupEnd) group_end = nullptr;
  decltype(&ncclCommFinalize) finalize = nullptr;
  decltype(&ncclCommDestroy) destroy = nullptr;
  decltype(&ncclCommAbort) abort = nullptr;
};

template <typename Function>
void resolve(void* library, const std::string& file, const char* name, Function& out) {
  out = reinterpret_cast<Function>(dlsym(library, name));
  ZN_CHECK(out, "NCCL: ", file, " has no ", name, " (an NCCL older than 2.14?)");
}

// The library's handle: the system's search (LD_LIBRARY_PATH, ldconfig) first, then the wheel
// the build compiled against. Kept open for the life of the process.
void* open_library(std::string& file) {
  std::string tried;
  std::vector<std::string> candidates{"libnccl.so.2"};
#ifdef ZN_NCCL_WHEEL_LIBRARY
  candidates.push_back(ZN_NCCL_WHEEL_LIBRARY);
#endif
  for (const std::string& candidate : candidates) {
    if (void* library = dlopen(candidate.c_str(), RTLD_NOW | RTLD_LOCAL)) {
      file = candidate;
      return library;
    }
    const char* why = dlerror();
    tried += "\n  " + candidate + ": " + (why ? why : "not found");
  }
  fail("NCCL (libnccl.so.2) is needed for data parallel on GPUs and was not found:", tried,
       "\nInstall NVIDIA's wheel (pip install nvidia-nccl-cu13) and put its nvidia/nccl/lib folder on "
       "LD_LIBRARY_PATH, or install NCCL 2 (libnccl2) from NVIDIA's CUDA repository.");
}

NcclApi load() {
  NcclApi api;
  void* library = open_library(api.file);
  resolve(library, api.file, "ncclGetVersion", api.get_version);
  resolve(library, api.file, "ncclGetErrorString", api.error_string);
  resolve(library, api.file, "ncclGetLastError", api.last_error);
  resolve(library, api.file, "ncclGetUniqueId", api.get_unique_id);
  resolve(library, api.file, "ncclCommInitRankConfig", api.init_rank_config);
  resolve(library, api.file, "ncclCommGetAsyncError", api.get_async_error);
  resolve(library, api.file, "ncclAllReduce", api.all_reduce);
  resolve(library, api.file, "ncclReduce", api.reduce);
  resolve(library, api.file, "ncclBroadcast", api.broadcast);
  resolve(library, api.file, "ncclGroupStart", api.group_start);
  resolve(library, api.file, "ncclGroupEnd", api.group_end);
  resolve(library, api.file, "ncclCommFinalize", api.finalize);
  resolve(library, api.file, "ncclCommDestroy", api.destroy);
  resolve(library, api.file, "ncclCommAbort", api.abort);
  ZN_CHECK(api.get_version(&api.version) == ncclSuccess, "NCCL: ncclGetVersion failed in ", api.file);
  ZN_CHECK(api.version >= kMinimumVersion, "NCCL: ", api.file, " is version ", api.version,
           "; data parallel needs NCCL 2.14 or later (pip install nvidia-nccl-cu13)");
  return api;
}

// Loaded once; a failed load is retried on the next use (and fails the same way, saying why).
const NcclApi& nccl() {
  static std::mutex mutex;
  static std::unique_ptr<NcclApi> api;
  std::lock_guard<std::mutex> lock(mutex);
  if (!api) api = std::make_unique<NcclApi>(load());
  return *api;
}

std::string result_text(ncclResult_t result) {
  return std::string(nccl().error_string(result)) + " (" + std::to_string(int(result)) + ")";
}

std::string version_text(int code) {
  // NCCL_VERSION(X, Y, Z) = X * 10000 + Y * 100 + Z from 2.9 on (the versions accepted here).
  return std::to_string(code / 10000) + "." + std::to_string(code / 100 % 100) + "." + std::to_string(code % 100);
}

double now_seconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// A poll of NCCL or the stream: short sleeps, so a waiting worker thread does not hold a core.
void pause() { std::this_thread::sleep_for(std::chrono::microseconds(100)); }

}  // namespace

std::string nccl_library() {
  const NcclApi& api = nccl();
  return "NCCL " + version_text(api.version) + " (" + api.file + ")";
}

NcclUniqueId nccl_unique_id() {
  ncclUniqueId id;
  const ncclResult_t result = nccl().get_unique_id(&id);
  ZN_CHECK(result == ncclSuccess, "NCCL: ncclGetUniqueId failed: ", result_text(result), ": ",
           nccl().last_error(nullptr));
  static_assert(sizeof(id.internal) == kNcclUniqueIdBytes, "NCCL_UNIQUE_ID_BYTES changed");
  NcclUniqueId bytes;
  std::memcpy(bytes.data(), id.internal, kNcclUniqueIdBytes);
  return bytes;
}

NcclCommunicator::NcclCommunicator(const NcclUniqueId& id, int rank, int size, int device, double timeout_seconds)
    : rank_(rank), size_(size), device_(device), timeout_seconds_(timeout_seconds) {
  ZN_CHECK(size >= 1 && rank >= 0 && rank < size, "NCCL: rank ", rank, " of ", size, " is not a rank");
  ZN_CHECK(timeout_seconds > 0, "NCCL: the timeout must be positive, got ", timeout_seconds);
  const NcclApi& api = nccl();
  try {
    // ncclCommInitRank* binds the communicator to the calling thread's current device.
    ZN_CUDA_CHECK(cudaSetDevice(device_));
    ZN_CUDA_CHECK(cudaEventCreateWithFlags(&done_, cudaEventDisableTiming));
    ncclUniqueId unique;
    std::memcpy(unique.internal, id.data(), kNcclUniqueIdBytes);
    ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
    config.blocking = 0;  // every call returns at once; the waits below poll against the deadline
    const double deadline = now_seconds() + timeout_seconds_;
    const ncclResult_t result = api.init_rank_config(&comm_, size_, unique, rank_, &config);
    if (result != ncclSuccess && result != ncclInProgress) {
      abort_with("ncclCommInitRankConfig failed: " + result_text(result) + ": " + api.last_error(comm_));
    }
    wait_ready("joining the communicator (ncclCommInitRankConfig: every rank must join)", deadline);
  } catch (...) {
    if (comm_) api.abort(comm_);  // null when abort_with has aborted it already
    if (done_) cudaEventDestroy(done_);
    throw;
  }
}

NcclCommunicator::~NcclCommunicator() {
  if (done_) {
    cudaSetDevice(device_);
    cudaEventDestroy(done_);
  }
  if (!comm_) return;  // never joined, or aborted
  const NcclApi& api = nccl();
  // ncclCommFinalize flushes the communicator's work and returns ncclInProgress until every rank
  // is quiescent; then ncclCommDestroy frees it without blocking. A rank that cannot get there
  // within the deadline aborts instead (ncclCommDestroy could wait for ever).
  const double deadline = now_seconds() + timeout_seconds_;
  ncclResult_t state = api.finalize(comm_);
  while (state == ncclSuccess || state == ncclInProgress) {
    if (api.get_async_error(comm_, &state) != ncclSuccess) break;
    if (state != ncclInProgress || now_seconds() > deadline) break;
    pause();
  }
  if (state == ncclSuccess) {
    api.destroy(comm_);
  } else {
    api.abort(comm_);
  }
}

std::string NcclCommunicator::who() const {
  return "NCCL rank " + std::to_string(rank_) + " of " + std::to_string(size_) + " (GPU " + std::to_string(device_) + ")";
}

void NcclCommunicator::abort_with(const std::string& message) {
  if (comm_) nccl().abort(comm_);  // stops this rank's NCCL kernels; the communicator is gone
  comm_ = nullptr;
  fail(who(), ": ", message);
}

void NcclCommunicator::wait_ready(const std::string& what, double deadline) {
  const NcclApi& api = nccl();
  for (;;) {
    ncclResult_t state = ncclInProgress;
    const ncclResult_t result = api.get_async_error(comm_, &state);
    if (result != ncclSuccess) abort_with(what + ": ncclCommGetAsyncError failed: " + result_text(result));
    if (state == ncclSuccess) return;
    if (state != ncclInProgress) abort_with(what + ": " + result_text(state) + ": " + api.last_error(comm_));
    if (now_seconds() > deadline) {
      abort_with(what + " did not complete within " + std::to_string(timeout_seconds_) +
                 " s (ddp_timeout): another rank is stuck or gone; the communicator was aborted");
    }
    pause();
  }
}

template <class Collective>
void NcclCommunicator::run(cudaStream_t stream, const std::string& what, const char* call, Collective collective) {
  std::lock_guard<std::mutex> lock(calls_);
  ZN_CHECK(comm_, who(), ": ", what, ": the communicator was aborted by an earlier error");
  const NcclApi& api = nccl();
  ZN_CUDA_CHECK(cudaSetDevice(device_));
  const double deadline = now_seconds() + timeout_seconds_;
  // Queued on `stream` after the work that wrote the data (in place: sendbuff == recvbuff).
  const ncclResult_t result = collective(api);
  if (result != ncclSuccess && result != ncclInProgress) {
    abort_with(what + ": " + call + " failed: " + result_text(result) + ": " + api.last_error(comm_));
  }
  wait_ready(what + " (queueing " + call + ")", deadline);  // a non-blocking call may still be queueing
  ZN_CUDA_CHECK(cudaEventRecord(done_, stream));
  for (;;) {
    const cudaError_t status = cudaEventQuery(done_);
    if (status == cudaSuccess) return;
    if (status != cudaErrorNotReady) abort_with(what + ": CUDA error while waiting: " + cudaGetErrorString(status));
    // A peer's failure shows here (ncclRemoteError, ncclSystemError) while the kernel spins.
    wait_ready(what, deadline);
    if (now_seconds() > deadline) {
      abort_with(what + " did not complete within " + std::to_string(timeout_seconds_) +
                 " s (ddp_timeout): another rank is stuck or gone; the communicator was aborted");
    }
    pause();
  }
}

void NcclCommunicator::all_reduce_sum(float* data, size_t count, cudaStream_t stream, const std::string& what) {
  if (count == 0) return;
  run(stream, what, "ncclAllReduce", [&](const NcclApi& api) {
    return api.all_reduce(data, data, count, ncclFloat32, ncclSum, comm_, stream);
  });
}

namespace {

// One call per rank with a non-empty range inside ncclGroupStart/End; `each(r, offset, count)`
// queues rank r's. Returns the first failure (ncclGroupEnd is called after one, to close the group).
template <class Each>
ncclResult_t grouped(const NcclApi& api, const std::vector<size_t>& counts, Each each) {
  ncclResult_t result = api.group_start();
  if (result != ncclSuccess) return result;
  size_t offset = 0;
  for (size_t r = 0; r < counts.size(); offset += counts[r], ++r) {
    if (counts[r] == 0) continue;  // every rank skips the same ranks: the counts are the same everywhere
    result = each(int(r), offset, counts[r]);
    if (result != ncclSuccess && result != ncclInProgress) break;
  }
  const ncclResult_t ended = api.group_end();
  return result != ncclSuccess && result != ncclInProgress ? result : ended;
}

}  // namespace

void NcclCommunicator::reduce_scatter_sum(float* data, const std::vector<size_t>& counts, cudaStream_t stream,
                                          const std::string& what) {
  ZN_CHECK(counts.size() == size_t(size_), who(), ": ", what, ": ", counts.size(), " ranges for ", size_, " ranks");
  run(stream, what, "ncclReduce (grouped)", [&](const NcclApi& api) {
    return grouped(api, counts, [&](int root, size_t offset, size_t count) {
      return api.reduce(data + offset, data + offset, count, ncclFloat32, ncclSum, root, comm_, stream);
    });
  });
}

void NcclCommunicator::all_gather(void* data, NcclElement element, const std::vector<size_t>& counts,
                                  cudaStream_t stream, const std::string& what) {
  ZN_CHECK(counts.size() == size_t(size_), who(), ": ", what, ": ", counts.size(), " ranges for ", size_, " ranks");
  const ncclDataType_t type = element == NcclElement::BF16 ? ncclBfloat16 : ncclFloat32;
  const size_t width = element == NcclElement::BF16 ? 2 : sizeof(float);
  char* bytes = static_cast<char*>(data);
  run(stream, what, "ncclBroadcast (grouped)", [&](const NcclApi& api) {
    return grouped(api, counts, [&](int root, size_t offset, size_t count) {
      return api.broadcast(bytes + offset * width, bytes + offset * width, count, type, root, comm_, stream);
    });
  });
}

#else  // built without nccl.h

namespace {
[[noreturn]] void not_built() {
  fail("NCCL: this CUDA addon was built without nccl.h, so data parallel on GPUs is unavailable; rebuild with "
       "the nvidia-nccl-cu13 wheel installed (bash scripts/build-cuda.sh installs it) or ZN_NCCL_ROOT set");
}
}  // namespace

std::string nccl_library() { not_built(); }
NcclUniqueId nccl_unique_id() { not_built(); }
NcclCommunicator::NcclCommunicator(const NcclUniqueId&, int rank, int size, int device, double timeout_seconds)
    : rank_(rank), size_(size), device_(device), timeout_seconds_(timeout_seconds) {
  not_built();
}
NcclCommunicator::~NcclCommunicator() = default;
void NcclCommunicator::all_reduce_sum(float*, size_t, cudaStream_t, const std::string&) { not_built(); }
void NcclCommunicator::reduce_scatter_sum(float*, const std::vector<size_t>&, cudaStream_t, const std::string&) {
  not_built();
}
void NcclCommunicator::all_gather(void*, NcclElement, const std::vector<size_t>&, cudaStream_t, const std::string&) {
  not_built();
}

#endif

}  // namespace zn::parallel
