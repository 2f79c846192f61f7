#include "parallel/mpi_collectives.h"

#include <mpi.h>

#include <algorithm>
#include <climits>
#include <cstdlib>
#include <cstring>

#include "core/errors.h"

namespace zn::parallel {
namespace {

// The most elements one MPI call carries (its counts are int).
constexpr size_t kPiece = size_t(1) << 30;

MPI_Datatype datatype(Element e) {
  switch (e) {
    case Element::F32: return MPI_FLOAT;
    case Element::F64: return MPI_DOUBLE;
    case Element::I32: return MPI_INT;
    case Element::U8: return MPI_BYTE;
    case Element::U16: return MPI_UINT16_T;
  }
  fail("mpi: unknown element type");
}

void check(int code, const char* op) {
  if (code == MPI_SUCCESS) return;
  char text[MPI_MAX_ERROR_STRING];
  int length = 0;
  MPI_Error_string(code, text, &length);
  fail(op, ": ", std::string(text, size_t(length)));
}

void require_live(const char* op) {
  int started = 0, ended = 0;
  MPI_Initialized(&started);
  MPI_Finalized(&ended);
  ZN_CHECK(started && !ended, op, ": MPI is not initialised (or already finalised)");
}

}  // namespace

size_t element_bytes(Element e) {
  switch (e) {
    case Element::F32: return 4;
    case Element::F64: return 8;
    case Element::I32: return 4;
    case Element::U8: return 1;
    case Element::U16: return 2;
  }
  return 0;
}

WorldInfo init() {
  int ended = 0;
  MPI_Finalized(&ended);
  ZN_CHECK(!ended, "mpi: init after finalize (MPI allows one initialisation per process)");
  int started = 0;
  MPI_Initialized(&started);
  int provided = MPI_THREAD_SINGLE;
  if (!started) {
    check(MPI_Init_thread(nullptr, nullptr, MPI_THREAD_MULTIPLE, &provided), "mpi: init");
  } else {
    MPI_Query_thread(&provided);
  }
  // Collectives run on libuv's worker threads, one at a time but not always the same thread.
  ZN_CHECK(provided >= MPI_THREAD_SERIALIZED, "mpi: the MPI library gives thread level ", provided,
           ", and the collectives need MPI_THREAD_SERIALIZED or more");
  check(MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN), "mpi: set error handler");
  WorldInfo info;
  check(MPI_Comm_rank(MPI_COMM_WORLD, &info.rank), "mpi: rank");
  check(MPI_Comm_size(MPI_COMM_WORLD, &info.size), "mpi: size");
  info.thread_multiple = provided == MPI_THREAD_MULTIPLE;
  char version[MPI_MAX_LIBRARY_VERSION_STRING];
  int length = 0;
  MPI_Get_library_version(version, &length);
  std::string text(version, size_t(length));
  info.library = text.substr(0, text.find_first_of("\n,"));
  return info;
}

bool initialized() {
  int started = 0, ended = 0;
  MPI_Initialized(&started);
  MPI_Finalized(&ended);
  return started && !ended;
}

void finalize() {
  if (initialized()) check(MPI_Finalize(), "mpi: finalize");
}

void all_reduce_sum(void* data, size_t count, Element element) {
  require_live("allReduceSum");
  ZN_CHECK(element == Element::F32 || element == Element::F64, "allReduceSum: sums f32 or f64 buffers");
  char* bytes = static_cast<char*>(data);
  const size_t width = element_bytes(element);
  for (size_t begin = 0; begin < count; begin += kPiece) {
    const int n = int(std::min(kPiece, count - begin));
    check(MPI_Allreduce(MPI_IN_PLACE, bytes + begin * width, n, datatype(element), MPI_SUM, MPI_COMM_WORLD),
          "allReduceSum");
  }
}

void broadcast(void* data, size_t count, Element element, int root) {
  require_live("broadcast");
  char* bytes = static_cast<char*>(data);
  const size_t width = element_bytes(element);
  for (size_t begin = 0; begin < count; begin += kPiece) {
    const int n = int(std::min(kPiece, count - begin));
    check(MPI_Bcast(bytes + begin * width, n, datatype(element), root, MPI_COMM_WORLD), "broadcast");
  }
}

