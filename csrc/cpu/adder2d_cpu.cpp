// CPU implementations of the adder2d ops (schemas and math in adder2d_library.cpp): argument
// checks, contiguous layout, threading with torch::stable::parallel_for, and the choice of
// instruction set, all on torch's stable ABI. The arithmetic lives in adder2d_cpu_kernels.h.
//
// float and double run natively; float16 and bfloat16 are computed in float and rounded once.
// Outputs are contiguous NCHW (and the fake kernels in ops.py say so too).
#include "adder2d_cpu.h"

#include <torch/csrc/stable/library.h>
#include <torch/csrc/stable/ops.h>
#include <torch/csrc/stable/tensor.h>
#include <torch/headeronly/core/ScalarType.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <ctime>
#include <new>
#include <thread>
#include <vector>

#include "../adder2d.h"
#include "adder2d_int8_cpu.h"

namespace addernet {
namespace cpu {

namespace {

bool cpu_has_avx2() {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#else
  return false;
#endif
}

bool cpu_has_avx512() {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
  __builtin_cpu_init();
  return cpu_has_avx2() && __builtin_cpu_supports("avx512f") &&
         __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
         __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vnni");
#else
  return false;
#endif
}

// Instruction-set levels, each including the one below: at the AVX-512 level the int8 kernels
// have an AVX-512 copy, and the float forward's tile loops and the float input gradient's
// stride-1 loop 64-byte vectors (the other float kernels, and float64, stay AVX2).
enum IsaLevel : int { BASE = 0, AVX2 = 1, AVX512 = 2 };

IsaLevel best_isa() {
  if (avx2_compiled() && int8_avx512_compiled() && avx512_compiled() && cpu_has_avx512())
    return AVX512;
  if (avx2_compiled() && cpu_has_avx2()) return AVX2;
  return BASE;
}

IsaLevel parse_isa(const std::string& isa, const char* what) {
  ADDERNET_CHECK(isa == "base" || isa == "avx2" || isa == "avx512", what,
                 ": isa must be \"base\", \"avx2\" or \"avx512\", got \"", isa, "\"");
  if (isa == "avx2" || isa == "avx512") {
    ADDERNET_CHECK(avx2_compiled(), what, ": this build has no AVX2 kernels");
    ADDERNET_CHECK(cpu_has_avx2(), what, ": this CPU lacks AVX2 or FMA");
  }
  if (isa == "avx512") {
    ADDERNET_CHECK(int8_avx512_compiled() && avx512_compiled(), what,
                   ": this build has no AVX-512 kernels");
    ADDERNET_CHECK(cpu_has_avx512(), what, ": this CPU lacks AVX-512 F, BW, VL, DQ or VNNI");
  }
  return isa == "avx512" ? AVX512 : isa == "avx2" ? AVX2 : BASE;
}

IsaLevel default_isa() {
  const char* env = std::getenv("ADDERNET_CPU_ISA");
  if (env == nullptr || std::string(env).empty()) return best_isa();
  return parse_isa(env, "ADDERNET_CPU_ISA");
}

std::atomic<int>& isa_level() {
  static std::atomic<int> level{default_isa()};
  return level;
}

bool use_avx2() {
  return isa_level() >= AVX2;
}

template <typename T>
KernelSet<T> kernels();

template <>
KernelSet<float> kernels<float>() {
  if (isa_level() >= AVX512) return avx512_kernels_float();
  return use_avx2() ? avx2_kernels_float() : base_kernels_float();
}

template <>
KernelSet<double> kernels<double>() {
  return use_avx2() ? avx2_kernels_double() : base_kernels_double();
}

using torch::headeronly::ScalarType;

// ADDERNET_CPU_WEIGHT_GRAD=direct (read at every call) selects the direct weight-gradient kernel;
// unset or "decomposition" the decomposed one. Both are deterministic.
bool use_direct_weight_grad() {
  const char* env = std::getenv("ADDERNET_CPU_WEIGHT_GRAD");
  if (env == nullptr || std::string(env) == "decomposition" || std::string(env).empty())
    return false;
  ADDERNET_CHECK(std::string(env) == "direct",
                 "ADDERNET_CPU_WEIGHT_GRAD must be \"direct\" or \"decomposition\", got \"", env,
                 "\"");
  return true;
}

bool is_reduced_float(const Tensor& t) {
  return t.scalar_type() == ScalarType::Half || t.scalar_type() == ScalarType::BFloat16;
}

Tensor to_float(const Tensor& t) {
  return torch::stable::to(t, ScalarType::Float);
}

std::optional<Tensor> to_float(const std::optional<Tensor>& t) {
  if (!t.has_value() || !t->defined()) return t;
  return to_float(*t);
}

Tensor empty_like_input(IntArrayRef sizes, const Tensor& input) {
  return torch::stable::empty(sizes, input.scalar_type(), std::nullopt, input.device());
}

// n elements from a 64-byte boundary (a cache line): the prepared planes' vectors then start on
// lines where their layout puts them there (operator new alone gives 16 bytes, and a large block
// from the system starts 16 bytes past a page).
template <typename T>
class LineAligned {
 public:
  explicit LineAligned(int64_t n)
      : p_(static_cast<T*>(::operator new(size_t(n) * sizeof(T), std::align_val_t(64)))) {}
  ~LineAligned() { ::operator delete(p_, std::align_val_t(64)); }
  LineAligned(const LineAligned&) = delete;
  LineAligned& operator=(const LineAligned&) = delete;
  T* get() const { return p_; }

