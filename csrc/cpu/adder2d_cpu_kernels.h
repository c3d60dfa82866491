// CPU kernels of the three adder2d ops on raw pointers, written once and compiled once per
// instruction set (adder2d_cpu_base.cpp, adder2d_cpu_avx2.cpp, and adder2d_cpu_avx512.cpp for
// the float forward's tile loops, the float input gradient and the float weight gradient only). Each includer defines
// ADDER_CPU_ISA, the namespace that keeps its copies apart: this file includes nothing and
// calls nothing inline from outside, so no code compiled for AVX2 can be merged into the
// baseline build. Shapes follow adder2d_shape.h; all tensors are contiguous NCHW.
//
// forward    Y[n,co,p]   = -sum_k |P[k,p] - W[co,k]|      (+ bias)   k = (ci,kh,kw), p = (oh,ow)
//            implicit GEMM, never the whole im2col: direct path, P read from a padded,
//            phase-split copy of the input (vectors of one output row, per-tap offsets; in float,
//            where enough channel tiles share a tile's pixels, copied into a panel of TILE_K taps
//            per tile that those micro-tile calls read in order);
//            batch path, the same from a padded copy whose every element is one pixel of VL
//            images (a vector per output pixel of VL images, for rows that are not whole
//            vectors); packed path, P packed from the input itself into panels of TILE_P output
//            pixels x TILE_K taps. A register
//            micro-tile of 2-4 output channels x TILE_P pixels (8 x 16 in one 64-byte register
//            each in the AVX-512 build, float) accumulates |P - W| (subtract, clear sign bit,
//            add), taps in order in all three paths and every build: the same bits.
// input_grad dX[n,c,h,w] = sum_{co,kh,kw} dY[n,co,oh,ow] * HT(W[co,ci,kh,kw] - X[n,c,h,w])
//            over the (oh, ow) whose tap lands on (h, w): one call owns up to IG_PLANES input
//            planes, so every term is added exactly once and no atomics are needed. Per tap and
//            output row, vectors of input pixels of those planes accumulate over the group's
//            output channels, each dY vector loaded once for all the planes; at stride > 1, on
//            each phase of the input (h % sh, w % sw), a stride-1 problem on its pixels.
// weight_grad dW[co,k] = sum_{n,p} dY[n,co,p] * (P[k,p] - W[co,k])   (Xp = 0 at padded taps)
//            one call owns a run of taps (blocks of two vectors) for all of a group's output channels
//            and reduces over every image and pixel in a fixed order (deterministic): packed
//            chunks of pixels summed in T in registers, chunks accumulated in double. The
//            decomposition's transposed panels come from register transposes of contiguous
//            loads (zero-padded, phase-split input planes when output rows are whole vectors).

#ifndef ADDER_CPU_ISA
#error "define ADDER_CPU_ISA before including adder2d_cpu_kernels.h"
#endif

