// The collectives of data-parallel training on CPU ranks, over MPI's own collectives (never a
// home-made transport): MPI_Allreduce, MPI_Bcast, MPI_Allgather(v), MPI_Reduce_scatter,
// MPI_Barrier. Built only where
// MPI's headers and library are found (the zn_mpi addon); nothing here knows Node.
//
// Errors return (MPI_ERRORS_RETURN on the world communicator) and become zn::Error with MPI's
// own text, so a failed collective is an exception naming the operation, never a silent abort.
// Buffers of any size: MPI counts are int, so a buffer is sent in pieces of at most 2^30
// elements (a 7B model's f32 gradients are 7e9 of them).
#pragma once
#include <cstddef>
#include <string>
#include <vector>

namespace zn::parallel {

enum class Element { F32, F64, I32, U8, U16 };

size_t element_bytes(Element e);

struct WorldInfo {
  int rank = 0;
  int size = 1;
  // MPI_Init_thread's answer: MPI_THREAD_MULTIPLE lets the watchdog abort the job from the main
  // thread while a worker thread waits in a collective.
  bool thread_multiple = false;
  std::string library;  // MPI_Get_library_version's first line
};

// MPI_Init_thread (once per process; MPI cannot be initialised again after finalize).
WorldInfo init();
bool initialized();
// MPI_Finalize, after which no collective may run. Safe to call when never initialised.
void finalize();

// Sums `count` elements across the ranks into every rank's buffer, in place (F32 or F64).
void all_reduce_sum(void* data, size_t count, Element element);
// Rank `root`'s `count` elements into every rank's buffer.
void broadcast(void* data, size_t count, Element element, int root);
// Every rank's `count` elements, rank order, into `out` (size * count elements) on every rank.
void all_gather(const void* data, size_t count, Element element, void* out);
// ZeRO's in-place collectives over one buffer of sum(counts) elements that the ranks own in
// consecutive parts, rank r the counts[r] elements from displacement counts[0] + ... + counts[r-1]:
// all_gather_in_place gives every rank every part from its owner (MPI_Allgatherv, MPI_IN_PLACE);
// reduce_scatter_in_place sums the buffer across the ranks into each part at its owner only
// (MPI_Reduce_scatter, F32 or F64; the rest of the buffer is left undefined). Past int counts
// (a part or the buffer above 2^31 - 1 elements) they fall back to per-owner broadcasts and
// reductions in pieces.
void all_gather_in_place(void* data, const std::vector<size_t>& counts, Element element);
void reduce_scatter_in_place(void* data, const std::vector<size_t>& counts, Element element);
void barrier();
// MPI_Abort: the launcher ends every rank of the job with `code`. Does not return.
[[noreturn]] void abort_job(int code);

}  // namespace zn::parallel
