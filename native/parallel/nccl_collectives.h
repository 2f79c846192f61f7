// The gradient sum of data-parallel training on GPU ranks, over NCCL (never a home-made
// transport). NCCL is loaded at run time (dlopen "libnccl.so.2", then the pip wheel the build
// compiled against), so the CUDA addon loads and runs one GPU on machines without NCCL; the
// first use says which library is missing and how to install it (the nvidia-nccl-cu13 wheel).
//
// One communicator per process, one rank per GPU: rank 0 makes the unique id, the launcher's
// control channel (MPI) carries its bytes to the others, and each rank joins on its own device.
// The communicator is non-blocking (ncclConfig_t.blocking = 0), so no NCCL call can wait
// forever: every wait polls ncclCommGetAsyncError against the deadline (ddp_timeout), and an
// error or a deadline passed aborts the communicator (ncclCommAbort) and throws zn::Error naming
// this rank and what it waited for.
//
// Built without nccl.h (ZN_HAVE_NCCL unset: the CUDA emulator, a toolkit without NCCL and no
// wheel), every entry point throws saying so.
#pragma once
#include <cuda_runtime_api.h>

#include <array>
#include <cstddef>
#include <mutex>
#include <string>
#include <vector>

struct ncclComm;  // nccl.h's ncclComm_t is `struct ncclComm*`

namespace zn::parallel {

constexpr size_t kNcclUniqueIdBytes = 128;  // NCCL_UNIQUE_ID_BYTES
using NcclUniqueId = std::array<unsigned char, kNcclUniqueIdBytes>;

enum class NcclElement { F32, BF16 };  // what all_gather moves (bf16: a bf16 model's weights)

// "NCCL 2.30.7 (<file>)": loads the library; throws when it is absent or older than 2.14 (the
// first with non-blocking communicators).
std::string nccl_library();
// ncclGetUniqueId, called on rank 0 only.
NcclUniqueId nccl_unique_id();

class NcclCommunicator {
 public:
  // ncclCommInitRankConfig on `device` (the rank's LOCAL_RANK); waits, at most timeout_seconds,
  // until every rank has joined.
  NcclCommunicator(const NcclUniqueId& id, int rank, int size, int device, double timeout_seconds);
  // Destroys the communicator (finalize, then destroy), or aborts it when that cannot finish.
  ~NcclCommunicator();
  NcclCommunicator(const NcclCommunicator&) = delete;
  NcclCommunicator& operator=(const NcclCommunicator&) = delete;

  int rank() const { return rank_; }
  int size() const { return size_; }
  int device() const { return device_; }

  // Sums `count` f32 values of device memory across the ranks, in place, on `stream` (after the
  // work already queued there), and waits until the sum is done. `what` names it in errors. One
  // call at a time (NCCL forbids concurrent calls on a communicator).
  void all_reduce_sum(float* data, size_t count, cudaStream_t stream, const std::string& what);

  // ZeRO on unequal ranges (zero_shard.h): `data` holds sum(counts) elements, rank r's range
  // being counts[r] elements after the ranges of ranks 0..r-1 (every rank passes the same counts).
  // NCCL's ncclReduceScatter and ncclAllGather take one count for every rank, and the shard
  // ranges differ by up to a cache line (and a range may be empty), so these are one NCCL group
  // (ncclGroupStart/End: one launch, the collectives progressing together) of a collective per
  // rank: ncclReduce to root r, or ncclBroadcast from root r, of rank r's range, in place. Padding
  // to equal counts would need a second buffer of the whole group (the gradients of 7B are 27
  // GiB) or copies in and out of one; the grouped form moves the same bytes per rank and needs
  // no memory. Same stream, waiting and timeout/abort handling as all_reduce_sum.
  // reduce_scatter_sum: this rank's range becomes the ranks' f32 sum; the rest of `data` is left
  // as this rank's own values.
  void reduce_scatter_sum(float* data, const std::vector<size_t>& counts, cudaStream_t stream, const std::string& what);
  // all_gather: every range from its owner to every rank, in place.
  void all_gather(void* data, NcclElement element, const std::vector<size_t>& counts, cudaStream_t stream,
                  const std::string& what);

 private:
  // Polls until the communicator leaves ncclInProgress; aborts and throws on an error or past
  // the deadline.
  void wait_ready(const std::string& what, double deadline);
  [[noreturn]] void abort_with(const std::string& message);
  // Queues `collective` (NCCL calls, returning the first failure) on `stream`, then waits for it
  // to finish, at most the timeout; `call` names the NCCL function in errors.
  template <class Collective>
  void run(cudaStream_t stream, const std::string& what, const char* call, Collective collective);
  std::string who() const;  // "NCCL rank R of N (GPU d)"

  ncclComm* comm_ = nullptr;
  int rank_, size_, device_;
  double timeout_seconds_;
  cudaEvent_t done_ = nullptr;  // recorded after each all-reduce, polled until it completes
  std::mutex calls_;
};

}  // namespace zn::parallel