 private:
  T* p_;
};

// The direct path goes image by image, each thread copying its own images, when there are at
// least this many images per thread and an image's copy takes at most FORWARD_IMAGE_BYTES (a
// core's L2 cache on the CPUs this was measured on).
constexpr int64_t FORWARD_IMAGES_PER_THREAD = 4;
constexpr int64_t FORWARD_IMAGE_BYTES = int64_t(1) << 20;

// The batch path splits each group's output channels among the threads as well as the tiles when
// there are fewer tiles than this per thread.
constexpr int64_t FORWARD_BATCH_TILES_PER_THREAD = 16;

// On several threads the batch path's last claims (one per thread) go by this many claims of a
// share of their output channels.
constexpr int64_t FORWARD_BATCH_TAIL_SPLITS = 4;

// The forward's direct and batch paths interleave the weights (KernelSet::
// forward_interleave_weights) when each weight is used by at least FORWARD_INTERLEAVE_MIN_USES
// images x output pixels: it saves up to 7% from 1568 (NOTES). At 392 (ResNet-18's 7 x 7 layers
// at 8 images, up to 9.4 MB of weights, copied in a phase of the call that only moves memory) it
// saved 4-13% on 1 thread of a Zen 3 core (the 4-channel tile over a panel; on 2 threads -11%
// to +12%), but on 2 threads of a Zen 4 core it cost 3-20% at both levels (the 8-channel tile
// too, both over a panel, three pairs of processes), so it starts at 1024. The same sums either
// way. By items of about FORWARD_INTERLEAVE_ITEM elements (whole micro-tiles' output channels),
// which the threads claim (ClaimedStep).
constexpr int64_t FORWARD_INTERLEAVE_MIN_USES = 1024;
constexpr int64_t FORWARD_INTERLEAVE_ITEM = int64_t(1) << 14;

// A step that the rest of a parallel region depends on (the forward's weights interleaved before
// any tile reads them, the planes prepared): every thread of the region calls run(), which claims
// items one at a time from a shared counter and returns once every item is done, so that a thread
// waits for at most one item of another. In equal ranges, a thread on a core slowed by other work
// kept the other waiting for up to much of its share (at the end of the forward's interleaving:
// 2.9% of the samples in one profile of ResNet-18's 512-channel 7 x 7 layer when it interleaved
// its weights, 0.15% in another; NOTES). Safe however the region's threads are scheduled: an
// item, once claimed, is run to its end without waiting on anything.
class ClaimedStep {
 public:
  explicit ClaimedStep(int64_t count) : count_(count) {}
  ClaimedStep(const ClaimedStep&) = delete;
  ClaimedStep& operator=(const ClaimedStep&) = delete;

  template <typename F>
  void run(const F& item) {
    for (int64_t i = next_++; i < count_; i = next_++) {
      item(i);
      done_.fetch_add(1, std::memory_order_release);
    }
    while (done_.load(std::memory_order_acquire) < count_) std::this_thread::yield();
  }