namespace addernet {
namespace cpu {
namespace ADDER_CPU_ISA {

constexpr int64_t TILE_P = 16;   // output pixels per panel (2 AVX2 registers of float)
constexpr int64_t TILE_K = 256;  // taps per panel: TILE_K x TILE_P floats = 16 KiB, in L1

template <typename T>
static inline T abs_val(T v) {
  return v < T(0) ? -v : v;
}

static inline int64_t min_i64(int64_t a, int64_t b) {
  return a < b ? a : b;
}

// Gathers taps [k0, k0 + nk) of output pixels [p0, p0 + np) of one image and group (x points at
// channel 0 of the group) into dst[j * tap_stride + p * pixel_stride], zero for padded taps. Walks
// output-row segments, so at stride 1 each segment is a contiguous copy between two zero runs.
template <typename T>
static void pack_patches(const Adder2dShape& s, const T* x, int64_t p0, int64_t np, int64_t k0,
                         int64_t nk, T* dst, int64_t tap_stride, int64_t pixel_stride) {
  const int64_t KHW = s.kernel_h * s.kernel_w, HW = s.in_h * s.in_w;
  // Index math hoisted out of the tap loop (it cost more than the copies on small layers): the
  // output columns each kw reads inside the image, the first pixel's row and column, and
  // (ci, kh, kw) stepped from k0 instead of divided out per tap.
  constexpr int64_t KW_CACHED = 16;
  int64_t lo_of[KW_CACHED], hi_of[KW_CACHED];
  const int64_t cached = min_i64(s.kernel_w, KW_CACHED);
  for (int64_t kw = 0; kw < cached; ++kw)
    adder2d_valid_out_range(kw, s.stride_w, s.pad_w, s.dilation_w, s.in_w, s.out_w, &lo_of[kw],
                            &hi_of[kw]);
  const int64_t oh_first = p0 / s.out_w, ow_first = p0 % s.out_w;
  int64_t ci = k0 / KHW, kh = (k0 % KHW) / s.kernel_w, kw = k0 % s.kernel_w;
  for (int64_t j = 0; j < nk; ++j) {
    int64_t ow_lo, ow_hi;  // output columns whose tap kw reads inside the image
    if (kw < cached) {
      ow_lo = lo_of[kw];
      ow_hi = hi_of[kw];
    } else {
      adder2d_valid_out_range(kw, s.stride_w, s.pad_w, s.dilation_w, s.in_w, s.out_w, &ow_lo,
                              &ow_hi);
    }
    const T* xc = x + ci * HW + (kw * s.dilation_w - s.pad_w);
    int64_t oh = oh_first, ow = ow_first, p = 0;
    while (p < np) {
      const int64_t seg = min_i64(np - p, s.out_w - ow);
      const int64_t ih = adder2d_in_index(oh, kh, s.stride_h, s.pad_h, s.dilation_h);
      T* d = dst + j * tap_stride + p * pixel_stride;
      int64_t lo = 0, hi = 0;  // [lo, hi): the segment's pixels that read inside the image
      if (ih >= 0 && ih < s.in_h) {
        lo = ow_lo - ow < 0 ? 0 : min_i64(ow_lo - ow, seg);
        hi = ow_hi - ow < lo ? lo : min_i64(ow_hi - ow, seg);
      }
      const T* xr = xc + ih * s.in_w;
      for (int64_t q = 0; q < lo; ++q) d[q * pixel_stride] = T(0);
      if (s.stride_w == 1) {
        for (int64_t q = lo; q < hi; ++q) d[q * pixel_stride] = xr[ow + q];
      } else {
        for (int64_t q = lo; q < hi; ++q) d[q * pixel_stride] = xr[(ow + q) * s.stride_w];
      }
      for (int64_t q = hi; q < seg; ++q) d[q * pixel_stride] = T(0);
      p += seg;
      ow = 0;
      ++oh;
    }
    if (++kw == s.kernel_w) {
      kw = 0;
      if (++kh == s.kernel_h) {
        kh = 0;
        ++ci;
      }
    }
  }
}

// The forward's panel: panel[k][p] for TILE_P pixels, pixels past np zero.
template <typename T>
static void pack_panel(const Adder2dShape& s, const T* x, int64_t p0, int64_t np, int64_t k0,
                       int64_t nk, T* panel) {
  pack_patches(s, x, p0, np, k0, nk, panel, TILE_P, 1);
  if (np < TILE_P)
    for (int64_t j = 0; j < nk; ++j)
      for (int64_t p = np; p < TILE_P; ++p) panel[j * TILE_P + p] = T(0);
}

// 32-byte vectors (GCC/Clang vector extensions): one AVX2 register in the AVX2 build, two SSE
// registers in the baseline build. |v| is v with the sign bit cleared.
template <typename T>
struct Vec;
template <>
struct Vec<float> {
  typedef float type __attribute__((vector_size(32)));
  typedef int32_t bits __attribute__((vector_size(32)));
  static constexpr int32_t abs_mask = 0x7fffffff;
  static constexpr int rows = 4;  // output channels per micro-tile: 4 x 2 accumulators
};
template <>
struct Vec<double> {
  typedef double type __attribute__((vector_size(32)));
  typedef int64_t bits __attribute__((vector_size(32)));
  static constexpr int64_t abs_mask = 0x7fffffffffffffffLL;
  static constexpr int rows = 2;  // 2 x 4 accumulators
};
#ifdef ADDER_CPU_ZMM
typedef float Zmm __attribute__((vector_size(64)));  // 16 floats, one AVX-512 register
#endif

// Hides v's value from the compiler without moving it out of registers, so that a loop on
// constant operands is not folded. ADDER_CPU_VECTOR_BYTES (set by the includer) is the size of
// one vector register of the instruction set; without it, 16-byte (SSE) registers.
#ifndef ADDER_CPU_VECTOR_BYTES
#define ADDER_CPU_VECTOR_BYTES 16
#endif
template <typename V>
static inline void opaque(V& v) {
  typedef float R __attribute__((vector_size(ADDER_CPU_VECTOR_BYTES)));
  constexpr int n = int(sizeof(V) / sizeof(R));
  R part[n];
  __builtin_memcpy(part, &v, sizeof(V));
  for (int i = 0; i < n; ++i) __asm__ volatile("" : "+x"(part[i]));
  __builtin_memcpy(&v, part, sizeof(V));
}

// a * b + c. Where the instruction set has FMA, fused (one rounding) by an explicit instruction;
// else a product and a sum. The build turns off the compiler's own contraction
// (-ffp-contract=off): which products it fused varied with the compiler version and with the
// inlining of each template instance, and so did the results of sums meant to be bitwise equal.
// For the float and double vectors of Vec, the AVX-512 build's 64-byte float vector and scalars.
template <typename V>
static inline V mul_add(V a, V b, V c) {
#if defined(ADDER_CPU_FMA)
  if constexpr (std::is_same_v<V, Vec<float>::type>) return __builtin_ia32_vfmaddps256(a, b, c);
  if constexpr (std::is_same_v<V, Vec<double>::type>) return __builtin_ia32_vfmaddpd256(a, b, c);
#if defined(ADDER_CPU_ZMM)
  if constexpr (std::is_same_v<V, Zmm>) return _mm512_fmadd_ps(a, b, c);
#endif
  if constexpr (std::is_same_v<V, float>) return __builtin_fmaf(a, b, c);
  if constexpr (std::is_same_v<V, double>) return __builtin_fma(a, b, c);
#endif
  return a * b + c;
}

// acc + |x - w| for a vector of x and a broadcast w: subtract, clear the sign bit, accumulate.
// Where the instruction set has FMA (ADDER_CPU_FMA, set by the includer), the accumulation is a
// fused multiply-add by one, acc + |x - w| * 1: the product is exact, so the bits are those of the
// sum, but it runs on the FMA pipes and leaves the add pipes to the subtraction. It writes its own
// accumulator, so the micro-tile's loop needs no register copies: 33 macro-ops per tap of the
// 4 x 16 float tile (34 instructions, the compare fused with its branch) against 36 with the
// subtraction on the FMA pipes instead (x + (-w) * 1, which overwrites an operand the other
// rows still read). `one` is 1 hidden from the compiler
// (opaque_one), so that the FMA is not folded back into an add.
template <typename T>
static inline typename Vec<T>::type add_abs_diff(typename Vec<T>::type acc, typename Vec<T>::type x,
                                                 typename Vec<T>::type w,
                                                 typename Vec<T>::type one) {
  typedef typename Vec<T>::type V;
  typedef typename Vec<T>::bits B;
  const V d = (V)((B)(x - w) & (B{} + Vec<T>::abs_mask));
#if defined(ADDER_CPU_FMA)
  return mul_add(d, one, acc);
#else
  (void)one;
  return acc + d;
#endif
}

// A vector loaded from / stored to memory (any alignment) as one value: used on accumulators
// held in arrays, which memcpy'd element-wise GCC copied through the stack in 16-byte halves and
// reloaded as one 32-byte load, a load store forwarding cannot serve (a stall at every call).
template <typename V, typename T>
static inline V load_vec(const T* p) {
  V v;
  __builtin_memcpy(&v, p, sizeof(V));
  return v;
}
template <typename V, typename T>
static inline void store_vec(T* p, V v) {
  __builtin_memcpy(p, &v, sizeof(V));
}

// A vector of ones the compiler cannot see through (add_abs_diff's multiplier).
template <typename T>
static inline typename Vec<T>::type opaque_one() {
  typename Vec<T>::type one = typename Vec<T>::type{} + T(1);
  opaque(one);
  return one;
}

// acc[r][p] += sum_k |panel[k][p] - w(r, k)| for R output channels and TILE_P pixels, the
// R x TILE_P block held in registers; w(r, k) = w[k*R + r] where INTERLEAVED
// (forward_interleave_weights), else w[r*ldw + k]. first: the sums start from zero in registers
// (acc is not read). Out of line, so that tests/test_build.py finds its tap loop.
template <typename T, int R, bool INTERLEAVED = false>
__attribute__((noinline)) static void micro_tile(const T* panel, int64_t nk, const T* w,
                                                 int64_t ldw, T* acc, bool first = false) {
  typedef typename Vec<T>::type V;
  constexpr int VL = int(sizeof(V) / sizeof(T)), NV = int(TILE_P / VL);
  const V one = opaque_one<T>();
  V a[R][NV];
  for (int r = 0; r < R; ++r)
    for (int j = 0; j < NV; ++j) a[r][j] = first ? V{} : load_vec<V>(acc + r * TILE_P + j * VL);
  for (int64_t k = 0; k < nk; ++k) {
    V x[NV];
    for (int j = 0; j < NV; ++j) x[j] = load_vec<V>(panel + k * TILE_P + j * VL);
    for (int r = 0; r < R; ++r) {
      // broadcast (x - 0 folds away, 0 + x would not)
      const V wv = (INTERLEAVED ? w[k * R + r] : w[r * ldw + k]) - V{};
      for (int j = 0; j < NV; ++j) a[r][j] = add_abs_diff<T>(a[r][j], x[j], wv, one);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int j = 0; j < NV; ++j) store_vec(acc + r * TILE_P + j * VL, a[r][j]);
}

// The forward's register-resident ceiling: micro_tile's inner loop (R x TILE_P accumulators,
// add_abs_diff against a weight broadcast from memory per output channel) for `iterations` taps of
// R x TILE_P terms each, accumulators and pixels in registers (pixels and weights hidden from the
// compiler every tap so that nothing is hoisted or folded). Returns the accumulators' sum, so that the loop is not dropped.
[[maybe_unused]] static float register_ceiling(int64_t iterations) {
  typedef Vec<float>::type V;
  constexpr int R = Vec<float>::rows, NV = int(TILE_P * sizeof(float) / sizeof(V));
  const V one = opaque_one<float>();
  V a[R][NV], x[NV];
  float w[R];
  for (int j = 0; j < NV; ++j) x[j] = V{} + 0.25f * float(j + 1);
  for (int r = 0; r < R; ++r) {
    w[r] = 0.5f * float(r + 1);
    for (int j = 0; j < NV; ++j) a[r][j] = V{};
  }
  const float* wp = w;
  for (int64_t i = 0; i < iterations; ++i) {
    for (int j = 0; j < NV; ++j) opaque(x[j]);
    __asm__ volatile("" : "+r"(wp));  // the weights: broadcast from memory every tap, as there
    for (int r = 0; r < R; ++r) {
      const V wv = wp[r] - V{};
      for (int j = 0; j < NV; ++j) a[r][j] = add_abs_diff<float>(a[r][j], x[j], wv, one);
    }
  }
  float sum = 0.0f;
  for (int r = 0; r < R; ++r)
    for (int j = 0; j < NV; ++j)
      for (int l = 0; l < int(sizeof(V) / sizeof(float)); ++l) sum += a[r][j][l];
  return sum;
}

// Terms per iteration of register_ceiling.
constexpr int64_t CEILING_TERMS = Vec<float>::rows * TILE_P;

// One tile of up to TILE_P output pixels (from flat pixel p0) of one image and group, all of the
// group's output channels. x: X[n, g*Cg], w: W[g*Cog], bias: bias[g*Cog] or null, y: Y[n, g*Cog].
// scratch holds TILE_K*TILE_P + Cog*TILE_P elements.
template <typename T>
void forward_tile(const Adder2dShape& s, const T* x, const T* w, const T* bias, T* y, int64_t p0,
                  T* scratch) {
  const int64_t L = s.out_h * s.out_w;
  const int64_t np = min_i64(TILE_P, L - p0);
  const int64_t cog = s.out_channels_per_group, K = s.taps;
  T* panel = scratch;
  T* acc = scratch + TILE_K * TILE_P;
  for (int64_t i = 0; i < cog * TILE_P; ++i) acc[i] = T(0);
  for (int64_t k0 = 0; k0 < K; k0 += TILE_K) {
    const int64_t nk = min_i64(TILE_K, K - k0);
    pack_panel(s, x, p0, np, k0, nk, panel);
    int64_t co = 0;
    constexpr int R = Vec<T>::rows;
    for (; co + R <= cog; co += R)
      micro_tile<T, R>(panel, nk, w + co * K + k0, K, acc + co * TILE_P);
    for (; co < cog; ++co) micro_tile<T, 1>(panel, nk, w + co * K + k0, K, acc + co * TILE_P);
  }
  for (int64_t co = 0; co < cog; ++co) {
    const T b = bias ? bias[co] : T(0);
    T* yr = y + co * L + p0;
    for (int64_t p = 0; p < np; ++p) yr[p] = b - acc[co * TILE_P + p];
  }
}

// even[i] = src[2 i], odd[i] = src[2 i + 1] for i < the returned count (a multiple of the vector
// width, 2 i <= n): two vectors in, their even and odd lanes out. The stride-2 column split of the
// forward's prepared planes and of the weight gradient's padded planes (scalar, it took a fifth
// of the forward's and a sixth of the weight gradient's samples on res20.s2.down3x3).
template <typename T>
static int64_t split_even_odd(const T* src, int64_t n, T* even, T* odd) {
  typedef typename Vec<T>::type V;
  constexpr int64_t VL = int64_t(sizeof(V) / sizeof(T));
  int64_t i = 0;
  for (; 2 * (i + VL) <= n; i += VL) {
    const V v0 = load_vec<V>(src + 2 * i), v1 = load_vec<V>(src + 2 * i + VL);
    V e, o;
    // VL == 8: in-lane picks, then the 64-bit quarters in order (4 shuffles, GCC made 6 of one)
    if constexpr (VL == 8) {
      e = __builtin_shufflevector(v0, v1, 0, 2, 8, 10, 4, 6, 12, 14);
      o = __builtin_shufflevector(v0, v1, 1, 3, 9, 11, 5, 7, 13, 15);
      e = __builtin_shufflevector(e, e, 0, 1, 4, 5, 2, 3, 6, 7);
      o = __builtin_shufflevector(o, o, 0, 1, 4, 5, 2, 3, 6, 7);
    } else {
      e = __builtin_shufflevector(v0, v1, 0, 2, 4, 6);
      o = __builtin_shufflevector(v0, v1, 1, 3, 5, 7);
    }
    __builtin_memcpy(even + i, &e, sizeof(V));
    __builtin_memcpy(odd + i, &o, sizeof(V));
  }
  return i;
}

// dst[0, n) = src[0, n): vectors, the last one overlapping where n >= one vector.
template <typename T>
static void copy_row(const T* src, int64_t n, T* dst) {
  typedef typename Vec<T>::type V;
  constexpr int64_t VL = int64_t(sizeof(V) / sizeof(T));
  int64_t i = 0;
  for (; i + VL <= n; i += VL) store_vec(dst + i, load_vec<V>(src + i));
  if (i == n) return;
  if (n >= VL) {
    store_vec(dst + n - VL, load_vec<V>(src + n - VL));
  } else {
    for (; i < n; ++i) dst[i] = src[i];
  }
}

// One prepared input plane of the direct forward (ForwardLayout in adder2d_cpu.h): x is the plane
// X[n, c], xp receives layout.plane elements. The plane is zeroed at once (one memset: per row,
// GCC made a call of each run of zeros, several times a short row's copy), then the columns
// inside the image are written, walking only the rows inside it (r = pad_h reads input row 0)
// with the shape's fields in locals: read through `s` for every row (GCC reloaded them after each
// store into the plane), the copy took 15-25% longer (a 16 x 16 plane at stride 2: 110-119 ->
// 89-95 ns, 9 shapes of strides 1-4 alike, standalone, 1 thread).
template <typename T>
void forward_prepare_plane(const Adder2dShape& s, const ForwardLayout& l, const T* x, T* xp) {
  constexpr int64_t VL = int64_t(sizeof(typename Vec<T>::type) / sizeof(T));
  const int64_t rows = l.rows, cols = l.cols, in_w = s.in_w, pad_w = s.pad_w, sw = s.stride_w;
  for (int64_t i = 0; i < l.plane; ++i) xp[i] = T(0);
  // The rows inside the image, r - pad_h in [0, in_h); where there are any, r0 = pad_h.
  const int64_t r0 = min_i64(rows, s.pad_h), r1 = min_i64(rows, s.pad_h + s.in_h);
  for (int64_t kw = 0; kw < l.copies; ++kw) {  // by kernel columns: copy kw, columns [lo, hi)
    // inside the image: j * stride_w + shift in [0, in_w)
    const int64_t shift = kw * s.dilation_w - pad_w;
    const int64_t lo = min_i64(cols, shift < 0 ? (-shift + sw - 1) / sw : 0);
    const int64_t end = in_w - shift;
    const int64_t hi = end <= 0 ? lo : min_i64(cols, (end + sw - 1) / sw);
    if (hi <= lo) continue;
    for (int64_t r = r0; r < r1; ++r) {
      T* d = xp + (kw * rows + r) * cols;
      const T* xr = x + (r - r0) * in_w;
      if (sw == 1) {
        copy_row(xr + lo + shift, hi - lo, d + lo);
      } else {
        for (int64_t j = lo; j < hi; ++j) d[j] = xr[j * sw + shift];
      }
    }
  }
  if (l.copies) return;
  if (sw == 2) {  // both phases of a row at once: even and odd input columns
    const int64_t a = pad_w & 1, e0 = pad_w >> 1, o0 = (pad_w + 1) >> 1;
    // Input columns 2 j (phase a, column e0 + j) and 2 j + 1 (phase 1 - a, column o0 + j)
    // inside the phase's cols.
    const int64_t ne = min_i64((in_w + 1) / 2, cols - e0), no = min_i64(in_w / 2, cols - o0);
    const int64_t pairs = min_i64(ne, no);
    T* even = xp + a * rows * cols + e0;
    T* odd = xp + (1 - a) * rows * cols + o0;
    for (int64_t r = r0; r < r1; ++r) {
      const T* xr = x + (r - r0) * in_w;  // input row r - pad_h (r0 = pad_h)
      T* er = even + r * cols;
      T* orow = odd + r * cols;
      int64_t j0 = split_even_odd(xr, 2 * pairs, er, orow);
      if (j0 < pairs && pairs >= VL) {  // the last pairs by an overlapping vector split
        split_even_odd(xr + 2 * (pairs - VL), 2 * VL, er + pairs - VL, orow + pairs - VL);
        j0 = pairs;
      }
      for (int64_t j = j0; j < ne; ++j) er[j] = xr[2 * j];
      for (int64_t j = j0; j < no; ++j) orow[j] = xr[2 * j + 1];
    }
    return;
  }
  for (int64_t f = 0; f < sw; ++f) {
    // Columns [lo, hi) are inside the image: i * stride_w + f - pad_w in [0, in_w).
    const int64_t lo = min_i64(cols, pad_w > f ? (pad_w - f + sw - 1) / sw : 0);
    const int64_t end = in_w + pad_w - f;  // > 0 whenever the row has a column inside
    const int64_t hi = end <= 0 ? lo : min_i64(cols, (end + sw - 1) / sw);
    if (hi <= lo) continue;
    for (int64_t r = r0; r < r1; ++r) {
      T* d = xp + (f * rows + r) * cols + lo;
      const T* xr = x + (r - r0) * in_w + lo * sw + f - pad_w;
      if (sw == 1) {
        copy_row(xr, hi - lo, d);
      } else {
        for (int64_t i = 0; i < hi - lo; ++i) d[i] = xr[i * sw];
      }
    }
  }
}

// acc(r, j)[l] += sum_k |xb[j][off[k] + l] - w(r, k)| for R output channels and the NV vectors
// of NT tiles (NV = NT * TILE_P / VL), each vector read straight from the prepared input (xb[j]:
// the vector's first pixel, off[k]: tap k's offset); the R x NV block held in registers. Vector j
// is vector j % (TILE_P / VL) of tile j / (TILE_P / VL), whose sums are at acc + tile *
// acc_tile_stride: acc(r, j) = acc + j / (TILE_P / VL) * acc_tile_stride + r * TILE_P + j %
// (TILE_P / VL) * VL. w(r, k) = w[k*R + r] where INTERLEAVED (forward_interleave_weights), else
// w[r*ldw + k]. first: the block of taps that starts the sums, which start from zero in registers
// (acc is not read). NT > 1 with R = 1 is the wide tile of the channels left over by the R-channel
// tiles: the same R x NV registers, for one channel of NT tiles. Out of line (GCC inlines the
// R-channel tile into accumulate_tiles otherwise), so that tests/test_build.py finds each tap loop
// under its name and checks that it stays in registers.
template <typename T, int R, bool INTERLEAVED, int NT>
__attribute__((noinline)) static void micro_tile_direct(const T* const* xb, const int64_t* off,
                                                        int64_t nk, const T* w, int64_t ldw, T* acc,
                                                        int64_t acc_tile_stride, bool first) {
  typedef typename Vec<T>::type V;
  constexpr int VL = int(sizeof(V) / sizeof(T)), NVT = int(TILE_P / VL), NV = NT * NVT;
  const V one = opaque_one<T>();
  const T* b[NV];
  V a[R][NV];
  const auto sums = [&](int r, int j) {
    return acc + (j / NVT) * acc_tile_stride + r * TILE_P + (j % NVT) * VL;
  };
  for (int j = 0; j < NV; ++j) b[j] = xb[j];
  for (int r = 0; r < R; ++r)
    for (int j = 0; j < NV; ++j) a[r][j] = first ? V{} : load_vec<V>(sums(r, j));
  for (int64_t k = 0; k < nk; ++k) {
    const int64_t o = off[k];
    V x[NV];
    for (int j = 0; j < NV; ++j) x[j] = load_vec<V>(b[j] + o);
    for (int r = 0; r < R; ++r) {
      const V wv = (INTERLEAVED ? w[k * R + r] : w[r * ldw + k]) - V{};  // broadcast
      for (int j = 0; j < NV; ++j) a[r][j] = add_abs_diff<T>(a[r][j], x[j], wv, one);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int j = 0; j < NV; ++j) store_vec(sums(r, j), a[r][j]);
}

// The forward micro-tile of the direct and batch paths: micro_tile_direct, or in the AVX-512
// build for float (ADDER_CPU_ZMM, set by the includer, which includes <immintrin.h>)
// micro_tile_zmm. forward_rows: its output channels per call.
template <typename T>
constexpr int forward_rows() {
  return Vec<T>::rows;
}

#ifdef ADDER_CPU_ZMM
template <>
constexpr int forward_rows<float>() {
  return 8;
}

// |x - w| on 64-byte vectors for w broadcast from memory: vsubps with the weight's broadcast
// folded into it (three operands: x stays), the sign bit cleared. The accumulation is an FMA by
// one (hidden from the compiler; the product is exact, so the bits of an add) into its own
// accumulator, on the FMA pipes: no register copy per row. The earlier form, the subtraction
// as x - w * one by FMA and the accumulation by vaddps, needed a copy of x or one before each
// of the 8 rows' FMAs (it overwrites an operand): 7-8 vmovaps per tap, and 6-20% slower on
// ResNet-18's strided layers on a Zen 5 core (benchmarks/NOTES.md).
static inline __m512 opaque_one_zmm() {
  __m512 one = _mm512_set1_ps(1.0f);
  __asm__ volatile("" : "+v"(one));
  return one;
}
static inline __m512 abs_diff_zmm(__m512 x, float w) {
  const __m512 d = _mm512_sub_ps(x, _mm512_set1_ps(w));
  return _mm512_castsi512_ps(
      _mm512_and_si512(_mm512_castps_si512(d), _mm512_set1_epi32(0x7fffffff)));
}

// The 64-byte vector of 8 floats at a (low half) and 8 at b (high half), by two loads.
static inline __m512 load_halves(const float* a, const float* b) {
  return _mm512_castpd_ps(
      _mm512_insertf64x4(_mm512_castps_pd(_mm512_castps256_ps512(_mm256_loadu_ps(a))),
                         _mm256_castps_pd(_mm256_loadu_ps(b)), 1));
}

// micro_tile_direct for float on 64-byte vectors: a tile's TILE_P = 16 pixels in one register, R
// output channels (8 x 1 accumulators). The same terms, each |x - w| exact-rounded, added in the
// same order, so results are bitwise equal to the 32-byte
// micro-tile's; but each instruction does 16 terms, so a tap takes half the instructions (on
// this AMD core, which runs a 64-byte operation as two 32-byte halves, the arithmetic's rate is
// the same and the front end's load is halved: the 32-byte tile, 36 macro-ops per tap of 64
// terms when this tile was measured against it, was bound by it, and more so when another
// hardware thread shares the core; 33 since its accumulation moved to the FMA pipes). JOINED:
// the tile's two 8-pixel vectors are adjacent (xb[1] == xb[0] + 8), so one load reads both.
// INTERLEAVED: w(r, k) = w[k*R + r] (forward_interleave_weights), else w[r*ldw + k].
template <int R, bool JOINED, bool INTERLEAVED>
static void micro_tile_zmm(const float* const* xb, const int64_t* off, int64_t nk, const float* w,
                           int64_t ldw, float* acc, bool first) {
  static_assert(TILE_P == 16, "one 64-byte vector per tile");
  const __m512 one = opaque_one_zmm();
  const float* b0 = xb[0];
  const float* b1 = xb[1];
  __m512 a[R];
  for (int r = 0; r < R; ++r)
    a[r] = first ? _mm512_setzero_ps() : _mm512_loadu_ps(acc + r * TILE_P);
  for (int64_t k = 0; k < nk; ++k) {
    const int64_t o = off[k];
    const __m512 x = JOINED ? _mm512_loadu_ps(b0 + o) : load_halves(b0 + o, b1 + o);
    for (int r = 0; r < R; ++r)
      a[r] =
          _mm512_fmadd_ps(abs_diff_zmm(x, INTERLEAVED ? w[k * R + r] : w[r * ldw + k]), one, a[r]);
  }
  for (int r = 0; r < R; ++r) _mm512_storeu_ps(acc + r * TILE_P, a[r]);
}

// micro_tile_zmm over a tile's panel (panel[k][p], TILE_K x TILE_P, 64-byte aligned): one aligned
// 64-byte load per tap, no offset. Out of line, so that tests/test_build.py finds its tap loop.
template <int R, bool INTERLEAVED>
__attribute__((noinline)) static void micro_tile_zmm_panel(const float* panel, int64_t nk,
                                                           const float* w, int64_t ldw, float* acc,
                                                           bool first) {
  static_assert(TILE_P == 16, "one 64-byte vector per tile");
  const __m512 one = opaque_one_zmm();
  __m512 a[R];
  for (int r = 0; r < R; ++r)
    a[r] = first ? _mm512_setzero_ps() : _mm512_loadu_ps(acc + r * TILE_P);
  for (int64_t k = 0; k < nk; ++k) {
    const __m512 x = _mm512_load_ps(panel + k * TILE_P);
    for (int r = 0; r < R; ++r)
      a[r] =
          _mm512_fmadd_ps(abs_diff_zmm(x, INTERLEAVED ? w[k * R + r] : w[r * ldw + k]), one, a[r]);
  }
  for (int r = 0; r < R; ++r) _mm512_storeu_ps(acc + r * TILE_P, a[r]);
}

// micro_tile_zmm for two tiles at once, both read by one 64-byte load per tap (xb[0], xb[2]),
// the weights interleaved: each weight broadcast serves both, 2 x R accumulators. The second
// tile's sums at acc + acc_tile_stride. Each output's taps in the same order: the same bits.
template <int R>
static void micro_tile_zmm_pair(const float* const* xb, const int64_t* off, int64_t nk,
                                const float* w, float* acc, int64_t acc_tile_stride, bool first) {
  static_assert(TILE_P == 16, "one 64-byte vector per tile");
  const __m512 one = opaque_one_zmm();
  float* const acc1 = acc + acc_tile_stride;
  __m512 a[R], b[R];
  for (int r = 0; r < R; ++r) {
    a[r] = first ? _mm512_setzero_ps() : _mm512_loadu_ps(acc + r * TILE_P);
    b[r] = first ? _mm512_setzero_ps() : _mm512_loadu_ps(acc1 + r * TILE_P);
  }
  for (int64_t k = 0; k < nk; ++k) {
    const __m512 x0 = _mm512_loadu_ps(xb[0] + off[k]);
    const __m512 x1 = _mm512_loadu_ps(xb[2] + off[k]);
    for (int r = 0; r < R; ++r) {
      a[r] = _mm512_fmadd_ps(abs_diff_zmm(x0, w[k * R + r]), one, a[r]);
      b[r] = _mm512_fmadd_ps(abs_diff_zmm(x1, w[k * R + r]), one, b[r]);
    }
  }
  for (int r = 0; r < R; ++r) {
    _mm512_storeu_ps(acc + r * TILE_P, a[r]);
    _mm512_storeu_ps(acc1 + r * TILE_P, b[r]);
  }
}

// register_ceiling for micro_tile_zmm's arithmetic: 8 x 16 terms per iteration, the pixels in a
// register hidden from the compiler every tap, weights broadcast from memory.
constexpr int64_t CEILING_TERMS_ZMM = 8 * TILE_P;
static float register_ceiling_zmm(int64_t iterations) {
  constexpr int R = 8;
  const __m512 one = opaque_one_zmm();
  __m512 a[R], x = _mm512_set1_ps(0.25f);
  float w[R];
  for (int r = 0; r < R; ++r) {
    w[r] = 0.5f * float(r + 1);
    a[r] = _mm512_setzero_ps();
  }
  const float* wp = w;
  for (int64_t i = 0; i < iterations; ++i) {
    __asm__ volatile("" : "+v"(x), "+r"(wp));
    for (int r = 0; r < R; ++r) a[r] = _mm512_fmadd_ps(abs_diff_zmm(x, wp[r]), one, a[r]);
  }
  __m512 sum = a[0];
  for (int r = 1; r < R; ++r) sum = _mm512_add_ps(sum, a[r]);
  return _mm512_reduce_add_ps(sum);
}
#endif

// The weights of output channels [co_begin, co_end) of one group (w: W[g*Cog], rows of K taps;
// co_begin a multiple of forward_rows) interleaved for the direct and batch paths' micro-tiles,
// into wi (the group's interleaved weights, Cog * K elements): block by block of TILE_K taps
// (block k0 from wi[k0 * Cog]), in each block the channels by groups of R = forward_rows (the
// group at co from wi[k0 * Cog + co * nk]) holding tap k of its R channels at [k * R + r], and
// the last Cog % R channels one by one ([k]). So a micro-tile reads its weights as one
// sequential stream, which goes on into the next group's: read as R rows K apart, each call
// started R new streams, whose first lines came late (the forward 3-7% slower on most layers of
// 64-512 channels, NOTES).
template <typename T>
void forward_interleave_weights(const Adder2dShape& s, const T* w, T* wi, int64_t co_begin,
                                int64_t co_end) {
  constexpr int64_t R = forward_rows<T>();
  const int64_t cog = s.out_channels_per_group, K = s.taps, full = cog / R * R;
  for (int64_t k0 = 0; k0 < K; k0 += TILE_K) {
    const int64_t nk = min_i64(TILE_K, K - k0);
    T* block = wi + k0 * cog;
    int64_t co = co_begin;
    for (; co + R <= min_i64(co_end, full); co += R)
      for (int64_t k = 0; k < nk; ++k)
        for (int64_t r = 0; r < R; ++r) block[co * nk + k * R + r] = w[(co + r) * K + k0 + k];
    for (; co < co_end; ++co)
      for (int64_t k = 0; k < nk; ++k) block[co * nk + k] = w[co * K + k0 + k];
  }
}

// One call of the direct and batch paths' micro-tile: R output channels of NT tiles (sums of tile
// t at acc + t * acc_tile_stride) from w, their weights interleaved (forward_interleave_weights)
// or in rows ldw apart. (The AVX-512 float tile runs NT tiles one by one; it reads interleaved
// weights only as a whole R-channel group: a 4-channel tile after the groups is given its rows.)
template <typename T, int R, int NT = 1>
static void forward_micro_tile(const T* const* xb, const int64_t* off, int64_t nk, const T* w,
                               int64_t ldw, bool interleaved, T* acc, int64_t acc_tile_stride,
                               bool first) {
#ifdef ADDER_CPU_ZMM
  if constexpr (sizeof(T) == sizeof(float)) {
    for (int t = 0; t < NT; ++t) {
      const float* const* xt = xb + t * 2;
      float* at = acc + t * acc_tile_stride;
      if (interleaved && R > 1) {
        if (xt[1] == xt[0] + 8) {
          micro_tile_zmm<R, true, true>(xt, off, nk, w, ldw, at, first);
        } else {
          micro_tile_zmm<R, false, true>(xt, off, nk, w, ldw, at, first);
        }
      } else if (xt[1] == xt[0] + 8) {
        micro_tile_zmm<R, true, false>(xt, off, nk, w, ldw, at, first);
      } else {
        micro_tile_zmm<R, false, false>(xt, off, nk, w, ldw, at, first);
      }
    }
    return;
  }
#endif
  if (interleaved) {
    micro_tile_direct<T, R, true, NT>(xb, off, nk, w, ldw, acc, acc_tile_stride, first);
  } else {
    micro_tile_direct<T, R, false, NT>(xb, off, nk, w, ldw, acc, acc_tile_stride, first);
  }
}

// The direct and batch paths' sums: scratch[t][co][p] = sum_k |x - w[co_first + co, k]| for
// ntiles <= FORWARD_CALL_MAX_TILES tiles of TILE_P pixels and s.out_channels_per_group output
// channels from co_first of their group (w: the group's weights, interleaved by
// forward_interleave_weights or W[g*Cog] in rows of K taps), the taps in order, by blocks of
// TILE_K taps that go through every tile, so that the block's weights (Cog x TILE_K) come from
// memory once and from cache for the other tiles. xb[t * NV + j]: where tap 0 of vector j of tile
// t reads (tap k reads off[k] further). The channels past the last whole R-channel tile go one by
// one through the wide tile, R tiles at a time: alone, a channel's tile held 2 of the 8
// accumulators the registers allow, and on depthwise layers (9 taps per call) the calls' set-up
// outweighed the taps.
// Float tiles with FORWARD_PANEL_MIN_CALLS or more calls of the R-channel micro-tile per block
// first copy their block of pixels into a panel (panel[k][p], TILE_K x TILE_P, 16 KiB): each of
// those calls then reads it in order, aligned, with no offset per tap (the wide tile of the
// channels left over still reads through the offsets; in the AVX-512 build the 4-channel tile
// after the 8-channel ones reads the panel too). The AVX-512 tile through the offsets (one
// unaligned 64-byte load per tap, or two 32-byte halves where a tile's two vectors are not
// adjacent) held VGG-small's layers at 0.73-0.79 of the ceiling and ResNet-18's strided ones at
// 0.55-0.65 on a Zen 4 core (which splits 64-byte operations into halves); through the panel
// 0.91-0.95 and 0.80-0.87 (NOTES). Read through the offsets by every call, the same pixels
// held the forward at 0.61-0.80 of the register ceiling on the paper's layers, 0.70-0.88 through
// the panel (1 thread, benchmarks/NOTES.md): an offset load per tap, loads split across cache
// lines on the direct path, and a block's rows (28 planes x 3 rows of a 3x3 kernel) competing for
// L1's sets. The copy costs one load and one store per vector and block: with 2 calls (8 output
// channels) more than it saved (0.52-0.60 of the ceiling against 0.58-0.64 without, three
// 8-channel layers), with 3 about as much. The same taps in the same order: the same sums.
constexpr int64_t FORWARD_PANEL_MIN_CALLS = 3;
template <typename T>
static void accumulate_tiles(const Adder2dShape& s, const int64_t* off, const T* w,
                             bool interleaved, int64_t co_first, int64_t ntiles, T* scratch,
                             const T* const* xb) {
  constexpr int64_t NV = TILE_P / int64_t(sizeof(typename Vec<T>::type) / sizeof(T));
  constexpr int R = forward_rows<T>();
  const int64_t cog = s.out_channels_per_group, K = s.taps;
  const int64_t group_cog = s.out_channels / s.groups;
  const int64_t tile_sums = cog * TILE_P;  // a tile's sums in scratch
  // Where channel co's weights of the block from tap k0 (nk taps) start.
  const auto weights = [&](int64_t co, int64_t k0, int64_t nk) {
    return interleaved ? w + k0 * group_cog + (co_first + co) * nk : w + (co_first + co) * K + k0;
  };
  if (K == 0)
    for (int64_t i = 0; i < ntiles * tile_sums; ++i) scratch[i] = T(0);
  const int64_t whole = cog / R * R;  // channels of the R-channel tiles
  // and of a 4-channel tile after them where R = 8 (the AVX-512 build's float tile)
  const int64_t whole4 = R > 4 && cog - whole >= 4 ? whole + 4 : whole;
  constexpr bool can_pack = sizeof(T) == sizeof(float);
  const bool pack = can_pack && whole >= FORWARD_PANEL_MIN_CALLS * R;
  alignas(64) T panel[can_pack ? TILE_K * TILE_P : 1];
  for (int64_t k0 = 0; k0 < K; k0 += TILE_K) {
    const int64_t nk = min_i64(TILE_K, K - k0);
    const bool first = k0 == 0;  // the first block's micro-tiles start the sums from zero
    for (int64_t t = 0; t < ntiles; ++t) {
      T* acc = scratch + t * tile_sums;
      if (pack) {
        typedef typename Vec<T>::type V;
        constexpr int64_t VL = TILE_P / NV;
        const T* const* x = xb + t * NV;
        for (int64_t k = 0; k < nk; ++k)
          for (int64_t j = 0; j < NV; ++j)
            store_vec(panel + k * TILE_P + j * VL, load_vec<V>(x[j] + off[k0 + k]));
#ifdef ADDER_CPU_ZMM
        if constexpr (sizeof(T) == sizeof(float)) {
          for (int64_t co = 0; co < whole; co += R) {
            if (interleaved) {
              micro_tile_zmm_panel<R, true>(panel, nk, weights(co, k0, nk), K, acc + co * TILE_P,
                                            first);
            } else {
              micro_tile_zmm_panel<R, false>(panel, nk, weights(co, k0, nk), K, acc + co * TILE_P,
                                             first);
            }
          }
          if (whole4 > whole)
            micro_tile_zmm_panel<4, false>(panel, nk, weights(whole, k0, nk), interleaved ? nk : K,
                                           acc + whole * TILE_P, first);
        } else  // the 32-byte tile, not instantiated for the AVX-512 build's float
#endif
        {
          for (int64_t co = 0; co < whole; co += R) {
            if (interleaved) {
              micro_tile<T, R, true>(panel, nk, weights(co, k0, nk), K, acc + co * TILE_P, first);
            } else {
              micro_tile<T, R>(panel, nk, weights(co, k0, nk), K, acc + co * TILE_P, first);
            }
          }
        }
        continue;
      }
#ifdef ADDER_CPU_ZMM
      // Two tiles at once where both read whole 64-byte vectors (interleaved weights) and there
      // is no panel (fewer channels than FORWARD_PANEL_MIN_CALLS tiles): each weight broadcast
      // serves 32 pixels. On an Intel core with two 512-bit FMA pipes, before the panel, against
      // one tile at a time: res18.l2.down3x3 0.86-0.94x the time, res18.l3.down3x3 0.95-0.97x,
      // six other layers 0.97-1.04x (benchmarks/NOTES.md). Two tiles' panels (32 KiB) on a Zen 4
      // core: 0.78-1.00x the rate of one tile's (9 layers, two runs), none faster.
      if constexpr (sizeof(T) == sizeof(float)) {
        const T* const* xt = xb + t * NV;
        if (interleaved && t + 1 < ntiles && xt[1] == xt[0] + 8 && xt[3] == xt[2] + 8) {
          for (int64_t co = 0; co < whole; co += R)
            micro_tile_zmm_pair<R>(xt, off + k0, nk, weights(co, k0, nk), acc + co * TILE_P,
                                   tile_sums, first);
          if (whole4 > whole)
            for (int64_t u = t; u < t + 2; ++u)
              forward_micro_tile<T, 4>(xb + u * NV, off + k0, nk, weights(whole, k0, nk), nk, false,
                                       scratch + u * tile_sums + whole * TILE_P, 0, first);
          ++t;
          continue;
        }
      }
#endif
      for (int64_t co = 0; co < whole; co += R)
        forward_micro_tile<T, R>(xb + t * NV, off + k0, nk, weights(co, k0, nk), K, interleaved,
                                 acc + co * TILE_P, 0, first);
      if constexpr (R > 4) {  // interleaved, the channels past the R-channel tiles are rows of nk
        if (whole4 > whole)
          forward_micro_tile<T, 4>(xb + t * NV, off + k0, nk, weights(whole, k0, nk),
                                   interleaved ? nk : K, false, acc + whole * TILE_P, 0, first);
      }
    }
    for (int64_t co = whole4; co < cog; ++co) {
      int64_t t = 0;
      for (; t + R <= ntiles; t += R)
        forward_micro_tile<T, 1, R>(xb + t * NV, off + k0, nk, weights(co, k0, nk), K, interleaved,
                                    scratch + t * tile_sums + co * TILE_P, tile_sums, first);
      for (; t < ntiles; ++t)
        forward_micro_tile<T, 1>(xb + t * NV, off + k0, nk, weights(co, k0, nk), K, interleaved,
                                 scratch + t * tile_sums + co * TILE_P, 0, first);
    }
  }
}

// xb[i] = where vector first + i of the direct and batch paths reads tap 0, for i < inside: vector
// v is the (v % per_row)-th of output row v / per_row, rows row_step elements apart in xp and
// vectors VL apart in a row; xb[i] = xp for the rest of the n (computed, not stored). Stepped along
// the rows: divided out per vector (or a row's offset multiplied out), they cost more than the
// taps on depthwise layers.
template <typename T>
static void tile_pointers(const T* xp, int64_t first, int64_t per_row, int64_t row_step,
                          int64_t inside, int64_t n, const T** xb) {
  constexpr int64_t VL = int64_t(sizeof(typename Vec<T>::type) / sizeof(T));
  const T* row = xp + first / per_row * row_step;
  for (int64_t i = 0, c = first % per_row; i < inside; ++i) {
    xb[i] = row + c * VL;
    if (++c == per_row) {
      c = 0;
      row += row_step;
    }
  }
  for (int64_t i = inside; i < n; ++i) xb[i] = xp;
}

// Tiles [tile0, tile0 + ntiles) (each TILE_P / VL vectors of VL pixels of one output row,
// row-major) of one image and group by the direct forward, all of the group's output channels.
// The tiles go through each block of TILE_K taps together, so that the block's weights (Cog x
// TILE_K) are read from memory once per group of tiles and from cache by the others. xp: the
// group's prepared planes; w: the group's weights (interleaved: by forward_interleave_weights); bias:
// bias[g*Cog] or null; y: Y[n, g*Cog]; scratch: ntiles * Cog * TILE_P; ntiles <=
// FORWARD_CALL_MAX_TILES. Each output's taps are summed in the order of forward_tile, so the two
// agree bit for bit.
template <typename T>
void forward_tiles_direct(const Adder2dShape& s, const ForwardLayout& l, const T* xp,
                          const int64_t* off, const T* w, bool interleaved, const T* bias, T* y,
                          int64_t tile0, int64_t ntiles, T* scratch) {
  typedef typename Vec<T>::type V;
  constexpr int64_t VL = int64_t(sizeof(V) / sizeof(T)), NV = TILE_P / VL;
  const int64_t L = s.out_h * s.out_w, cog = s.out_channels_per_group;
  const int64_t vectors = s.out_h * l.row_vectors;
  const int64_t row_step = s.stride_h * l.cols;  // between the first pixels of two output rows
  // Vector v0 + i of the call: vector (v0 + i) % row_vectors of its output row.
  const int64_t v0 = tile0 * NV, stored = min_i64(ntiles * NV, vectors - v0);
  const T* xb[FORWARD_CALL_MAX_TILES * NV];
  tile_pointers(xp, v0, l.row_vectors, row_step, stored, ntiles * NV, xb);
  accumulate_tiles(s, off, w, interleaved, 0, ntiles, scratch, xb);
  // Vector i's sums of channel co at scratch + (i / NV * cog + co) * TILE_P + i % NV * VL.
  for (int64_t co = 0; co < cog; ++co) {
    const V b = (bias ? bias[co] : T(0)) - V{};  // b - 0 keeps a -0 bias
    T* const yc = y + co * L;
    const T* const sums = scratch + co * TILE_P;
    if (s.out_w % VL == 0) {  // whole vectors, the call's consecutive in Y
      for (int64_t i = 0; i < stored; ++i)
        store_vec(yc + (v0 + i) * VL, b - load_vec<V>(sums + i / NV * cog * TILE_P + i % NV * VL));
      continue;
    }
    T* yr = yc + v0 / l.row_vectors * s.out_w;
    for (int64_t i = 0, c = v0 % l.row_vectors; i < stored; ++i) {
      const T* a = sums + i / NV * cog * TILE_P + i % NV * VL;
      const int64_t ow = c * VL, n = min_i64(VL, s.out_w - ow);
      if (n == VL) {  // whole vector (as a loop, GCC emitted scalars: yr may alias a)
        store_vec(yr + ow, b - load_vec<V>(a));
      } else {
        for (int64_t q = 0; q < n; ++q) yr[ow + q] = b[0] - a[q];
      }
      if (++c == l.row_vectors) {
        c = 0;
        yr += s.out_w;
      }
    }
  }
}

// dst(p)[j] = f(v)[j] for the first `rows` rows p of a VL x VL block (VL = lanes of V),
// v[j] = src[j][p]: a register transpose (unpack, in-lane shuffle, lane permute), then f on each
// transposed row (the same operations as a scalar loop). dst: a callable, row p -> its pointer.
template <typename Dst, typename F>
static inline void transpose_block_to(const float* const* src, Dst dst, int64_t rows, F f) {
  typedef Vec<float>::type V;
  // Each row loaded into its register: copied through an array, the rows went to the stack as
  // two 16-byte halves and came back as one 32-byte load, which store forwarding cannot serve.
  V r[8] = {load_vec<V>(src[0]), load_vec<V>(src[1]), load_vec<V>(src[2]), load_vec<V>(src[3]),
            load_vec<V>(src[4]), load_vec<V>(src[5]), load_vec<V>(src[6]), load_vec<V>(src[7])};
  V t[8], u[8];
  for (int i = 0; i < 8; i += 2) {
    t[i] = __builtin_shufflevector(r[i], r[i + 1], 0, 8, 1, 9, 4, 12, 5, 13);
    t[i + 1] = __builtin_shufflevector(r[i], r[i + 1], 2, 10, 3, 11, 6, 14, 7, 15);
  }
  for (int i = 0; i < 8; i += 4)
    for (int h = 0; h < 2; ++h) {
      u[i + 2 * h] = __builtin_shufflevector(t[i + h], t[i + h + 2], 0, 1, 8, 9, 4, 5, 12, 13);
      u[i + 2 * h + 1] =
          __builtin_shufflevector(t[i + h], t[i + h + 2], 2, 3, 10, 11, 6, 7, 14, 15);
    }
  for (int i = 0; i < 4; ++i) {  // u[i]: columns i (low lanes) and i + 4 of rows 0-3; u[i+4]: 4-7
    if (i < rows)
      store_vec(dst(i), f(__builtin_shufflevector(u[i], u[i + 4], 0, 1, 2, 3, 8, 9, 10, 11)));
    if (i + 4 < rows)
      store_vec(dst(i + 4), f(__builtin_shufflevector(u[i], u[i + 4], 4, 5, 6, 7, 12, 13, 14, 15)));
  }
}
template <typename Dst, typename F>
static inline void transpose_block_to(const double* const* src, Dst dst, int64_t rows, F f) {
  typedef Vec<double>::type V;
  V r[4] = {load_vec<V>(src[0]), load_vec<V>(src[1]), load_vec<V>(src[2]), load_vec<V>(src[3])};
  V t[4];
  for (int i = 0; i < 4; i += 2) {
    t[i] = __builtin_shufflevector(r[i], r[i + 1], 0, 4, 2, 6);
    t[i + 1] = __builtin_shufflevector(r[i], r[i + 1], 1, 5, 3, 7);
  }
  for (int i = 0; i < 2; ++i) {  // t[i]: columns i and i + 2 of rows 0-1; t[i+2]: rows 2-3
    if (i < rows) store_vec(dst(i), f(__builtin_shufflevector(t[i], t[i + 2], 0, 1, 4, 5)));
    if (i + 2 < rows) store_vec(dst(i + 2), f(__builtin_shufflevector(t[i], t[i + 2], 2, 3, 6, 7)));
  }
}

// dst[p * ldd + j] = f(v)[j]: transpose_block_to into rows ldd elements apart.
template <typename T, typename F>
static inline void transpose_block(const T* const* src, T* dst, int64_t ldd, int64_t rows, F f) {
  transpose_block_to(src, [dst, ldd](int64_t p) { return dst + p * ldd; }, rows, f);
}

// dst[p * ldd + j] = src[j][p] - c[j] for a VL x VL block (the weight gradient's panels).
template <typename T>
static inline void transpose_centred(const T* const* src, typename Vec<T>::type c, T* dst,
                                     int64_t ldd) {
  constexpr int64_t VL = int64_t(sizeof(typename Vec<T>::type) / sizeof(T));
  transpose_block(src, dst, ldd, VL, [c](typename Vec<T>::type v) { return v - c; });
}

// One prepared plane of the batch path (ForwardBatchLayout in adder2d_cpu.h): channel c of
// `images` <= VL images, x: X[n0, c], image_stride elements between images; xp receives the
// min(stride_w, layout.cols) phases of layout.rows * layout.phase_cols * VL elements (the rest of
// layout.plane, and a phase's columns past layout.cols, are never read), lanes past `images` zero.
template <typename T>
void forward_prepare_batch_plane(const Adder2dShape& s, const ForwardBatchLayout& l, const T* x,
                                 int64_t image_stride, int64_t images, T* xp) {
  constexpr int64_t VL = int64_t(sizeof(typename Vec<T>::type) / sizeof(T));
  const int64_t sw = s.stride_w, phase = l.rows * l.phase_cols * VL;
  // Columns [lo, hi) of a prepared row are inside the image: i - pad_w in [0, in_w).
  const int64_t lo = min_i64(l.cols, s.pad_w), hi = min_i64(l.cols, s.pad_w + s.in_w);
  for (int64_t r = 0; r < l.rows; ++r) {
    // Column i of the row at d + i % sw * phase + i / sw * VL, walked without divisions: column
    // `i` of `next` is phase f, element j.
    T* const d = xp + r * l.phase_cols * VL;
    struct Column {
      int64_t i, f, j;
    } next{0, 0, 0};
    const auto at = [&](const Column& c) { return d + c.f * phase + c.j * VL; };
    const auto advance = [sw](Column& c) {
      ++c.i;
      if (++c.f == sw) {
        c.f = 0;
        ++c.j;
      }
    };
    const int64_t ih = r - s.pad_h;
    const bool inside = ih >= 0 && ih < s.in_h;
    for (; next.i < (inside ? lo : l.cols); advance(next))
      for (int64_t n = 0; n < VL; ++n) at(next)[n] = T(0);
    if (inside) {
      // Columns by blocks of VL, VL images x VL pixels transposed in registers (images past the
      // batch read zeros), the rest one element at a time.
      const T zeros[VL] = {};
      const T* xr[VL];
      for (int64_t n = 0; n < VL; ++n)
        xr[n] = n < images ? x + n * image_stride + ih * s.in_w - s.pad_w : nullptr;
      for (; next.i + VL <= hi;) {
        const T* src[VL];
        T* dst[VL];
        for (int64_t n = 0; n < VL; ++n) src[n] = n < images ? xr[n] + next.i : zeros;
        for (int64_t q = 0; q < VL; ++q, advance(next)) dst[q] = at(next);
        transpose_block_to(
            src, [&dst](int64_t q) { return dst[q]; }, VL,
            [](typename Vec<T>::type v) { return v; });
      }
      for (; next.i < hi; advance(next))
        for (int64_t n = 0; n < VL; ++n) at(next)[n] = n < images ? xr[n][next.i] : T(0);
      for (; next.i < l.cols; advance(next))
        for (int64_t n = 0; n < VL; ++n) at(next)[n] = T(0);
    }
  }
}

// Tiles [tile0, tile0 + ntiles) (TILE_P / VL consecutive output pixels each, a vector per pixel
// holding `images` <= VL images) of one image group and group by the batch path, for
// s.out_channels_per_group output channels from co_first of the group, through the direct path's
// micro-tile: the same taps in the same order for every output, so the three paths agree bit for
// bit. xp: the image group's prepared planes of the group's input channels; w: the group's
// weights (interleaved: by forward_interleave_weights); bias: bias[g*Cog + co_first] or null; y: Y[n0,
// g*Cog + co_first]; scratch: ntiles * s.out_channels_per_group * TILE_P; ntiles <=
// FORWARD_CALL_MAX_TILES.
template <typename T>
void forward_tiles_batch(const Adder2dShape& s, const ForwardBatchLayout& l, const T* xp,
                         const int64_t* off, const T* w, bool interleaved, int64_t co_first,
                         const T* bias, T* y, int64_t images, int64_t tile0, int64_t ntiles,
                         T* scratch) {
  constexpr int64_t VL = int64_t(sizeof(typename Vec<T>::type) / sizeof(T)), NV = TILE_P / VL;
  const int64_t L = s.out_h * s.out_w, cog = s.out_channels_per_group;
  // Pixel p0 + i of the call: column (p0 + i) % out_w of its output row.
  const int64_t p0 = tile0 * NV;
  const T* xb[FORWARD_CALL_MAX_TILES * NV];
  tile_pointers(xp, p0, s.out_w, s.stride_h * l.phase_cols * VL, min_i64(ntiles * NV, L - p0),
                ntiles * NV, xb);
  accumulate_tiles(s, off, w, interleaved, co_first, ntiles, scratch, xb);
  // Output row by output row (channel, then image): the tiles' pixels of a row are consecutive,
  // so each row is written in one run, from the channel's sums in L1 (pixel by pixel, every image
  // and channel in between, the stores were one per cache line: 8% of the forward's time on
  // res18.l2.down3x3).
  typedef typename Vec<T>::type V;
  const int64_t image_stride = s.out_channels * L;
  const int64_t pixels = min_i64(ntiles * NV, L - tile0 * NV);
  for (int64_t co = 0; co < cog; ++co) {
    const T b = bias ? bias[co] : T(0);
    // Pixel q's images at a[q / NV * cog * TILE_P + q % NV * VL]; image n's pixel q at
    // yc[n * image_stride + q].
    const T* a = scratch + co * TILE_P;
    T* yc = y + co * L + tile0 * NV;
    int64_t q0 = 0;
    for (; q0 + VL <= pixels; q0 += VL) {  // VL pixels x VL images, transposed in registers
      const T* src[VL];
      for (int64_t i = 0; i < VL; ++i)
        src[i] = a + (q0 + i) / NV * cog * TILE_P + (q0 + i) % NV * VL;
      transpose_block(src, yc + q0, image_stride, images, [b](V v) { return (b - V{}) - v; });
    }
    for (int64_t n = 0; n < images; ++n)
      for (int64_t q = q0; q < pixels; ++q)
        yc[n * image_stride + q] = b - a[q / NV * cog * TILE_P + q % NV * VL + n];
  }
}

// HT(z) = clamp(z, -1, 1) or sign(z), branch-free so that it vectorises (scalars or vectors);
// lo = -1 and hi = 1 (from input_grad_bounds). The clamp's selects have the operand order of
// x86's max/min (max(a, b) = a > b ? a : b), one instruction each, a NaN z passing through.
template <typename V, bool SIGN>
static inline V input_grad_weight(V z, V lo, V hi) {
  if (SIGN) return (z > V{}) ? hi : ((z < V{}) ? lo : V{});
  z = (lo > z) ? lo : z;
  return (hi < z) ? hi : z;
}

// -1 and 1 as values the optimiser cannot see into (an empty asm that may change them): with
// constant bounds GCC lowers each select of the clamp to a compare and a blend, two
// instructions instead of one max or min.
template <typename V>
static inline void input_grad_bounds(V* lo, V* hi) {
  *lo = V{} - 1;
  *hi = V{} + 1;
  __asm__("" : "+m"(*lo), "+m"(*hi));
}

// gr[p*U + u] += sum_co dy[u][co*L] * HT(w[p*cog + co] - x[p*U + u]) for U whole vectors
// (distinct gradient vectors) of P input planes at stride 1: one output row's contribution,
// through one tap, to input pixels of P planes, all the group's output channels at once so that
// each gradient vector is read and written once per tap (and every store lands where the next
// tap's load of it reads, which keeps store-to-load forwarding working). P x U independent
// accumulators hide the FMA latency one accumulator running through the output channels would
// wait on; each dY vector loaded serves the P planes, each weight broadcast the U vectors.
template <typename T, bool SIGN, int P, int U>
static void input_grad_vectors(const T* const* dy, int64_t L, const T* const* x, const T* w,
                               int64_t cog, T* const* gr) {
  typedef typename Vec<T>::type V;
  V lo, hi;
  input_grad_bounds(&lo, &hi);
  V acc[P * U], xv[P * U];
  for (int i = 0; i < P * U; ++i) {
    __builtin_memcpy(&acc[i], gr[i], sizeof(V));
    __builtin_memcpy(&xv[i], x[i], sizeof(V));
  }
  for (int64_t co = 0; co < cog; ++co) {
    V wv[P];
    for (int p = 0; p < P; ++p) wv[p] = w[p * cog + co] - V{};  // broadcast
    for (int u = 0; u < U; ++u) {
      V d;
      __builtin_memcpy(&d, dy[u] + co * L, sizeof(V));
      for (int p = 0; p < P; ++p)
        acc[p * U + u] =
            mul_add(d, input_grad_weight<V, SIGN>(wv[p] - xv[p * U + u], lo, hi), acc[p * U + u]);
    }
  }
  for (int i = 0; i < P * U; ++i) __builtin_memcpy(gr[i], &acc[i], sizeof(V));
}

constexpr int IG_ACCUMULATORS = 8;  // gradient vectors per input_grad_vectors call (P x U)
constexpr int64_t IG_PLANES = 4;    // most input planes per input_grad_planes call
// At stride 1, up to this many output channels per group: all taps of a few vectors at a time
// (input_grad_row_all_taps) instead of tap by tap over whole planes.
constexpr int64_t IG_ALL_TAPS_CHANNELS = 4;

// Slots (32-byte vectors of input pixels) per input_grad_vectors call at stride 1: P planes x U
// slots. In the AVX-512 build for float, twice as many, paired into 64-byte vectors.
template <typename T>
constexpr int input_grad_slots() {
  return IG_ACCUMULATORS;
}

#ifdef ADDER_CPU_ZMM
template <>
constexpr int input_grad_slots<float>() {
  return 2 * IG_ACCUMULATORS;
}

// input_grad_vectors for float on 64-byte vectors: slots 2i and 2i + 1 (of U = 2 U2) as the low
// and high halves of one vector, their input and gradient vectors adjacent (x[2i + 1] == x[2i] +
// 8, likewise gr). Each lane computes what the 32-byte kernel does, in the same order (subtract,
// max, min or the sign selects, fused multiply-add, output channels in order), so the results
// are bitwise equal (where a NaN dY meets a NaN W - X, which NaN's payload comes out depends on
// the operand order the compiler picks for the FMA, in either kernel); each instruction does 16
// lanes. w - x is w + (-x) * one by a fused multiply-add (exact product: the rounded difference
// bit for bit) on the FMA pipes: as a subtraction it shared the two add pipes with the max and
// the min, and the 64-byte kernel gained 1.05-1.25x over the 32-byte one, with the FMA 1.1-1.4x.
// JOINED: every pair's dY halves are adjacent too (one load per output channel; else two, as
// across the rows of an 8-pixel-wide image).
// clamp(z, -1, 1) in one instruction (AVX-512 DQ's vrangeps; one = 1): of z and 1 the one of
// smaller magnitude, with z's sign. For a z that is not NaN, the bits of input_grad_weight's max
// and min: |z| <= 1 gives z (-0 and +-1 included); beyond, +-inf included, 1 with z's sign. A NaN
// z would give +-1 (vrangeps returns the other operand of a quiet NaN), so it serves only where
// no w - x is NaN (input_grad_vectors_zmm checks).
static inline __m512 clamp_unit_zmm(__m512 z, __m512 one) {
  return _mm512_range_ps(z, one, 0x02);  // imm 0b00'10: the smaller magnitude, the sign of z
}
static inline __m256 clamp_unit_ymm(__m256 z, __m256 one) {
  return _mm256_range_ps(z, one, 0x02);
}

// sign(z) as input_grad_weight<V, true> gives it (1 where z > 0, -1 where z < 0, +0 for +-0 and
// NaN) in one instruction, AVX-512 F's vfixupimmps: z's class (QNaN, SNaN, +-0, +1, -inf, +inf,
// negative, positive) picks a response from `signs` (SIGN_RESPONSES broadcast), 4 bits per class
// from the lowest: +0 (8), +0, +0, +1 (10), -1 (9), +1, -1, +1. A denormal z is a negative or
// positive number, or a zero where MXCSR.DAZ is set, as in the comparisons. Two comparisons and
// two blends before, 5 operations per term in all, now 3: on an Intel core with two 512-bit FMA
// pipes, res18.l3.3x3's input gradient in this mode 59 -> 38 ms, vgg.c6's (256 output channels)
// 142 -> 101 ms (1 thread).
constexpr int32_t SIGN_RESPONSES = int32_t(0xA9A9A888u);
static inline __m512 sign_unit_zmm(__m512 z, __m512i signs) {
  return _mm512_fixupimm_ps(_mm512_setzero_ps(), z, signs, 0);
}
static inline __m256 sign_unit_ymm(__m256 z, __m256i signs) {
  return _mm256_fixupimm_ps(_mm256_setzero_ps(), z, signs, 0);
}

// Whether none of an input_grad_vectors_zmm call's input vectors holds a NaN: then, with every
// weight finite (finite_w, input_grad_weights_finite), no w - x of the call is NaN (an infinite x
// gives an infinite w - x, clamped to +-1 by either form).
template <int P, int U2>
static inline bool no_nan_zmm(const __m512* xv) {
  constexpr int NAN_CLASSES = 0x81;  // QNaN, SNaN
  __mmask16 bad = 0;
  for (int i = 0; i < P * U2; ++i) bad |= _mm512_fpclass_ps_mask(xv[i], NAN_CLASSES);
  return bad == 0;
}

// RANGE: the clamp by clamp_unit_zmm (input_grad_vectors_zmm checks that it may), else by a max
// and a min.
template <bool SIGN, int P, int U2, bool JOINED, bool RANGE>
static void input_grad_vectors_zmm_loop(const float* const* dy, int64_t L, const float* const* x,
                                        const float* w, int64_t cog, float* const* gr) {
  constexpr int U = 2 * U2;
  const __m512 lo = _mm512_set1_ps(-1.0f), hi = _mm512_set1_ps(1.0f);
  const __m512i signs = _mm512_set1_epi32(SIGN_RESPONSES);
  const __m512 one = opaque_one_zmm();
  __m512 acc[P * U2], xv[P * U2];
  for (int p = 0; p < P; ++p)
    for (int i = 0; i < U2; ++i) {
      acc[p * U2 + i] = _mm512_loadu_ps(gr[p * U + 2 * i]);
      xv[p * U2 + i] = _mm512_loadu_ps(x[p * U + 2 * i]);
    }
  for (int64_t co = 0; co < cog; ++co) {
    __m512 wv[P];
    for (int p = 0; p < P; ++p) wv[p] = _mm512_set1_ps(w[p * cog + co]);
    for (int i = 0; i < U2; ++i) {
      const float* d0 = dy[2 * i] + co * L;
      const __m512 d = JOINED ? _mm512_loadu_ps(d0) : load_halves(d0, dy[2 * i + 1] + co * L);
      for (int p = 0; p < P; ++p) {
        __m512 z = _mm512_fnmadd_ps(xv[p * U2 + i], one, wv[p]);  // w - x on the FMA pipes
        if (SIGN) {
          z = sign_unit_zmm(z, signs);
        } else {
          z = RANGE ? clamp_unit_zmm(z, hi) : _mm512_min_ps(hi, _mm512_max_ps(lo, z));
        }
        acc[p * U2 + i] = _mm512_fmadd_ps(d, z, acc[p * U2 + i]);
      }
    }
  }
  for (int p = 0; p < P; ++p)
    for (int i = 0; i < U2; ++i) _mm512_storeu_ps(gr[p * U + 2 * i], acc[p * U2 + i]);
}

// The clamp by one vrangeps where no w - x can be NaN: on an Intel core with two 512-bit FMA
// pipes, where the max and the min took two of the four operations per term, the input gradient
// took 0.84-0.86x the time (benchmarks/NOTES.md); the same bits.
template <bool SIGN, int P, int U2, bool JOINED>
static void input_grad_vectors_zmm(const float* const* dy, int64_t L, const float* const* x,
                                   const float* w, int64_t cog, float* const* gr, bool finite_w) {
  if constexpr (!SIGN) {
    __m512 xv[P * U2];
    for (int p = 0; p < P; ++p)
      for (int i = 0; i < U2; ++i) xv[p * U2 + i] = _mm512_loadu_ps(x[p * 2 * U2 + 2 * i]);
    if (finite_w && no_nan_zmm<P, U2>(xv)) {
      input_grad_vectors_zmm_loop<SIGN, P, U2, JOINED, true>(dy, L, x, w, cog, gr);
      return;
    }
  }
  input_grad_vectors_zmm_loop<SIGN, P, U2, JOINED, false>(dy, L, x, w, cog, gr);
}
#endif

// input_grad_vectors for U slots, on 64-byte vectors (pairs of slots) where the build has them
// for T and each pair's input and gradient vectors are adjacent (always, as
// input_grad_tap_vectors fills the slots: consecutive vectors of rows wp elements apart).
template <typename T, bool SIGN, int P, int U>
static void input_grad_slot_vectors(const T* const* dy, int64_t L, const T* const* x, const T* w,
                                    int64_t cog, T* const* gr, bool finite_w) {
#ifdef ADDER_CPU_ZMM
  if constexpr (sizeof(T) == sizeof(float) && U % 2 == 0) {
    bool pairs = true, joined = true;
    for (int i = 0; i < U; i += 2) {
      joined = joined && dy[i + 1] == dy[i] + 8;
      for (int p = 0; p < P; ++p)
        pairs =
            pairs && x[p * U + i + 1] == x[p * U + i] + 8 && gr[p * U + i + 1] == gr[p * U + i] + 8;
    }
    if (pairs) {
      if (joined) {
        input_grad_vectors_zmm<SIGN, P, U / 2, true>(dy, L, x, w, cog, gr, finite_w);
      } else {
        input_grad_vectors_zmm<SIGN, P, U / 2, false>(dy, L, x, w, cog, gr, finite_w);
      }
      return;
    }
  }
#endif
  (void)finite_w;
  input_grad_vectors<T, SIGN, P, U>(dy, L, x, w, cog, gr);
}

// gr[p*hw + j*step] += sum_co dyt[j*cog + co] * HT(w[p*cog + co] - x[p*hw + j*step]) for U
// consecutive j of P planes (hw apart): the sum over output channels is the vectorised loop
// (tail first, then the lanes in order), P x U accumulators at once so that they are
// independent chains, each dY vector loaded once for the P planes.
// RANGE (the AVX-512 set, float; the caller has checked that no w - x of the call is NaN): the
// vector clamp by clamp_unit_ymm; and there, the vector sign by sign_unit_ymm. The same bits.
template <typename T, bool SIGN, int P, int U, bool RANGE = false>
static void input_grad_pixels_strided(const T* dyt, const T* x, int64_t hw, const T* w, int64_t cog,
                                      T* gr, int64_t step) {
  typedef typename Vec<T>::type V;
  constexpr int64_t VL = int64_t(sizeof(V) / sizeof(T));
  V lo, hi;
  input_grad_bounds(&lo, &hi);
  const auto weight = [&](V z) {
#ifdef ADDER_CPU_ZMM
    if constexpr (std::is_same_v<T, float>) {
      if constexpr (SIGN) return V(sign_unit_ymm(__m256(z), _mm256_set1_epi32(SIGN_RESPONSES)));
      if constexpr (RANGE) return V(clamp_unit_ymm(__m256(z), __m256(hi)));
    }
#endif
    return input_grad_weight<V, SIGN>(z, lo, hi);
  };
  V acc[P * U], xv[P * U];
  T xs[P * U];
  for (int p = 0; p < P; ++p)
    for (int u = 0; u < U; ++u) {
      acc[p * U + u] = V{};
      xs[p * U + u] = x[p * hw + u * step];
      xv[p * U + u] = xs[p * U + u] - V{};  // broadcast
    }
  int64_t co = 0;
  for (; co + VL <= cog; co += VL) {
    for (int p = 0; p < P; ++p) {
      V wv;  // a vector per plane, not an array of them (which would go through the stack)
      __builtin_memcpy(&wv, w + p * cog + co, sizeof(V));
      for (int u = 0; u < U; ++u) {
        V dv;  // reloaded per plane: from L1 after the first
        __builtin_memcpy(&dv, dyt + u * cog + co, sizeof(V));
        acc[p * U + u] = mul_add(dv, weight(wv - xv[p * U + u]), acc[p * U + u]);
      }
    }
  }
  for (int p = 0; p < P; ++p)
    for (int u = 0; u < U; ++u) {
      T sum = T(0);
      for (int64_t c = co; c < cog; ++c)
        sum = mul_add(dyt[u * cog + c],
                      input_grad_weight<T, SIGN>(w[p * cog + c] - xs[p * U + u], T(-1), T(1)), sum);
      T lanes[VL];
      __builtin_memcpy(lanes, &acc[p * U + u], sizeof(V));
      for (int64_t l = 0; l < VL; ++l) sum += lanes[l];
      gr[p * hw + u * step] += sum;
    }
}

// One output row's contribution at stride > 1 to P planes (hw apart), where the input pixels of
// one row are `step` apart: dyt holds dY transposed ([pixel][co]).
// finite_w: every weight the row reads is finite, so that with no NaN among its input pixels no
// w - x is NaN (then, in the AVX-512 set, the clamp by one instruction: RANGE).
template <typename T, bool SIGN, int P, bool RANGE>
static void input_grad_row_strided_as(const T* dyt, const T* x, int64_t hw, const T* w, int64_t cog,
                                      T* gr, int64_t n, int64_t step) {
  constexpr int U = P == 1 ? 4 : IG_ACCUMULATORS / P;
  int64_t j = 0;
  for (; j + U <= n; j += U)
    input_grad_pixels_strided<T, SIGN, P, U, RANGE>(dyt + j * cog, x + j * step, hw, w, cog,
                                                    gr + j * step, step);
  for (; j < n; ++j)
    input_grad_pixels_strided<T, SIGN, P, 1, RANGE>(dyt + j * cog, x + j * step, hw, w, cog,
                                                    gr + j * step, step);
}
template <typename T, bool SIGN, int P>
static void input_grad_row_strided(const T* dyt, const T* x, int64_t hw, const T* w, int64_t cog,
                                   T* gr, int64_t n, int64_t step, bool finite_w) {
#ifdef ADDER_CPU_ZMM
  if constexpr (std::is_same_v<T, float> && !SIGN) {
    bool nan = false;
    for (int p = 0; p < P; ++p)
      for (int64_t j = 0; j < n; ++j) nan |= x[p * hw + j * step] != x[p * hw + j * step];
    if (finite_w && !nan) {
      input_grad_row_strided_as<T, SIGN, P, true>(dyt, x, hw, w, cog, gr, n, step);
      return;
    }
  }
#endif
  (void)finite_w;
  input_grad_row_strided_as<T, SIGN, P, false>(dyt, x, hw, w, cog, gr, n, step);
}

// input_grad_row_strided for one plane with fewer output channels than a vector holds: each
// pixel's sum over the channels as that kernel's scalar tail, added to gr (its vector lanes would
// add only zeros, which change no sum), without its per-call vector set-up and lane sums, which
// cost more than the 1-7 terms (a depthwise layer's input gradient at stride 2 took 12x
// conv2d's, 20x its own forward). w: the plane's weights of this tap ([co]).
template <typename T, bool SIGN>
static void input_grad_row_strided_few(const T* dyt, const T* x, const T* w, int64_t cog, T* gr,
                                       int64_t n, int64_t step) {
  // The bounds hidden from the compiler, as input_grad_bounds does for vectors: with constant
  // bounds GCC compiled the clamp to compares and branches, mispredicted on most terms (the
  // same values either way: maxss and minss in the selects' operand order).
  T lo = T(-1), hi = T(1);
  __asm__("" : "+x"(lo), "+x"(hi));
  for (int64_t j = 0; j < n; ++j) {
    const T xv = x[j * step];
    T sum = T(0);
    for (int64_t c = 0; c < cog; ++c)
      sum = mul_add(dyt[j * cog + c], input_grad_weight<T, SIGN>(w[c] - xv, lo, hi), sum);
    gr[j * step] += sum;
  }
}

// Left/right zero border of the padded dY rows used at stride 1: wide enough that every input
// column finds its dY column inside the row, for every tap.
static inline int64_t input_grad_border(const Adder2dShape& s) {
  const int64_t b = (s.kernel_w - 1) * s.dilation_w - s.pad_w;
  return b > 0 ? b : 0;
}

// At stride 1 the input rows are processed wp wide, the input width rounded up to whole vectors
// (through zero-padded copies of the plane when it is not a multiple), and the bordered dY rows
// are wide enough for that: every tap then runs whole vectors only.
template <typename T>
static int64_t input_grad_row_width(const Adder2dShape& s) {
  constexpr int64_t VL = int64_t(sizeof(typename Vec<T>::type) / sizeof(T));
  return (s.in_w + VL - 1) / VL * VL;
}

static inline int64_t input_grad_dy_row(const Adder2dShape& s, int64_t wp) {
  const int64_t border = input_grad_border(s);
  const int64_t a = s.out_w + 2 * border, b = border + s.pad_w + wp;
  return a > b ? a : b;
}

// The strided input gradient by phases (Adder2dPhaseAxis, adder2d_shape.h): phase q's pixels
// q + S a read dY through taps k0 + step i, tap k0 + step i mapping pixel a to output a + pad' -
// i d' (pad' = (q + pad - k0 d) / S, exact; d' = d step / S): a stride-1 problem on the phase's
// pixels, run by the stride-1 kernels on a copy of the phase (vectors of input pixels, the output
// channels summed into each in order). One axis of a phase:
struct InputGradPhaseAxis {
  int64_t size;           // the phase's pixels: ceil((in - q) / S), 0 when q >= in
  int64_t taps;           // its taps k0, k0 + step, ... below the kernel size
  int64_t k0, step;       // the first and the step
  int64_t pad, dilation;  // of the stride-1 problem
};
// Called only where input_grad_by_phases holds: every argument fits an int.
static inline InputGradPhaseAxis input_grad_phase_axis(int64_t q, int64_t in, int64_t kernel,
                                                       int64_t stride, int64_t pad,
                                                       int64_t dilation) {
  const Adder2dPhaseAxis p =
      adder2d_phase_axis(int(q), in, int(kernel), int(stride), int(pad), int(dilation));
  InputGradPhaseAxis a{};
  a.size = p.size;
  a.taps = p.count;
  a.k0 = p.first;
  a.step = p.step;
  a.dilation = p.step * dilation / stride;
  if (a.taps == 0) return a;                    // no tap: the phase's gradient is 0
  const int64_t t = q + pad - a.k0 * dilation;  // a multiple of the stride
  a.pad = t >= 0 ? t / stride : -(-t / stride);
  return a;
}

// The phases' stride-1 problem on the phase's pixels (output size as s).
static inline Adder2dShape input_grad_phase_shape(const Adder2dShape& s,
                                                  const InputGradPhaseAxis& h,
                                                  const InputGradPhaseAxis& w) {
  Adder2dShape p = s;
  p.in_h = h.size;
  p.in_w = w.size;
  p.kernel_h = h.taps;
  p.kernel_w = w.taps;
  p.stride_h = p.stride_w = 1;
  p.pad_h = h.pad;
  p.pad_w = w.pad;
  p.dilation_h = h.dilation;
  p.dilation_w = w.dilation;
  p.taps = s.in_channels_per_group * h.taps * w.taps;
  return p;
}

// Strided shapes with up to IG_PHASE_MAX_CHANNELS output channels per group and strides,
// paddings, dilations and kernels up to these take the phases; the others input_grad_row_strided,
// which vectorises over output channels: with many channels its sum per pixel and tap amortises
// its lanes' reduction (1 thread, ms, builds alternating: res18.l4.down3x3, 512 channels, 41-43
// against 46-48 by phases; res18.l2/l3.down3x3, 128/256 channels, even; ResNet-20's down-sampling
// layers, 32/64 channels, 1.2-2.3x slower in four pairs). The geometry bounds keep every size far from
// overflowing. Every build takes the same rule (the AVX-512 one runs its 64-byte stride-1 kernel
// on the phases, bitwise the AVX2 one's), so that the instruction sets agree bit for bit.
constexpr int64_t IG_PHASE_MAX_CHANNELS = 256, IG_PHASE_MAX_STRIDE = 4, IG_PHASE_MAX_GEOMETRY = 64;
static inline bool input_grad_by_phases(const Adder2dShape& s) {
  const auto small = [](int64_t v) { return v <= IG_PHASE_MAX_GEOMETRY; };
  return (s.stride_h != 1 || s.stride_w != 1) &&
         s.out_channels_per_group <= IG_PHASE_MAX_CHANNELS && s.stride_h <= IG_PHASE_MAX_STRIDE &&
         s.stride_w <= IG_PHASE_MAX_STRIDE && small(s.pad_h) && small(s.pad_w) &&
         small(s.dilation_h) && small(s.dilation_w) && small(s.kernel_h) && small(s.kernel_w) &&
         s.in_h <= (int64_t(1) << 24) && s.in_w <= (int64_t(1) << 24);
}

// The phases' layout in the scratch: dY with zero borders of `border` columns (rows of `row`,
// enough for every phase), then per plane a phase's copy and its gradient (rows x cols each).
struct InputGradPhaseLayout {
  int64_t border, row, rows, cols;
};
template <typename T>
static InputGradPhaseLayout input_grad_phase_layout(const Adder2dShape& s) {
  constexpr int64_t VL = int64_t(sizeof(typename Vec<T>::type) / sizeof(T));
  InputGradPhaseLayout l{0, s.out_w, 0, 0};
  for (int64_t qw = 0; qw < s.stride_w && qw < s.in_w; ++qw) {
    const InputGradPhaseAxis a =
        input_grad_phase_axis(qw, s.in_w, s.kernel_w, s.stride_w, s.pad_w, s.dilation_w);
    if (a.taps == 0) continue;
    const int64_t b = (a.taps - 1) * a.dilation - a.pad;
    if (b > l.border) l.border = b;
  }
  l.cols = ((s.in_w + s.stride_w - 1) / s.stride_w + VL - 1) / VL * VL;  // phase 0's, the widest
  for (int64_t qw = 0; qw < s.stride_w && qw < s.in_w; ++qw) {
    const InputGradPhaseAxis a =
        input_grad_phase_axis(qw, s.in_w, s.kernel_w, s.stride_w, s.pad_w, s.dilation_w);
    if (a.taps != 0 && l.border + a.pad + l.cols > l.row) l.row = l.border + a.pad + l.cols;
  }
  if (s.out_w + 2 * l.border > l.row) l.row = s.out_w + 2 * l.border;
  l.rows = (s.in_h + s.stride_h - 1) / s.stride_h;
  return l;
}

template <typename T>
static int64_t input_grad_phase_scratch(const Adder2dShape& s) {
  const InputGradPhaseLayout l = input_grad_phase_layout<T>(s);
  int64_t dyc, planes, n;
  if (adder2d_mul_add_overflows(s.out_channels_per_group * s.out_h, l.row, 0, &dyc) ||
      adder2d_mul_add_overflows(2 * IG_PLANES * l.rows, l.cols, 0, &planes) ||
      __builtin_add_overflow(dyc, planes, &n))
    return -1;
  return n;
}

// Scratch elements input_grad_planes needs, or -1 when the count overflows int64 (huge
// padding or dilation; the caller refuses the call): dY bordered or transposed, and at stride 1
// the planes' widened copies when the input width is not whole vectors; by phases, dY bordered
// for every phase and a phase's copies of the planes (input_grad_phase_scratch).
template <typename T>
static int64_t input_grad_scratch(const Adder2dShape& s) {
  const int64_t cog = s.out_channels_per_group;
  int64_t rows, n, extra = 0;
  if (input_grad_by_phases(s)) return input_grad_phase_scratch<T>(s);
  if (s.stride_h != 1 || s.stride_w != 1) {
    if (adder2d_mul_add_overflows(s.out_h, s.out_w, 0, &rows) ||
        adder2d_mul_add_overflows(cog, rows, 0, &n))
      return -1;
    return n;
  }
  const int64_t wp = input_grad_row_width<T>(s);
  if (wp != s.in_w && adder2d_mul_add_overflows(2 * IG_PLANES * s.in_h, wp, 0, &extra)) return -1;
  if (adder2d_mul_add_overflows(s.out_h, input_grad_dy_row(s, wp), 0, &rows) ||
      adder2d_mul_add_overflows(cog, rows, extra, &n))
    return -1;
  return n;
}

// The vectors of one tap at stride 1 for P planes: (oh, j) over the tap's output rows and the
// row's whole vectors, U = input_grad_slots() / P at a time (across rows when rows are short),
// the last ones two at a time, then one.
template <typename T, bool SIGN, int P>
static void input_grad_tap_vectors(const Adder2dShape& s, const T* dyc, int64_t row,
                                   int64_t ow_first, int64_t kh, const T* const* xs, T* const* gs,
                                   int64_t wp, const T* wtap, bool finite_w) {
  constexpr int U = input_grad_slots<T>() / P;
  constexpr int64_t VL = int64_t(sizeof(typename Vec<T>::type) / sizeof(T));
  const int64_t cog = s.out_channels_per_group, plane = s.out_h * row;
  int64_t oh0, oh1;
  adder2d_valid_out_range(kh, 1, s.pad_h, s.dilation_h, s.in_h, s.out_h, &oh0, &oh1);
  const T* dyv[U];
  const T* xv[P * U];
  T* gv[P * U];
  int u = 0;
  for (int64_t oh = oh0; oh < oh1; ++oh) {
    const int64_t ih = adder2d_in_index(oh, kh, 1, s.pad_h, s.dilation_h);
    for (int64_t j = 0; j < wp; j += VL) {
      dyv[u] = dyc + oh * row + ow_first + j;
      for (int p = 0; p < P; ++p) {
        xv[p * U + u] = xs[p] + ih * wp + j;
        gv[p * U + u] = gs[p] + ih * wp + j;
      }
      if (++u == U) {
        input_grad_slot_vectors<T, SIGN, P, U>(dyv, plane, xv, wtap, cog, gv, finite_w);
        u = 0;
      }
    }
  }
  int i = 0;
  if constexpr (U > 2) {
    for (; i + 2 <= u; i += 2) {  // the last slots two at a time
      const T* xi[2 * P];
      T* gi[2 * P];
      for (int p = 0; p < P; ++p)
        for (int k = 0; k < 2; ++k) {
          xi[p * 2 + k] = xv[p * U + i + k];
          gi[p * 2 + k] = gv[p * U + i + k];
        }
      input_grad_slot_vectors<T, SIGN, P, 2>(dyv + i, plane, xi, wtap, cog, gi, finite_w);
    }
  }
  for (; i < u; ++i) {
    const T* xi[P];
    T* gi[P];
    for (int p = 0; p < P; ++p) {
      xi[p] = xv[p * U + i];
      gi[p] = gv[p * U + i];
    }
    input_grad_vectors<T, SIGN, P, 1>(dyv + i, plane, xi, wtap, cog, gi);
  }
}

// One tap at stride 1 for the np planes, four, then two, then one at a time (xs, gs: the planes'
// rows of wp elements; wtap: the tap's weights [plane][co]; finite_w: input_grad_weights_finite).
template <typename T, bool SIGN>
static void input_grad_tap_planes(const Adder2dShape& s, const T* dyc, int64_t row,
                                  int64_t ow_first, int64_t kh, const T* const* xs, T* const* gs,
                                  int64_t wp, const T* wtap, int64_t np, bool finite_w) {
  const int64_t cog = s.out_channels_per_group;
  int64_t p = 0;
  for (; p + 4 <= np; p += 4)
    input_grad_tap_vectors<T, SIGN, 4>(s, dyc, row, ow_first, kh, xs + p, gs + p, wp,
                                       wtap + p * cog, finite_w);
  for (; p + 2 <= np; p += 2)
    input_grad_tap_vectors<T, SIGN, 2>(s, dyc, row, ow_first, kh, xs + p, gs + p, wp,
                                       wtap + p * cog, finite_w);
  for (; p < np; ++p)
    input_grad_tap_vectors<T, SIGN, 1>(s, dyc, row, ow_first, kh, xs + p, gs + p, wp,
                                       wtap + p * cog, finite_w);
}

// dY[co][oh] (cog channels of out_h rows of out_w) into dyc, rows of `row` elements: `border`
// zeros, the row, zeros to the end.
template <typename T>
static void input_grad_border_dy(const T* dy, int64_t cog, int64_t out_h, int64_t out_w,
                                 int64_t border, int64_t row, T* dyc) {
  for (int64_t co = 0; co < cog; ++co)
    for (int64_t oh = 0; oh < out_h; ++oh) {
      const T* src = dy + (co * out_h + oh) * out_w;
      T* dst = dyc + (co * out_h + oh) * row;
      for (int64_t j = 0; j < border; ++j) dst[j] = T(0);
      for (int64_t j = 0; j < out_w; ++j) dst[border + j] = src[j];
      for (int64_t j = border + out_w; j < row; ++j) dst[j] = T(0);
    }
}

// Stride 1, few output channels per group: gs[ih * wp + j + u * VL] for U vectors of one input row
// of one plane = the sum over taps (kh, kw) whose output row is inside, then over output channels,
// of dY * HT(W - X), in registers from zero: the terms and the order of input_grad_tap_vectors,
// which adds them tap by tap into gs (so the same bits), without loading and storing gs at every
// tap. dyc: the bordered dY (input_grad_planes_mode), x: the plane's (widened) rows, w: the
// plane's weights of tap 0 ([co]; tap t at t * Cin/g * Cout/g, as input_grad_planes_mode's w).
template <typename T, bool SIGN, int U>
static void input_grad_row_all_taps(const Adder2dShape& s, const T* dyc, int64_t row,
                                    int64_t border, int64_t ih, const T* x, T* gs, int64_t wp,
                                    int64_t j, const T* w) {
  typedef typename Vec<T>::type V;
  constexpr int64_t VL = int64_t(sizeof(V) / sizeof(T));
  const int64_t cog = s.out_channels_per_group, plane = s.out_h * row;
  V lo, hi;
  input_grad_bounds(&lo, &hi);
  V acc[U], xv[U];
  for (int u = 0; u < U; ++u) {
    acc[u] = V{};
    xv[u] = load_vec<V>(x + ih * wp + j + u * VL);
  }
  for (int64_t kh = 0; kh < s.kernel_h; ++kh) {
    const int64_t oh = ih + s.pad_h - kh * s.dilation_h;
    if (oh < 0 || oh >= s.out_h) continue;
    for (int64_t kw = 0; kw < s.kernel_w; ++kw) {
      const T* dyr = dyc + oh * row + border + s.pad_w - kw * s.dilation_w + j;
      const T* wk = w + (kh * s.kernel_w + kw) * s.in_channels_per_group * cog;
      for (int64_t co = 0; co < cog; ++co) {
        const V wv = wk[co] - V{};  // broadcast
        for (int u = 0; u < U; ++u)
          acc[u] = mul_add(load_vec<V>(dyr + co * plane + u * VL),
                           input_grad_weight<V, SIGN>(wv - xv[u], lo, hi), acc[u]);
      }
    }
  }
  for (int u = 0; u < U; ++u) store_vec(gs + ih * wp + j + u * VL, acc[u]);
}

// Whether every weight of np planes (w: the first plane's weights of tap 0, [tap][ci][co]) is
// finite, checked once per work item for all its taps: the AVX-512 set's float kernels then
// clamp by one vrangeps wherever their inputs hold no NaN (input_grad_vectors_zmm,
// input_grad_row_strided). False elsewhere (and for the sign, which needs no check).
template <typename T, bool SIGN>
static bool input_grad_weights_finite(const Adder2dShape& s, const T* w, int64_t np) {
#ifdef ADDER_CPU_ZMM
  if constexpr (std::is_same_v<T, float> && !SIGN) {
    const int64_t cog = s.out_channels_per_group, tap_stride = s.in_channels_per_group * cog;
    int bad = 0;
    for (int64_t t = 0; t < s.kernel_h * s.kernel_w; ++t)
      for (int64_t i = 0; i < np * cog; ++i) {
        const T v = w[t * tap_stride + i];
        bad |= !(v - v == T(0));  // +-inf and NaN
      }
    return bad == 0;
  }
#endif
  (void)s, (void)w, (void)np;
  return false;
}

// input_grad_planes_mode by phases (input_grad_by_phases(s)): for each phase, its pixels of the
// np planes copied, the stride-1 kernel over its taps in order (the taps of s in their order),
// the phase's gradient written back; a phase that no tap reads gets 0.
template <typename T, bool SIGN>
static void input_grad_planes_phases(const Adder2dShape& s, const T* dy, const T* x, const T* w,
                                     T* gx, int64_t np, T* scratch, bool reuse, bool finite_w) {
  const int64_t cog = s.out_channels_per_group;
  const int64_t HW = s.in_h * s.in_w, tap_stride = s.in_channels_per_group * cog;
  const InputGradPhaseLayout l = input_grad_phase_layout<T>(s);
  T* dyc = scratch;
  if (!reuse) input_grad_border_dy(dy, cog, s.out_h, s.out_w, l.border, l.row, dyc);
  T* const planes = dyc + cog * s.out_h * l.row;
  T* xs[IG_PLANES];  // the phase's copies of the planes
  T* gs[IG_PLANES];
  for (int64_t p = 0; p < np; ++p) {
    xs[p] = planes + 2 * p * l.rows * l.cols;
    gs[p] = planes + (2 * p + 1) * l.rows * l.cols;
  }
  for (int64_t qh = 0; qh < s.stride_h && qh < s.in_h; ++qh) {
    const InputGradPhaseAxis ah =
        input_grad_phase_axis(qh, s.in_h, s.kernel_h, s.stride_h, s.pad_h, s.dilation_h);
    for (int64_t qw = 0; qw < s.stride_w && qw < s.in_w; ++qw) {
      const InputGradPhaseAxis aw =
          input_grad_phase_axis(qw, s.in_w, s.kernel_w, s.stride_w, s.pad_w, s.dilation_w);
      // Pixel (a, b) of the phase: X[qh + sh a][qw + sw b], at a * l.cols + b of the copies.
      const auto at = [&](int64_t a, int64_t b) {
        return (qh + s.stride_h * a) * s.in_w + qw + s.stride_w * b;
      };
      if (ah.taps == 0 || aw.taps == 0) {
        for (int64_t p = 0; p < np; ++p)
          for (int64_t a = 0; a < ah.size; ++a)
            for (int64_t b = 0; b < aw.size; ++b) gx[p * HW + at(a, b)] = T(0);
        continue;
      }
      const Adder2dShape ps = input_grad_phase_shape(s, ah, aw);
      for (int64_t p = 0; p < np; ++p) {
        T* const xp = xs[p];
        for (int64_t a = 0; a < ah.size; ++a) {
          for (int64_t b = 0; b < aw.size; ++b) xp[a * l.cols + b] = x[p * HW + at(a, b)];
          for (int64_t b = aw.size; b < l.cols; ++b) xp[a * l.cols + b] = T(0);
        }
        for (int64_t i = 0; i < ah.size * l.cols; ++i) gs[p][i] = T(0);
      }
      for (int64_t i = 0; i < ah.taps; ++i)
        for (int64_t j = 0; j < aw.taps; ++j) {
          const int64_t tap = (ah.k0 + ah.step * i) * s.kernel_w + aw.k0 + aw.step * j;
          const T* const wtap = w + tap * tap_stride;  // [plane][co]
          const int64_t ow_first = l.border + aw.pad - j * aw.dilation;
          input_grad_tap_planes<T, SIGN>(ps, dyc, l.row, ow_first, i, xs, gs, l.cols, wtap, np,
                                         finite_w);
        }
      for (int64_t p = 0; p < np; ++p)
        for (int64_t a = 0; a < ah.size; ++a)
          for (int64_t b = 0; b < aw.size; ++b) gx[p * HW + at(a, b)] = gs[p][a * l.cols + b];
    }
  }
}

// dX of np <= IG_PLANES consecutive input planes (n, c), (n, c + 1), ... of one image and group.
// dy: dY[n, g*Cog] (the group's output channels); x and gx: the first plane (the next ones follow
// at in_h * in_w); w: the group's weights rearranged as [tap][ci][co] (KernelSet), from the first
// plane's ci, so that a tap's weights of the np planes are np consecutive rows of Cog (the
// kernels' w[p * cog + co]). scratch: input_grad_scratch(s) elements; it holds dY with zero borders
// (stride 1, or for every phase by phases) or transposed, rebuilt unless `reuse` says the previous
// call on this scratch had the same dy. Each plane's sums run in the same order whatever np is (taps, then output channels).
template <typename T, bool SIGN>
static void input_grad_planes_mode(const Adder2dShape& s, const T* dy, const T* x, const T* w,
                                   T* gx, int64_t np, T* scratch, bool reuse) {
  const bool finite_w = input_grad_weights_finite<T, SIGN>(s, w, np);
  if (input_grad_by_phases(s)) {
    input_grad_planes_phases<T, SIGN>(s, dy, x, w, gx, np, scratch, reuse, finite_w);
    return;
  }
  const int64_t cog = s.out_channels_per_group, L = s.out_h * s.out_w;
  const int64_t HW = s.in_h * s.in_w, tap_stride = s.in_channels_per_group * cog;
  T* dyc = scratch;  // dY with zero-bordered rows (stride 1) or transposed
  const bool unit_stride = s.stride_h == 1 && s.stride_w == 1;
  const int64_t border = unit_stride ? input_grad_border(s) : 0;
  const int64_t wp = unit_stride ? input_grad_row_width<T>(s) : s.in_w;
  const int64_t row = unit_stride ? input_grad_dy_row(s, wp) : s.out_w;
  if (!reuse && unit_stride) {
    input_grad_border_dy(dy, cog, s.out_h, s.out_w, border, row, dyc);
  } else if (!reuse) {
    for (int64_t co = 0; co < cog; ++co)
      for (int64_t oh = 0; oh < s.out_h; ++oh) {
        const T* src = dy + co * L + oh * s.out_w;
        for (int64_t j = 0; j < s.out_w; ++j) dyc[(oh * s.out_w + j) * cog + co] = src[j];
      }
  }
  // Rows of wp elements: the planes themselves, or zero-padded copies when the input width is
  // not a multiple of the vector width (padded lanes read dY's zero columns and are dropped).
  const bool widened = wp != s.in_w;
  const bool all_taps = unit_stride && cog <= IG_ALL_TAPS_CHANNELS;
  const T* xs[IG_PLANES];
  T* gs[IG_PLANES];
  for (int64_t p = 0; p < np; ++p) {
    xs[p] = x + p * HW;
    gs[p] = gx + p * HW;
    if (widened) {
      T* xw = dyc + cog * s.out_h * row + 2 * p * s.in_h * wp;
      gs[p] = xw + s.in_h * wp;
      for (int64_t h = 0; h < s.in_h; ++h)
        for (int64_t j = 0; j < wp; ++j)
          xw[h * wp + j] = j < s.in_w ? x[p * HW + h * s.in_w + j] : T(0);
      xs[p] = xw;
    }
    if (!all_taps)  // the all-taps loop writes every element
      for (int64_t i = 0; i < s.in_h * wp; ++i) gs[p][i] = T(0);
  }
  if (all_taps) {
    // Few output channels: every tap of a few vectors at a time (input_grad_row_all_taps).
    constexpr int64_t VL = int64_t(sizeof(typename Vec<T>::type) / sizeof(T));
    constexpr int U = 4;
    for (int64_t p = 0; p < np; ++p)
      for (int64_t ih = 0; ih < s.in_h; ++ih) {
        int64_t j = 0;
        for (; j + U * VL <= wp; j += U * VL)
          input_grad_row_all_taps<T, SIGN, U>(s, dyc, row, border, ih, xs[p], gs[p], wp, j,
                                              w + p * cog);
        for (; j < wp; j += VL)
          input_grad_row_all_taps<T, SIGN, 1>(s, dyc, row, border, ih, xs[p], gs[p], wp, j,
                                              w + p * cog);
      }
  } else {
    for (int64_t kh = 0; kh < s.kernel_h; ++kh) {
      for (int64_t kw = 0; kw < s.kernel_w; ++kw) {
        const T* const wtap = w + (kh * s.kernel_w + kw) * tap_stride;  // [plane][co]
        if (unit_stride) {
          // Input column iw reads output column iw + pw - kw*dw, inside the bordered row.
          const int64_t ow_first = border + s.pad_w - kw * s.dilation_w;
          input_grad_tap_planes<T, SIGN>(s, dyc, row, ow_first, kh, xs, gs, wp, wtap, np, finite_w);
        } else {
          // Output columns [ow0, ow1) read input columns iw0, iw0 + stride_w, ...
          int64_t oh0, oh1, ow0, ow1;
          adder2d_valid_out_range(kh, s.stride_h, s.pad_h, s.dilation_h, s.in_h, s.out_h, &oh0,
                                  &oh1);
          adder2d_valid_out_range(kw, s.stride_w, s.pad_w, s.dilation_w, s.in_w, s.out_w, &ow0,
                                  &ow1);
          const int64_t iw0 = adder2d_in_index(ow0, kw, s.stride_w, s.pad_w, s.dilation_w);
          for (int64_t oh = oh0; oh < oh1; ++oh) {
            const int64_t ih = adder2d_in_index(oh, kh, s.stride_h, s.pad_h, s.dilation_h);
            const int64_t at = ih * s.in_w + iw0, n = ow1 - ow0;
            const T* dyt = dyc + (oh * s.out_w + ow0) * cog;
            int64_t p = 0;
            if (cog < int64_t(sizeof(typename Vec<T>::type) / sizeof(T))) {
              for (; p < np; ++p)
                input_grad_row_strided_few<T, SIGN>(dyt, x + p * HW + at, wtap + p * cog, cog,
                                                    gx + p * HW + at, n, s.stride_w);
              continue;
            }
            for (; p + 4 <= np; p += 4)
              input_grad_row_strided<T, SIGN, 4>(dyt, x + p * HW + at, HW, wtap + p * cog, cog,
                                                 gx + p * HW + at, n, s.stride_w, finite_w);
            for (; p + 2 <= np; p += 2)
              input_grad_row_strided<T, SIGN, 2>(dyt, x + p * HW + at, HW, wtap + p * cog, cog,
                                                 gx + p * HW + at, n, s.stride_w, finite_w);
            for (; p < np; ++p)
              input_grad_row_strided<T, SIGN, 1>(dyt, x + p * HW + at, HW, wtap + p * cog, cog,
                                                 gx + p * HW + at, n, s.stride_w, finite_w);
          }
        }
      }
    }
  }
  if (widened)
    for (int64_t p = 0; p < np; ++p)
      for (int64_t h = 0; h < s.in_h; ++h)
        for (int64_t j = 0; j < s.in_w; ++j) gx[p * HW + h * s.in_w + j] = gs[p][h * wp + j];
}

template <typename T>
void input_grad_planes(const Adder2dShape& s, const T* dy, const T* x, const T* w, T* gx,
                       int64_t np, bool sign_mode, T* scratch, bool reuse) {
  if (sign_mode)
    input_grad_planes_mode<T, true>(s, dy, x, w, gx, np, scratch, reuse);
  else
    input_grad_planes_mode<T, false>(s, dy, x, w, gx, np, scratch, reuse);
}

constexpr int64_t WG_PIXELS = 64;  // pixels per packed chunk of the weight gradient
constexpr int64_t WG_SUB = 4;      // most blocks of taps per work item (decomposition)
constexpr int64_t WG_ZEROS = 16;   // zeros read for the taps past a block's end (a 64-byte row)

// The weight gradient's FMA vector and its register block: Vec's 32-byte vector with 6 output
// channels (6 x 2 accumulators, two panel vectors and a broadcast in AVX2's 16 registers), or in
// the AVX-512 build for float a 64-byte vector with 12 (12 x 2 + 3 of AVX-512's 32). Each tap's
// sum runs over the pixels in the same order at either width, so the results are the same bits;
// the panels are packed by Vec's VL x VL transposes (in the AVX-512 build, where the output width
// is a multiple of 16, by 16 x 16 ones).
template <typename T>
struct WgVec {
  typedef typename Vec<T>::type type;
  static constexpr int rows = 6;
};
#ifdef ADDER_CPU_ZMM
template <>
struct WgVec<float> {
  typedef Zmm type;
  static constexpr int rows = 12;
};
#endif

// Taps per weight-gradient block: two of WgVec's vectors.
template <typename T>
constexpr int64_t weight_grad_taps() {
  return int64_t(2 * sizeof(typename WgVec<T>::type) / sizeof(T));
}

// The decomposition's work items start at multiples of two of Vec's vectors of taps (a block, or
// at the AVX-512 level half of one): finer shares between the threads.
template <typename T>
constexpr int64_t weight_grad_unit_taps() {
  return int64_t(2 * sizeof(typename Vec<T>::type) / sizeof(T));
}

// Whether the decomposition packs its panels from zero-padded planes: output rows of whole vectors.
template <typename T>
static bool weight_grad_uses_padded(const Adder2dShape& s) {
  return s.out_w % int64_t(sizeof(typename Vec<T>::type) / sizeof(T)) == 0;
}

// Input channels a work item's taps [k0, k0 + nt) span at most.
template <typename T>
static int64_t weight_grad_item_channels(const Adder2dShape& s) {
  const int64_t KHW = s.kernel_h * s.kernel_w;
  return min_i64(s.in_channels_per_group, (WG_SUB * weight_grad_taps<T>() - 1) / KHW + 2);
}

// Elements of the zero-padded planes (and WG_ZEROS zeros) for one work item; 0 when unused.
template <typename T>
static int64_t weight_grad_padded_size(const Adder2dShape& s) {
  if (!weight_grad_uses_padded<T>(s)) return 0;
  const int64_t Wq = (s.in_w + 2 * s.pad_w + s.stride_w - 1) / s.stride_w;
  return weight_grad_item_channels<T>(s) * (s.in_h + 2 * s.pad_h) * s.stride_w * Wq + WG_ZEROS;
}

// Scratch elements the weight-gradient kernels need (either of them).
template <typename T>
static int64_t weight_grad_scratch(const Adder2dShape& s) {
  // panel and centre (T) + per-channel accumulators (double, counted as sizeof(double) /
  // sizeof(T) elements of T each)
  // + the decomposition's untransposed rows or its zero-padded planes and WG_ZEROS zeros (T)
  constexpr int64_t KB = weight_grad_taps<T>(), DT = int64_t(sizeof(double) / sizeof(T));
  return WG_PIXELS * KB + WG_SUB * KB + s.out_channels_per_group * WG_SUB * KB * DT +
         KB * WG_PIXELS + weight_grad_padded_size<T>(s);
}

// The weight gradient's panel, transposed: panel[p][j] for the block's taps, taps past nk zero.
template <typename T>
static void pack_panel_transposed(const Adder2dShape& s, const T* x, int64_t p0, int64_t np,
                                  int64_t k0, int64_t nk, T* panel) {
  constexpr int64_t KB = weight_grad_taps<T>();
  pack_patches(s, x, p0, np, k0, nk, panel, 1, KB);
  for (int64_t p = 0; p < np; ++p)
    for (int64_t j = nk; j < KB; ++j) panel[p * KB + j] = T(0);
}

// part[r][j] = sum_p dy[r*L + p] * (panel[p][j] - w[r][j]) for R output channels and the block's
// taps (two vectors), over np pixels; the R x 2 partial sums stay in registers.
template <typename T, int R>
static void weight_grad_micro(const T* panel, int64_t np, const T* dy, int64_t L, const T* w,
                              int64_t ldw, int64_t nk, double* acc) {
  typedef typename WgVec<T>::type V;
  constexpr int64_t VL = int64_t(sizeof(V) / sizeof(T)), KB = 2 * VL;
  V wv[R][2], part[R][2];
  for (int r = 0; r < R; ++r) {
    T wr[KB];
    for (int64_t j = 0; j < KB; ++j) wr[j] = j < nk ? w[r * ldw + j] : T(0);
    __builtin_memcpy(&wv[r][0], wr, sizeof(V));
    __builtin_memcpy(&wv[r][1], wr + VL, sizeof(V));
    part[r][0] = part[r][1] = V{};
  }
  for (int64_t p = 0; p < np; ++p) {
    V x0, x1;  // two separate loads: a copy into an array would go through the stack
    __builtin_memcpy(&x0, panel + p * KB, sizeof(V));
    __builtin_memcpy(&x1, panel + p * KB + VL, sizeof(V));
    for (int r = 0; r < R; ++r) {
      const V d = dy[r * L + p] - V{};  // broadcast
      part[r][0] = mul_add(d, x0 - wv[r][0], part[r][0]);
      part[r][1] = mul_add(d, x1 - wv[r][1], part[r][1]);
    }
  }
  for (int r = 0; r < R; ++r) {
    T out[KB];
    __builtin_memcpy(out, &part[r][0], sizeof(V));
    __builtin_memcpy(out + VL, &part[r][1], sizeof(V));
    for (int64_t j = 0; j < KB; ++j) acc[r * KB + j] += double(out[j]);
  }
}

// dW[g*Cog + co, k0 + j] for every co of group g and the taps [k0, k0 + nk) of one block, the
// direct way (a subtraction and an FMA per tap): reduced over all images and pixels in a fixed
// order (chunks of WG_PIXELS pixels summed in T, chunks accumulated in double), whatever the
// thread count. dy, x: the whole dY and X; w, gw: W[g*Cog] and dW[g*Cog] (row stride s.taps).
template <typename T>
void weight_grad_block_direct(const Adder2dShape& s, const T* dy, const T* x, const T* w, T* gw,
                              const double*, int64_t g, int64_t k0, int64_t nk, T* scratch) {
  constexpr int64_t KB = weight_grad_taps<T>();
  constexpr int R = 3;
  const int64_t cog = s.out_channels_per_group, L = s.out_h * s.out_w, K = s.taps;
  T* panel = scratch;
  double* acc = reinterpret_cast<double*>(scratch + WG_PIXELS * KB + WG_SUB * KB);
  for (int64_t i = 0; i < cog * KB; ++i) acc[i] = 0.0;
  for (int64_t n = 0; n < s.batch; ++n) {
    const T* xn = x + (n * s.in_channels + g * s.in_channels_per_group) * s.in_h * s.in_w;
    const T* dyn = dy + (n * s.out_channels + g * cog) * L;
    for (int64_t p0 = 0; p0 < L; p0 += WG_PIXELS) {
      const int64_t np = min_i64(WG_PIXELS, L - p0);
      pack_panel_transposed(s, xn, p0, np, k0, nk, panel);
      int64_t co = 0;
      for (; co + R <= cog; co += R)
        weight_grad_micro<T, R>(panel, np, dyn + co * L + p0, L, w + co * K + k0, K, nk,
                                acc + co * KB);
      for (; co < cog; ++co)
        weight_grad_micro<T, 1>(panel, np, dyn + co * L + p0, L, w + co * K + k0, K, nk,
                                acc + co * KB);
    }
  }
  for (int64_t co = 0; co < cog; ++co)
    for (int64_t j = 0; j < nk; ++j) gw[co * K + k0 + j] = T(acc[co * KB + j]);
}

// acc[0..VL) += v in double, vectorised (the conversion of float lanes is exact).
typedef double DVec __attribute__((vector_size(32)));
static inline void add_to_double(double* acc, Vec<float>::type v) {
  typedef float F4 __attribute__((vector_size(16)));
  // The halves by shuffles: copied out by memcpy they went through the stack, 8 bytes at a time.
  const F4 lo = __builtin_shufflevector(v, v, 0, 1, 2, 3);
  const F4 hi = __builtin_shufflevector(v, v, 4, 5, 6, 7);
  DVec a0, a1;
  __builtin_memcpy(&a0, acc, sizeof(DVec));
  __builtin_memcpy(&a1, acc + 4, sizeof(DVec));
#if defined(ADDER_CPU_FMA) && defined(__GNUC__) && !defined(__clang__)
  // One vcvtps2pd per half: GCC lowered the generic conversion to two 2-lane conversions, one of
  // them through the stack.
  a0 += __builtin_ia32_cvtps2pd256(lo);
  a1 += __builtin_ia32_cvtps2pd256(hi);
#else
  a0 += __builtin_convertvector(lo, DVec);
  a1 += __builtin_convertvector(hi, DVec);
#endif
  __builtin_memcpy(acc, &a0, sizeof(DVec));
  __builtin_memcpy(acc + 4, &a1, sizeof(DVec));
}
static inline void add_to_double(double* acc, Vec<double>::type v) {
  DVec a;
  __builtin_memcpy(&a, acc, sizeof(DVec));
  a += v;
  __builtin_memcpy(acc, &a, sizeof(DVec));
}
#ifdef ADDER_CPU_ZMM
static inline void add_to_double(double* acc, Zmm v) {
  add_to_double(acc, Vec<float>::type(_mm512_castps512_ps256(v)));
  add_to_double(acc + 8,
                Vec<float>::type(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1))));
}
#endif

// acc[r][j] += sum_p dy[r*L + p] * panel[p][j] for R output channels and the block's first NV
// vectors of taps (NV = 1: a half block) over np pixels: one FMA per tap. The pixel sum runs in
// T in registers (in pixel order), then is added to the double accumulator.
template <typename T, int R, int NV>
static void weight_grad_fma(const T* panel, int64_t np, const T* dy, int64_t L, double* acc) {
  typedef typename WgVec<T>::type V;
  constexpr int64_t VL = int64_t(sizeof(V) / sizeof(T)), KB = 2 * VL;
  V part[R][NV];
  for (int r = 0; r < R; ++r)
    for (int j = 0; j < NV; ++j) part[r][j] = V{};
  for (int64_t p = 0; p < np; ++p) {
    V x[NV];  // separate loads (memcpy into the array as a whole went through the stack)
    for (int j = 0; j < NV; ++j) __builtin_memcpy(&x[j], panel + p * KB + j * VL, sizeof(V));
    for (int r = 0; r < R; ++r) {
      const V d = dy[r * L + p] - V{};  // broadcast
      for (int j = 0; j < NV; ++j) part[r][j] = mul_add(d, x[j], part[r][j]);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int j = 0; j < NV; ++j) add_to_double(acc + r * KB + j * VL, part[r][j]);
}

// The decomposition's panel: panel[p][j] = Xp[k0 + j, p0 + p] - c[j] for the block's taps (taps
// past nk read as 0 up to a multiple of VL, the later ones and pixels past np left unspecified:
// their sums are never read). The patches are gathered pixel-contiguous
// into rows[j][p] (contiguous copies at stride 1), then transposed in VL x VL register blocks:
// the same values as a transposed gather followed by the subtraction.
template <typename T>
static void pack_panel_centred(const Adder2dShape& s, const T* x, int64_t p0, int64_t np,
                               int64_t k0, int64_t nk, const T* c, T* rows, T* panel) {
  typedef typename Vec<T>::type V;
  constexpr int64_t VL = int64_t(sizeof(V) / sizeof(T)), KB = weight_grad_taps<T>();
  const int64_t npr = (np + VL - 1) / VL * VL;
  pack_patches(s, x, p0, np, k0, nk, rows, WG_PIXELS, 1);
  for (int64_t j = 0; j < nk; ++j)
    for (int64_t p = np; p < npr; ++p) rows[j * WG_PIXELS + p] = T(0);
  const int64_t groups = (nk + VL - 1) / VL;  // of VL taps; the panel's later columns unused
  for (int64_t j = nk; j < groups * VL; ++j)
    for (int64_t p = 0; p < npr; ++p) rows[j * WG_PIXELS + p] = T(0);
  for (int64_t h = 0; h < groups; ++h) {
    V cv;
    __builtin_memcpy(&cv, c + h * VL, sizeof(V));
    for (int64_t p = 0; p < npr; p += VL) {
      const T* src[VL];
      for (int64_t i = 0; i < VL; ++i) src[i] = rows + (h * VL + i) * WG_PIXELS + p;
      transpose_centred(src, cv, panel + p * KB + h * VL, KB);
    }
  }
}

// The zero-padded copy of one image's input channels [c0, c0 + nc) of a group, its columns split
// by phase (column mod stride_w): padded (ci, ih, iw) at ((ci * Hp + ih) * stride_w + iw % stride_w)
// * Wq + iw / stride_w, Hp = in_h + 2 pad_h, Wq = ceil((in_w + 2 pad_w) / stride_w). Then tap
// (ci, kh, kw) of output pixels (oh, ow..ow+n) is n contiguous elements at any stride. Writes the
// image's elements only: the caller zeroes dst once (the padding stays zero from image to image).
template <typename T>
static int64_t padded_phase_width(const Adder2dShape& s) {
  return (s.in_w + 2 * s.pad_w + s.stride_w - 1) / s.stride_w;
}
template <typename T>
static void pad_planes(const Adder2dShape& s, const T* x, int64_t c0, int64_t nc, T* dst) {
  const int64_t Hp = s.in_h + 2 * s.pad_h, sw = s.stride_w, Wq = padded_phase_width<T>(s);
  const int64_t row = sw * Wq;
  for (int64_t c = 0; c < nc; ++c)
    for (int64_t ih = 0; ih < s.in_h; ++ih) {
      const T* src = x + ((c0 + c) * s.in_h + ih) * s.in_w;
      T* d = dst + (c * Hp + ih + s.pad_h) * row;
      if (sw == 1) {
        for (int64_t iw = 0; iw < s.in_w; ++iw) d[s.pad_w + iw] = src[iw];
      } else if (sw == 2) {  // even iw: phase pad_w % 2; odd iw: the other phase
        const int64_t a = s.pad_w & 1;
        T* even = d + a * Wq + (s.pad_w >> 1);
        T* odd = d + (1 - a) * Wq + ((s.pad_w + 1) >> 1);
        int64_t i = split_even_odd(src, s.in_w, even, odd);
        for (int64_t j = i; 2 * j < s.in_w; ++j) even[j] = src[2 * j];
        for (int64_t j = i; 2 * j + 1 < s.in_w; ++j) odd[j] = src[2 * j + 1];
      } else {
        int64_t ph = s.pad_w % sw, col = s.pad_w / sw;  // phase and column of iw = 0
        for (int64_t iw = 0; iw < s.in_w; ++iw) {
          d[ph * Wq + col] = src[iw];
          if (++ph == sw) {
            ph = 0;
            ++col;
          }
        }
      }
    }
}

// off[j] = offset in the padded copy (planes holds channels from c0) of tap k0 + j of output pixel
// (0, 0), for the taps j < nk of a block: computed once per work item, not per panel (its
// divisions cost as much as a 64-pixel panel's FMAs on 16-channel layers).
template <typename T>
static void panel_tap_offsets(const Adder2dShape& s, int64_t c0, int64_t k0, int64_t nk,
                              int64_t* off) {
  const int64_t KHW = s.kernel_h * s.kernel_w, Hp = s.in_h + 2 * s.pad_h;
  const int64_t Wq = padded_phase_width<T>(s), row = s.stride_w * Wq;
  for (int64_t j = 0; j < nk; ++j) {
    const int64_t k = k0 + j, ci = k / KHW - c0, kh = (k % KHW) / s.kernel_w, kw = k % s.kernel_w;
    const int64_t cw = kw * s.dilation_w;
    off[j] = (ci * Hp + kh * s.dilation_h) * row + (cw % s.stride_w) * Wq + cw / s.stride_w;
  }
}

#ifdef ADDER_CPU_ZMM
// dst[p * ldd + j] = src[j][p] - c[j] for a 16 x 16 block of floats on 64-byte vectors: the
// pixels' 4 x 4-float quarters by unpacks of the taps in pairs and fours, then 128-bit lanes
// exchanged 4 x 4 (one vector per pixel); the values of the 8 x 8 transposes, in half the
// loads, stores and shuffles.
static inline void transpose16_centred(const float* const* src, __m512 c, float* dst, int64_t ldd) {
  __m512 r[16], t[16];
  for (int i = 0; i < 16; ++i) r[i] = _mm512_loadu_ps(src[i]);
  for (int i = 0; i < 16; i += 2) {  // t[i]: taps i, i+1 of pixels 4L, 4L+1; t[i+1]: 4L+2, 4L+3
    t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
  }
  for (int q = 0; q < 16; q += 4) {  // r[q + s], lane L: taps q..q+3 of pixel 4L + s
    const __m512d a = _mm512_castps_pd(t[q]), b = _mm512_castps_pd(t[q + 2]);
    const __m512d e = _mm512_castps_pd(t[q + 1]), f = _mm512_castps_pd(t[q + 3]);
    r[q] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, b));
    r[q + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, b));
    r[q + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(e, f));
    r[q + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(e, f));
  }
  for (int s = 0; s < 4; ++s) {  // lane L of pixel 4L + s from r[s], r[4 + s], r[8 + s], r[12 + s]
    const __m512 v0 = _mm512_shuffle_f32x4(r[s], r[4 + s], 0x44);
    const __m512 v1 = _mm512_shuffle_f32x4(r[s], r[4 + s], 0xEE);
    const __m512 v2 = _mm512_shuffle_f32x4(r[8 + s], r[12 + s], 0x44);
    const __m512 v3 = _mm512_shuffle_f32x4(r[8 + s], r[12 + s], 0xEE);
    _mm512_storeu_ps(dst + s * ldd, _mm512_sub_ps(_mm512_shuffle_f32x4(v0, v2, 0x88), c));
    _mm512_storeu_ps(dst + (4 + s) * ldd, _mm512_sub_ps(_mm512_shuffle_f32x4(v0, v2, 0xDD), c));
    _mm512_storeu_ps(dst + (8 + s) * ldd, _mm512_sub_ps(_mm512_shuffle_f32x4(v1, v3, 0x88), c));
    _mm512_storeu_ps(dst + (12 + s) * ldd, _mm512_sub_ps(_mm512_shuffle_f32x4(v1, v3, 0xDD), c));
  }
}
#endif

// pack_panel_centred from the padded copy (off: panel_tap_offsets of the block), when the output
// width is a whole number of vectors: each tap of VL output pixels is one vector load (at the
// AVX-512 level, with a width of a multiple of 16, 16 x 16 blocks).
template <typename T>
static void pack_panel_centred_padded(const Adder2dShape& s, const T* planes, const int64_t* off,
                                      int64_t p0, int64_t np, int64_t nk, const T* c,
                                      const T* zeros, T* panel) {
  typedef typename Vec<T>::type V;
  constexpr int64_t VL = int64_t(sizeof(V) / sizeof(T)), KB = weight_grad_taps<T>();
  const int64_t row = s.stride_w * padded_phase_width<T>(s);
#ifdef ADDER_CPU_ZMM
  if constexpr (sizeof(T) == sizeof(float)) {
    if (s.out_w % 16 == 0) {  // 16 x 16 blocks (np, a multiple of out_w or 64, is one of 16)
      for (int64_t p = 0; p < np; p += 16) {
        const int64_t oh = (p0 + p) / s.out_w, ow = (p0 + p) % s.out_w;
        const float* base = planes + oh * s.stride_h * row + ow;
        for (int64_t h = 0; h < (nk + 15) / 16; ++h) {
          const float* src[16];
          for (int64_t i = 0; i < 16; ++i)
            src[i] = h * 16 + i < nk ? base + off[h * 16 + i] : zeros;
          transpose16_centred(src, _mm512_loadu_ps(c + h * 16), panel + p * KB + h * 16, KB);
        }
      }
      return;
    }
  }
#endif
  for (int64_t p = 0; p < np; p += VL) {
    const int64_t oh = (p0 + p) / s.out_w, ow = (p0 + p) % s.out_w;
    const T* base = planes + oh * s.stride_h * row + ow;
    for (int64_t h = 0; h < (nk + VL - 1) / VL; ++h) {  // the panel's later columns unused
      const T* src[VL];
      for (int64_t i = 0; i < VL; ++i) src[i] = h * VL + i < nk ? base + off[h * VL + i] : zeros;
      V cv;
      __builtin_memcpy(&cv, c + h * VL, sizeof(V));
      transpose_centred(src, cv, panel + p * KB + h * VL, KB);
    }
  }
}

// sum[l] += the lanes of dy[0..n) (l = index mod the vector width VL; sum has VL doubles): each
// chunk of WG_PIXELS pixels summed in T vectors, then added in double; a chunk's scalar tail
// goes to lane 0. The order depends on n only.
template <typename T>
static void sum_row(const T* dy, int64_t n, double* sum) {
  typedef typename Vec<T>::type V;
  constexpr int64_t VL = int64_t(sizeof(V) / sizeof(T));
  for (int64_t p0 = 0; p0 < n; p0 += WG_PIXELS) {
    const int64_t np = min_i64(WG_PIXELS, n - p0);
    V a = V{};
    int64_t p = 0;
    for (; p + VL <= np; p += VL) {
      V d;
      __builtin_memcpy(&d, dy + p0 + p, sizeof(V));
      a += d;
    }
    add_to_double(sum, a);
    for (; p < np; ++p) sum[0] += double(dy[p0 + p]);
  }
}

// weight_grad_fma for R output channels where r == R, for 1 <= r < WgVec<T>::rows.
template <typename T, int NV, int R = 1>
static void weight_grad_fma_rows(int64_t r, const T* panel, int64_t np, const T* dy, int64_t L,
                                 double* acc) {
  if constexpr (R < WgVec<T>::rows) {
    if (r == R) return weight_grad_fma<T, R, NV>(panel, np, dy, L, acc);
    weight_grad_fma_rows<T, NV, R + 1>(r, panel, np, dy, L, acc);
  }
}

// weight_grad_fma over all cog output channels (dy: channel 0's row, rows L apart; acc: channel
// 0's, KB apart) in calls of ROWS = WgVec<T>::rows rows; a rest under 4 rows joins the last full
// call, split into two calls (a call of 1 or 2 rows loads 2 or 3 values per FMA pair and re-reads
// the panel). With ROWS = 6: 16 channels as 6 + 6 + 4, 32 as 6 + 6 + 6 + 6 + 4 + 4, 13 as 6 + 4 + 3.
template <typename T, int NV>
static void weight_grad_rows(const T* panel, int64_t np, const T* dy, int64_t L, int64_t cog,
                             double* acc) {
  constexpr int64_t KB = weight_grad_taps<T>();
  constexpr int ROWS = WgVec<T>::rows;
  int64_t full = cog / ROWS, rest = cog % ROWS;
  if (rest > 0 && rest < 4 && full > 0) {  // one full call and the rest as two calls
    --full;
    rest += ROWS;
  }
  int64_t co = 0;
  for (int64_t i = 0; i < full; ++i, co += ROWS)
    weight_grad_fma<T, ROWS, NV>(panel, np, dy + co * L, L, acc + co * KB);
  while (rest > 0) {
    const int64_t r = rest >= ROWS ? rest - rest / 2 : rest;
    weight_grad_fma_rows<T, NV>(r, panel, np, dy + co * L, L, acc + co * KB);
    co += r;
    rest -= r;
  }
}

// sum_{n,p} dY[n, co, p] of layer channel co in double, for the decomposition: per image
// sum_row's lane sums, then the lanes added in order. Computed once per call (adder2d_cpu.cpp)
// and shared by the work items, which recomputed it each before.
template <typename T>
static double weight_grad_dy_sum(const Adder2dShape& s, const T* dy, int64_t co) {
  constexpr int64_t VL = int64_t(sizeof(typename Vec<T>::type) / sizeof(T));
  const int64_t L = s.out_h * s.out_w;
  double lanes[VL] = {};
  for (int64_t n = 0; n < s.batch; ++n) sum_row(dy + (n * s.out_channels + co) * L, L, lanes);
  double t = 0.0;
  for (int64_t l = 0; l < VL; ++l) t += lanes[l];
  return t;
}

// Work items per group of the decomposed weight gradient on `threads` threads, each a run of
// units of U = weight_grad_unit_taps taps (item i of n: units [i * N / n, (i + 1) * N / n) of
// the group's N), gone through in blocks of KB taps (a last half block by the half-width
// kernel): as few items as keep each within WG_SUB blocks, so that each chunk of dY (all the
// group's output channels x WG_PIXELS pixels) is reused from cache by up to WG_SUB panels
// instead of being streamed from memory once per block; then more, up to one unit each, until
// all groups' items are a multiple of the threads (equal shares: 9 items on 2 threads left one
// thread 5 to do while the other waited after 4). Each tap's reduction order does not depend on
// the grouping, so the results do not depend on the thread count.
template <typename T>
static int64_t weight_grad_items(const Adder2dShape& s, int64_t threads) {
  constexpr int64_t U = weight_grad_unit_taps<T>(), per_item = WG_SUB * weight_grad_taps<T>() / U;
  const int64_t units = (s.taps + U - 1) / U;
  int64_t items = min_i64((units + per_item - 1) / per_item, units);
  while (items < units && (s.groups * items) % threads != 0) ++items;
  return items;
}

// dW[g*Cog + co, k0 + j] for every co of group g and the taps [k0, k0 + nt) (one of
// weight_grad_items' items: nt at most WG_SUB * KB) by the decomposition (one FMA per tap):
//   dW[co,k] = sum_p dY[co,p] * (Xp[k,p] - c_k) - (W[co,k] - c_k) * sum_p dY[co,p]
// exact for any c_k; c_k = mean over the group's output channels of W[co,k] (rounded to T) keeps
// the cancellation small when the weights share an offset (|W| large against |Xp - W|). The
// panel holds Xp - c_k; the pixel sums run in the direct kernel's order (chunks of WG_PIXELS
// pixels in T, chunks in double); sum_p dY (dysum: weight_grad_dy_sum of the group's channels);
// the correction in double.
// Rounding error (u = unit roundoff of T, m = WG_PIXELS):
//   |err| <= u |dW| + (m + 2) u sum_p |dY[co,p]| (|Xp[k,p] - W[co,k]| + 2 |W[co,k] - c_k|)
// to first order, against (m + 2) u sum_p |dY| |Xp - W| for the direct kernel.
template <typename T>
void weight_grad_block(const Adder2dShape& s, const T* dy, const T* x, const T* w, T* gw,
                       const double* dysum, int64_t g, int64_t k0, int64_t nt, T* scratch) {
  constexpr int64_t KB = weight_grad_taps<T>();
  const int64_t cog = s.out_channels_per_group, L = s.out_h * s.out_w, K = s.taps;
  const int64_t nsub = (nt + KB - 1) / KB;
  T* panel = scratch;
  T* centre = scratch + WG_PIXELS * KB;                           // nsub * KB
  double* acc = reinterpret_cast<double*>(centre + WG_SUB * KB);  // [sub][co][KB]
  T* rows = reinterpret_cast<T*>(acc + WG_SUB * cog * KB);        // KB x WG_PIXELS
  const bool padded = weight_grad_uses_padded<T>(s);
  const int64_t KHW = s.kernel_h * s.kernel_w, c0 = k0 / KHW, nc = (k0 + nt - 1) / KHW - c0 + 1;
  T* zeros =
      rows + KB * WG_PIXELS;  // WG_ZEROS zeros, then the padded planes of channels [c0, c0 + nc)
  T* planes = zeros + WG_ZEROS;
  if (padded) {  // the size in a local: the stores may alias s, so the loop would recompute it
    const int64_t n = weight_grad_padded_size<T>(s);
    for (int64_t i = 0; i < n; ++i) zeros[i] = T(0);
  }
  {
    double* c = acc;  // acc is free until zeroed below
    for (int64_t j = 0; j < nsub * KB; ++j) c[j] = 0.0;
    for (int64_t co = 0; co < cog; ++co)
      for (int64_t j = 0; j < nt; ++j) c[j] += double(w[co * K + k0 + j]);
    for (int64_t j = 0; j < nsub * KB; ++j) centre[j] = T(c[j] / double(cog));
  }
  for (int64_t i = 0; i < nsub * cog * KB; ++i) acc[i] = 0.0;
  int64_t offs[WG_SUB * KB];
  if (padded)
    for (int64_t sub = 0; sub < nsub; ++sub)
      panel_tap_offsets<T>(s, c0, k0 + sub * KB, min_i64(KB, nt - sub * KB), offs + sub * KB);
  for (int64_t n = 0; n < s.batch; ++n) {
    const T* xn = x + (n * s.in_channels + g * s.in_channels_per_group) * s.in_h * s.in_w;
    const T* dyn = dy + (n * s.out_channels + g * cog) * L;
    if (padded) pad_planes(s, xn, c0, nc, planes);
    for (int64_t p0 = 0; p0 < L; p0 += WG_PIXELS) {
      const int64_t np = min_i64(WG_PIXELS, L - p0);
      for (int64_t sub = 0; sub < nsub; ++sub) {
        const T* cs = centre + sub * KB;
        double* as = acc + sub * cog * KB;
        const int64_t kb = k0 + sub * KB, nk = min_i64(KB, nt - sub * KB);
        if (padded)
          pack_panel_centred_padded(s, planes, offs + sub * KB, p0, np, nk, cs, zeros, panel);
        else
          pack_panel_centred(s, xn, p0, np, kb, nk, cs, rows, panel);
        if (nk <= KB / 2)  // the block's first half
          weight_grad_rows<T, 1>(panel, np, dyn + p0, L, cog, as);
        else
          weight_grad_rows<T, 2>(panel, np, dyn + p0, L, cog, as);
      }
    }
  }
  for (int64_t co = 0; co < cog; ++co)
    for (int64_t j = 0; j < nt; ++j) {
      const double* a = acc + (j / KB) * cog * KB + co * KB + j % KB;
      gw[co * K + k0 + j] =
          T(mul_add(-(double(w[co * K + k0 + j]) - double(centre[j])), dysum[co], *a));
    }
}

template <typename T>
KernelSet<T> make_kernel_set() {
  return KernelSet<T>{&forward_tile<T>,
                      &input_grad_planes<T>,
                      &weight_grad_block<T>,
                      &weight_grad_block_direct<T>,
                      &weight_grad_dy_sum<T>,
                      &input_grad_scratch<T>,
                      &weight_grad_scratch<T>,
                      &weight_grad_items<T>,
                      weight_grad_taps<T>(),
                      weight_grad_unit_taps<T>(),
                      TILE_P,
                      TILE_K * TILE_P,
                      &forward_prepare_plane<T>,
                      &forward_tiles_direct<T>,
                      &forward_prepare_batch_plane<T>,
                      &forward_tiles_batch<T>,
                      &forward_interleave_weights<T>,
                      int64_t(sizeof(typename Vec<T>::type) / sizeof(T)),
                      TILE_P / int64_t(sizeof(typename Vec<T>::type) / sizeof(T)),
                      IG_PLANES,
                      forward_rows<T>(),
                      ADDER_CPU_VECTOR_BYTES,
                      ADDER_CPU_VECTOR_BYTES,
                      ADDER_CPU_VECTOR_BYTES};
}

}  // namespace ADDER_CPU_ISA
}  // namespace cpu
}  // namespace addernet
