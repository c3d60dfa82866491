// CPU kernels of adder2d_int8, the 8-bit adder forward, on raw pointers; written once and
// compiled once per instruction set (adder2d_int8_base.cpp: SSE2 on x86-64, a scalar loop
// elsewhere; adder2d_int8_avx2.cpp: AVX2; adder2d_int8_avx512.cpp: AVX-512 F/BW/VL/VNNI). The
// includer defines ADDER_CPU_ISA (the namespace that keeps the copies apart), ADDER_INT8_AVX2 for
// the AVX2 and AVX-512 copies, ADDER_INT8_AVX512 for the latter, and includes <immintrin.h> first
// on x86-64. This file includes nothing; layouts in adder2d_int8_cpu.h.
//
// The math, with one scale s > 0 for the layer and codes q(v) = clamp(round(v / s), -127, 127)
// (round half to even, zero point 0, so a padded tap x = 0 is exact):
//
//   S[n,co,p] = sum_{ci,kh,kw} |q(Xp[n,c,ih,iw]) - q(W[co,ci,kh,kw])|          exact in int32
//   Y[n,co,p] = alpha[co] * S + beta[co]        (then max(Y, 0) if relu), float32
//
// alpha = -s and beta = bias give the adder layer Y = bias - s * S; a following BatchNorm folds
// into alpha and beta. S <= 254 * kq, which the host checks against 2^31.
//
// Byte SAD: on codes offset by 128, |(a+128) - (b+128)| = |a - b|, and psadbw / vpsadbw sums 8
// such terms per 64-bit lane (2 lanes in SSE2, 4 in AVX2) in one instruction. Channels last,
// padded to 8, make every aligned 8 bytes of a patch one tap of 8 channels (a chunk). Implicit
// GEMM without packing the input: per pixel, each 8-byte chunk of its patch is read straight from
// the padded channels-last codes and broadcast to every lane, and the weights hold, per chunk,
// the chunks of 8 output channels side by side (an octet). One vpsadbw then adds chunk terms of
// one pixel for 4 channels, one per lane: every lane accumulates one output, so the reduction
// needs no horizontal sums. AVX2 micro-tile: 4 pixels x 8 channels (8 accumulators, 2 weight
// vectors, 1 broadcast), then per pixel the channels 0-3 and 4-7 lanes interleave into 8 int32,
// the float epilogue (int32 -> float, alpha, beta, relu) runs on 8 outputs at once, and a 4 x 8
// transposition stores 4 consecutive pixels per channel. The float epilogue is a multiply then an
// add in every copy (the AVX2 copy is compiled without FMA, the AVX-512 copy keeps them apart
// with an empty asm), so the copies are bitwise equal.
//
// AVX-512 copy: one octet's chunk is 64 bytes, one zmm. Micro-tile 4 pixels x 2 octets (8
// accumulators, each pixel's broadcast chunk against both octets). Two forms of the byte sums:
// - vpsadbw + vpaddq: each 64-bit lane accumulates one channel's sum, as above;
// - on reductions of 512 bytes or more (VNNI), |a - b| = a + b - 2 min(a, b): with A = the sum
//   of the pixel's patch bytes and B = the sum of the channel's weight bytes (offset codes,
//   padding included),
//     S = (A - M) + (B - M),   M = sum min(a, b),
//   each term in [0, 255 kq], which the host's bound on kq keeps in int32. vpminub compares the
//   broadcast chunk with the octet's 64 weight bytes and vpdpbusd (unsigned min times signed 1)
//   adds 4 bytes per int32 lane, two lanes per channel. A comes from psum (per padded pixel, summed over
//   the KH x KW taps per output, computed per image), B from the int32 sums after the packed
//   weights.
// The epilogue runs on a pixel's 16 channels at once, then a 4 x 16 transposition.

#ifndef ADDER_CPU_ISA
#error "define ADDER_CPU_ISA before including adder2d_int8_kernels.h"
#endif

