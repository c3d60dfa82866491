// The CPU kernels of adder2d as a table of function pointers, one table per instruction set
// (adder2d_cpu_kernels.h compiled in adder2d_cpu_base.cpp and adder2d_cpu_avx2.cpp, and the
// float forward's tile loops in adder2d_cpu_avx512.cpp); the op implementations in
// adder2d_cpu.cpp pick a table at run time.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <type_traits>  // adder2d_cpu_kernels.h, which includes nothing itself
#include <vector>

#include "../adder2d_shape.h"

namespace addernet {
namespace cpu {

// The forward's input, prepared once per input plane for the direct path: zero padded, its columns
// split into stride_w phases, so that the `lanes` consecutive output pixels of a row segment read
// `lanes` consecutive elements through every tap (no packing). Element (f, r, i) of a prepared
// plane is X[r - pad_h][i * stride_w + f - pad_w], zero outside the image. Output pixels go by
// vectors of `lanes` pixels of one row, `tile_vectors` consecutive vectors (row-major) per tile.
//
// By kernel columns instead (copies = KW): where a tile is one register of two vectors that
// are two output rows of one vector each (out_w <= lanes) at stride_h 1, element (kw, r, j) of a
// prepared plane is X[r - pad_h][j * stride_w + kw * dilation_w - pad_w] for j < lanes: rows of
// exactly `lanes` elements, so that a tile's two rows are adjacent through every tap and one
// 64-byte load reads them (in the phases' rows, lanes + (KW - 1) * dilation_w / stride_w wide,
// two loads and an insert per tap). Since the AVX-512 tile reads a panel (24 or more channels,
// so always here), only the panel's copy reads this layout (csrc/README.md).
struct ForwardLayout {
  bool direct;          // false: the copy would be much larger than the input, or rows too short
  int64_t copies;       // 0: phases of the columns; else KW copies, one per kernel column
  int64_t rows, cols;   // of one phase (or copy)
  int64_t plane;        // elements of a prepared plane: stride_w (or KW) * rows * cols
  int64_t row_vectors;  // vectors per output row: ceil(out_w / lanes)
  int64_t tiles;        // tiles per image and group
};

// The layout by kernel columns only with at least this many output channels per group, over
// which the KW copies' preparation is shared. On an Intel core with two 512-bit FMA pipes, 2
// threads, 8 x 8 layers, against the phases: 512 channels 0.93-0.94x the time, 128 channels
// 0.98x, 64 channels 1.04x (benchmarks/NOTES.md; measured before the AVX-512 tile read a panel).
constexpr int64_t FORWARD_COLUMN_COPIES_MIN_CHANNELS = 128;

// The layout for vectors of `lanes` elements and tiles of `tile_vectors` vectors; one_register:
// a tile's vectors are read as one register where they are adjacent (the AVX-512 float tile).
inline ForwardLayout forward_layout(const Adder2dShape& s, int64_t lanes, int64_t tile_vectors,
                                    bool one_register = false) {
  ForwardLayout l{};
  l.row_vectors = (s.out_w + lanes - 1) / lanes;
  int64_t vectors = 0, last_row = 0, span_h = 0, rows = 0, cols = 0, plane = 0, in_plane = 0;
  int64_t phase_rows = 0;
  // Rows read: (out_h - 1) * stride_h + (kernel_h - 1) * dilation_h + 1; columns of a phase:
  // every vector whole, shifted by up to (kernel_w - 1) * dilation_w / stride_w.
  const bool overflow =
      adder2d_mul_add_overflows(s.out_h, l.row_vectors, 0, &vectors) ||
      adder2d_mul_add_overflows(s.out_h - 1, s.stride_h, 0, &last_row) ||
      adder2d_mul_add_overflows(s.kernel_h - 1, s.dilation_h, 1, &span_h) ||
      __builtin_add_overflow(last_row, span_h, &rows) ||
      adder2d_mul_add_overflows(l.row_vectors, lanes, (s.kernel_w - 1) * s.dilation_w / s.stride_w,
                                &cols) ||
      adder2d_mul_add_overflows(s.stride_w, rows, 0, &phase_rows) ||
      adder2d_mul_add_overflows(phase_rows, cols, 0, &plane) ||
      adder2d_mul_add_overflows(s.in_h, s.in_w, 0, &in_plane);
  // Direct when the copy stays within a few times the input and at least half the lanes of a
  // row's vectors hold pixels.
  l.direct = !overflow && plane <= 4 * in_plane + 64 * lanes && 2 * s.out_w >= lanes;
  l.rows = rows;
  l.cols = cols;
  l.plane = plane;
  l.tiles = (vectors + tile_vectors - 1) / tile_vectors;
  int64_t copies_plane = 0;
  if (l.direct && one_register && tile_vectors == 2 && l.row_vectors == 1 && s.stride_h == 1 &&
      s.out_channels_per_group >= FORWARD_COLUMN_COPIES_MIN_CHANNELS &&
      !adder2d_mul_add_overflows(s.kernel_w * rows, lanes, 0, &copies_plane) &&
      copies_plane <= 4 * in_plane + 64 * lanes) {
    l.copies = s.kernel_w;
    l.cols = lanes;
    l.plane = copies_plane;
  }
  return l;
}

// The forward's input prepared by groups of `lanes` images for the batch path: each element of a
// prepared plane is a vector holding one input pixel of the group's `lanes` images (zero for
// images past the batch), zero padded, its columns split into stride_w phases as on the direct
// path, so that a vector is one output pixel of `lanes` images, every output pixel fills a whole
// vector whatever the row width, and consecutive output pixels of a row read consecutive vectors
// through every tap at any stride. Element (f, r, i, lane) of the prepared plane of channel c is
// X[n0 + lane, c, r - pad_h, i * stride_w + f - pad_w], zero outside the image. A tile is
// tile_vectors consecutive output pixels (flat, p = oh * out_w + ow).
struct ForwardBatchLayout {
  bool valid;          // false when a prepared plane's size overflows
  int64_t rows, cols;  // pixels of a prepared plane: the rows and columns the taps read
  int64_t phase_cols;  // columns of one phase: ceil(cols / stride_w)
  int64_t plane;       // elements from one prepared plane to the next: min(stride_w, cols)
                       // phases of rows * phase_cols * lanes, padded
  int64_t tiles;       // tiles per image group and group: ceil(out_h * out_w / tile_vectors)
};

inline ForwardBatchLayout forward_batch_layout(const Adder2dShape& s, int64_t lanes,
                                               int64_t tile_vectors) {
  ForwardBatchLayout l{};
  int64_t last_row = 0, last_col = 0, pixels = 0;
  l.valid = !(adder2d_mul_add_overflows(s.out_h - 1, s.stride_h, 0, &last_row) ||
              adder2d_mul_add_overflows(s.kernel_h - 1, s.dilation_h, last_row + 1, &l.rows) ||
              adder2d_mul_add_overflows(s.out_w - 1, s.stride_w, 0, &last_col) ||
              adder2d_mul_add_overflows(s.kernel_w - 1, s.dilation_w, last_col + 1, &l.cols));
  // Phases that hold a column: stride_w, or cols when the stride exceeds them (one output column).
  const int64_t phases = s.stride_w < l.cols ? s.stride_w : l.cols;
  int64_t phase_rows = 0;  // the rows of all phases
  l.phase_cols = l.valid ? l.cols / s.stride_w + (l.cols % s.stride_w != 0) : 0;
  l.valid = l.valid && !(adder2d_mul_add_overflows(phases, l.rows, 0, &phase_rows) ||
                         adder2d_mul_add_overflows(phase_rows, l.phase_cols, 0, &pixels) ||
                         adder2d_mul_add_overflows(pixels, lanes, 4 * lanes, &l.plane));
  // A copy much larger than the input (padding or a stride beyond the kernel) is not worth it, as
  // on the direct path.
  int64_t in_plane = 0;
  l.valid = l.valid && !adder2d_mul_add_overflows(s.in_h, s.in_w, 0, &in_plane) &&
            pixels <= 4 * in_plane + 64;
  if (!l.valid) return l;
  // Planes an odd number of 64-byte lines (2 pixels: a pixel's vector is 32 bytes) apart: the
  // taps of one block read the same pixel of many consecutive planes, which with planes a
  // multiple of 4 KiB apart (16 x 16 pixels) would all fall into one set of the L1 cache. The
  // elements between planes are never read.
  const int64_t line = 2 * lanes;
  l.plane = (pixels * lanes + line - 1) / line * line;
  if (l.plane / line % 2 == 0) l.plane += line;
  l.tiles = (s.out_h * s.out_w + tile_vectors - 1) / tile_vectors;
  return l;
}

// The fraction of the forward's computed vector lanes that hold an output: by rows of the image
// (the direct path's vectors of one output row, or the packed path's panels of flat pixels), and
// by groups of `lanes` images (the batch path).
inline double forward_row_lane_use(const Adder2dShape& s, const ForwardLayout& l, int64_t lanes,
                                   int64_t tile_vectors) {
  const double pixels = double(s.out_h) * double(s.out_w);
  const int64_t tile_pixels = lanes * tile_vectors;
  if (l.direct) return pixels / (double(l.tiles) * double(tile_pixels));
  return pixels / (double((s.out_h * s.out_w + tile_pixels - 1) / tile_pixels) * tile_pixels);
}
inline double forward_batch_lane_use(const Adder2dShape& s, const ForwardBatchLayout& l,
                                     int64_t lanes, int64_t tile_vectors) {
  const double images = double(s.batch) / double((s.batch + lanes - 1) / lanes * lanes);
  return images * double(s.out_h) * double(s.out_w) / (double(l.tiles) * double(tile_vectors));
}

// The most tiles one call of KernelSet::forward_tiles_direct or forward_tiles_batch takes (their
// pixel pointers are on the stack).
constexpr int64_t FORWARD_CALL_MAX_TILES = 64;

// The batch path's claims hold at most this many tiles (item_claims), and each thread's scratch
// holds that many: its tiles are 2 output pixels, so 8 of them are 16 consecutive pixels (two
// 8 x 8 transposes per output channel in float32).
constexpr int64_t FORWARD_BATCH_TILE_GROUP = 8;
static_assert(FORWARD_BATCH_TILE_GROUP <= FORWARD_CALL_MAX_TILES, "one call's tiles");

// offsets[k] of tap k = (ci, kh, kw) in prepared planes `plane` elements apart: ci * plane +
// within(kh * dilation_h, kw * dilation_w), the tap's offset within a channel's plane.
template <typename Within>
std::vector<int64_t> forward_tap_offsets(const Adder2dShape& s, int64_t plane, Within within) {
  std::vector<int64_t> offsets(s.taps);
  for (int64_t k = 0; k < s.taps; ++k) {
    const int64_t ci = k / (s.kernel_h * s.kernel_w), kh = k / s.kernel_w % s.kernel_h;
    offsets[k] = ci * plane + within(kh * s.dilation_h, k % s.kernel_w * s.dilation_w);
  }
  return offsets;
}

// The taps' offsets in the direct path's prepared planes (phase dw % stride_w, row dh, column
// dw / stride_w of a channel's plane) and in the batch path's (the same, in vectors of `lanes`).
inline std::vector<int64_t> forward_direct_tap_offsets(const Adder2dShape& s,
                                                       const ForwardLayout& l) {
  return forward_tap_offsets(s, l.plane, [&](int64_t dh, int64_t dw) {
    if (l.copies) return dw / s.dilation_w * l.rows * l.cols + dh * l.cols;
    return (dw % s.stride_w) * l.rows * l.cols + dh * l.cols + dw / s.stride_w;
  });
}
inline std::vector<int64_t> forward_batch_tap_offsets(const Adder2dShape& s,
                                                      const ForwardBatchLayout& l, int64_t lanes) {
  return forward_tap_offsets(s, l.plane, [&](int64_t dh, int64_t dw) {
    return ((dw % s.stride_w * l.rows + dh) * l.phase_cols + dw / s.stride_w) * lanes;
  });
}

// The direct path's work items: FORWARD_TILE_GROUP tiles of an image and group, more where a
// tile has few terms (few output channels per group and few taps: 144 on a depthwise 3 x 3
// layer), enough for FORWARD_ITEM_TERMS terms, up to FORWARD_CALL_MAX_TILES; an item's set-up
// (calls, pointers, the epilogue's loops) had cost more than its taps.
// (min_tiles: at least this many; the image-by-image claims below cut the last images finer.)
constexpr int64_t FORWARD_TILE_GROUP = 4;
constexpr int64_t FORWARD_ITEM_TERMS = int64_t(1) << 16;
inline int64_t forward_direct_item_tiles(const Adder2dShape& s, int64_t tile_pixels,
                                         int64_t min_tiles = FORWARD_TILE_GROUP) {
  int64_t tile_terms = s.out_channels_per_group * s.taps * tile_pixels;
  if (tile_terms < 1) tile_terms = 1;
  const int64_t tiles = (FORWARD_ITEM_TERMS + tile_terms - 1) / tile_terms;
  return tiles < min_tiles                ? min_tiles
         : tiles > FORWARD_CALL_MAX_TILES ? FORWARD_CALL_MAX_TILES
                                          : tiles;
}

// The direct path's claims when it goes image by image (each thread preparing the images it
// takes in its own buffer): a whole image (every group and tile) each, except the last `tail`
// images, which go by claims of one group's tail_tiles tiles, a thread preparing its own copy of
// such an image when it takes a claim of it. Claim j is image `image`, and where `whole` is false
// tiles [tile0, tile0 + ntiles) of group `group`. By whole images, a thread on a core slowed by
// other work kept the other waiting for up to one image at the end of every call.
struct DirectClaim {
  bool whole;
  int64_t image, group, tile0, ntiles;
};
struct DirectClaims {
  int64_t count;                                  // claims in all
  int64_t head;                                   // images claimed whole: [0, head)
  int64_t groups, tiles, tail_tiles, tail_items;  // tail_items: claims per tail image and group
  DirectClaim claim(int64_t j) const {
    if (j < head) return DirectClaim{true, j, 0, 0, tiles};
    const int64_t t = j - head, per_image = groups * tail_items, item = t % tail_items;
    const int64_t tile0 = item * tail_tiles;
    return DirectClaim{false, head + t / per_image, t / tail_items % groups, tile0,
                       tiles - tile0 < tail_tiles ? tiles - tile0 : tail_tiles};
  }
};
inline DirectClaims direct_claims(int64_t images, int64_t tail, int64_t groups, int64_t tiles,
                                  int64_t tail_tiles) {
  DirectClaims c{};
  if (tail > images) tail = images;
  if (tail_tiles < 1) tail_tiles = 1;
  c.head = images - tail;
  c.groups = groups;
  c.tiles = tiles;
  c.tail_tiles = tail_tiles;
  c.tail_items = (tiles + tail_tiles - 1) / tail_tiles;
  c.count = c.head + tail * groups * c.tail_items;
  return c;
}

// Items [0, items) cut into `count` claims of at most max_items each, count a multiple of
// `threads` and the claims as equal as they can be (q + 1 items for the first r, then q): threads
// of equal speed taking them in turn from a shared counter get their shares within one item of
// each other (claims of max_items each, the last one short, could leave one thread idle for
// most of a claim).
struct ItemClaims {
  int64_t count, q, r;
  int64_t begin(int64_t j) const { return j * q + (j < r ? j : r); }
  int64_t end(int64_t j) const { return begin(j + 1); }
};
inline ItemClaims item_claims(int64_t items, int64_t threads, int64_t max_items) {
  const int64_t per_thread = (items + threads * max_items - 1) / (threads * max_items);
  const int64_t count = threads * (per_thread > 1 ? per_thread : 1);
  return ItemClaims{count, items / count, items % count};
}

template <typename T>
struct KernelSet {
  // Output pixels [p0, p0 + tile_pixels) of one image and group; see adder2d_cpu_kernels.h.
  void (*forward_tile)(const Adder2dShape&, const T* x, const T* w, const T* bias, T* y, int64_t p0,
                       T* scratch);
  // dX of np <= input_grad_planes_max consecutive input planes of one image and group; w: the
  // group's weights as [tap][ci][co] from the first plane's ci (tap stride Cin/g * Cout/g);
  // scratch: input_grad_scratch(shape) elements; reuse: the previous call on this scratch had
  // the same dy.
  void (*input_grad_planes)(const Adder2dShape&, const T* dy, const T* x, const T* w, T* gx,
                            int64_t np, bool sign_mode, T* scratch, bool reuse);
  // dW of every output channel of group g: taps [k0, k0 + nt) by the decomposition
  // sum dY*Xp - W*sum dY (default; one of weight_grad_items' work items), or directly as
  // sum dY*(Xp - W) (k0 a multiple of weight_grad_taps, nt at most it). dysum: weight_grad_dy_sum of the group's output channels
  // (the decomposition's sum dY; the direct kernel ignores it).
  void (*weight_grad_block)(const Adder2dShape&, const T* dy, const T* x, const T* w, T* gw,
                            const double* dysum, int64_t g, int64_t k0, int64_t nt, T* scratch);
  void (*weight_grad_block_direct)(const Adder2dShape&, const T* dy, const T* x, const T* w, T* gw,
                                   const double* dysum, int64_t g, int64_t k0, int64_t nt,
                                   T* scratch);
  // sum over images and pixels of dY of layer output channel co, in double (a fixed order).
  double (*weight_grad_dy_sum)(const Adder2dShape&, const T* dy, int64_t co);
  int64_t (*input_grad_scratch)(const Adder2dShape&);
  int64_t (*weight_grad_scratch)(const Adder2dShape&);
  // The decomposition's work items per group on a number of threads: item i of n is taps
  // [u(i) U, min(u(i + 1) U, taps)), u(i) = i * ceil(taps / U) / n, U = weight_grad_unit_taps.
  int64_t (*weight_grad_items)(const Adder2dShape&, int64_t threads);
  int64_t weight_grad_taps;
  int64_t weight_grad_unit_taps;
  int64_t tile_pixels;
  // forward_tile's scratch is forward_scratch + out_channels_per_group * tile_pixels elements.
  int64_t forward_scratch;
  // The direct forward (ForwardLayout::direct): a prepared input plane (layout.plane elements),
  // then tiles [tile0, tile0 + ntiles) of one image and group from its prepared planes xp, with
  // tap_offsets[k] the offset of tap k = (ci, kh, kw) in them; w: the group's weights, W[g*Cog]
  // or, where interleaved, interleaved by forward_interleave_weights (below); scratch: ntiles *
  // out_channels_per_group * tile_pixels.
  void (*forward_prepare_plane)(const Adder2dShape&, const ForwardLayout&, const T* x, T* xp);
  void (*forward_tiles_direct)(const Adder2dShape&, const ForwardLayout&, const T* xp,
                               const int64_t* tap_offsets, const T* w, bool interleaved,
                               const T* bias, T* y, int64_t tile0, int64_t ntiles, T* scratch);
  // The batch path (ForwardBatchLayout): the prepared plane of one channel of images
  // [n0, n0 + images) (x: X[n0, c]; images <= vector_lanes, image_stride elements apart), then
  // tiles [tile0, tile0 + ntiles) of that image group and one group from its prepared planes xp,
  // with tap_offsets[k] the offset of tap k = (ci, kh, kw) in them, for out_channels_per_group
  // output channels from co_first of the group; w: the group's weights as for the direct path
  // (not offset by co_first); bias: bias[g*Cog + co_first]; y: Y[n0, g*Cog + co_first]; scratch:
  // ntiles * out_channels_per_group * tile_pixels.
  void (*forward_prepare_batch_plane)(const Adder2dShape&, const ForwardBatchLayout&, const T* x,
                                      int64_t image_stride, int64_t images, T* xp);
  void (*forward_tiles_batch)(const Adder2dShape&, const ForwardBatchLayout&, const T* xp,
                              const int64_t* tap_offsets, const T* w, bool interleaved,
                              int64_t co_first, const T* bias, T* y, int64_t images, int64_t tile0,
                              int64_t ntiles, T* scratch);
  // The weights of output channels [co_begin, co_end) of one group (co_begin a multiple of
  // forward_tile_rows) interleaved for the two paths above (group_w: W[g*Cog]; interleaved: the
  // group's out_channels_per_group * taps elements).
  void (*forward_interleave_weights)(const Adder2dShape&, const T* group_w, T* interleaved,
                                     int64_t co_begin, int64_t co_end);
  int64_t vector_lanes;  // output pixels per vector of the direct forward, images on the batch one
  int64_t tile_vectors;  // vectors per tile: tile_vectors * vector_lanes = tile_pixels
  int64_t input_grad_planes_max;
  // The direct and batch paths' micro-tile: output channels per call and bytes per register
  // (its TILE_P pixels take tile_pixels * sizeof(T) / forward_register_bytes registers per row).
  int64_t forward_tile_rows;
  int64_t forward_register_bytes;
  // Bytes per register of the input gradient's stride-1 loop.
  int64_t input_grad_register_bytes;
  // Bytes per register of the weight gradient's FMAs.
  int64_t weight_grad_register_bytes;
};

// Baseline build (any x86-64 / other CPU) and, on x86-64, an AVX2+FMA build.
KernelSet<float> base_kernels_float();
KernelSet<double> base_kernels_double();
bool avx2_compiled();
KernelSet<float> avx2_kernels_float();
KernelSet<double> avx2_kernels_double();
// On x86-64, an AVX-512 build of the float forward's tile loops (the rest is the AVX2 set).
bool avx512_compiled();
KernelSet<float> avx512_kernels_float();
// The forward's float32 micro-tile arithmetic on registers for `iterations` taps (checksum
// returned, terms per tap in *terms_per_iteration); register_ceiling_rate times the current
// instruction set's.
float base_register_ceiling(int64_t iterations, int64_t* terms_per_iteration);
float avx2_register_ceiling(int64_t iterations, int64_t* terms_per_iteration);
float avx512_register_ceiling(int64_t iterations, int64_t* terms_per_iteration);

// The instruction set the CPU ops use: "avx512" when compiled in and the CPU has AVX2, FMA and
// AVX-512 F, BW, VL and VNNI (the int8 kernels' and the float forward's AVX-512 copies),
// else "avx2" when compiled in and the CPU has AVX2 and FMA, else "base". ADDERNET_CPU_ISA=base,
// avx2 or avx512 (environment, read once) or set_cpu_isa forces one.
std::string cpu_isa();
void set_cpu_isa(const std::string& isa);

// The forward's three ways through an image (adder2d_cpu.cpp chooses by shape, never by data;
// every way sums the taps of each output in the same order, so results are bitwise equal):
// batch, vectors of one pixel of several images (ForwardBatchLayout); direct, vectors of one
// output row read from a prepared copy (ForwardLayout); packed, panels of flat pixels packed
// per block of taps.
enum class ForwardPath { batch, direct, packed };

// The path the float32 (or float64) forward takes for shape s with the current instruction set:
// "batch", "direct" or "packed" (tests and the benchmark report it).
std::string forward_path(const Adder2dShape& s, bool float64);
// Whether that forward interleaves the weights (KernelSet::forward_interleave_weights; the
// results are the same bits either way).
bool forward_interleaves_weights(const Adder2dShape& s, bool float64);
// The copies per plane of the direct path's layout by kernel columns (ForwardLayout::copies),
// 0 where it takes the phases or another path.
int64_t forward_column_copies(const Adder2dShape& s, bool float64);

// The float32 (or float64) forward micro-tile of the current instruction set: {output channels,
// pixels, bytes per register} (the benchmark records it).
std::array<int64_t, 3> forward_tile(bool float64);
// Bytes per register of the input gradient's stride-1 loop with the current instruction set.
int64_t input_grad_register_bytes(bool float64);
// Bytes per register of the weight gradient's FMAs with the current instruction set.
int64_t weight_grad_register_bytes(bool float64);

// |x - w| terms per second of thread CPU time of the forward's float32 micro-tile arithmetic on
// registers (the current instruction set's; at the AVX-512 level the faster of the AVX2 and
// AVX-512 loops), run on the calling thread for `iterations` taps: the ceiling the forward's
// inner loop can reach on one core.
double register_ceiling_rate(int64_t iterations);

}  // namespace cpu
}  // namespace addernet
