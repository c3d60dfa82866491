// CPU kernels of adder2d_int8, the 8-bit adder forward, on raw pointers; written once and
// compiled once per instruction set (adder2d_int8_base.cpp: SSE2 on x86-64, a scalar loop
// elsewhere; adder2d_int8_avx2.cpp: AVX2). The includer defines ADDER_CPU_ISA (the namespace
// that keeps the copies apart) and, for the AVX2 copy, ADDER_INT8_AVX2, and includes
// <immintrin.h> first on x86-64. This file includes nothing; layouts in adder2d_int8_cpu.h.
//
// The math, with one scale s > 0 for the layer and codes q(v) = clamp(round(v / s), -127, 127)
// (round half to even, zero point 0, so a padded tap x = 0 is exact):
//
//   S[n,co,p] = sum_{ci,kh,kw} |q(Xp[n,c,ih,iw]) - q(W[co,ci,kh,kw])|          exact in int32
//   Y[n,co,p] = alpha[co] * S + beta[co]        (then max(Y, 0) if relu), float32
//
// alpha = -s and beta = bias give the adder layer Y = bias - s * S; a following BatchNorm folds
// into alpha and beta. S <= 254 * kp, which the host checks against 2^31.
//
// Byte SAD: on codes offset by 128, |(a+128) - (b+128)| = |a - b|, and psadbw / vpsadbw sums 8
// such terms per 64-bit lane (2 lanes in SSE2, 4 in AVX2) in one instruction. The reduction is
// packed so that every aligned 8 bytes belong to one pixel and one tap (channels last, channels
// padded to 8): implicit GEMM, a panel of tile_pixels output pixels x kp bytes packed from the
// padded channels-last input, a register micro-tile of 2 output channels x 4 pixels (8
// accumulators, 4 pixel vectors, 1 weight vector, 1 temporary: 14 of the 16 vector registers)
// walking kp in vectors. Lanes hold < 2^32, so 4 accumulators merge into one vector of 4 int32
// sums with shifts, ors, unpacks and adds, and the epilogue (int32 -> float, alpha, beta, relu)
// runs on 4 pixels at once. The float epilogue is a multiply then an add in both copies (the
// AVX2 copy is compiled without FMA), so the two copies are bitwise equal.

#ifndef ADDER_CPU_ISA
#error "define ADDER_CPU_ISA before including adder2d_int8_kernels.h"
#endif