namespace addernet {
namespace cpu {
namespace ADDER_CPU_ISA {
namespace int8 {

constexpr int NR = 4;  // pixels per micro-tile (8 output channels: an octet)
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

// dst[w][c] = src[c * ld + w] for c < nc, w < n (dst[w] a row pointer per pixel, ld >= n): 16 x
// 16 blocks through SSE2 (four rounds of interleaving rows i and i + 8 transpose a block), the
// rest element by element.
static inline void transpose_codes(const uint8_t* src, int64_t nc, int64_t n, int64_t ld,
                                   uint8_t* const* dst) {
  int64_t c0 = 0;
#if defined(ADDER_INT8_AVX2) || defined(__SSE2__)
  for (; c0 + 16 <= nc; c0 += 16) {
    int64_t w0 = 0;
    for (; w0 + 16 <= n; w0 += 16) {
      __m128i a[16], b[16];
      for (int i = 0; i < 16; ++i)
        a[i] = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + (c0 + i) * ld + w0));
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
        a[i] = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(src + (c0 + i) * ld + w0));
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
      for (int64_t c = c0; c < c0 + 16; ++c) dst[w0][c] = src[c * ld + w0];
  }
#endif
  for (int64_t w = 0; w < n; ++w) {
    const uint8_t* col = src + c0 * ld + w;
    uint8_t* out = dst[w];
    for (int64_t c = c0; c < nc; ++c, col += ld) out[c] = *col;
  }
}

// One image. NCHW: per group, chunks of consecutive pixels of the H * W plane (whole rows or
// not): each channel's run of the chunk is quantized contiguously into `rows` (channels x pixels
// codes), then transposed into the channels-last padded layout (a row pointer per pixel).
// Channels-last: quantized in place, pixel by pixel (row by row where nothing is padded).
static void quantize_image(const Int8Geom& gm, const float* x, float scale, uint8_t* xq) {
  const Adder2dShape& s = gm.s;
  const int64_t cig = s.in_channels_per_group, HW = s.in_h * s.in_w;
  if (cig < gm.cpg) {
    __builtin_memset(xq, CODE_ZERO, s.groups * gm.hp * gm.wp * gm.cpg);
  } else {  // no padded channels: code 0 only in the spatial border, the rest is written below
    const int64_t row = gm.wp * gm.cpg, top = s.pad_h * row, side = s.pad_w * gm.cpg;
    for (int64_t g = 0; g < s.groups; ++g) {
      uint8_t* xg = xq + g * gm.hp * row;
      __builtin_memset(xg, CODE_ZERO, top);
      __builtin_memset(xg + (gm.hp - s.pad_h) * row, CODE_ZERO, top);
      if (side > 0)
        for (int64_t h = s.pad_h; h < gm.hp - s.pad_h; ++h) {
          __builtin_memset(xg + h * row, CODE_ZERO, side);
          __builtin_memset(xg + (h + 1) * row - side, CODE_ZERO, side);
        }
    }
  }
  if (HW == 0) return;  // an empty image: only padding, written above
  if (gm.channels_last) {
    // x [H][W][C]: each pixel's channels of a group are already contiguous, no transposition.
    // Without groups or padded channels an image row is one contiguous run of W * C codes; with
    // them, runs of 32 channels or more are quantized in place, shorter ones (too short for the
    // vector loop) a pass of whole pixels at a time into `codes`, then copied to their slots.
    constexpr int64_t PASS = 16384;
    uint8_t codes[PASS];
    const int64_t C = s.in_channels, plane = gm.hp * gm.wp * gm.cpg;
    const bool whole_rows = s.groups == 1 && cig == gm.cpg;
    const bool in_place = whole_rows || cig >= 32 || C > PASS;
    for (int64_t h = 0; h < s.in_h; ++h) {
      const float* xr = x + h * s.in_w * C;
      uint8_t* qr = xq + ((h + s.pad_h) * gm.wp + s.pad_w) * gm.cpg;
      if (whole_rows) {
        quantize_row(xr, s.in_w * cig, scale, qr);
      } else if (in_place) {
        for (int64_t g = 0; g < s.groups; ++g)
          for (int64_t w = 0; w < s.in_w; ++w)
            quantize_row(xr + w * C + g * cig, cig, scale, qr + g * plane + w * gm.cpg);
      } else {
        for (int64_t w0 = 0; w0 < s.in_w; w0 += PASS / C) {
          const int64_t nw = s.in_w - w0 < PASS / C ? s.in_w - w0 : PASS / C;
          quantize_row(xr + w0 * C, nw * C, scale, codes);
          for (int64_t w = 0; w < nw; ++w)
            for (int64_t g = 0; g < s.groups; ++g) {
              const uint8_t* src = codes + w * C + g * cig;
              uint8_t* dst = qr + g * plane + (w0 + w) * gm.cpg;
              for (int64_t c = 0; c < cig; ++c) dst[c] = src[c];
            }
        }
      }
    }
    return;
  }
  // Codes per pass of the transposition: long enough that each channel's run of floats is read in
  // runs of 256 floats or more up to 128 channels (short runs of many channels halved the speed).
  constexpr int64_t CHUNK = 32768;
  constexpr int64_t MAX_PIXELS = 1024;
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
        transpose_codes(rows, nc, n, n, dst);
      }
    }
  }
}

// wpk from w [Co][cig][KH][KW]: channel co of the group is lane co % 8 of octet co / 8; the
// reduction byte of tap (kh, kw, ci) is (kh * KW + kw) * cpg + ci, in chunk byte / 8. Per
// channel, the taps are first transposed to [KHW][cpg] int8 codes (transpose_codes, padded
// channels 0), offset by 128 (w + 128 = w ^ 0x80 in two's complement), then copied 8 bytes at a
// time.
static void pack_weight(const Int8Geom& gm, const int8_t* w, uint8_t* wpk) {
  const Adder2dShape& s = gm.s;
  const int64_t KHW = s.kernel_h * s.kernel_w, cig = s.in_channels_per_group;
  const int64_t cog = s.out_channels_per_group, group_bytes = gm.octets * 8 * gm.kq;
  __builtin_memset(wpk, CODE_ZERO, s.groups * group_bytes);
  constexpr int64_t ROW = 4096;  // taps of one channel per pass: [KHW][cpg] codes
  uint8_t row[ROW];
  uint8_t* tap_rows[ROW / 8];
  const int64_t taps_per_pass = ROW / gm.cpg;
  for (int64_t co = 0; co < s.out_channels; ++co) {
    const int64_t g = co / cog, m = co % cog;
    uint8_t* dst = wpk + g * group_bytes + (m / 8) * 8 * gm.kq + (m % 8) * 8;
    if (taps_per_pass == 0) {  // more than ROW channels: byte by byte
      for (int64_t ci = 0; ci < cig; ++ci)
        for (int64_t t = 0; t < KHW; ++t) {
          const int64_t byte = t * gm.cpg + ci;
          dst[(byte / 8) * 64 + byte % 8] =
              static_cast<uint8_t>(static_cast<int>(w[(co * cig + ci) * KHW + t]) + 128);
        }
      continue;
    }
    for (int64_t t0 = 0; t0 < KHW; t0 += taps_per_pass) {
      const int64_t nt = KHW - t0 < taps_per_pass ? KHW - t0 : taps_per_pass;
      if (cig < gm.cpg) __builtin_memset(row, 0, nt * gm.cpg);
      for (int64_t t = 0; t < nt; ++t) tap_rows[t] = row + t * gm.cpg;
      transpose_codes(reinterpret_cast<const uint8_t*>(w + co * cig * KHW + t0), cig, nt, KHW,
                      tap_rows);
      for (int64_t i = 0; i < nt * gm.cpg; ++i) row[i] ^= 0x80;
      // Chunk j of the pass is chunk t0 * cpg / 8 + j of the reduction.
      uint8_t* d = dst + t0 * gm.cpg * 8;
      for (int64_t j = 0; j < nt * gm.cpg / 8; ++j) __builtin_memcpy(d + 64 * j, row + 8 * j, 8);
    }
  }
#if defined(ADDER_INT8_AVX512)
  // B: per octet, vpsadbw against zero sums each channel's chunk bytes into its 64-bit lane.
  int32_t* wsum = reinterpret_cast<int32_t*>(wpk + gm.wsum_offset);
  for (int64_t o = 0; o < s.groups * gm.octets; ++o) {
    const uint8_t* wo = wpk + o * 8 * gm.kq;
    __m512i acc = _mm512_setzero_si512();
    for (int64_t j = 0; j < gm.kq / 8; ++j)
      acc = _mm512_add_epi64(
          acc, _mm512_sad_epu8(_mm512_loadu_si512(wo + 64 * j), _mm512_setzero_si512()));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(wsum + 8 * o), _mm512_cvtepi64_epi32(acc));
  }
#endif
}

