#include "thread_pool.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

namespace zn {

namespace {

thread_local bool inside_parallel_region = false;

class ThreadPool {
 public:
  explicit ThreadPool(int threads) : size_(std::max(1, threads)) {
    for (int i = 1; i < size_; ++i) workers_.emplace_back([this] { worker_loop(); });
  }

  ~ThreadPool() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stopping_ = true;
    }
    wake_.notify_all();
    for (auto& worker : workers_) worker.join();
  }

  int size() const { return size_; }

  // Every thread (workers and caller) calls job() once; job pulls work itself.
  void run(const std::function<void()>& job) {
    std::lock_guard<std::mutex> region(region_mutex_);
    {
      std::lock_guard<std::mutex> lock(mutex_);
      job_ = &job;
      pending_ = size_ - 1;
      error_ = nullptr;
      ++generation_;
    }
    wake_.notify_all();
    run_job(job);
    std::unique_lock<std::mutex> lock(mutex_);
    done_.wait(lock, [this] { return pending_ == 0; });
    job_ = nullptr;
    if (error_) std::rethrow_exception(error_);
  }

 private:
  void run_job(const std::function<void()>& job) {
    inside_parallel_region = true;
    try {
      job();
    } catch (...) {
      std::lock_guard<std::mutex> lock(mutex_);
      if (!error_) error_ = std::current_exception();
    }
    inside_parallel_region = false;
  }

  void worker_loop() {
    unsigned long long seen = 0;
    for (;;) {
      const std::function<void()>* job;
      wait_briefly_for_work(seen);
      {
        std::unique_lock<std::mutex> lock(mutex_);
        wake_.wait(lock, [&] { return stopping_ || generation_ != seen; });
        if (stopping_) return;
        seen = generation_;
        job = job_;
      }
      run_job(*job);
      {
        std::lock_guard<std::mutex> lock(mutex_);
        if (--pending_ == 0) done_.notify_one();
      }
    }
  }

  // Kernels call parallel regions back to back (a step is thousands of them). A worker asleep
  // on the condition variable can take a millisecond or more to run again on a virtual machine
  // (its vCPU halted), and by then the caller, which pulls work too, has done it alone: on the
  // 2-vCPU Zen 5 machine the peak loops on two threads measured one core's rate (vdpbf16ps
  // 430-465 GFLOP/s), 870-908 with this. So a worker spins (one atomic load and a pause at a
  // time) for kSpinSeconds after each job before it sleeps, as OpenMP runtimes do.
  void wait_briefly_for_work(unsigned long long seen) const {
    const auto until = std::chrono::steady_clock::now() + std::chrono::duration<double>(kSpinSeconds);
    for (int i = 0; generation_.load(std::memory_order_acquire) == seen && !stopping_.load(std::memory_order_relaxed);
         ++i) {
      pause();
      if (i % 64 == 0 && std::chrono::steady_clock::now() > until) return;
    }
  }

  static void pause() {
#if defined(__x86_64__) || defined(_M_X64)
    __builtin_ia32_pause();
#endif
  }

  static constexpr double kSpinSeconds = 0.002;

  const int size_;
  std::vector<std::thread> workers_;
  std::mutex region_mutex_;
  std::mutex mutex_;
  std::condition_variable wake_;
  std::condition_variable done_;
  const std::function<void()>* job_ = nullptr;
  std::atomic<unsigned long long> generation_{0};
  int pending_ = 0;
  std::atomic<bool> stopping_{false};
  std::exception_ptr error_;
};

int configured_threads() {
  if (const char* env = std::getenv("ZN_NUM_THREADS")) {
    const int n = std::atoi(env);
    if (n > 0) return n;
  }
  const unsigned hw = std::thread::hardware_concurrency();
  return hw > 0 ? int(hw) : 1;
}

ThreadPool& pool() {
  static ThreadPool instance(configured_threads());
  return instance;
}

}  // namespace

int num_threads() { return pool().size(); }

void parallel_for(size_t count, size_t grain, const std::function<void(size_t, size_t)>& task) {
  if (count == 0) return;
  grain = std::max<size_t>(grain, 1);
  const size_t max_chunks = (count + grain - 1) / grain;
  const size_t chunks = std::min<size_t>(max_chunks, size_t(num_threads()));
  if (chunks <= 1 || inside_parallel_region) {
    task(0, count);
    return;
  }
  std::atomic<size_t> next{0};
  pool().run([&] {
    for (size_t c = next.fetch_add(1); c < chunks; c = next.fetch_add(1)) {
      const size_t begin = count * c / chunks;
      const size_t end = count * (c + 1) / chunks;
      task(begin, end);
    }
  });
}

void parallel_for_each(size_t count, const std::function<void(size_t)>& task) {
  if (count == 0) return;
  if (count == 1 || num_threads() == 1 || inside_parallel_region) {
    for (size_t i = 0; i < count; ++i) task(i);
    return;
  }
  std::atomic<size_t> next{0};
  pool().run([&] {
    for (size_t i = next.fetch_add(1); i < count; i = next.fetch_add(1)) task(i);
  });
}

}  // namespace zn