namespace addernet {
namespace cpu {
namespace ADDER_CPU_ISA {
namespace int8 {

constexpr int MR = 2;  // output channels per micro-tile
constexpr int NR = 4;  // pixels per micro-tile
constexpr unsigned char CODE_ZERO = 128;

// q(v) + 128. Clamping to the integer bounds first and then rounding equals rounding then
// clamping; adding and subtracting 1.5 * 2^23 rounds half to even for |t| < 2^22. NaN maps to
// -127.
static inline uint8_t quantize_code(float v, float scale) {
  float t = v / scale;
  t = t >= -127.0f ? t : -127.0f;
  t = t <= 127.0f ? t : 127.0f;
  t = (t + 12582912.0f) - 12582912.0f;
  return static_cast<uint8_t>(static_cast<int>(t) + 128);
}

// codes[i] = q(src[i]) + 128 for i < n, vectorized (32 at a time in the AVX2 copy, 16 with
// SSE2): divide, clamp (maxps returns its second operand for NaN, so NaN -> -127 as in the
// scalar code), round half to even (cvtps2dq under the default rounding mode), pack to bytes with
// signed saturation (the codes fit), then flip the sign bit (+128). Identical to quantize_code
// element by element.
static inline void quantize_row(const float* src, int64_t n, float scale, uint8_t* codes) {
  int64_t i = 0;
#if defined(ADDER_INT8_AVX2)
  {
    const __m256 vs = _mm256_set1_ps(scale), lo = _mm256_set1_ps(-127.0f),
                 hi = _mm256_set1_ps(127.0f);
    const __m256i sign = _mm256_set1_epi8(static_cast<char>(0x80));
    const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    for (; i + 32 <= n; i += 32) {
      __m256i q[4];
      for (int j = 0; j < 4; ++j) {
        __m256 t = _mm256_div_ps(_mm256_loadu_ps(src + i + 8 * j), vs);
        t = _mm256_min_ps(_mm256_max_ps(t, lo), hi);
        q[j] = _mm256_cvtps_epi32(t);
      }
      // packs work within 128-bit lanes: dword k of the packed vector holds q[k % 4] elements
      // 4 * (k / 4) ..; the permutation restores the element order.
      __m256i v =
          _mm256_packs_epi16(_mm256_packs_epi32(q[0], q[1]), _mm256_packs_epi32(q[2], q[3]));
      v = _mm256_xor_si256(_mm256_permutevar8x32_epi32(v, order), sign);
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(codes + i), v);
    }
  }
#endif
#if defined(ADDER_INT8_AVX2) || defined(__SSE2__)
  const __m128 vs = _mm_set1_ps(scale), lo = _mm_set1_ps(-127.0f), hi = _mm_set1_ps(127.0f);
  const __m128i sign = _mm_set1_epi8(static_cast<char>(0x80));
  for (; i + 16 <= n; i += 16) {
    __m128i q[4];
    for (int j = 0; j < 4; ++j) {
      __m128 t = _mm_div_ps(_mm_loadu_ps(src + i + 4 * j), vs);
      t = _mm_min_ps(_mm_max_ps(t, lo), hi);
      q[j] = _mm_cvtps_epi32(t);
    }
    const __m128i w = _mm_packs_epi16(_mm_packs_epi32(q[0], q[1]), _mm_packs_epi32(q[2], q[3]));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(codes + i), _mm_xor_si128(w, sign));
  }
#endif
  for (; i < n; ++i) codes[i] = quantize_code(src[i], scale);
}

// dst[w][c] = src[c * n + w] for c < nc, w < n (dst[w] a row pointer per pixel): 16 x 16 blocks
// through SSE2 (four rounds of interleaving rows i and i + 8 transpose a block), the rest element
// by element.
static inline void transpose_codes(const uint8_t* src, int64_t nc, int64_t n, uint8_t* const* dst) {
  int64_t c0 = 0;
#if defined(ADDER_INT8_AVX2) || defined(__SSE2__)
  for (; c0 + 16 <= nc; c0 += 16) {
    int64_t w0 = 0;
    for (; w0 + 16 <= n; w0 += 16) {
      __m128i a[16], b[16];
      for (int i = 0; i < 16; ++i)
        a[i] = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + (c0 + i) * n + w0));
      for (int round = 0; round < 4; ++round) {
        for (int i = 0; i < 8; ++i) {
          b[2 * i] = _mm_unpacklo_epi8(a[i], a[i + 8]);
          b[2 * i + 1] = _mm_unpackhi_epi8(a[i], a[i + 8]);
        }
        for (int i = 0; i < 16; ++i) a[i] = b[i];
      }
      for (int i = 0; i < 16; ++i)
        _mm_storeu_si128(reinterpret_cast<__m128i*>(dst[w0 + i] + c0), a[i]);
    }
    if (w0 + 8 <= n) {  // 8 pixels: the upper half of each row zero, the first 8 rows kept
      __m128i a[16], b[16];
      for (int i = 0; i < 16; ++i)
        a[i] = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(src + (c0 + i) * n + w0));
      for (int round = 0; round < 4; ++round) {
        for (int i = 0; i < 8; ++i) {
          b[2 * i] = _mm_unpacklo_epi8(a[i], a[i + 8]);
          b[2 * i + 1] = _mm_unpackhi_epi8(a[i], a[i + 8]);
        }
        for (int i = 0; i < 16; ++i) a[i] = b[i];
      }
      for (int i = 0; i < 8; ++i)
        _mm_storeu_si128(reinterpret_cast<__m128i*>(dst[w0 + i] + c0), a[i]);
      w0 += 8;
    }
    for (; w0 < n; ++w0)
      for (int64_t c = c0; c < c0 + 16; ++c) dst[w0][c] = src[c * n + w0];
  }
#endif
  for (int64_t w = 0; w < n; ++w) {
    const uint8_t* col = src + c0 * n + w;
    uint8_t* out = dst[w];
    for (int64_t c = c0; c < nc; ++c, col += n) out[c] = *col;
  }
}