// xoff[i] = offset in xq of pixel i's patch (tap (0, 0)) in group g, yoff[i] = offset of its
// output for channel 0 of the layer (n * Co * L + p, or (n * L + p) * Co channels-last); past the
// last pixel, yoff = -1 and xoff repeats the last pixel's. The offsets are stepped pixel by pixel
// from the start of the output row, with the sizes in locals (the stores to xoff and yoff might
// alias gm, which made the compiler reload every size and multiply again per pixel).
static void tile_offsets(const Int8Geom& gm, int64_t g, int64_t q0, int64_t* xoff, int64_t* yoff) {
  const Adder2dShape& s = gm.s;
  const int64_t OH = s.out_h, OW = s.out_w, L = OH * OW, tp = gm.tile_pixels;
  const int64_t last = gm.pixels - q0 < tp ? gm.pixels - q0 : tp;
  const int64_t plane = gm.hp * gm.wp * gm.cpg;
  const int64_t x_col = s.stride_w * gm.cpg, x_row = s.stride_h * gm.wp * gm.cpg;
  const int64_t y_col = gm.channels_last ? s.out_channels : 1;
  const int64_t y_image = s.out_channels * L;  // either layout
  int64_t n = q0 / L, oh = (q0 % L) / OW, ow = (q0 % L) % OW;
  int64_t x = (n * s.groups + g) * plane + oh * x_row + ow * x_col;
  int64_t y = n * y_image + (oh * OW + ow) * y_col;
  for (int64_t i = 0; i < last; ++i) {
    xoff[i] = x;
    yoff[i] = y;
    x += x_col;
    y += y_col;
    if (++ow == OW) {  // next output row: back to its first column
      ow = 0;
      x += x_row - OW * x_col;
      if (++oh == OH) {  // next image
        oh = 0;
        ++n;
        x = (n * s.groups + g) * plane;
        y = n * y_image;
      }
    }
  }
  for (int64_t i = last; i < tp; ++i) {
    xoff[i] = xoff[i - 1];
    yoff[i] = -1;
  }
}

// The patch of one output as the GEMM walks it: kernel rows `row_step` bytes apart in xq, each
// `segs` segments `seg_step` bytes apart (one segment at dilation_w 1), each `chunks` contiguous
// 8-byte chunks. The weights follow in the same order, 64 bytes per chunk.
struct Walk {
  int64_t rows, row_step, segs, seg_step, chunks;
};

static inline Walk make_walk(const Int8Geom& gm) {
  const Adder2dShape& s = gm.s;
  const bool contiguous = s.dilation_w == 1;
  return Walk{s.kernel_h, s.dilation_h * gm.wp * gm.cpg, contiguous ? 1 : s.kernel_w,
              s.dilation_w * gm.cpg, gm.seg_bytes / 8};
}

// The float epilogue of one output, as every copy computes it (a multiply, then an add).
static inline float epilogue1(int32_t sum, float alpha, float beta, bool relu) {
  float v = static_cast<float>(sum) * alpha;
  v = v + beta;
  if (relu) v = v > 0.0f ? v : (v != v ? v : 0.0f);
  return v;
}

// Stores out[c][j] (channel c < nc of the octet, pixel j < 4) at y[c * cs + yoff[j]] (cs: the
// channel stride, gm.y_cstride), skipping pixels past the end.
static inline void store_scattered(const float (*out)[NR], int64_t nc, float* y, int64_t cs,
                                   const int64_t* yoff) {
  for (int64_t c = 0; c < nc; ++c)
    for (int j = 0; j < NR; ++j)
      if (yoff[j] >= 0) y[c * cs + yoff[j]] = out[c][j];
}

#if defined(ADDER_INT8_AVX2)
// Channels-last stores (cs == 1): pixel j's channels f[j] at y + yoff[j], masked to the channels
// that exist, pixels past the end skipped.
static inline void mask_store(float* p, __m256i keep, __m256 v) {
  _mm256_maskstore_ps(p, keep, v);
}
#if defined(ADDER_INT8_AVX512)
static inline void mask_store(float* p, __mmask16 m, __m512 v) {
  _mm512_mask_storeu_ps(p, m, v);
}
static inline void mask_store(float* p, __mmask8 m, __m256 v) {
  _mm256_mask_storeu_ps(p, m, v);
}
#endif
template <typename V, typename M>
static inline void store_pixels(float* y, const int64_t* yoff, M m, const V (&f)[NR]) {
  for (int j = 0; j < NR; ++j)
    if (yoff[j] >= 0) mask_store(y + yoff[j], m, f[j]);
}
#endif

#if defined(ADDER_INT8_AVX512)

// Patch sums of one image. First psum: per padded pixel, the sum of its cpg code bytes (vpsadbw
// against zero sums each 8-byte chunk, 8 chunks per 64 bytes; each pixel adds its cpg / 8 chunk
// sums). Then asum: per output pixel and group, A = the sum of psum over the KH x KW taps of its
// patch, as KH row sums (contiguous, so vectorized, at stride 1).
static void pixel_sums(const Int8Geom& gm, const uint8_t* xq, int32_t* psum, int32_t* asum) {
  const Adder2dShape& s = gm.s;
  const int64_t pixels = s.groups * gm.hp * gm.wp, per = gm.cpg / 8;
  constexpr int64_t BLOCK = 4096;  // chunk sums per pass
  alignas(64) uint16_t cs[BLOCK];
  // Pixels per pass; at least one (a pixel of more than BLOCK chunks is summed in several).
  const int64_t block_pixels = BLOCK / per > 0 ? BLOCK / per : 1;
  for (int64_t p0 = 0; p0 < pixels; p0 += block_pixels) {
    if (per > BLOCK) {
      const uint8_t* src = xq + p0 * gm.cpg;
      __m512i acc = _mm512_setzero_si512();
      for (int64_t j = 0; j < gm.cpg; j += 64) {  // the tail through a mask (zero bytes)
        const int64_t n = gm.cpg - j < 64 ? gm.cpg - j : 64;
        const __mmask64 m = n == 64 ? ~0ULL : (1ULL << n) - 1;
        acc = _mm512_add_epi64(
            acc, _mm512_sad_epu8(_mm512_maskz_loadu_epi8(m, src + j), _mm512_setzero_si512()));
      }
      psum[p0] = static_cast<int32_t>(_mm512_reduce_add_epi64(acc));
      continue;
    }
    const int64_t np = pixels - p0 < block_pixels ? pixels - p0 : block_pixels;
    const uint8_t* src = xq + p0 * gm.cpg;
    const int64_t chunks = np * per;
    int64_t j = 0;
    for (; j + 8 <= chunks; j += 8)
      _mm_store_si128(reinterpret_cast<__m128i*>(cs + j),
                      _mm512_cvtepi64_epi16(_mm512_sad_epu8(_mm512_loadu_si512(src + 8 * j),
                                                            _mm512_setzero_si512())));
    for (; j < chunks; ++j) {
      int t = 0;
      for (int b = 0; b < 8; ++b) t += src[8 * j + b];
      cs[j] = static_cast<uint16_t>(t);
    }
    for (int64_t i = 0; i < np; ++i) {
      int32_t t = 0;
      for (int64_t k = 0; k < per; ++k) t += cs[i * per + k];
      psum[p0 + i] = t;
    }
  }
  const int64_t sh = s.stride_h, sw = s.stride_w, dh = s.dilation_h * gm.wp, dw = s.dilation_w;
  for (int64_t g = 0; g < s.groups; ++g) {
    const int32_t* r = psum + g * gm.hp * gm.wp;
    int32_t* a = asum + g * s.out_h * s.out_w;
    for (int64_t oh = 0; oh < s.out_h; ++oh, a += s.out_w) {
      for (int64_t ow = 0; ow < s.out_w; ++ow) a[ow] = 0;
      for (int64_t kh = 0; kh < s.kernel_h; ++kh)
        for (int64_t kw = 0; kw < s.kernel_w; ++kw) {
          const int32_t* rr = r + oh * sh * gm.wp + kh * dh + kw * dw;
          if (sw == 1)
            for (int64_t ow = 0; ow < s.out_w; ++ow) a[ow] += rr[ow];
          else
            for (int64_t ow = 0; ow < s.out_w; ++ow) a[ow] += rr[ow * sw];
        }
    }
  }
}

