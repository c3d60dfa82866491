// A CPU emulation of the CUDA execution model, enough to run the adder2d kernels' own source
// (csrc/cuda/*_kernels.cuh) on the host under AddressSanitizer and UndefinedBehaviorSanitizer.
//
// Model: a launch runs its blocks one after another, in an order the schedule picks (forward,
// reversed or shuffled). The threads of a block are fibers (ucontext) of one host thread, and one
// runs at a time: the block proceeds in phases, and in each phase every live thread runs, in the
// order the schedule picks (forward, reversed, shuffled per phase), until it reaches
// __syncthreads() or returns. So a barrier has its real meaning (nobody passes it before everyone
// has reached it), and the result of a correct kernel cannot depend on the schedule: a kernel
// whose output differs between two schedules reads or writes memory without the barrier it needs.
// After each phase the block checks that all its threads wait at the same barrier (same source
// line, same count of barriers passed) or all returned; anything else is a divergent barrier.
// A watchdog thread ends the process when a thread neither reaches a barrier nor returns in time.
//
// __shared__ variables become static local variables (one copy per kernel instantiation, which is
// right because blocks never overlap). Before each block every one of them is filled with a poison
// byte (0xFF: NaN in every float type, -1 in integers; the schedules use other bytes too), so a
// read of an element no thread wrote shows up as a NaN or schedule-dependent result. They are
// found in the executable's own symbol table: the objects named _ZZN8addernet4cuda..., i.e. the
// static locals of functions in namespace addernet::cuda (kernels have no other static locals).
// Out-of-bounds subscripts of shared arrays are caught by UBSan's -fsanitize=bounds (the arrays
// keep their declared extents); ASan does not put redzones around them (GCC leaves comdat
// variables uninstrumented).
//
// Element types (emu::F32, F64, Half, BFloat16) wrap their storage and count every assignment to
// an element of the buffer registered with WriteCounter, so a test can check that each output
// element is written exactly once.
#pragma once

#include <elf.h>
#include <link.h>
#include <math.h>
#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <deque>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))
#define __shared__ static
#define __syncthreads() ::emu::syncthreads(__FILE__, __LINE__)