 private:
  const int64_t count_;
  std::atomic<int64_t> next_{0}, done_{0};
};

// The input gradient's threads claim a whole image and group at a time when there are at least
// this many per thread, else one work item at a time.
constexpr int64_t INPUT_GRAD_IMAGES_PER_THREAD = 4;
// Elements of W per thread's share of the input gradient's rearranged copy, at least.
constexpr int64_t INPUT_GRAD_REARRANGE_GRAIN = 16384;
// Output channels per block of that copy: a 64-byte line of float32.
constexpr int64_t INPUT_GRAD_REARRANGE_CHANNELS = 16;

// At most this many bytes of prepared input (the direct and batch paths) at once: images or
// image groups go by chunks of it (at least one image; an image group must fit).
constexpr int64_t FORWARD_PREPARED_BYTES = int64_t(32) << 20;

// The forward's path for a shape (see forward_path in adder2d_cpu.h): the batch path where it
// fills more of the vectors' lanes than the rows of one image do (in practice output rows that
// are not a multiple of a vector's pixels, with about a vector's worth of images or more), its
// copy is not much larger than the input and an image group's prepared planes fit
// FORWARD_PREPARED_BYTES; else the direct path where its layout allows; else the packed path.
ForwardPath choose_forward_path(const Adder2dShape& s, int64_t lanes, int64_t tile_vectors,
                                int64_t element_bytes, bool one_register, ForwardLayout* layout,
                                ForwardBatchLayout* batch, int64_t* group_elems) {
  *layout = forward_layout(s, lanes, tile_vectors, one_register);
  *batch = forward_batch_layout(s, lanes, tile_vectors);
  if (batch->valid && !adder2d_mul_add_overflows(s.in_channels, batch->plane, 0, group_elems) &&
      *group_elems <= FORWARD_PREPARED_BYTES / element_bytes &&
      forward_batch_lane_use(s, *batch, lanes, tile_vectors) >
          forward_row_lane_use(s, *layout, lanes, tile_vectors) + 1.0 / 32)
    return ForwardPath::batch;
  return layout->direct ? ForwardPath::direct : ForwardPath::packed;
}

}  // namespace

std::string cpu_isa() {
  const int level = isa_level();
  return level == AVX512 ? "avx512" : level == AVX2 ? "avx2" : "base";
}

void set_cpu_isa(const std::string& isa) {
  isa_level() = parse_isa(isa, "set_cpu_isa");
}

std::array<int64_t, 3> forward_tile(bool float64) {
  if (float64) {
    const KernelSet<double> k = kernels<double>();
    return {k.forward_tile_rows, k.tile_pixels, k.forward_register_bytes};
  }
  const KernelSet<float> k = kernels<float>();
  return {k.forward_tile_rows, k.tile_pixels, k.forward_register_bytes};
}

int64_t input_grad_register_bytes(bool float64) {
  return float64 ? kernels<double>().input_grad_register_bytes
                 : kernels<float>().input_grad_register_bytes;
}

int64_t weight_grad_register_bytes(bool float64) {
  return float64 ? kernels<double>().weight_grad_register_bytes
                 : kernels<float>().weight_grad_register_bytes;
}

namespace {

// Whether the forward of shape s on `path` with kernel set ks interleaves the weights
// (FORWARD_INTERLEAVE_MIN_USES).
template <typename T>
bool interleaves_weights(const Adder2dShape& s, ForwardPath path, const KernelSet<T>& ks) {
  int64_t uses = 0;  // images x output pixels (the query's geometry may not fit a tensor)
  if (__builtin_mul_overflow(s.batch, s.out_h * s.out_w, &uses)) uses = INT64_MAX;
  return path != ForwardPath::packed && ks.forward_interleave_weights != nullptr &&
         uses >= FORWARD_INTERLEAVE_MIN_USES;
}

// Whether kernel set ks reads a forward tile's vectors as one register (where adjacent).
template <typename T>
bool one_register_tile(const KernelSet<T>& ks) {
  return ks.forward_register_bytes == ks.tile_pixels * int64_t(sizeof(T));
}

template <typename T>
ForwardPath forward_path_of(const Adder2dShape& s, const KernelSet<T>& ks,
                            ForwardLayout* layout_out = nullptr) {
  ForwardLayout layout;
  ForwardBatchLayout batch;
  int64_t group_elems = 0;
  const ForwardPath path =
      choose_forward_path(s, ks.vector_lanes, ks.tile_vectors, sizeof(T), one_register_tile(ks),
                          &layout, &batch, &group_elems);
  if (layout_out) *layout_out = layout;
  return path;
}

}  // namespace

bool forward_interleaves_weights(const Adder2dShape& s, bool float64) {
  if (float64) {
    const KernelSet<double> ks = kernels<double>();
    return interleaves_weights(s, forward_path_of(s, ks), ks);
  }
  const KernelSet<float> ks = kernels<float>();
  return interleaves_weights(s, forward_path_of(s, ks), ks);
}

int64_t forward_column_copies(const Adder2dShape& s, bool float64) {
  ForwardLayout l{};
  const ForwardPath path = float64 ? forward_path_of(s, kernels<double>(), &l)
                                   : forward_path_of(s, kernels<float>(), &l);
  return path == ForwardPath::direct ? l.copies : 0;
}

std::string forward_path(const Adder2dShape& s, bool float64) {
  switch (float64 ? forward_path_of(s, kernels<double>()) : forward_path_of(s, kernels<float>())) {
    case ForwardPath::batch:
      return "batch";
    case ForwardPath::direct:
      return "direct";
    default:
      return "packed";
  }
}

namespace {

// Terms per second of thread CPU time of one register loop for `iterations` taps.
double ceiling_rate(float (*loop)(int64_t, int64_t*), int64_t iterations) {
  // The thread's CPU time: time spent descheduled on a shared machine does not count.
  timespec t0, t1;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t0);
  int64_t terms = 0;
  volatile float sink = loop(iterations, &terms);
  (void)sink;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t1);
  const double seconds = double(t1.tv_sec - t0.tv_sec) + 1e-9 * double(t1.tv_nsec - t0.tv_nsec);
  return double(iterations) * double(terms) / seconds;
}

}  // namespace

double register_ceiling_rate(int64_t iterations) {
  if (iterations < 1) iterations = 1;
  if (isa_level() < AVX2) return ceiling_rate(&base_register_ceiling, iterations);
  const double avx2 = ceiling_rate(&avx2_register_ceiling, iterations);
  // At the AVX-512 level, the faster of the two loops (the AVX-512 one does twice the terms per
  // iteration), so that the 64-byte tile is not measured against a lower bar than the 32-byte one.
  if (isa_level() < AVX512) return avx2;
  return std::max(avx2, ceiling_rate(&avx512_register_ceiling, (iterations + 1) / 2));
}