// OCT octets (1 or 2; the second's weights 8 kq bytes after the first's) x 4 pixels (x0..x3:
// their patches in xq). MIN_DOT: aJO holds, per int32 lane 2 c + h, the running sum of
// min(a, b) over bytes 4 h .. 4 h + 3 of each chunk, pixel J against channel c of octet O, and
// per pixel and channel S = (A - M) + (B - M); otherwise aJO holds S itself, per 64-bit lane c.
// Then the float epilogue on the pixel's 8 or 16 channels at once; channels-last (cs = 1) stores
// each pixel's channels as they are, else a transposition stores 4 consecutive pixels per channel.
template <int OCT, bool MIN_DOT>
__attribute__((noinline)) static void octets_quad(const uint8_t* w, int64_t kq, const uint8_t* x0,
                                                  const uint8_t* x1, const uint8_t* x2,
                                                  const uint8_t* x3, const Walk& walk,
                                                  const int32_t* asum, const int32_t* wsum,
                                                  const float* alpha, const float* beta, bool relu,
                                                  int64_t nc, float* y, int64_t cs,
                                                  const int64_t* yoff) {
  const __m512i ones = _mm512_set1_epi8(1);
  __m512i a00 = _mm512_setzero_si512(), a10 = a00, a20 = a00, a30 = a00;
  __m512i a01 = a00, a11 = a00, a21 = a00, a31 = a00;
  for (int64_t r = 0; r < walk.rows; ++r) {
    for (int64_t sg = 0; sg < walk.segs; ++sg) {
      const int64_t off = r * walk.row_step + sg * walk.seg_step;
      const uint8_t *p0 = x0 + off, *p1 = x1 + off, *p2 = x2 + off, *p3 = x3 + off;
      for (int64_t c = 0; c < walk.chunks; ++c, w += 64) {
        const __m512i w0 = _mm512_loadu_si512(w);
        const __m512i w1 = OCT == 2 ? _mm512_loadu_si512(w + 8 * kq) : w0;
#define ADDER_MIN_DOT(acc0, acc1, p)                                                   \
  {                                                                                    \
    const __m512i v = _mm512_set1_epi64(*reinterpret_cast<const int64_t*>(p + 8 * c)); \
    if (MIN_DOT) {                                                                     \
      acc0 = _mm512_dpbusd_epi32(acc0, _mm512_min_epu8(v, w0), ones);                  \
      if (OCT == 2) acc1 = _mm512_dpbusd_epi32(acc1, _mm512_min_epu8(v, w1), ones);    \
    } else {                                                                           \
      acc0 = _mm512_add_epi64(acc0, _mm512_sad_epu8(v, w0));                           \
      if (OCT == 2) acc1 = _mm512_add_epi64(acc1, _mm512_sad_epu8(v, w1));             \
    }                                                                                  \
  }
        ADDER_MIN_DOT(a00, a01, p0)
        ADDER_MIN_DOT(a10, a11, p1)
        ADDER_MIN_DOT(a20, a21, p2)
        ADDER_MIN_DOT(a30, a31, p3)
#undef ADDER_MIN_DOT
      }
    }
  }
  // Keeps the accumulators where the loop left them.
  __asm__("" : "+v"(a00), "+v"(a10), "+v"(a20), "+v"(a30));
  __asm__("" : "+v"(a01), "+v"(a11), "+v"(a21), "+v"(a31));
  const int64_t y0 = yoff[0], y3 = yoff[3];  // read once: the stores to y may alias yoff
  if (OCT == 2) {
    // 16 channels per pixel in one vector: M = the even plus the odd lanes of both octets'
    // accumulators, then the epilogue on 16 outputs at once and a 4 x 16 transposition.
    const __m512i even =
        _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    const __m512i odd = _mm512_add_epi32(even, _mm512_set1_epi32(1));
    const __m512i bsum = MIN_DOT ? _mm512_loadu_si512(wsum) : _mm512_setzero_si512();
    const __m512 va = _mm512_loadu_ps(alpha), vb = _mm512_loadu_ps(beta);
    auto finish = [&](__m512i lo, __m512i hi, int32_t a) {
      __m512i sums;
      if (MIN_DOT) {
        const __m512i m = _mm512_add_epi32(_mm512_permutex2var_epi32(lo, even, hi),
                                           _mm512_permutex2var_epi32(lo, odd, hi));
        sums =
            _mm512_add_epi32(_mm512_sub_epi32(_mm512_set1_epi32(a), m), _mm512_sub_epi32(bsum, m));
      } else {  // vpsadbw: each channel's sum in the low half of its 64-bit lane
        sums = _mm512_permutex2var_epi32(lo, even, hi);
      }
      __m512 v = _mm512_mul_ps(_mm512_cvtepi32_ps(sums), va);
      __asm__("" : "+v"(v));  // AVX-512F brings FMA: keep the multiply and the add apart
      v = _mm512_add_ps(v, vb);
      return relu ? _mm512_max_ps(_mm512_setzero_ps(), v) : v;
    };
    const __m512 f0 = finish(a00, a01, asum[0]), f1 = finish(a10, a11, asum[1]);
    const __m512 f2 = finish(a20, a21, asum[2]), f3 = finish(a30, a31, asum[3]);
    if (cs == 1) {
      const __mmask16 m = nc >= 16 ? 0xFFFF : static_cast<__mmask16>((1u << nc) - 1);
      store_pixels(y, yoff, m, {f0, f1, f2, f3});
      return;
    }
    // 128-bit lane l of u[k] holds channel 4 l + k of the 4 pixels.
    const __m512 t0 = _mm512_unpacklo_ps(f0, f1), t1 = _mm512_unpackhi_ps(f0, f1);
    const __m512 t2 = _mm512_unpacklo_ps(f2, f3), t3 = _mm512_unpackhi_ps(f2, f3);
    const __m512 u0 = _mm512_shuffle_ps(t0, t2, 0x44), u1 = _mm512_shuffle_ps(t0, t2, 0xEE);
    const __m512 u2 = _mm512_shuffle_ps(t1, t3, 0x44), u3 = _mm512_shuffle_ps(t1, t3, 0xEE);
    if (nc >= 16 && y3 == y0 + 3) {
      float* p = y + y0;
#define ADDER_STORE_LANES(u, k)                                    \
  _mm_storeu_ps(p + (k) * cs, _mm512_extractf32x4_ps(u, 0));       \
  _mm_storeu_ps(p + (4 + (k)) * cs, _mm512_extractf32x4_ps(u, 1)); \
  _mm_storeu_ps(p + (8 + (k)) * cs, _mm512_extractf32x4_ps(u, 2)); \
  _mm_storeu_ps(p + (12 + (k)) * cs, _mm512_extractf32x4_ps(u, 3));
      ADDER_STORE_LANES(u0, 0)
      ADDER_STORE_LANES(u1, 1)
      ADDER_STORE_LANES(u2, 2)
      ADDER_STORE_LANES(u3, 3)
#undef ADDER_STORE_LANES
      return;
    }
    alignas(16) float out[16][NR];
    const __m512 u[4] = {u0, u1, u2, u3};
    for (int k = 0; k < 4; ++k) {
      _mm_store_ps(out[k], _mm512_extractf32x4_ps(u[k], 0));
      _mm_store_ps(out[4 + k], _mm512_extractf32x4_ps(u[k], 1));
      _mm_store_ps(out[8 + k], _mm512_extractf32x4_ps(u[k], 2));
      _mm_store_ps(out[12 + k], _mm512_extractf32x4_ps(u[k], 3));
    }
    store_scattered(out, nc < 8 ? nc : 8, y, cs, yoff);
    if (nc > 8) store_scattered(out + 8, nc - 8 < 8 ? nc - 8 : 8, y + 8 * cs, cs, yoff);
    return;
  }
  for (int o = 0; o < OCT; ++o) {
    const __m256 va = _mm256_loadu_ps(alpha + 8 * o), vb = _mm256_loadu_ps(beta + 8 * o);
    auto int_sums = [&](__m512i acc, int32_t a) {
      if (!MIN_DOT) return _mm512_cvtepi64_epi32(acc);  // vpsadbw: one sum per 64-bit lane
      // M per channel: the two lanes of each 64-bit lane added, then narrowed to 8 int32.
      const __m256i bsum = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wsum + 8 * o));
      const __m256i m = _mm512_cvtepi64_epi32(_mm512_add_epi64(acc, _mm512_srli_epi64(acc, 32)));
      return _mm256_add_epi32(_mm256_sub_epi32(_mm256_set1_epi32(a), m), _mm256_sub_epi32(bsum, m));
    };
    auto finish = [&](__m512i acc, int32_t a) {
      const __m256i sums = int_sums(acc, a);
      __m256 v = _mm256_mul_ps(_mm256_cvtepi32_ps(sums), va);
      __asm__("" : "+v"(v));  // AVX-512F brings FMA: keep the multiply and the add apart
      v = _mm256_add_ps(v, vb);
      return relu ? _mm256_max_ps(_mm256_setzero_ps(), v) : v;
    };
    const __m256 f0 = finish(o == 0 ? a00 : a01, asum[0]), f1 = finish(o == 0 ? a10 : a11, asum[1]);
    const __m256 f2 = finish(o == 0 ? a20 : a21, asum[2]), f3 = finish(o == 0 ? a30 : a31, asum[3]);
    const int64_t n = nc - 8 * o < 8 ? nc - 8 * o : 8;
    float* yo = y + 8 * o * cs;
    if (cs == 1) {
      const __mmask8 m = static_cast<__mmask8>((1u << n) - 1);
      store_pixels(yo, yoff, m, {f0, f1, f2, f3});
      continue;
    }
    // 4 x 8 transposition: u0 = channels (0 | 4), u1 = (1 | 5), u2 = (2 | 6), u3 = (3 | 7).
    const __m256 t0 = _mm256_unpacklo_ps(f0, f1), t1 = _mm256_unpackhi_ps(f0, f1);
    const __m256 t2 = _mm256_unpacklo_ps(f2, f3), t3 = _mm256_unpackhi_ps(f2, f3);
    const __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xEE);
    const __m256 u2 = _mm256_shuffle_ps(t1, t3, 0x44), u3 = _mm256_shuffle_ps(t1, t3, 0xEE);
    if (n == 8 && y3 == y0 + 3) {
      float* p = yo + y0;
      _mm_storeu_ps(p, _mm256_castps256_ps128(u0));
      _mm_storeu_ps(p + cs, _mm256_castps256_ps128(u1));
      _mm_storeu_ps(p + 2 * cs, _mm256_castps256_ps128(u2));
      _mm_storeu_ps(p + 3 * cs, _mm256_castps256_ps128(u3));
      _mm_storeu_ps(p + 4 * cs, _mm256_extractf128_ps(u0, 1));
      _mm_storeu_ps(p + 5 * cs, _mm256_extractf128_ps(u1, 1));
      _mm_storeu_ps(p + 6 * cs, _mm256_extractf128_ps(u2, 1));
      _mm_storeu_ps(p + 7 * cs, _mm256_extractf128_ps(u3, 1));
    } else {
      alignas(16) float out[8][NR];
      const __m256 u[4] = {u0, u1, u2, u3};
      for (int c = 0; c < 4; ++c) {
        _mm_store_ps(out[c], _mm256_castps256_ps128(u[c]));
        _mm_store_ps(out[c + 4], _mm256_extractf128_ps(u[c], 1));
      }
      store_scattered(out, n, yo, cs, yoff);
    }
  }
}