// One image: per group, chunks of consecutive pixels of the H * W plane (whole rows or not): each
// channel's run of the chunk is quantized contiguously into `rows` (channels x pixels codes), then
// transposed into the channels-last padded layout (a row pointer per pixel).
static void quantize_image(const Int8Geom& gm, const float* x, float scale, uint8_t* xq) {
  const Adder2dShape& s = gm.s;
  const int64_t cig = s.in_channels_per_group, HW = s.in_h * s.in_w;
  __builtin_memset(xq, CODE_ZERO, s.groups * gm.hp * gm.wp * gm.cpg);
  constexpr int64_t CHUNK = 8192;  // codes per pass of the transposition
  constexpr int64_t MAX_PIXELS = 512;
  uint8_t rows[CHUNK];
  uint8_t* dst[MAX_PIXELS];
  // Pixels per chunk: a multiple of 16 where the channels allow, all of the plane if it fits.
  int64_t np = CHUNK / cig >= 16 ? CHUNK / cig / 16 * 16 : 1;
  if (np > MAX_PIXELS) np = MAX_PIXELS;
  if (np > HW) np = HW;
  const int64_t cstep = CHUNK / np;  // channels per pass (all of them unless cig > CHUNK / 16)
  for (int64_t g = 0; g < s.groups; ++g) {
    uint8_t* xg = xq + g * gm.hp * gm.wp * gm.cpg + (s.pad_h * gm.wp + s.pad_w) * gm.cpg;
    for (int64_t p0 = 0; p0 < HW; p0 += np) {
      const int64_t n = HW - p0 < np ? HW - p0 : np;
      int64_t h = p0 / s.in_w, w = p0 % s.in_w;
      for (int64_t i = 0; i < n; ++i) {
        dst[i] = xg + (h * gm.wp + w) * gm.cpg;
        if (++w == s.in_w) {
          w = 0;
          ++h;
        }
      }
      for (int64_t c0 = 0; c0 < cig; c0 += cstep) {
        const int64_t nc = cig - c0 < cstep ? cig - c0 : cstep;
        for (int64_t ci = 0; ci < nc; ++ci)
          quantize_row(x + (g * cig + c0 + ci) * HW + p0, n, scale, rows + ci * n);
        if (c0 > 0)
          for (int64_t i = 0; i < n; ++i) dst[i] += cstep;
        transpose_codes(rows, nc, n, dst);
      }
    }
  }
}

// Weight byte of tap (kh, kw, ci) in a row of wpk: kernel rows of kp / KH... see
// adder2d_int8_cpu.h. b is the tap's byte within its kernel row (kw * cpg + ci).
static inline int64_t weight_offset(const Int8Geom& gm, int64_t kh, int64_t b) {
  if (!gm.direct) return kh * gm.run + b;
  const int64_t full = (gm.nv - 1) * gm.vec;  // bytes summed by the unmasked vectors
  return kh * gm.nv * gm.vec + (b < full ? b : b + gm.nv * gm.vec - gm.run);
}

static void pack_weight(const Int8Geom& gm, const int8_t* w, uint8_t* wpk) {
  const Adder2dShape& s = gm.s;
  const int64_t KW = s.kernel_w, cig = s.in_channels_per_group;
  __builtin_memset(wpk, CODE_ZERO, s.out_channels * gm.wrow);
  for (int64_t co = 0; co < s.out_channels; ++co)
    for (int64_t ci = 0; ci < cig; ++ci)
      for (int64_t kh = 0; kh < s.kernel_h; ++kh)
        for (int64_t kw = 0; kw < KW; ++kw)
          wpk[co * gm.wrow + weight_offset(gm, kh, kw * gm.cpg + ci)] = static_cast<uint8_t>(
              static_cast<int>(w[((co * cig + ci) * s.kernel_h + kh) * KW + kw]) + 128);
}

// xoff[i] = offset in xq of pixel i's patch (its first kernel row) in group g, yoff[i] = offset
// of its output for channel 0 of the layer (n * Co * L + p); past the last pixel, yoff = -1 and
// xoff repeats the last pixel's. The pixel coordinates are stepped, not divided out per pixel.
static void tile_offsets(const Int8Geom& gm, int64_t g, int64_t q0, int64_t* xoff, int64_t* yoff) {
  const Adder2dShape& s = gm.s;
  const int64_t L = s.out_h * s.out_w, plane = gm.hp * gm.wp * gm.cpg;
  int64_t n = q0 / L, oh = (q0 % L) / s.out_w, ow = (q0 % L) % s.out_w;
  for (int64_t i = 0; i < gm.tile_pixels; ++i) {
    if (q0 + i >= gm.pixels) {
      xoff[i] = xoff[i - 1];
      yoff[i] = -1;
      continue;
    }
    yoff[i] = n * s.out_channels * L + oh * s.out_w + ow;
    xoff[i] = (n * s.groups + g) * plane + (oh * s.stride_h * gm.wp + ow * s.stride_w) * gm.cpg;
    if (++ow == s.out_w) {
      ow = 0;
      if (++oh == s.out_h) {
        oh = 0;
        ++n;
      }
    }
  }
}