Tensor adder2d_cpu(const Tensor& input, const Tensor& weight, const std::optional<Tensor>& bias,
                   IntArrayRef stride, IntArrayRef padding, IntArrayRef dilation, int64_t groups,
                   const std::string& input_grad) {
  const Adder2dShape s = check_adder2d_forward_args(input, weight, bias, stride, padding, dilation,
                                                    groups, input_grad);
  if (is_reduced_float(input)) {
    return torch::stable::to(adder2d_cpu(to_float(input), to_float(weight), to_float(bias), stride,
                                         padding, dilation, groups, input_grad),
                             input.scalar_type());
  }
  Tensor y = empty_like_input({s.batch, s.out_channels, s.out_h, s.out_w}, input);
  if (y.numel() == 0) return y;
  const Tensor x = torch::stable::contiguous(input);
  const Tensor w = torch::stable::contiguous(weight);
  const bool has_bias = bias.has_value() && bias->defined();
  const std::optional<Tensor> b =
      has_bias ? std::optional<Tensor>(torch::stable::contiguous(*bias)) : std::nullopt;
  ADDERNET_DISPATCH_FLOAT_DOUBLE(x.scalar_type(), "adder2d_cpu", [&] {
    const KernelSet<scalar_t> ks = kernels<scalar_t>();
    const int64_t L = s.out_h * s.out_w;
    const int64_t tiles = (L + ks.tile_pixels - 1) / ks.tile_pixels;
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    const scalar_t* wp = w.const_data_ptr<scalar_t>();
    const scalar_t* bp = has_bias ? b->const_data_ptr<scalar_t>() : nullptr;
    scalar_t* yp = y.mutable_data_ptr<scalar_t>();
    const int64_t cig = s.in_channels_per_group;
    const int64_t cog = s.out_channels_per_group;
    const int64_t lanes = ks.vector_lanes;
    ForwardLayout layout;
    ForwardBatchLayout batch;
    int64_t group_elems = 0;  // of the prepared planes of one image group
    const ForwardPath path =
        choose_forward_path(s, lanes, ks.tile_vectors, sizeof(scalar_t), one_register_tile(ks),
                            &layout, &batch, &group_elems);
    const int64_t threads = torch::stable::get_num_threads();
    // The direct and batch paths' weights, interleaved once per call where that pays, by items
    // of whole micro-tiles' output channels, claimed in the paths' first parallel region
    // (interleave_item(i) for i < interleave_items) before any tile reads them.
    const bool interleave = interleaves_weights(s, path, ks);
    LineAligned<scalar_t> interleaved_w(interleave ? s.out_channels * s.taps : 0);
    const int64_t tile_rows = ks.forward_tile_rows;
    const int64_t interleave_rows = std::max(
        tile_rows, FORWARD_INTERLEAVE_ITEM / std::max<int64_t>(1, s.taps) / tile_rows * tile_rows);
    const int64_t channel_items = (cog + interleave_rows - 1) / interleave_rows;
    const int64_t interleave_items = interleave ? s.groups * channel_items : 0;
    const auto interleave_item = [&](int64_t i) {
      const int64_t g = i / channel_items, co = i % channel_items * interleave_rows;
      ks.forward_interleave_weights(s, wp + g * cog * s.taps,
                                    interleaved_w.get() + g * cog * s.taps, co,
                                    std::min(cog, co + interleave_rows));
    };
    // One parallel region: prepare_plane(i) for planes [0, planes), claimed one at a time after
    // the weights' interleaving items when with_weights (the first chunk's region).
    const auto prepare_planes = [&](bool with_weights, int64_t planes, const auto& prepare_plane) {
      const int64_t weight_items = with_weights ? interleave_items : 0;
      ClaimedStep prepare(weight_items + planes);
      torch::stable::parallel_for(0, std::min(threads, weight_items + planes), 1,
                                  [&](int64_t, int64_t) {
                                    prepare.run([&](int64_t i) {
                                      if (i < weight_items) return interleave_item(i);
                                      prepare_plane(i - weight_items);
                                    });
                                  });
    };
    // The weights of group g as the direct and batch paths read them.
    const auto group_w = [&](int64_t g) {
      return (interleave ? interleaved_w.get() : wp) + g * cog * s.taps;
    };
    if (path == ForwardPath::batch) {
      // Image groups of `lanes` images go by chunks of at most FORWARD_PREPARED_BYTES of
      // prepared input, each input plane of the chunk prepared once, then up to
      // FORWARD_BATCH_TILE_GROUP tiles of one image group and group at a time.
      const int64_t image_groups = (s.batch + lanes - 1) / lanes;
      const int64_t chunk = std::max<int64_t>(
          1, std::min<int64_t>(image_groups,
                               FORWARD_PREPARED_BYTES / int64_t(sizeof(scalar_t)) / group_elems));
      // Not zero-filled: the prepare calls write every element that is read.
      LineAligned<scalar_t> prepared(chunk * group_elems);
      const std::vector<int64_t> offsets = forward_batch_tap_offsets(s, batch, lanes);
      const int64_t HW = s.in_h * s.in_w, CHW = s.in_channels * HW;
      for (int64_t m0 = 0; m0 < image_groups; m0 += chunk) {
        const int64_t mb = std::min(chunk, image_groups - m0);
        // The chunk's planes prepared (and, with the first chunk's, the weights interleaved).
        prepare_planes(m0 == 0, mb * s.in_channels, [&](int64_t i) {
          const int64_t n0 = (m0 + i / s.in_channels) * lanes, c = i % s.in_channels;
          ks.forward_prepare_batch_plane(s, batch, xp + n0 * CHW + c * HW, CHW,
                                         std::min(lanes, s.batch - n0),
                                         prepared.get() + i * batch.plane);
        });
        // The threads claim up to FORWARD_BATCH_TILE_GROUP tiles at a time from a shared counter
        // over (image group, group, part, tile), a claim running across the boundaries it meets,
        // so that a thread on a core slowed by other work takes fewer (as on the direct path).
        // The claims are near-equal ranges, as many as a multiple of the threads (item_claims):
        // in claims of 8, ResNet-18's 7 x 7 layers at batch 8 (50 tiles) went 26 / 24 to two
        // threads of equal speed, and one waited for the other's last 2 tiles. With
        // fewer than FORWARD_BATCH_TILES_PER_THREAD tiles per thread the group's output channels
        // are split as well, in one part per thread (at multiples of the micro-tile's rows), so
        // that the threads share out every tile: by tiles alone one thread gets a tile more (13
        // against 12 on a 7x7 output).
        const int64_t tiles = batch.tiles;
        const int64_t parts =
            threads > 1 && mb * s.groups * tiles < FORWARD_BATCH_TILES_PER_THREAD * threads &&
                    cog >= threads * ks.forward_tile_rows
                ? threads
                : 1;
        // Where piece k of n of the channels [lo, hi) begins: at a multiple of the micro-tile's
        // rows from lo (hi for k = n). Parts of the group's channels, and shares of a part.
        const auto piece_begin = [&](int64_t lo, int64_t hi, int64_t k, int64_t n) {
          const int64_t rows = ks.forward_tile_rows;
          return k == n ? hi : lo + (hi - lo) * k / n / rows * rows;
        };
        const auto part_begin = [&](int64_t part) {  // its first output channel of the group
          return piece_begin(0, cog, part, parts);
        };
        const int64_t items = mb * s.groups * parts * tiles;
        const ItemClaims claims = item_claims(items, threads, FORWARD_BATCH_TILE_GROUP);
        // On several threads the last `threads` claims go by FORWARD_BATCH_TAIL_SPLITS claims of
        // a share of their output channels (at multiples of the micro-tile's rows): whole, a
        // thread on a core slowed by other work kept the other waiting for up to one claim at the
        // end (6-7 of a 7 x 7 layer's 50 tiles at batch 8). Split by channels rather than by
        // tiles, each share still reads its block of weights once for all of the claim's tiles.
        const int64_t tail = threads > 1 ? std::min(threads, claims.count) : 0;
        const int64_t head = claims.count - tail;
        const int64_t units = head + tail * FORWARD_BATCH_TAIL_SPLITS;
        std::atomic<int64_t> next_unit{0};
        torch::stable::parallel_for(0, threads, 1, [&](int64_t begin, int64_t end) {
          std::vector<scalar_t> scratch(FORWARD_BATCH_TILE_GROUP * cog * ks.tile_pixels);
          for (int64_t worker = begin; worker < end; ++worker) {
            for (int64_t u = next_unit++; u < units; u = next_unit++) {
              const int64_t j = u < head ? u : head + (u - head) / FORWARD_BATCH_TAIL_SPLITS;
              const int64_t split = u < head ? -1 : (u - head) % FORWARD_BATCH_TAIL_SPLITS;
              const int64_t stop = claims.end(j);
              for (int64_t i = claims.begin(j); i < stop;) {
                const int64_t tile0 = i % tiles, part = (i / tiles) % parts,
                              g = (i / (tiles * parts)) % s.groups,
                              m = i / (tiles * parts * s.groups);
                const int64_t ntiles = std::min(tiles - tile0, stop - i);
                i += ntiles;
                // This unit's output channels of the group [lo, hi): the part's, or a share of
                // them.
                int64_t lo = part_begin(part), hi = part_begin(part + 1);
                if (split >= 0) {
                  const int64_t part_lo = lo, part_hi = hi;
                  lo = piece_begin(part_lo, part_hi, split, FORWARD_BATCH_TAIL_SPLITS);
                  hi = piece_begin(part_lo, part_hi, split + 1, FORWARD_BATCH_TAIL_SPLITS);
                  if (lo == hi) continue;
                }
                const int64_t n0 = (m0 + m) * lanes, co0 = g * cog + lo;
                Adder2dShape part_shape = s;
                part_shape.out_channels_per_group = hi - lo;
                ks.forward_tiles_batch(
                    part_shape, batch, prepared.get() + (m * s.in_channels + g * cig) * batch.plane,
                    offsets.data(), group_w(g), interleave, lo, bp ? bp + co0 : nullptr,
                    yp + (n0 * s.out_channels + co0) * L, std::min(lanes, s.batch - n0), tile0,
                    ntiles, scratch.data());
              }
            }
          }
        });
      }
      return;
    }
    if (path == ForwardPath::direct) {
      // Images go by chunks of at most FORWARD_PREPARED_BYTES of prepared input (at least one
      // image): each input plane of the chunk prepared once (padded, split by column phase), then
      // work item = (image, group, tile_group tiles), each owning its outputs; the tiles of an
      // item share each block of weights from cache.
      const int64_t image_elems = s.in_channels * layout.plane;
      const std::vector<int64_t> offsets = forward_direct_tap_offsets(s, layout);
      const int64_t HW = s.in_h * s.in_w;
      const int64_t tiles = layout.tiles;
      const int64_t tile_group = forward_direct_item_tiles(s, ks.tile_pixels);
      const int64_t items = (tiles + tile_group - 1) / tile_group;
      // Tiles [tile0, tile0 + ntiles) of group g of image n, from that image's prepared planes.
      const auto run_tiles = [&](const scalar_t* image_planes, int64_t n, int64_t g, int64_t tile0,
                                 int64_t ntiles, scalar_t* scratch) {
        ks.forward_tiles_direct(s, layout, image_planes + g * cig * layout.plane, offsets.data(),
                                group_w(g), interleave, bp ? bp + g * cog : nullptr,
                                yp + (n * s.out_channels + g * cog) * L, tile0, ntiles, scratch);
      };
      // Work item `item` of group g of image n.
      const auto run_item = [&](const scalar_t* image_planes, int64_t n, int64_t g, int64_t item,
                                scalar_t* scratch) {
        const int64_t tile0 = item * tile_group;
        run_tiles(image_planes, n, g, tile0, std::min(tile_group, tiles - tile0), scratch);
      };
      // Image by image when there are several images per thread and an image's copy fits a core's
      // L2: each thread copies an image and runs all of its tiles at once, so the tiles read the
      // copy from that core's cache (prepared for a whole chunk first, it had left the cache by the
      // time the tiles came to it: up to 1.2 MB for ResNet-20's stride-2 layers at batch 32). The
      // threads take the images one at a time from a shared counter: split into equal ranges, the
      // thread on a core slowed by other work finished up to 0.8 ms after the other on
      // ResNet-20's 2.5 ms layers. On several threads the last `threads` images go by claims of
      // a few tiles (DirectClaims; the items' minimum of FORWARD_TILE_GROUP tiles not kept there,
      // so at most tile_group, which the scratch holds): by whole images, the other thread waited
      // for up to one image at the end.
      if (s.batch >= FORWARD_IMAGES_PER_THREAD * threads &&
          image_elems <= FORWARD_IMAGE_BYTES / int64_t(sizeof(scalar_t))) {
        const int64_t tail_tiles =
            std::min(tile_group, forward_direct_item_tiles(s, ks.tile_pixels, 1));
        const DirectClaims claims =
            direct_claims(s.batch, threads > 1 ? threads : 0, s.groups, tiles, tail_tiles);
        std::atomic<int64_t> next_claim{0};
        ClaimedStep weights(interleave_items);
        torch::stable::parallel_for(0, threads, 1, [&](int64_t begin, int64_t end) {
          LineAligned<scalar_t> image(image_elems);
          std::vector<scalar_t> scratch(tile_group * cog * ks.tile_pixels);
          weights.run(interleave_item);
          int64_t prepared = -1;  // the image whose planes `image` holds
          for (int64_t worker = begin; worker < end; ++worker) {
            for (int64_t j = next_claim++; j < claims.count; j = next_claim++) {
              const DirectClaim c = claims.claim(j);
              if (c.image != prepared) {
                for (int64_t ch = 0; ch < s.in_channels; ++ch)
                  ks.forward_prepare_plane(s, layout, xp + (c.image * s.in_channels + ch) * HW,
                                           image.get() + ch * layout.plane);
                prepared = c.image;
              }
              if (c.whole) {
                for (int64_t i = 0; i < s.groups * items; ++i)
                  run_item(image.get(), c.image, i / items, i % items, scratch.data());
              } else {
                run_tiles(image.get(), c.image, c.group, c.tile0, c.ntiles, scratch.data());
              }
            }
          }
        });
        return;
      }
      const int64_t chunk = std::max<int64_t>(
          1, std::min<int64_t>(s.batch,
                               FORWARD_PREPARED_BYTES / int64_t(sizeof(scalar_t)) / image_elems));
      // Not zero-filled: the prepare calls write every element.
      LineAligned<scalar_t> prepared(chunk * image_elems);
      for (int64_t n0 = 0; n0 < s.batch; n0 += chunk) {
        const int64_t nb = std::min(chunk, s.batch - n0);
        // The chunk's planes prepared (and, with the first chunk's, the weights interleaved).
        prepare_planes(n0 == 0, nb * s.in_channels, [&](int64_t i) {
          ks.forward_prepare_plane(s, layout, xp + (n0 * s.in_channels + i) * HW,
                                   prepared.get() + i * layout.plane);
        });
        torch::stable::parallel_for(0, nb * s.groups * items, 1, [&](int64_t begin, int64_t end) {
          std::vector<scalar_t> scratch(tile_group * cog * ks.tile_pixels);
          for (int64_t i = begin; i < end; ++i) {
            const int64_t n = i / (items * s.groups);
            run_item(prepared.get() + n * image_elems, n0 + n, i / items % s.groups, i % items,
                     scratch.data());
          }
        });
      }
      return;
    }
    // Work item = (image, group, pixel tile); each owns its outputs.
    torch::stable::parallel_for(0, s.batch * s.groups * tiles, 1, [&](int64_t begin, int64_t end) {
      std::vector<scalar_t> scratch(ks.forward_scratch + cog * ks.tile_pixels);
      for (int64_t i = begin; i < end; ++i) {
        const int64_t tile = i % tiles, g = (i / tiles) % s.groups, n = i / (tiles * s.groups);
        ks.forward_tile(s, xp + (n * s.in_channels + g * cig) * s.in_h * s.in_w,
                        wp + g * cog * s.taps, bp ? bp + g * cog : nullptr,
                        yp + (n * s.out_channels + g * cog) * L, tile * ks.tile_pixels,
                        scratch.data());
      }
    });
  });
  return y;
}

