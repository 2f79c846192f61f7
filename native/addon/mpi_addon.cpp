// The MPI addon's entry point (zn_mpi.node, built only where MPI is found; see
// native/mpi-config.cjs): argument checks and async wrappers over native/parallel's collectives.
// One collective at a time: a second call while one runs is an error, as the ranks must enter
// collectives in the same order.
#include <dlfcn.h>
#include <mpi.h>
#include <napi.h>

#include <atomic>
#include <memory>
#include <vector>

#include "addon/binding.h"
#include "parallel/mpi_collectives.h"

namespace {

using zn::addon::ArrayView;
using zn::addon::Options;
using zn::parallel::Element;

std::shared_ptr<std::atomic<bool>> busy = std::make_shared<std::atomic<bool>>(false);

// Node loads addons RTLD_LOCAL, which hides libmpi's symbols from the plugins Open MPI dlopens
// at MPI_Init (they fail with "undefined symbol"); reopening libmpi RTLD_GLOBAL exposes them
// (mpi4py does the same).
void expose_mpi_symbols() {
  Dl_info where{};
  if (dladdr(reinterpret_cast<void*>(&MPI_Init_thread), &where) && where.dli_fname) {
    dlopen(where.dli_fname, RTLD_NOW | RTLD_GLOBAL | RTLD_NOLOAD);
  }
}

struct Buffer {
  void* data = nullptr;
  size_t count = 0;
  Element element = Element::F32;
};

Buffer read_buffer(const Options& o, const char* name) {
  switch (o.typed_array_type(name)) {
    case napi_float32_array: {
      auto v = o.f32(name);
      return {v.data, v.size, Element::F32};
    }
    case napi_float64_array: {
      auto v = o.f64(name);
      return {v.data, v.size, Element::F64};
    }
    case napi_int32_array: {
      auto v = o.i32(name);
      return {v.data, v.size, Element::I32};
    }
    case napi_uint8_array: {
      auto v = o.u8(name);
      return {v.data, v.size, Element::U8};
    }
    case napi_uint16_array: {
      auto v = o.u16(name);
      return {v.data, v.size, Element::U16};
    }
    default:
      o.error(std::string("'") + name + "' must be a Float32Array, Float64Array, Int32Array, Uint16Array or Uint8Array");
  }
}

// Claims the communicator for one collective; released when the promise settles.
Napi::Promise collective(const Options& o, std::function<void()> work,
                         std::function<Napi::Value(Napi::Env)> result = nullptr) {
  if (busy->exchange(true)) o.error("another collective is still running (await each one before the next)");
  auto flag = busy;
  return zn::addon::run_async(
      o,
      [work = std::move(work), flag] {
        struct Release {
          std::shared_ptr<std::atomic<bool>> flag;
          ~Release() { flag->store(false); }
        } release{flag};
        work();
      },
      std::move(result));
}

// init() -> {rank, size, threadMultiple, library}
Napi::Value Init(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  zn::parallel::WorldInfo world;
  try {
    expose_mpi_symbols();
    world = zn::parallel::init();
  } catch (const std::exception& e) {
    throw Napi::Error::New(env, std::string("init: ") + e.what());
  }
  Napi::Object out = Napi::Object::New(env);
  out.Set("rank", world.rank);
  out.Set("size", world.size);
  out.Set("threadMultiple", world.thread_multiple);
  out.Set("library", world.library);
  return out;
}

Napi::Value Finalize(const Napi::CallbackInfo& info) {
  if (busy->load()) throw Napi::Error::New(info.Env(), "finalize: a collective is still running");
  try {
    zn::parallel::finalize();
  } catch (const std::exception& e) {
    throw Napi::Error::New(info.Env(), std::string("finalize: ") + e.what());
  }
  return info.Env().Undefined();
}

// allReduceSum({data: Float32Array | Float64Array}) -> Promise<void>, summed in place.
Napi::Value AllReduceSum(const Napi::CallbackInfo& info) {
  Options o(info, "allReduceSum");
  const Buffer b = read_buffer(o, "data");
  if (b.element != Element::F32 && b.element != Element::F64) o.error("'data' must be a Float32Array or Float64Array");
  return collective(o, [b] { zn::parallel::all_reduce_sum(b.data, b.count, b.element); });
}

// broadcast({data, root}) -> Promise<void>: root's values into every rank's data.
Napi::Value Broadcast(const Napi::CallbackInfo& info) {
  Options o(info, "broadcast");
  const Buffer b = read_buffer(o, "data");
  const int root = int(o.integer("root"));
  return collective(o, [b, root] { zn::parallel::broadcast(b.data, b.count, b.element, root); });
}

// allGather({data, out}) -> Promise<void>: every rank's data, in rank order, into out
// (size x data's length, the same element type).
Napi::Value AllGather(const Napi::CallbackInfo& info) {
  Options o(info, "allGather");
  const Buffer b = read_buffer(o, "data");
  const Buffer out = read_buffer(o, "out");
  if (out.element != b.element) o.error("'out' must have the element type of 'data'");
  int size = 1;
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  if (out.count != b.count * size_t(size)) {
    o.error("'out' must hold " + std::to_string(b.count * size_t(size)) + " elements (" + std::to_string(size) +
            " ranks x " + std::to_string(b.count) + "), got " + std::to_string(out.count));
  }
  return collective(o, [b, out] { zn::parallel::all_gather(b.data, b.count, b.element, out.data); });
}

// The per-rank counts of an in-place ZeRO collective: one per rank, adding up to the buffer's length.
std::vector<size_t> read_counts(const Options& o, const Buffer& b) {
  const ArrayView<double> given = o.f64("counts");
  int size = 1;
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  if (given.size != size_t(size)) o.error("'counts' must hold one count per rank (" + std::to_string(size) + "), got " + std::to_string(given.size));
  std::vector<size_t> counts;
  size_t total = 0;
  for (size_t r = 0; r < given.size; ++r) {
    const double c = given.data[r];
    if (!(c >= 0) || c != double(size_t(c))) o.error("'counts' must hold non-negative integers");
    counts.push_back(size_t(c));
    total += size_t(c);
  }
  if (total != b.count) o.error("'counts' add up to " + std::to_string(total) + ", but 'data' holds " + std::to_string(b.count));
  return counts;
}

// allGatherInPlace({data, counts: Float64Array}) -> Promise<void>: rank r's part (counts[r]
// elements after the parts of the ranks before it) into every rank's data.
Napi::Value AllGatherInPlace(const Napi::CallbackInfo& info) {
  Options o(info, "allGatherInPlace");
  const Buffer b = read_buffer(o, "data");
  const std::vector<size_t> counts = read_counts(o, b);
  return collective(o, [b, counts] { zn::parallel::all_gather_in_place(b.data, counts, b.element); });
}

// reduceScatterInPlace({data: Float32Array | Float64Array, counts}) -> Promise<void>: the sum
// across the ranks of this rank's part, in place (the rest of data is left undefined).
Napi::Value ReduceScatterInPlace(const Napi::CallbackInfo& info) {
  Options o(info, "reduceScatterInPlace");
  const Buffer b = read_buffer(o, "data");
  if (b.element != Element::F32 && b.element != Element::F64) o.error("'data' must be a Float32Array or Float64Array");
  const std::vector<size_t> counts = read_counts(o, b);
  return collective(o, [b, counts] { zn::parallel::reduce_scatter_in_place(b.data, counts, b.element); });
}

Napi::Value Barrier(const Napi::CallbackInfo& info) {
  Options o(info, "barrier");
  return collective(o, [] { zn::parallel::barrier(); });
}

// abort({code}): MPI_Abort; the launcher ends every rank. Callable while a collective runs
// (the watchdog's way out of a collective that never completes).
Napi::Value Abort(const Napi::CallbackInfo& info) {
  Options o(info, "abort");
  zn::parallel::abort_job(int(o.integer("code", 1)));
}

Napi::Object InitModule(Napi::Env env, Napi::Object exports) {
  exports.Set("init", Napi::Function::New(env, Init, "init"));
  exports.Set("finalize", Napi::Function::New(env, Finalize, "finalize"));
  exports.Set("allReduceSum", Napi::Function::New(env, AllReduceSum, "allReduceSum"));
  exports.Set("broadcast", Napi::Function::New(env, Broadcast, "broadcast"));
  exports.Set("allGather", Napi::Function::New(env, AllGather, "allGather"));
  exports.Set("allGatherInPlace", Napi::Function::New(env, AllGatherInPlace, "allGatherInPlace"));
  exports.Set("reduceScatterInPlace", Napi::Function::New(env, ReduceScatterInPlace, "reduceScatterInPlace"));
  exports.Set("barrier", Napi::Function::New(env, Barrier, "barrier"));
  exports.Set("abort", Napi::Function::New(env, Abort, "abort"));
  return exports;
}

}  // namespace

NODE_API_MODULE(zn_mpi, InitModule)
