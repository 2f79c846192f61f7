// NCCL for JS (parallel/nccl_collectives.h does the work; this file converts arguments):
//   ncclLibrary() -> string            loads libnccl.so.2; "NCCL 2.30.7 (<file>)", or throws why not
//   ncclUniqueId() -> Uint8Array(128)  rank 0's id, which the other ranks receive over MPI
//   new NcclCommunicator()             then await open({uniqueId, rank, size, device, timeoutSeconds}):
//                                      joins the communicator (every rank must), at most timeoutSeconds
//   communicator.close() -> Promise    finalizes and destroys it (after any all-reduce in flight)
// A model sums its gradients with model.allReduceGradients(communicator) (model_binding.h).
#include <algorithm>
#include <memory>
#include <string>

#include "addon/binding.h"
#include "addon/cuda_register.h"
#include "parallel/nccl_collectives.h"

namespace zn::addon {

namespace {

using parallel::NcclCommunicator;

// Marks the objects this class made, so that open_communicator refuses any other object.
constexpr napi_type_tag kCommunicatorTag = {0x7a6e2d6e63636c2dULL, 0x636f6d6d756e6963ULL};

// Runs `work`, turning a C++ exception into a JS Error named after `op` (for the functions that
// take no options object).
template <typename Work>
auto guarded(Napi::Env env, const char* op, Work work) {
  try {
    return work();
  } catch (const std::exception& e) {
    throw Napi::Error::New(env, std::string(op) + ": " + e.what());
  }
}

Napi::Value NcclLibrary(const Napi::CallbackInfo& info) {
  return Napi::String::New(info.Env(), guarded(info.Env(), "ncclLibrary", [] { return parallel::nccl_library(); }));
}

Napi::Value NcclUniqueId(const Napi::CallbackInfo& info) {
  const parallel::NcclUniqueId id = guarded(info.Env(), "ncclUniqueId", [] { return parallel::nccl_unique_id(); });
  Napi::Uint8Array out = Napi::Uint8Array::New(info.Env(), id.size());
  std::copy(id.begin(), id.end(), out.Data());
  return out;
}

class CommunicatorWrap : public Napi::ObjectWrap<CommunicatorWrap> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "NcclCommunicator",
                       {InstanceMethod("open", &CommunicatorWrap::Open), InstanceMethod("close", &CommunicatorWrap::Close)});
  }

  explicit CommunicatorWrap(const Napi::CallbackInfo& info) : Napi::ObjectWrap<CommunicatorWrap>(info) {
    info.This().As<Napi::Object>().TypeTag(&kCommunicatorTag);
  }

  // Shared with each all-reduce in flight, so close() or garbage collection cannot free it under one.
  std::shared_ptr<std::shared_ptr<NcclCommunicator>> communicator = std::make_shared<std::shared_ptr<NcclCommunicator>>();

 private:
  bool opened_ = false;

  Napi::Value Open(const Napi::CallbackInfo& info) {
    Options options(info, "NcclCommunicator.open");
    if (opened_) options.error("open() was called already (one communicator per object)");
    const ArrayView<uint8_t> bytes = options.u8("uniqueId");
    options.expect_size("uniqueId", bytes, parallel::kNcclUniqueIdBytes);
    parallel::NcclUniqueId id;
    std::copy(bytes.data, bytes.data + bytes.size, id.begin());
    const int size = int(options.integer("size"));
    const int rank = int(options.integer("rank"));
    const int device = int(options.integer("device"));
    const double timeout = options.number("timeoutSeconds");
    if (size < 1 || rank < 0 || rank >= size) options.error("'rank' must be in [0, size), got rank " + std::to_string(rank) + " of " + std::to_string(size));
    if (device < 0) options.error("'device' must be a CUDA device ordinal, got " + std::to_string(device));
    if (!(timeout > 0)) options.error("'timeoutSeconds' must be positive");
    opened_ = true;
    auto slot = communicator;
    return run_async(options, [slot, id, rank, size, device, timeout] {
      *slot = std::make_shared<NcclCommunicator>(id, rank, size, device, timeout);
    });
  }

  Napi::Value Close(const Napi::CallbackInfo& info) {
    Options options(info, "NcclCommunicator.close");
    auto closing = std::make_shared<std::shared_ptr<NcclCommunicator>>(std::move(*communicator));
    *communicator = nullptr;
    // Off the main thread: finalizing waits for the other ranks (at most their timeout).
    return run_async(options, [closing] { closing->reset(); });
  }
};

}  // namespace

std::shared_ptr<NcclCommunicator> open_communicator(const Options& options, Napi::Object object) {
  if (!object.CheckTypeTag(&kCommunicatorTag)) options.error("expects an NcclCommunicator");
  std::shared_ptr<NcclCommunicator> communicator = *CommunicatorWrap::Unwrap(object)->communicator;
  if (!communicator) options.error("the NcclCommunicator is not open (await open({...}) first) or was closed");
  return communicator;
}

void register_nccl(Napi::Env env, Napi::Object exports) {
  exports.Set("ncclLibrary", Napi::Function::New(env, NcclLibrary, "ncclLibrary"));
  exports.Set("ncclUniqueId", Napi::Function::New(env, NcclUniqueId, "ncclUniqueId"));
  exports.Set("NcclCommunicator", CommunicatorWrap::Define(env));
}

}  // namespace zn::addon