// Copies `bytes` (a multiple of 8) with inline vector moves: a library memcpy call per kernel row
// (48-192 bytes) cost more than the SAD work on ResNet-20's layers.
static inline void copy_codes(uint8_t* dst, const uint8_t* src, int64_t bytes) {
#if defined(ADDER_INT8_AVX2) || defined(__SSE2__)
  int64_t j = 0;
  for (; j + 16 <= bytes; j += 16)
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + j),
                     _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + j)));
  if (j < bytes)
    _mm_storel_epi64(reinterpret_cast<__m128i*>(dst + j),
                     _mm_loadl_epi64(reinterpret_cast<const __m128i*>(src + j)));
#else
  __builtin_memcpy(dst, src, bytes);
#endif
}

// Fills `bytes` (a multiple of 8) with code 0 (byte 128).
static inline void fill_code_zero(uint8_t* dst, int64_t bytes) {
  const uint64_t word = 0x8080808080808080ull;
  for (int64_t j = 0; j < bytes; j += 8) __builtin_memcpy(dst + j, &word, 8);
}

// Panel rows [0, tile_pixels) = patches of pixels q0.. of group g; yoff[i] = offset of pixel i's
// output for channel 0 of the layer (n * Co * L + p), -1 past the last pixel. The pixel
// coordinates are stepped, not divided out per pixel.
static void pack_panel(const Int8Geom& gm, const uint8_t* xq, int64_t g, int64_t q0, uint8_t* panel,
                       int64_t* yoff) {
  const Adder2dShape& s = gm.s;
  const int64_t L = s.out_h * s.out_w, run = s.kernel_w * gm.cpg;
  const int64_t used = s.kernel_h * run, plane = gm.hp * gm.wp * gm.cpg, row_bytes = gm.wp * gm.cpg;
  int64_t n = q0 / L, oh = (q0 % L) / s.out_w, ow = (q0 % L) % s.out_w;
  for (int64_t i = 0; i < gm.tile_pixels; ++i) {
    uint8_t* row = panel + i * gm.kp;
    if (q0 + i >= gm.pixels) {
      fill_code_zero(row, gm.kp);
      yoff[i] = -1;
      continue;
    }
    yoff[i] = n * s.out_channels * L + oh * s.out_w + ow;
    const uint8_t* img = xq + (n * s.groups + g) * plane + ow * s.stride_w * gm.cpg;
    for (int64_t kh = 0; kh < s.kernel_h; ++kh) {
      const uint8_t* src = img + (oh * s.stride_h + kh * s.dilation_h) * row_bytes;
      uint8_t* dst = row + kh * run;
      if (s.dilation_w == 1) {
        copy_codes(dst, src, run);
      } else {
        for (int64_t kw = 0; kw < s.kernel_w; ++kw)
          copy_codes(dst + kw * gm.cpg, src + kw * s.dilation_w * gm.cpg, gm.cpg);
      }
    }
    fill_code_zero(row + used, gm.kp - used);
    if (++ow == s.out_w) {
      ow = 0;
      if (++oh == s.out_h) {
        oh = 0;
        ++n;
      }
    }
  }
}

// The reduction of one output as the GEMM walks it: `segments` kernel rows, `rstep` bytes apart
// in the input and `wseg` in the weight row, each `full` unmasked vector bytes, then (TAIL) one
// vector at input offset `tail` whose first bytes are masked to code 0.
struct Walk {
  int64_t segments, rstep, wseg, full, tail;
};

static inline Walk make_walk(const Int8Geom& gm) {
  if (!gm.direct) return Walk{1, 0, gm.kp, gm.kp, 0};
  const int64_t full = (gm.nv - 1) * gm.vec;
  const bool tail = gm.run % gm.vec != 0;
  return Walk{gm.s.kernel_h, gm.s.dilation_h * gm.wp * gm.cpg, gm.nv * gm.vec,
              tail ? full : gm.nv * gm.vec, gm.run - gm.vec};
}