// forward_tile of the AVX-512 copy: offsets as in the other copies, with asums (min + dot, on
// reductions of INT8_MIN_DOT_MIN_BYTES or more) the patch sums A of the tile's pixels, then the
// octets in pairs over the tile 4 pixels at a time.
static void forward_tile(const Int8Geom& gm, const uint8_t* xq, const int32_t* asums,
                         const uint8_t* wpk, const float* alpha, const float* beta, bool relu,
                         float* y, int64_t g, int64_t q0, uint8_t* scratch) {
  const Adder2dShape& s = gm.s;
  const int64_t tp = gm.tile_pixels;
  int64_t* yoff = reinterpret_cast<int64_t*>(scratch);
  int64_t* xoff = yoff + tp;
  int32_t* asum = reinterpret_cast<int32_t*>(xoff + tp);
  tile_offsets(gm, g, q0, xoff, yoff);
  // asum is [N][G][OH][OW]: pixel q = n L + p of the columns is at (n G + g) L + p.
  const bool min_dot = asums != nullptr;
  if (min_dot) {
    const int64_t L = s.out_h * s.out_w;
    int64_t n = q0 / L, p = q0 % L;
    for (int64_t i = 0; i < tp; ++i) {
      asum[i] = q0 + i < gm.pixels ? asums[(n * s.groups + g) * L + p] : 0;
      if (++p == L) {
        p = 0;
        ++n;
      }
    }
  }
  const int64_t cog = s.out_channels_per_group, co0 = g * cog, cs = gm.y_cstride;
  const Walk walk = make_walk(gm);
  const uint8_t* wg = wpk + g * gm.octets * 8 * gm.kq;
  const int32_t* wsum = reinterpret_cast<const int32_t*>(wpk + gm.wsum_offset) + g * gm.octets * 8;
  // alpha and beta per packed channel, padded channels with any finite value.
  alignas(32) float av[512], bv[512];
  for (int64_t o0 = 0; o0 < gm.octets; o0 += 64) {
    const int64_t no = gm.octets - o0 < 64 ? gm.octets - o0 : 64;
    for (int64_t l = 0; l < 8 * no; ++l) {
      const int64_t m = 8 * o0 + l;
      av[l] = alpha[co0 + (m < cog ? m : 0)];
      bv[l] = beta[co0 + (m < cog ? m : 0)];
    }
    for (int64_t o = o0; o < o0 + no; o += 2) {
      const bool pair = o + 1 < o0 + no;
      const int64_t nc = cog - 8 * o;
      const uint8_t* w = wg + o * 8 * gm.kq;
      float* yo = y + (co0 + 8 * o) * cs;
      const float* ao = av + 8 * (o - o0);
      const float* bo = bv + 8 * (o - o0);
      for (int64_t i = 0; i < gm.tile_pixels; i += NR) {
        if (yoff[i] < 0) break;
        const uint8_t *x0 = xq + xoff[i], *x1 = xq + xoff[i + 1], *x2 = xq + xoff[i + 2],
                      *x3 = xq + xoff[i + 3];
        const auto kernel = min_dot ? (pair ? &octets_quad<2, true> : &octets_quad<1, true>)
                                    : (pair ? &octets_quad<2, false> : &octets_quad<1, false>);
        kernel(w, gm.kq, x0, x1, x2, x3, walk, asum + i, wsum + 8 * o, ao, bo, relu, nc, yo, cs,
               yoff + i);
      }
    }
  }
}