void all_gather(const void* data, size_t count, Element element, void* out) {
  require_live("allGather");
  int size = 1, rank = 0;
  check(MPI_Comm_size(MPI_COMM_WORLD, &size), "allGather");
  check(MPI_Comm_rank(MPI_COMM_WORLD, &rank), "allGather");
  const size_t width = element_bytes(element);
  char* gathered = static_cast<char*>(out);
  if (count <= kPiece && count * size_t(size) <= size_t(INT_MAX)) {
    check(MPI_Allgather(data, int(count), datatype(element), gathered, int(count), datatype(element), MPI_COMM_WORLD),
          "allGather");
    return;
  }
  // Past int counts: each rank's part broadcast from it, piece by piece, into its place.
  std::copy_n(static_cast<const char*>(data), count * width, gathered + size_t(rank) * count * width);
  for (int root = 0; root < size; ++root) broadcast(gathered + size_t(root) * count * width, count, element, root);
}

namespace {

int world_size(const char* op) {
  int size = 1;
  check(MPI_Comm_size(MPI_COMM_WORLD, &size), op);
  return size;
}

int world_rank(const char* op) {
  int rank = 0;
  check(MPI_Comm_rank(MPI_COMM_WORLD, &rank), op);
  return rank;
}

// Each part's displacement, and whether every count and displacement fits MPI's int.
std::vector<size_t> displacements(const std::vector<size_t>& counts, bool* fits_int) {
  std::vector<size_t> displs(counts.size());
  size_t at = 0;
  for (size_t r = 0; r < counts.size(); ++r) {
    displs[r] = at;
    at += counts[r];
  }
  *fits_int = at <= size_t(INT_MAX);
  return displs;
}

}  // namespace

void all_gather_in_place(void* data, const std::vector<size_t>& counts, Element element) {
  const char* op = "allGatherInPlace";
  require_live(op);
  const int size = world_size(op);
  ZN_CHECK(counts.size() == size_t(size), op, ": ", counts.size(), " counts for ", size, " ranks");
  bool fits = false;
  const std::vector<size_t> displs = displacements(counts, &fits);
  char* bytes = static_cast<char*>(data);
  const size_t width = element_bytes(element);
  if (fits) {
    std::vector<int> n(counts.begin(), counts.end()), at(displs.begin(), displs.end());
    check(MPI_Allgatherv(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, bytes, n.data(), at.data(), datatype(element),
                         MPI_COMM_WORLD),
          op);
    return;
  }
  for (int root = 0; root < size; ++root) broadcast(bytes + displs[size_t(root)] * width, counts[size_t(root)], element, root);
}

void reduce_scatter_in_place(void* data, const std::vector<size_t>& counts, Element element) {
  const char* op = "reduceScatterInPlace";
  require_live(op);
  ZN_CHECK(element == Element::F32 || element == Element::F64, op, ": sums f32 or f64 buffers");
  const int size = world_size(op), rank = world_rank(op);
  ZN_CHECK(counts.size() == size_t(size), op, ": ", counts.size(), " counts for ", size, " ranks");
  bool fits = false;
  const std::vector<size_t> displs = displacements(counts, &fits);
  char* bytes = static_cast<char*>(data);
  const size_t width = element_bytes(element);
  if (fits) {
    // In place, MPI leaves rank r's summed part at the start of the buffer: moved to its place.
    std::vector<int> n(counts.begin(), counts.end());
    check(MPI_Reduce_scatter(MPI_IN_PLACE, bytes, n.data(), datatype(element), MPI_SUM, MPI_COMM_WORLD), op);
    const size_t mine = counts[size_t(rank)];
    if (mine > 0 && displs[size_t(rank)] > 0) std::memmove(bytes + displs[size_t(rank)] * width, bytes, mine * width);
    return;
  }
  for (int root = 0; root < size; ++root) {
    char* part = bytes + displs[size_t(root)] * width;
    for (size_t begin = 0; begin < counts[size_t(root)]; begin += kPiece) {
      const int n = int(std::min(kPiece, counts[size_t(root)] - begin));
      char* piece = part + begin * width;
      check(MPI_Reduce(rank == root ? MPI_IN_PLACE : piece, piece, n, datatype(element), MPI_SUM, root, MPI_COMM_WORLD),
            op);
    }
  }
}

void barrier() {
  require_live("barrier");
  check(MPI_Barrier(MPI_COMM_WORLD), "barrier");
}

void abort_job(int code) {
  MPI_Abort(MPI_COMM_WORLD, code);
  std::abort();
}

}  // namespace zn::parallel