struct uint3 {
  unsigned x = 0, y = 0, z = 0;
};
struct dim3 {
  unsigned x, y, z;
  dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
struct alignas(16) float4 {
  float x, y, z, w;
};
struct alignas(16) double2 {
  double x, y;
};
struct alignas(16) uint4 {
  unsigned x, y, z, w;
};

// CUDA's integer and float intrinsics with their exact semantics. The float ones round to nearest
// even, as host float arithmetic does on x86-64 (SSE, no contraction: built without -mfma).
inline unsigned __vsadu4(unsigned a, unsigned b) {  // sum of |a_i - b_i| over the 4 bytes
  unsigned s = 0;
  for (int i = 0; i < 32; i += 8) {
    const int d = int((a >> i) & 0xFFu) - int((b >> i) & 0xFFu);
    s += unsigned(d < 0 ? -d : d);
  }
  return s;
}
inline float __fdiv_rn(float a, float b) {
  return a / b;
}
inline float __fmul_rn(float a, float b) {
  return a * b;
}
inline float __fadd_rn(float a, float b) {
  return a + b;
}
inline float __int2float_rn(int v) {
  return float(v);
}
// Round half to even (the default rounding mode); NaN and out-of-range values are undefined in
// C++, so they give CUDA's results: 0 for NaN, the int limits beyond them.
inline int __float2int_rn(float v) {
  if (v != v) return 0;
  if (v >= 2147483648.0f) return 2147483647;
  if (v < -2147483648.0f) return -2147483647 - 1;
  return int(nearbyintf(v));
}

// One set: the threads of a block are fibers of one host thread, and the scheduler sets
// threadIdx before resuming each of them.
inline uint3 threadIdx, blockIdx;
inline dim3 blockDim, gridDim;

namespace emu {

// ---- element types ------------------------------------------------------------------------

// Counts assignments to the elements of one registered buffer (the output of the launch).
struct WriteCounter {
  const char* begin = nullptr;
  const char* end = nullptr;
  size_t elem = 1;
  std::vector<uint32_t> counts;
};
inline WriteCounter* g_writes = nullptr;

inline void note_write(const void* p) {
  const char* c = static_cast<const char*>(p);
  if (g_writes != nullptr && c >= g_writes->begin && c < g_writes->end)
    ++g_writes->counts[size_t(c - g_writes->begin) / g_writes->elem];
}

inline uint32_t f32_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}
inline float bits_f32(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// float -> IEEE binary16, round to nearest even (NaN stays NaN, overflow gives infinity).
inline uint16_t float_to_half(float f) {
  const uint32_t u = f32_bits(f);
  const uint32_t sign = (u >> 16) & 0x8000u;
  const uint32_t abs = u & 0x7fffffffu;
  if (abs >= 0x7f800000u) return uint16_t(sign | 0x7c00u | (abs > 0x7f800000u ? 0x200u : 0u));
  if (abs >= 0x477ff000u) return uint16_t(sign | 0x7c00u);  // rounds to >= 65520: infinity
  if (abs < 0x38800000u) {                                  // below 2^-14: subnormal or zero
    const float scaled = bits_f32(abs) * 16777216.0f;       // * 2^24: the value in units of 2^-24
    return uint16_t(sign | uint32_t(std::nearbyint(scaled)));
  }
  const uint32_t mant = abs & 0x7fffffu;
  uint32_t h = ((abs >> 23) - 112) << 10 | (mant >> 13);
  const uint32_t rest = mant & 0x1fffu;
  if (rest > 0x1000u || (rest == 0x1000u && (h & 1u))) ++h;
  return uint16_t(sign | h);
}
inline float half_to_float(uint16_t h) {
  const uint32_t sign = uint32_t(h & 0x8000u) << 16;
  const uint32_t e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
  if (e == 0) {
    const float v = float(m) * (1.0f / 16777216.0f);
    return sign ? -v : v;
  }
  if (e == 31) return bits_f32(sign | 0x7f800000u | (m << 13));
  return bits_f32(sign | ((e + 112) << 23) | (m << 13));
}
inline uint16_t float_to_bf16(float f) {
  const uint32_t u = f32_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return uint16_t((u >> 16) | 0x40u);
  return uint16_t((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}
inline float bf16_to_float(uint16_t b) {
  return bits_f32(uint32_t(b) << 16);
}

// A storage element of a device buffer: converts explicitly to and from its accumulation type
// (as c10::Half does with float) and counts assignments.
template <typename Storage, typename Acc, Storage (*From)(Acc), Acc (*To)(Storage)>
struct Element {
  Storage bits;
  Element() = default;
  Element(const Element&) = default;
  explicit Element(Acc v) : bits(From(v)) {}
  explicit operator Acc() const { return To(bits); }
  Element& operator=(const Element& o) {
    note_write(this);
    bits = o.bits;
    return *this;
  }
};
inline float id_f(float v) {
  return v;
}
inline double id_d(double v) {
  return v;
}
using F32 = Element<float, float, id_f, id_f>;
using F64 = Element<double, double, id_d, id_d>;
using Half = Element<uint16_t, float, float_to_half, half_to_float>;
using BFloat16 = Element<uint16_t, float, float_to_bf16, bf16_to_float>;

// ---- shared memory -----------------------------------------------------------------------------

struct SharedArray {
  char* address;
  size_t size;
  std::string symbol;
};

// The static locals of functions in namespace addernet::cuda, read from the ELF symbol table of
// /proc/self/exe and relocated by the executable's load address.
inline std::vector<SharedArray> find_shared_arrays() {
  std::vector<SharedArray> found;
  uintptr_t base = 0;
  dl_iterate_phdr(
      [](dl_phdr_info* info, size_t, void* out) {
        *static_cast<uintptr_t*>(out) = info->dlpi_addr;  // the first entry is the executable
        return 1;
      },
      &base);
  FILE* f = std::fopen("/proc/self/exe", "rb");
  if (f == nullptr) return found;
  std::vector<char> elf;
  char chunk[65536];
  for (size_t n; (n = std::fread(chunk, 1, sizeof chunk, f)) > 0;)
    elf.insert(elf.end(), chunk, chunk + n);
  std::fclose(f);
  const auto* eh = reinterpret_cast<const Elf64_Ehdr*>(elf.data());
  const auto* sh = reinterpret_cast<const Elf64_Shdr*>(elf.data() + eh->e_shoff);
  for (int i = 0; i < eh->e_shnum; ++i) {
    if (sh[i].sh_type != SHT_SYMTAB) continue;
    const auto* sym = reinterpret_cast<const Elf64_Sym*>(elf.data() + sh[i].sh_offset);
    const char* names = elf.data() + sh[sh[i].sh_link].sh_offset;
    const size_t count = sh[i].sh_size / sizeof(Elf64_Sym);
    for (size_t k = 0; k < count; ++k) {
      const char* name = names + sym[k].st_name;
      if (ELF64_ST_TYPE(sym[k].st_info) == STT_OBJECT && sym[k].st_size > 0 &&
          std::strncmp(name, "_ZZN8addernet4cuda", 18) == 0)
        found.push_back({reinterpret_cast<char*>(base + sym[k].st_value), sym[k].st_size, name});
    }
  }
  return found;
}

// ---- execution ------------------------------------------------------------------------------

enum class Order { Forward, Reverse, Random };

struct Schedule {
  const char* name;
  Order threads;   // order of the threads within each phase
  Order blocks;    // order of the blocks of a launch
  uint8_t poison;  // byte shared memory is filled with before each block
  uint32_t seed;   // for Order::Random
};

struct Fiber {
  ucontext_t context;
  char* stack = nullptr;
  uint3 idx;
  enum State { Ready, AtBarrier, Returned } state = Ready;
  const char* file = nullptr;
  int line = 0;
  long barriers = 0;
};

class Device {
 public:
  static Device& get() {
    static Device d;
    return d;
  }
  ~Device() {
    stop_ = true;
    if (watchdog_.joinable()) watchdog_.join();
    for (Fiber& f : fibers_) munmap(f.stack, kStack);
  }

  // A thread that neither reaches a barrier nor returns within this time ends the process
  // (environment variable EMU_WATCHDOG_SECONDS, default 120).
  double watchdog_seconds = std::getenv("EMU_WATCHDOG_SECONDS") != nullptr
                                ? std::atof(std::getenv("EMU_WATCHDOG_SECONDS"))
                                : 120.0;
  const std::vector<SharedArray>& shared_arrays() const { return shared_; }

  // Runs body() as every thread of every block of a grid x block launch. Returns an empty string,
  // or the description of the first divergent barrier (the rest of the launch is then skipped).
  std::string launch(const std::string& kernel, dim3 grid, dim3 block, const Schedule& sched,
                     const std::function<void()>& body) {
    const unsigned nthreads = block.x * block.y * block.z;
    while (fibers_.size() < nthreads) {
      fibers_.emplace_back();
      void* st = mmap(nullptr, kStack, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
      if (st == MAP_FAILED) {
        std::perror("mmap of a fiber stack");
        std::abort();
      }
      fibers_.back().stack = static_cast<char*>(st);
    }
    if (!watchdog_.joinable()) watchdog_ = std::thread([this] { watch(); });
    body_ = &body;
    {
      std::lock_guard<std::mutex> lock(kernel_mutex_);
      kernel_ = kernel;
    }
    blockDim = block;
    gridDim = grid;
    std::vector<uint3> blocks;
    for (unsigned z = 0; z < grid.z; ++z)
      for (unsigned y = 0; y < grid.y; ++y)
        for (unsigned x = 0; x < grid.x; ++x) blocks.push_back(uint3{x, y, z});
    std::mt19937 rng(sched.seed);
    arrange(blocks, sched.blocks, rng);
    for (const uint3& b : blocks) {
      std::string err = run_block(b, nthreads, sched, rng);
      if (!err.empty()) return err;
    }
    return "";
  }

  // Called by __syncthreads() in the running fiber: back to the scheduler until the next phase.
  void barrier(const char* file, int line) {
    if (running_ == nullptr) {
      std::fprintf(stderr, "__syncthreads() outside a kernel launch at %s:%d\n", file, line);
      std::abort();
    }
    Fiber* f = running_;
    f->state = Fiber::AtBarrier;
    f->file = file;
    f->line = line;
    ++f->barriers;
    swapcontext(&f->context, &scheduler_);
  }

 private:
  static constexpr size_t kStack = 256 * 1024;

  template <typename V>
  static void arrange(std::vector<V>& v, Order o, std::mt19937& rng) {
    if (o == Order::Reverse) std::reverse(v.begin(), v.end());
    if (o == Order::Random) std::shuffle(v.begin(), v.end(), rng);
  }

  static void fiber_main() {
    Device& d = get();
    (*d.body_)();
    d.running_->state = Fiber::Returned;
    swapcontext(&d.running_->context, &d.scheduler_);
  }

  void watch() {
    uint64_t seen = progress_.load();
    auto since = std::chrono::steady_clock::now();
    while (!stop_) {
      std::this_thread::sleep_for(std::chrono::milliseconds(200));
      const uint64_t now = progress_.load();
      if (now != seen || !in_fiber_) {
        seen = now;
        since = std::chrono::steady_clock::now();
      } else if (std::chrono::duration<double>(std::chrono::steady_clock::now() - since).count() >
                 watchdog_seconds) {
        const uint64_t w = watched_.load();
        std::lock_guard<std::mutex> lock(kernel_mutex_);
        std::fprintf(stderr,
                     "WATCHDOG: kernel %s, block %u (linear), thread %u neither reached a barrier "
                     "nor returned within %.0f s (a hang)\n",
                     kernel_.c_str(), unsigned(w >> 32), unsigned(w), watchdog_seconds);
        std::fflush(stderr);
        _exit(3);
      }
    }
  }

  void resume(Fiber* f) {
    running_ = f;
    threadIdx = f->idx;
    watched_ = (uint64_t(blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z)) << 32) |
               (f->idx.x + blockDim.x * (f->idx.y + blockDim.y * f->idx.z));
    ++progress_;
    in_fiber_ = true;
    swapcontext(&scheduler_, &f->context);
    in_fiber_ = false;
    running_ = nullptr;
  }

  void poison_shared(uint8_t byte) {
    for (const SharedArray& a : shared_) std::memset(a.address, byte, a.size);
  }

  std::string run_block(uint3 b, unsigned nthreads, const Schedule& sched, std::mt19937& rng) {
    blockIdx = b;
    poison_shared(sched.poison);
    std::vector<long> live(nthreads);
    for (unsigned t = 0; t < nthreads; ++t) {
      Fiber& f = fibers_[t];
      f.idx = uint3{t % blockDim.x, (t / blockDim.x) % blockDim.y, t / (blockDim.x * blockDim.y)};
      f.state = Fiber::Ready;
      f.barriers = 0;
      getcontext(&f.context);
      f.context.uc_stack.ss_sp = f.stack;
      f.context.uc_stack.ss_size = kStack;
      f.context.uc_link = nullptr;
      makecontext(&f.context, &Device::fiber_main, 0);
      live[t] = t;
    }
    for (long phase = 0;; ++phase) {
      arrange(live, sched.threads, rng);
      for (long t : live) resume(&fibers_[size_t(t)]);
      std::vector<long> waiting, returned;
      for (long t : live)
        (fibers_[size_t(t)].state == Fiber::AtBarrier ? waiting : returned).push_back(t);
      if (waiting.empty()) return "";
      std::sort(waiting.begin(), waiting.end());
      std::sort(returned.begin(), returned.end());
      // A divergent block is abandoned: its waiting fibers are never resumed (their stacks are
      // reinitialised by the next block).
      std::string err = check_phase(waiting, returned, phase);
      if (!err.empty()) return err;
      live = waiting;
    }
  }

  std::string where(const Fiber& f) const {
    return std::string(f.file) + ":" + std::to_string(f.line) + " (barrier #" +
           std::to_string(f.barriers) + ")";
  }

  std::string check_phase(const std::vector<long>& waiting, const std::vector<long>& returned,
                          long phase) const {
    char buf[200];
    std::snprintf(buf, sizeof buf,
                  "DIVERGENT BARRIER: kernel %s, block (%u,%u,%u), phase %ld: ", kernel_.c_str(),
                  blockIdx.x, blockIdx.y, blockIdx.z, phase);
    const std::string head = buf;
    const Fiber& first = fibers_[size_t(waiting[0])];
    if (!returned.empty()) {
      return head + std::to_string(waiting.size()) + " threads wait at " + where(first) +
             " (first: thread " + std::to_string(waiting[0]) + ") while " +
             std::to_string(returned.size()) + " returned (first: thread " +
             std::to_string(returned[0]) + ")";
    }
    for (long t : waiting) {
      const Fiber& f = fibers_[size_t(t)];
      if (f.line != first.line || f.barriers != first.barriers ||
          std::strcmp(f.file, first.file) != 0) {
        return head + "thread " + std::to_string(waiting[0]) + " waits at " + where(first) +
               ", thread " + std::to_string(t) + " at " + where(f);
      }
    }
    return "";
  }

  std::vector<SharedArray> shared_ = find_shared_arrays();
  std::deque<Fiber> fibers_;  // a deque: fibers never move once their context points into them
  ucontext_t scheduler_;
  Fiber* running_ = nullptr;
  const std::function<void()>* body_ = nullptr;
  std::string kernel_;
  std::thread watchdog_;
  std::atomic<bool> stop_{false}, in_fiber_{false};
  std::atomic<uint64_t> progress_{0};
  std::atomic<uint64_t> watched_{0};  // (linear block index << 32) | linear thread index
  std::mutex kernel_mutex_;           // guards kernel_ against the watchdog's read
};

inline void syncthreads(const char* file, int line) {
  Device::get().barrier(file, line);
}

}  // namespace emu