#elif defined(ADDER_INT8_AVX2)

// One octet x 4 pixels (x0..x3: their patches in xq). acc[p][h] holds, per 64-bit lane l, the
// running sum of pixel p against channel 4 h + l: each vpsadbw compares a broadcast 8-byte chunk
// of the pixel with 4 channels' chunks, so no lane ever needs a horizontal sum. Named variables:
// as arrays, GCC kept copying accumulators.
__attribute__((noinline)) static void octet_quad(const uint8_t* w, const uint8_t* x0,
                                                 const uint8_t* x1, const uint8_t* x2,
                                                 const uint8_t* x3, const Walk& walk,
                                                 const __m256 alpha, const __m256 beta, bool relu,
                                                 int64_t nc, float* y, int64_t cs,
                                                 const int64_t* yoff) {
  __m256i a00 = _mm256_setzero_si256(), a01 = a00, a10 = a00, a11 = a00;
  __m256i a20 = a00, a21 = a00, a30 = a00, a31 = a00;
  for (int64_t r = 0; r < walk.rows; ++r) {
    for (int64_t sg = 0; sg < walk.segs; ++sg) {
      const int64_t off = r * walk.row_step + sg * walk.seg_step;
      const uint8_t* p0 = x0 + off;
      const uint8_t* p1 = x1 + off;
      const uint8_t* p2 = x2 + off;
      const uint8_t* p3 = x3 + off;
      for (int64_t c = 0; c < walk.chunks; ++c, w += 64) {
        const __m256i w0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w));
        const __m256i w1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + 32));
        __m256i v;
        v = _mm256_set1_epi64x(*reinterpret_cast<const int64_t*>(p0 + 8 * c));
        a00 = _mm256_add_epi64(a00, _mm256_sad_epu8(v, w0));
        a01 = _mm256_add_epi64(a01, _mm256_sad_epu8(v, w1));
        v = _mm256_set1_epi64x(*reinterpret_cast<const int64_t*>(p1 + 8 * c));
        a10 = _mm256_add_epi64(a10, _mm256_sad_epu8(v, w0));
        a11 = _mm256_add_epi64(a11, _mm256_sad_epu8(v, w1));
        v = _mm256_set1_epi64x(*reinterpret_cast<const int64_t*>(p2 + 8 * c));
        a20 = _mm256_add_epi64(a20, _mm256_sad_epu8(v, w0));
        a21 = _mm256_add_epi64(a21, _mm256_sad_epu8(v, w1));
        v = _mm256_set1_epi64x(*reinterpret_cast<const int64_t*>(p3 + 8 * c));
        a30 = _mm256_add_epi64(a30, _mm256_sad_epu8(v, w0));
        a31 = _mm256_add_epi64(a31, _mm256_sad_epu8(v, w1));
      }
    }
  }
  // Keeps the accumulators where the loop left them (GCC copied some of them every step).
  __asm__("" : "+x"(a00), "+x"(a01), "+x"(a10), "+x"(a11));
  __asm__("" : "+x"(a20), "+x"(a21), "+x"(a30), "+x"(a31));
  // Per pixel, channels 0-3 in the low and 4-7 in the high halves of the 64-bit lanes (sums
  // < 2^31): int32 lanes in channel order 0 4 1 5 2 6 3 7, the order of alpha and beta here.
  auto finish = [&](__m256i lo, __m256i hi) {
    const __m256i sums = _mm256_or_si256(lo, _mm256_slli_epi64(hi, 32));
    __m256 v = _mm256_add_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(sums), alpha), beta);
    return relu ? _mm256_max_ps(_mm256_setzero_ps(), v) : v;
  };
  const __m256 f0 = finish(a00, a01), f1 = finish(a10, a11);
  const __m256 f2 = finish(a20, a21), f3 = finish(a30, a31);
  if (cs == 1) {  // channels-last: each pixel's 8 channels, put back in order, side by side
    const __m256i order = _mm256_setr_epi32(0, 2, 4, 6, 1, 3, 5, 7);
    const __m256i keep = _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(nc)),
                                            _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
    store_pixels(y, yoff, keep,
                 {_mm256_permutevar8x32_ps(f0, order), _mm256_permutevar8x32_ps(f1, order),
                  _mm256_permutevar8x32_ps(f2, order), _mm256_permutevar8x32_ps(f3, order)});
    return;
  }
  // Transpose to 4 consecutive pixels per channel; 128-bit lanes: (0 4 1 5 | 2 6 3 7).
  const __m256 t0 = _mm256_unpacklo_ps(f0, f1), t1 = _mm256_unpackhi_ps(f0, f1);
  const __m256 t2 = _mm256_unpacklo_ps(f2, f3), t3 = _mm256_unpackhi_ps(f2, f3);
  const __m256 u0 =
      _mm256_castpd_ps(_mm256_unpacklo_pd(_mm256_castps_pd(t0), _mm256_castps_pd(t2)));
  const __m256 u1 =
      _mm256_castpd_ps(_mm256_unpackhi_pd(_mm256_castps_pd(t0), _mm256_castps_pd(t2)));
  const __m256 u2 =
      _mm256_castpd_ps(_mm256_unpacklo_pd(_mm256_castps_pd(t1), _mm256_castps_pd(t3)));
  const __m256 u3 =
      _mm256_castpd_ps(_mm256_unpackhi_pd(_mm256_castps_pd(t1), _mm256_castps_pd(t3)));
  // Channels: u0 = (0 | 2), u1 = (4 | 6), u2 = (1 | 3), u3 = (5 | 7).
  if (nc == 8 && yoff[3] == yoff[0] + 3) {
    float* p = y + yoff[0];
    _mm_storeu_ps(p, _mm256_castps256_ps128(u0));
    _mm_storeu_ps(p + cs, _mm256_castps256_ps128(u2));
    _mm_storeu_ps(p + 2 * cs, _mm256_extractf128_ps(u0, 1));
    _mm_storeu_ps(p + 3 * cs, _mm256_extractf128_ps(u2, 1));
    _mm_storeu_ps(p + 4 * cs, _mm256_castps256_ps128(u1));
    _mm_storeu_ps(p + 5 * cs, _mm256_castps256_ps128(u3));
    _mm_storeu_ps(p + 6 * cs, _mm256_extractf128_ps(u1, 1));
    _mm_storeu_ps(p + 7 * cs, _mm256_extractf128_ps(u3, 1));
    return;
  }
  alignas(32) float out[8][NR];
  _mm_store_ps(out[0], _mm256_castps256_ps128(u0));
  _mm_store_ps(out[1], _mm256_castps256_ps128(u2));
  _mm_store_ps(out[2], _mm256_extractf128_ps(u0, 1));
  _mm_store_ps(out[3], _mm256_extractf128_ps(u2, 1));
  _mm_store_ps(out[4], _mm256_castps256_ps128(u1));
  _mm_store_ps(out[5], _mm256_castps256_ps128(u3));
  _mm_store_ps(out[6], _mm256_extractf128_ps(u1, 1));
  _mm_store_ps(out[7], _mm256_extractf128_ps(u3, 1));
  store_scattered(out, nc, y, cs, yoff);
}