Tensor adder2d_input_grad_cpu(const Tensor& grad_output, const Tensor& input, const Tensor& weight,
                              IntArrayRef stride, IntArrayRef padding, IntArrayRef dilation,
                              int64_t groups, const std::string& mode) {
  // Plain names, not a structured binding: lambdas below use them, which clang before 16 refuses.
  const Adder2dInputGradArgs args = check_adder2d_input_grad_args(
      grad_output, input, weight, stride, padding, dilation, groups, mode);
  const Adder2dShape& s = args.shape;
  const bool sign_mode = args.sign_mode;
  if (is_reduced_float(input)) {
    return torch::stable::to(
        adder2d_input_grad_cpu(to_float(grad_output), to_float(input), to_float(weight), stride,
                               padding, dilation, groups, mode),
        input.scalar_type());
  }
  Tensor gx = empty_like_input({s.batch, s.in_channels, s.in_h, s.in_w}, input);
  if (gx.numel() == 0) return gx;
  const Tensor dy = torch::stable::contiguous(grad_output);
  const Tensor x = torch::stable::contiguous(input);
  const Tensor w = torch::stable::contiguous(weight);
  ADDERNET_DISPATCH_FLOAT_DOUBLE(x.scalar_type(), "adder2d_input_grad_cpu", [&] {
    const KernelSet<scalar_t> ks = kernels<scalar_t>();
    ADDERNET_CHECK(ks.input_grad_scratch(s) >= 0, "adder2d_input_grad: padding ", padding,
                   " and dilation ", dilation, " are too large: the work buffer overflows int64");
    const int64_t L = s.out_h * s.out_w;
    const int64_t HW = s.in_h * s.in_w;
    const scalar_t* dyp = dy.const_data_ptr<scalar_t>();
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    const scalar_t* wp = w.const_data_ptr<scalar_t>();
    scalar_t* gxp = gx.mutable_data_ptr<scalar_t>();
    const int64_t cig = s.in_channels_per_group;
    const int64_t cog = s.out_channels_per_group;
    const int64_t KHW = s.kernel_h * s.kernel_w;
    // The weights as the kernels read them, wt[g][tap][ci][co] (see input_grad_planes): a tap's
    // weights of consecutive input planes are consecutive rows of Cout/g. Gathered from W's own
    // layout for every work item and tap (stride Cin/g * KH * KW elements), they cost a third of
    // the input gradient of a 512-channel 8 x 8 layer, whose 9 MB of weights are not in cache.
    // By blocks of INPUT_GRAD_REARRANGE_CHANNELS output channels of a group: the block's rows of W
    // are read side by side, and each (tap, ci) of wt gets the block's consecutive elements, whole
    // cache lines (one element per row of wt at a time, rows 4 * Cout/g bytes apart, missed the
    // cache on every store: 18% of a 512-channel 7 x 7 layer's input gradient).
    LineAligned<scalar_t> wt(s.out_channels * s.taps);
    constexpr int64_t CB = INPUT_GRAD_REARRANGE_CHANNELS;
    const int64_t channel_blocks = (cog + CB - 1) / CB;
    const int64_t wt_grain =
        std::max<int64_t>(1, INPUT_GRAD_REARRANGE_GRAIN / std::max<int64_t>(1, CB * s.taps));
    torch::stable::parallel_for(
        0, s.groups * channel_blocks, wt_grain, [&](int64_t begin, int64_t end) {
          for (int64_t b = begin; b < end; ++b) {
            const int64_t g = b / channel_blocks, co0 = b % channel_blocks * CB;
            const int64_t nc = std::min(CB, cog - co0);
            const scalar_t* src = wp + (g * cog + co0) * s.taps;  // W[o] = [ci][t]
            scalar_t* dst = wt.get() + g * KHW * cig * cog + co0;
            for (int64_t ci = 0; ci < cig; ++ci)
              for (int64_t t = 0; t < KHW; ++t) {
                scalar_t* d = dst + (t * cig + ci) * cog;
                const scalar_t* r = src + ci * KHW + t;
                for (int64_t c = 0; c < nc; ++c) d[c] = r[c * s.taps];
              }
          }
        });
    // Work item = up to input_grad_planes_max consecutive input planes of one image and group;
    // each owns its gradient, and each plane's result does not depend on the grouping. The
    // threads take work from a shared counter: split into equal ranges, a thread on a slower core
    // kept the other waiting (as in the forward). With several images and groups per thread a
    // claim is one image and group (its items share dY and its padded copy), else one item.
    const int64_t pb = ks.input_grad_planes_max, blocks = (cig + pb - 1) / pb;
    const int64_t threads = torch::stable::get_num_threads();
    const int64_t items = s.batch * s.groups * blocks;
    const int64_t claim = s.batch * s.groups >= INPUT_GRAD_IMAGES_PER_THREAD * threads ? blocks : 1;
    std::atomic<int64_t> next_item{0};
    torch::stable::parallel_for(0, threads, 1, [&](int64_t begin, int64_t end) {
      std::vector<scalar_t> scratch(ks.input_grad_scratch(s));
      int64_t scratch_ng = -1;  // the image and group whose dY the scratch holds
      for (int64_t worker = begin; worker < end; ++worker) {
        for (int64_t i0 = next_item.fetch_add(claim); i0 < items; i0 = next_item.fetch_add(claim)) {
          for (int64_t i = i0; i < std::min(items, i0 + claim); ++i) {
            const int64_t ng = i / blocks, n = ng / s.groups, g = ng % s.groups;
            const int64_t ci = i % blocks * pb, plane = n * s.in_channels + g * cig + ci;
            ks.input_grad_planes(s, dyp + (n * s.out_channels + g * cog) * L, xp + plane * HW,
                                 wt.get() + (g * KHW * cig + ci) * cog, gxp + plane * HW,
                                 std::min(pb, cig - ci), sign_mode, scratch.data(),
                                 ng == scratch_ng);
            scratch_ng = ng;
          }
        }
      }
    });
  });
  return gx;
}