#if defined(ADDER_INT8_AVX2) || defined(__SSE2__)

#if defined(ADDER_INT8_AVX2)
typedef __m256i Vec;
constexpr int64_t VEC_BYTES = 32;
static inline Vec vload(const uint8_t* p) {
  return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
}
static inline Vec vzero() {
  return _mm256_setzero_si256();
}
static inline Vec vsad_add(Vec acc, Vec a, Vec b) {
  return _mm256_add_epi64(acc, _mm256_sad_epu8(a, b));
}
// Bytes of x where mask is set replaced by code 0.
static inline Vec vmask(Vec x, Vec mask) {
  return _mm256_blendv_epi8(x, _mm256_set1_epi8(static_cast<char>(CODE_ZERO)), mask);
}
static inline Vec vfirst_bytes_mask(int64_t bytes) {
  alignas(32) uint8_t m[32];
  for (int i = 0; i < 32; ++i) m[i] = i < bytes ? 0xff : 0;
  return _mm256_load_si256(reinterpret_cast<const __m256i*>(m));
}
// Four accumulators (64-bit lanes, each < 2^32) -> their four totals as int32.
static inline __m128i reduce4(Vec a, Vec b, Vec c, Vec d) {
  const Vec ab = _mm256_or_si256(a, _mm256_slli_epi64(b, 32));
  const Vec cd = _mm256_or_si256(c, _mm256_slli_epi64(d, 32));
  const Vec t = _mm256_add_epi32(_mm256_unpacklo_epi64(ab, cd), _mm256_unpackhi_epi64(ab, cd));
  return _mm_add_epi32(_mm256_castsi256_si128(t), _mm256_extracti128_si256(t, 1));
}
#else
typedef __m128i Vec;
constexpr int64_t VEC_BYTES = 16;
static inline Vec vload(const uint8_t* p) {
  return _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
}
static inline Vec vzero() {
  return _mm_setzero_si128();
}
static inline Vec vsad_add(Vec acc, Vec a, Vec b) {
  return _mm_add_epi64(acc, _mm_sad_epu8(a, b));
}
static inline Vec vmask(Vec x, Vec mask) {
  return _mm_or_si128(_mm_andnot_si128(mask, x),
                      _mm_and_si128(mask, _mm_set1_epi8(static_cast<char>(CODE_ZERO))));
}
static inline Vec vfirst_bytes_mask(int64_t bytes) {
  alignas(16) uint8_t m[16];
  for (int i = 0; i < 16; ++i) m[i] = i < bytes ? 0xff : 0;
  return _mm_load_si128(reinterpret_cast<const __m128i*>(m));
}
static inline __m128i reduce4(Vec a, Vec b, Vec c, Vec d) {
  const Vec ab = _mm_or_si128(a, _mm_slli_epi64(b, 32));
  const Vec cd = _mm_or_si128(c, _mm_slli_epi64(d, 32));
  return _mm_add_epi32(_mm_unpacklo_epi64(ab, cd), _mm_unpackhi_epi64(ab, cd));
}
#endif