static void tile_octets(const Int8Geom& gm, const uint8_t* wg, const uint8_t* xq,
                        const int64_t* xoff, const float* alpha, const float* beta, bool relu,
                        float* y, const int64_t* yoff) {
  const int64_t cog = gm.s.out_channels_per_group, cs = gm.y_cstride;
  const Walk walk = make_walk(gm);
  for (int64_t o = 0; o < gm.octets; ++o) {
    const int64_t nc = cog - 8 * o < 8 ? cog - 8 * o : 8;
    alignas(32) float av[8], bv[8];
    static const int order[8] = {0, 4, 1, 5, 2, 6, 3, 7};
    for (int l = 0; l < 8; ++l) {
      const int c = order[l] < nc ? order[l] : 0;  // padded channels: any finite value
      av[l] = alpha[8 * o + c];
      bv[l] = beta[8 * o + c];
    }
    const __m256 va = _mm256_load_ps(av), vb = _mm256_load_ps(bv);
    const uint8_t* w = wg + o * 8 * gm.kq;
    for (int64_t i = 0; i < gm.tile_pixels; i += NR) {
      if (yoff[i] < 0) break;
      octet_quad(w, xq + xoff[i], xq + xoff[i + 1], xq + xoff[i + 2], xq + xoff[i + 3], walk, va,
                 vb, relu, nc, y + 8 * o * cs, cs, yoff + i);
    }
  }
}

#elif defined(__SSE2__)