Tensor adder2d_weight_grad_cpu(const Tensor& grad_output, const Tensor& input, const Tensor& weight,
                               IntArrayRef stride, IntArrayRef padding, IntArrayRef dilation,
                               int64_t groups) {
  const Adder2dShape s = check_adder2d_args("adder2d_weight_grad", input, weight, std::nullopt,
                                            stride, padding, dilation, groups, grad_output);
  if (is_reduced_float(input)) {
    return torch::stable::to(
        adder2d_weight_grad_cpu(to_float(grad_output), to_float(input), to_float(weight), stride,
                                padding, dilation, groups),
        input.scalar_type());
  }
  Tensor gw = empty_like_input(weight.sizes(), weight);
  if (gw.numel() == 0) return gw;
  const Tensor dy = torch::stable::contiguous(grad_output);
  const Tensor x = torch::stable::contiguous(input);
  const Tensor w = torch::stable::contiguous(weight);
  ADDERNET_DISPATCH_FLOAT_DOUBLE(x.scalar_type(), "adder2d_weight_grad_cpu", [&] {
    const KernelSet<scalar_t> ks = kernels<scalar_t>();
    const scalar_t* dyp = dy.const_data_ptr<scalar_t>();
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    const scalar_t* wp = w.const_data_ptr<scalar_t>();
    scalar_t* gwp = gw.mutable_data_ptr<scalar_t>();
    const int64_t cog = s.out_channels_per_group;
    const bool direct = use_direct_weight_grad();
    const auto block = direct ? ks.weight_grad_block_direct : ks.weight_grad_block;
    // Work item i of a group: taps [u(i) * unit, min(u(i + 1) * unit, taps)),
    // u(i) = i * units / items.
    const int64_t unit = direct ? ks.weight_grad_taps : ks.weight_grad_unit_taps;
    const int64_t units = (s.taps + unit - 1) / unit;
    const int64_t items =
        direct ? units : ks.weight_grad_items(s, torch::stable::get_num_threads());
    // The decomposition's sum dY per output channel, once for all work items.
    std::vector<double> dysum(direct ? 0 : s.out_channels);
    if (!direct)
      torch::stable::parallel_for(0, s.out_channels, 1, [&](int64_t begin, int64_t end) {
        for (int64_t co = begin; co < end; ++co) dysum[co] = ks.weight_grad_dy_sum(s, dyp, co);
      });
    // Work item = (group, run of taps) for all the group's output channels: each tap reduces in
    // a fixed order whatever the thread count and the items.
    torch::stable::parallel_for(0, s.groups * items, 1, [&](int64_t begin, int64_t end) {
      std::vector<scalar_t> scratch(ks.weight_grad_scratch(s));
      for (int64_t i = begin; i < end; ++i) {
        const int64_t g = i / items, item = i % items;
        const int64_t k0 = item * units / items * unit;
        const int64_t k1 = std::min(s.taps, (item + 1) * units / items * unit);
        block(s, dyp, xp, wp + g * cog * s.taps, gwp + g * cog * s.taps,
              direct ? nullptr : dysum.data() + g * cog, g, k0, k1 - k0, scratch.data());
      }
    });
  });
  return gw;
}

STABLE_TORCH_LIBRARY_IMPL(addernet, CPU, m) {
  m.impl("adder2d", TORCH_BOX(&adder2d_cpu));
  m.impl("adder2d_input_grad", TORCH_BOX(&adder2d_input_grad_cpu));
  m.impl("adder2d_weight_grad", TORCH_BOX(&adder2d_weight_grad_cpu));
}

}  // namespace cpu
}  // namespace addernet