// sums[m] = the int32 sums of weight row m (M = 1 or 2, rows wrow apart) against the 4 pixels
// whose reductions start at x0..x3. Written out with named accumulators: as arrays, GCC kept
// reloading the pixel vectors and copying accumulators.
template <int M, bool TAIL>
static inline void micro_tile(const uint8_t* w, int64_t wrow, const uint8_t* x0, const uint8_t* x1,
                              const uint8_t* x2, const uint8_t* x3, const Walk& walk, Vec mask,
                              __m128i* sums) {
  Vec a00 = vzero(), a01 = vzero(), a02 = vzero(), a03 = vzero();
  Vec a10 = vzero(), a11 = vzero(), a12 = vzero(), a13 = vzero();
  const uint8_t* w1 = w + wrow;
  for (int64_t seg = 0; seg < walk.segments; ++seg) {
    for (int64_t k = 0; k < walk.full; k += VEC_BYTES) {
      Vec v0 = vload(x0 + k), v1 = vload(x1 + k), v2 = vload(x2 + k), v3 = vload(x3 + k);
      // Pins the pixel vectors in registers: without it GCC reloaded each one for every use.
      __asm__("" : "+x"(v0), "+x"(v1), "+x"(v2), "+x"(v3));
      const Vec w0 = vload(w + k);
      a00 = vsad_add(a00, v0, w0);
      a01 = vsad_add(a01, v1, w0);
      a02 = vsad_add(a02, v2, w0);
      a03 = vsad_add(a03, v3, w0);
      if (M == 2) {
        const Vec w1v = vload(w1 + k);
        a10 = vsad_add(a10, v0, w1v);
        a11 = vsad_add(a11, v1, w1v);
        a12 = vsad_add(a12, v2, w1v);
        a13 = vsad_add(a13, v3, w1v);
      }
    }
    if (TAIL) {
      const int64_t t = walk.tail, k = walk.full;
      Vec v0 = vmask(vload(x0 + t), mask), v1 = vmask(vload(x1 + t), mask);
      Vec v2 = vmask(vload(x2 + t), mask), v3 = vmask(vload(x3 + t), mask);
      __asm__("" : "+x"(v0), "+x"(v1), "+x"(v2), "+x"(v3));
      const Vec w0 = vload(w + k);
      a00 = vsad_add(a00, v0, w0);
      a01 = vsad_add(a01, v1, w0);
      a02 = vsad_add(a02, v2, w0);
      a03 = vsad_add(a03, v3, w0);
      if (M == 2) {
        const Vec w1v = vload(w1 + k);
        a10 = vsad_add(a10, v0, w1v);
        a11 = vsad_add(a11, v1, w1v);
        a12 = vsad_add(a12, v2, w1v);
        a13 = vsad_add(a13, v3, w1v);
      }
    }
    x0 += walk.rstep;
    x1 += walk.rstep;
    x2 += walk.rstep;
    x3 += walk.rstep;
    w += walk.wseg;
    w1 += walk.wseg;
  }
  // Keeps the accumulators where the loop left them (GCC copied four of them every step).
  __asm__("" : "+x"(a00), "+x"(a01), "+x"(a02), "+x"(a03));
  __asm__("" : "+x"(a10), "+x"(a11), "+x"(a12), "+x"(a13));
  sums[0] = reduce4(a00, a01, a02, a03);
  if (M == 2) sums[1] = reduce4(a10, a11, a12, a13);
}

// alpha * S + beta (+ relu) for 4 pixels of one channel, stored at y[yoff[j]].
static inline void epilogue4(__m128i sum, __m128 alpha, __m128 beta, bool relu, float* y,
                             const int64_t* yoff) {
  __m128 v = _mm_add_ps(_mm_mul_ps(_mm_cvtepi32_ps(sum), alpha), beta);
  if (relu) v = _mm_max_ps(_mm_setzero_ps(), v);
  if (yoff[3] == yoff[0] + 3) {
    _mm_storeu_ps(y + yoff[0], v);
    return;
  }
  alignas(16) float out[4];
  _mm_store_ps(out, v);
  for (int j = 0; j < NR; ++j)
    if (yoff[j] >= 0) y[yoff[j]] = out[j];
}

// M output channels (from w, alpha, beta, y) x the tile's pixels, 4 at a time; pixel i's
// reduction starts at x + xoff[i].
template <int M, bool TAIL>
static inline void tile_channels(const uint8_t* w, int64_t wrow, const uint8_t* x,
                                 const int64_t* xoff, const Walk& walk, Vec mask,
                                 int64_t tile_pixels, const float* alpha, const float* beta,
                                 bool relu, float* y, int64_t L, const int64_t* yoff) {
  __m128 va[M], vb[M];
  for (int m = 0; m < M; ++m) {
    va[m] = _mm_set1_ps(alpha[m]);
    vb[m] = _mm_set1_ps(beta[m]);
  }
  for (int64_t i = 0; i < tile_pixels; i += NR) {
    if (yoff[i] < 0) break;
    __m128i sums[M];
    micro_tile<M, TAIL>(w, wrow, x + xoff[i], x + xoff[i + 1], x + xoff[i + 2], x + xoff[i + 3],
                        walk, mask, sums);
    for (int m = 0; m < M; ++m) epilogue4(sums[m], va[m], vb[m], relu, y + m * L, yoff + i);
  }
}