// One octet x 2 pixels with SSE2 (16 bytes: 2 channels' chunks per vector, 4 vectors per octet);
// sums[c][j] for channel c, pixel j.
static inline void octet_pair(const uint8_t* w, const uint8_t* x0, const uint8_t* x1,
                              const Walk& walk, int32_t (*sums)[NR], int j) {
  __m128i a00 = _mm_setzero_si128(), a01 = a00, a02 = a00, a03 = a00;
  __m128i a10 = a00, a11 = a00, a12 = a00, a13 = a00;
  for (int64_t r = 0; r < walk.rows; ++r) {
    for (int64_t sg = 0; sg < walk.segs; ++sg) {
      const int64_t off = r * walk.row_step + sg * walk.seg_step;
      const uint8_t* p0 = x0 + off;
      const uint8_t* p1 = x1 + off;
      for (int64_t c = 0; c < walk.chunks; ++c, w += 64) {
        const __m128i v0 = _mm_set1_epi64x(*reinterpret_cast<const int64_t*>(p0 + 8 * c));
        const __m128i v1 = _mm_set1_epi64x(*reinterpret_cast<const int64_t*>(p1 + 8 * c));
        const __m128i* wv = reinterpret_cast<const __m128i*>(w);
        __m128i wk = _mm_loadu_si128(wv);
        a00 = _mm_add_epi64(a00, _mm_sad_epu8(v0, wk));
        a10 = _mm_add_epi64(a10, _mm_sad_epu8(v1, wk));
        wk = _mm_loadu_si128(wv + 1);
        a01 = _mm_add_epi64(a01, _mm_sad_epu8(v0, wk));
        a11 = _mm_add_epi64(a11, _mm_sad_epu8(v1, wk));
        wk = _mm_loadu_si128(wv + 2);
        a02 = _mm_add_epi64(a02, _mm_sad_epu8(v0, wk));
        a12 = _mm_add_epi64(a12, _mm_sad_epu8(v1, wk));
        wk = _mm_loadu_si128(wv + 3);
        a03 = _mm_add_epi64(a03, _mm_sad_epu8(v0, wk));
        a13 = _mm_add_epi64(a13, _mm_sad_epu8(v1, wk));
      }
    }
  }
  const __m128i acc[2][4] = {{a00, a01, a02, a03}, {a10, a11, a12, a13}};
  for (int p = 0; p < 2; ++p)
    for (int h = 0; h < 4; ++h) {
      sums[2 * h][j + p] = _mm_cvtsi128_si32(acc[p][h]);
      sums[2 * h + 1][j + p] = _mm_cvtsi128_si32(_mm_unpackhi_epi64(acc[p][h], acc[p][h]));
    }
}

static void tile_octets(const Int8Geom& gm, const uint8_t* wg, const uint8_t* xq,
                        const int64_t* xoff, const float* alpha, const float* beta, bool relu,
                        float* y, const int64_t* yoff) {
  const int64_t cog = gm.s.out_channels_per_group, cs = gm.y_cstride;
  const Walk walk = make_walk(gm);
  for (int64_t o = 0; o < gm.octets; ++o) {
    const int64_t nc = cog - 8 * o < 8 ? cog - 8 * o : 8;
    const uint8_t* w = wg + o * 8 * gm.kq;
    for (int64_t i = 0; i < gm.tile_pixels; i += NR) {
      if (yoff[i] < 0) break;
      int32_t sums[8][NR];
      octet_pair(w, xq + xoff[i], xq + xoff[i + 1], walk, sums, 0);
      octet_pair(w, xq + xoff[i + 2], xq + xoff[i + 3], walk, sums, 2);
      alignas(16) float out[8][NR];
      for (int64_t c = 0; c < nc; ++c) {
        __m128 v = _mm_cvtepi32_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(sums[c])));
        v = _mm_add_ps(_mm_mul_ps(v, _mm_set1_ps(alpha[8 * o + c])), _mm_set1_ps(beta[8 * o + c]));
        if (relu) v = _mm_max_ps(_mm_setzero_ps(), v);
        _mm_store_ps(out[c], v);
      }
      store_scattered(out, nc, y + 8 * o * cs, cs, yoff + i);
    }
  }
}

#else  // portable scalar copy

static void tile_octets(const Int8Geom& gm, const uint8_t* wg, const uint8_t* xq,
                        const int64_t* xoff, const float* alpha, const float* beta, bool relu,
                        float* y, const int64_t* yoff) {
  const int64_t cog = gm.s.out_channels_per_group, cs = gm.y_cstride;
  const Walk walk = make_walk(gm);
  for (int64_t m = 0; m < cog; ++m) {
    for (int64_t i = 0; i < gm.tile_pixels; ++i) {
      if (yoff[i] < 0) break;
      const uint8_t* w = wg + (m / 8) * 8 * gm.kq + (m % 8) * 8;
      int32_t sum = 0;
      for (int64_t r = 0; r < walk.rows; ++r)
        for (int64_t sg = 0; sg < walk.segs; ++sg) {
          const uint8_t* x = xq + xoff[i] + r * walk.row_step + sg * walk.seg_step;
          for (int64_t c = 0; c < walk.chunks; ++c, x += 8, w += 64)
            for (int b = 0; b < 8; ++b) {
              const int32_t d = static_cast<int32_t>(x[b]) - static_cast<int32_t>(w[b]);
              sum += d < 0 ? -d : d;
            }
        }
      y[m * cs + yoff[i]] = epilogue1(sum, alpha[m], beta[m], relu);
    }
  }
}

#endif

#if !defined(ADDER_INT8_AVX512)
static void forward_tile(const Int8Geom& gm, const uint8_t* xq, const int32_t*, const uint8_t* wpk,
                         const float* alpha, const float* beta, bool relu, float* y, int64_t g,
                         int64_t q0, uint8_t* scratch) {
  int64_t* yoff = reinterpret_cast<int64_t*>(scratch);
  int64_t* xoff = yoff + gm.tile_pixels;
  const int64_t co0 = g * gm.s.out_channels_per_group;
  tile_offsets(gm, g, q0, xoff, yoff);
  tile_octets(gm, wpk + g * gm.octets * 8 * gm.kq, xq, xoff, alpha + co0, beta + co0, relu,
              y + co0 * gm.y_cstride, yoff);
}

#endif

static inline Int8KernelSet make_int8_kernel_set() {
#if defined(ADDER_INT8_AVX512)
  return Int8KernelSet{&quantize_image, &pixel_sums, &pack_weight, &forward_tile};
#else
  return Int8KernelSet{&quantize_image, nullptr, &pack_weight, &forward_tile};
#endif
}

}  // namespace int8
}  // namespace ADDER_CPU_ISA
}  // namespace cpu
}  // namespace addernet