template <bool TAIL>
static void tile_all_channels(const Int8Geom& gm, const uint8_t* wg, const uint8_t* x,
                              const int64_t* xoff, const Walk& walk, const float* alpha,
                              const float* beta, bool relu, float* y, const int64_t* yoff) {
  const int64_t cog = gm.s.out_channels_per_group, L = gm.s.out_h * gm.s.out_w;
  const Vec mask = vfirst_bytes_mask(gm.nv * VEC_BYTES - gm.run);
  int64_t m = 0;
  for (; m + MR <= cog; m += MR)
    tile_channels<MR, TAIL>(wg + m * gm.wrow, gm.wrow, x, xoff, walk, mask, gm.tile_pixels,
                            alpha + m, beta + m, relu, y + m * L, L, yoff);
  if (m < cog)
    tile_channels<1, TAIL>(wg + m * gm.wrow, gm.wrow, x, xoff, walk, mask, gm.tile_pixels,
                           alpha + m, beta + m, relu, y + m * L, L, yoff);
}

#else  // portable scalar copy (Int8Geom::vec = 8: no masked tail)

template <bool TAIL>
static void tile_all_channels(const Int8Geom& gm, const uint8_t* wg, const uint8_t* x,
                              const int64_t* xoff, const Walk& walk, const float* alpha,
                              const float* beta, bool relu, float* y, const int64_t* yoff) {
  const int64_t cog = gm.s.out_channels_per_group, L = gm.s.out_h * gm.s.out_w;
  for (int64_t m = 0; m < cog; ++m) {
    for (int64_t i = 0; i < gm.tile_pixels; ++i) {
      if (yoff[i] < 0) break;
      int32_t sum = 0;
      for (int64_t seg = 0; seg < walk.segments; ++seg) {
        const uint8_t* xs = x + xoff[i] + seg * walk.rstep;
        const uint8_t* ws = wg + m * gm.wrow + seg * walk.wseg;
        for (int64_t k = 0; k < walk.full; ++k) {
          const int32_t d = static_cast<int32_t>(xs[k]) - static_cast<int32_t>(ws[k]);
          sum += d < 0 ? -d : d;
        }
      }
      float v = static_cast<float>(sum) * alpha[m];
      v = v + beta[m];
      if (relu) v = v > 0.0f ? v : (v != v ? v : 0.0f);
      y[m * L + yoff[i]] = v;
    }
  }
}

#endif

static void forward_tile(const Int8Geom& gm, const uint8_t* xq, const uint8_t* wpk,
                         const float* alpha, const float* beta, bool relu, float* y, int64_t g,
                         int64_t q0, uint8_t* scratch) {
  int64_t* yoff = reinterpret_cast<int64_t*>(scratch);
  int64_t* xoff = yoff + gm.tile_pixels;
  const int64_t co0 = g * gm.s.out_channels_per_group, L = gm.s.out_h * gm.s.out_w;
  const uint8_t* wg = wpk + co0 * gm.wrow;
  const Walk walk = make_walk(gm);
  if (gm.direct) {
    tile_offsets(gm, g, q0, xoff, yoff);
    if (gm.run % gm.vec != 0)
      tile_all_channels<true>(gm, wg, xq, xoff, walk, alpha + co0, beta + co0, relu, y + co0 * L,
                              yoff);
    else
      tile_all_channels<false>(gm, wg, xq, xoff, walk, alpha + co0, beta + co0, relu, y + co0 * L,
                               yoff);
    return;
  }
  uint8_t* panel = scratch + gm.tile_pixels * 16;
  pack_panel(gm, xq, g, q0, panel, yoff);
  for (int64_t i = 0; i < gm.tile_pixels; ++i) xoff[i] = i * gm.kp;
  tile_all_channels<false>(gm, wg, panel, xoff, walk, alpha + co0, beta + co0, relu, y + co0 * L,
                           yoff);
}

static inline Int8KernelSet make_int8_kernel_set() {
#if defined(ADDER_INT8_AVX2) || defined(__SSE2__)
  return Int8KernelSet{VEC_BYTES, &quantize_image, &pack_weight, &forward_tile};
#else
  return Int8KernelSet{8, &quantize_image, &pack_weight, &forward_tile};
#endif
}

}  // namespace int8
}  // namespace ADDER_CPU_ISA
}  // namespace cpu
}  // namespace addernet
