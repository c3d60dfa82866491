// Runs the adder2d_int8 CUDA kernels (csrc/cuda/adder2d_int8_kernels.cuh, the source nvcc
// compiles) on the CPU under the emulated execution model of cuda_emulation.h, built with
// AddressSanitizer and UndefinedBehaviorSanitizer, and checks every result bitwise against an
// exact reference of the quantized math, with the CPU op's formulas:
//
//   q(v)      = clamp(round_half_even(v / s), -127, 127)   (cpu/adder2d_int8_kernels.h's scalar
//               quantize_code: float32 division, clamp with NaN -> -127, the 1.5 * 2^23 rounding)
//   S[n,co,p] = sum_{ci,kh,kw} |q(Xp) - Wq|                 in int64, then checked < 2^31
//   Y         = float(S) * alpha + beta, each rounded      (then 0 > Y ? 0 : Y with relu)
//
// usage: emulate_adder2d_int8 CASE_FILE      (tests/test_cuda_emulation_int8.py writes it)
// One case per line:
//   name N C H W CO KH KW SH SW PH PW DH DW GROUPS RELU FORCE CAP
// FORCE=1 also runs every tile variant (not only the launcher's choices for 1, 108 and 132 SMs);
// CAP > 0 lowers every grid cap (LaunchLimits) to CAP, which runs the grid-stride loops.
//
// Each case runs twice: "sums" (scale 0.25, inputs on multiples of s/2, so v / s is exact and
// half the codes are ties; alpha = 1, beta = 0: Y is S itself, exact below 2^24) and "affine"
// (scale 0.0371, inputs near the rounding boundaries of v / s, NaN, infinities, -0, subnormals,
// values past the clamp; random alpha and beta; the case's relu). Each variant runs under every
// schedule (threads and blocks forward, reversed, shuffled; shared memory and the code buffers
// poisoned with a different byte each). Checked: no divergent barrier; the code buffers xq and wq
// equal to the reference layout word for word; every output element written exactly once; the
// output bitwise equal across schedules and bitwise equal to the reference. Buffers are allocated
// at their exact size, so ASan reports any out-of-bounds global access.
//
// Prints "FAIL ..." lines and exits 1 on any failure; prints at the end, per variant,
// "COUNT kernel cases picked@1SM picked@108SMs picked@132SMs forced".
//
// Build-time selection (the mutation tests): EMU_VARIANTS, a mask of 1 tiled 128x128, 2 tiled
// 64x64, 4 tiled 32x128, 8 tiled 16x256.
#include "cuda_emulation.h"
// The kernels, after the emulation header that defines the CUDA keywords.
#include "cuda/adder2d_int8_kernels.cuh"

#include <fstream>
#include <map>
#include <sstream>

#ifndef EMU_VARIANTS
#define EMU_VARIANTS 15
#endif

using namespace addernet;
using namespace addernet::cuda;

namespace {

const emu::Schedule kSchedules[] = {
    {"forward", emu::Order::Forward, emu::Order::Forward, 0xFF, 1},
    {"reversed", emu::Order::Reverse, emu::Order::Reverse, 0x7F, 2},
    {"shuffled", emu::Order::Random, emu::Order::Random, 0xA5, 3},
};

struct Spec {
  std::string name;
  int64_t n, c, h, w, co, kh, kw, sh, sw, ph, pw, dh, dw, groups;
  int relu, force;
  int64_t cap;
};

int g_failures = 0;
struct Counts {
  int cases = 0, picked[3] = {0, 0, 0}, forced = 0;
};
constexpr int kSms[3] = {1, 108, 132};
constexpr int kForced = 8;
std::map<std::string, Counts> g_counts;

void fail(const std::string& what) {
  ++g_failures;
  std::printf("FAIL %s\n", what.c_str());
  std::fflush(stdout);
}

// Exact-size device buffer (E[0] allocations are real too: any access is reported).
template <typename E>
struct Buffer {
  std::unique_ptr<E[]> p;
  size_t n;
  explicit Buffer(size_t size) : p(new E[size]), n(size) {}
  E* data() { return p.get(); }
};

Adder2dShape shape_of(const Spec& c) {
  Adder2dShape s;
  s.batch = c.n;
  s.in_channels = c.c;
  s.in_h = c.h;
  s.in_w = c.w;
  s.out_channels = c.co;
  s.kernel_h = c.kh;
  s.kernel_w = c.kw;
  s.stride_h = c.sh;
  s.stride_w = c.sw;
  s.pad_h = c.ph;
  s.pad_w = c.pw;
  s.dilation_h = c.dh;
  s.dilation_w = c.dw;
  s.groups = c.groups;
  s.out_h = adder2d_out_size(c.h, c.kh, c.sh, c.ph, c.dh);
  s.out_w = adder2d_out_size(c.w, c.kw, c.sw, c.pw, c.dw);
  s.in_channels_per_group = c.c / c.groups;
  s.out_channels_per_group = c.co / c.groups;
  s.taps = s.in_channels_per_group * c.kh * c.kw;
  return s;
}

// ---- the reference -------------------------------------------------------------------------------

// The CPU op's scalar code (cpu/adder2d_int8_kernels.h, quantize_code), as a signed code.
int cpu_code(float v, float scale) {
  volatile float t = v / scale;  // volatile: one float32 division, rounded, as on the CPU
  float u = t;
  u = u >= -127.0f ? u : -127.0f;
  u = u <= 127.0f ? u : 127.0f;
  volatile float r = u + 12582912.0f;
  return int(r - 12582912.0f);
}

float cpu_output(int64_t sum, float alpha, float beta, bool relu) {
  volatile float m = float(sum) * alpha;  // rounded before the add: no FMA
  float v = m + beta;
  if (relu) v = 0.0f > v ? 0.0f : v;
  return v;
}

struct Data {
  Adder2dShape s;
  Adder2dInt8Geom q;
  float scale;
  Buffer<emu::F32> x;
  Buffer<int8_t> w;
  Buffer<float> alpha, beta;
  std::vector<int> xcodes;       // q(x), NCHW
  std::vector<int64_t> sums;     // S, NCHW
  std::vector<float> y;          // the reference output
  std::vector<uint32_t> xq, wq;  // the reference code buffers

  Data(const Spec& c, bool affine, uint32_t seed)
      : s(shape_of(c)),
        q(adder2d_int8_geom(s)),
        scale(affine ? 0.0371f : 0.25f),
        x(size_t(s.batch * s.in_channels * s.in_h * s.in_w)),
        w(size_t(s.out_channels * s.taps)),
        alpha(size_t(s.out_channels)),
        beta(size_t(s.out_channels)) {
    std::mt19937_64 rng(seed);
    std::uniform_int_distribution<int> code(-128, 127), half_steps(-600, 600), kind(0, 15);
    std::uniform_real_distribution<float> wide(-6.0f, 6.0f), a(-0.1f, 0.1f), b(-3.0f, 3.0f);
    for (size_t i = 0; i < x.n; ++i) {
      float v;
      if (!affine) {
        v = float(half_steps(rng)) * 0.125f;  // v / 0.25 = k / 2: a tie when k is odd
      } else {
        const int k = kind(rng);
        if (k == 0) {
          v = NAN;
        } else if (k == 1) {
          v = (i % 2 ? 1.0f : -1.0f) * INFINITY;
        } else if (k == 2) {
          v = (i % 2) ? -0.0f : 1e-40f;
        } else if (k < 9) {  // (m + 1/2) * s rounded: v / s lands next to, or on, a tie
          v = (float(half_steps(rng) / 4) + 0.5f) * scale;
        } else {
          v = wide(rng);
        }
      }
      x.data()[i] = emu::F32(v);
    }
    for (size_t i = 0; i < w.n; ++i) w.data()[i] = int8_t(code(rng));
    for (size_t i = 0; i < alpha.n; ++i) {
      alpha.data()[i] = affine ? a(rng) : 1.0f;
      beta.data()[i] = affine ? b(rng) : 0.0f;
    }
    reference(affine && c.relu);
  }

  void reference(bool relu) {
    const int64_t cig = s.in_channels_per_group, cog = s.out_channels_per_group;
    const int64_t HW = s.in_h * s.in_w, KK = s.kernel_h * s.kernel_w;
    xcodes.resize(x.n);
    for (size_t i = 0; i < x.n; ++i) xcodes[i] = cpu_code(float(x.data()[i]), scale);
    // The code buffers in the layout of adder2d_int8_kernels.cuh.
    xq.assign(size_t(s.batch * s.groups * HW * q.cw), 0u);
    for (int64_t n = 0; n < s.batch; ++n)
      for (int64_t g = 0; g < s.groups; ++g)
        for (int64_t p = 0; p < HW; ++p)
          for (int64_t ci = 0; ci < q.cw * 4; ++ci) {
            const uint32_t u =
                ci < cig
                    ? uint32_t(xcodes[size_t((n * s.in_channels + g * cig + ci) * HW + p)] + 128)
                    : 128u;
            xq[size_t(((n * s.groups + g) * HW + p) * q.cw + ci / 4)] |= u << (8 * (ci % 4));
          }
    wq.assign(size_t(s.out_channels * q.kwords), 0u);
    for (int64_t co = 0; co < s.out_channels; ++co)
      for (int64_t k = 0; k < KK; ++k)
        for (int64_t ci = 0; ci < q.cw * 4; ++ci) {
          const uint32_t u =
              ci < cig ? uint32_t(int(w.data()[(co * cig + ci) * KK + k]) + 128) : 128u;
          const int64_t g = co / cog, m = co % cog, word = k * q.cw + ci / 4;
          wq[size_t((g * q.kwords + word) * cog + m)] |= u << (8 * (ci % 4));
        }
    // S and Y, straight from the definition.
    sums.clear();
    y.clear();
    for (int64_t n = 0; n < s.batch; ++n)
      for (int64_t co = 0; co < s.out_channels; ++co)
        for (int64_t oh = 0; oh < s.out_h; ++oh)
          for (int64_t ow = 0; ow < s.out_w; ++ow) {
            int64_t sum = 0;
            for (int64_t ci = 0; ci < cig; ++ci)
              for (int64_t kh = 0; kh < s.kernel_h; ++kh)
                for (int64_t kw = 0; kw < s.kernel_w; ++kw) {
                  const int64_t ih = adder2d_in_index(oh, kh, s.stride_h, s.pad_h, s.dilation_h);
                  const int64_t iw = adder2d_in_index(ow, kw, s.stride_w, s.pad_w, s.dilation_w);
                  const int64_t c = co / cog * cig + ci;
                  const bool in = ih >= 0 && ih < s.in_h && iw >= 0 && iw < s.in_w;
                  const int xc =
                      in ? xcodes[size_t((n * s.in_channels + c) * HW + ih * s.in_w + iw)] : 0;
                  const int wc = w.data()[(co * cig + ci) * KK + kh * s.kernel_w + kw];
                  sum += std::abs(xc - wc);
                }
            if (sum > INT32_MAX) {
              std::fprintf(stderr, "reference sum %lld past int32\n", (long long)sum);
              std::abort();
            }
            sums.push_back(sum);
            y.push_back(cpu_output(sum, alpha.data()[co], beta.data()[co], relu));
          }
  }
};

// ---- running the op under every schedule -------------------------------------------------------

template <typename Tile>
std::string launch_tiled(const std::string& name, const Data& d, const uint32_t* xq,
                         const uint32_t* wq, bool relu, emu::F32* y, const Int8Launch& c,
                         const emu::Schedule& sched) {
  return emu::Device::get().launch(name, dim3(unsigned(c.grid_x), unsigned(c.grid_y)),
                                   dim3(kThreads), sched, [&] {
                                     adder2d_int8_forward_tiled<emu::F32, Tile>(
                                         xq, wq, d.alpha.p.get(), d.beta.p.get(), relu, y, d.q);
                                   });
}

std::string launch_forward(const Data& d, const uint32_t* xq, const uint32_t* wq, bool relu,
                           emu::F32* y, const Int8Launch& c, const emu::Schedule& sched) {
  const std::string name = int8_variant_name(c.variant);
  switch (c.variant) {
    case Int8Variant::Large:
      if constexpr ((EMU_VARIANTS & 1) != 0)
        return launch_tiled<Int8TileLarge>(name, d, xq, wq, relu, y, c, sched);
      break;
    case Int8Variant::Medium:
      if constexpr ((EMU_VARIANTS & 2) != 0)
        return launch_tiled<Int8TileMedium>(name, d, xq, wq, relu, y, c, sched);
      break;
    case Int8Variant::Small:
      if constexpr ((EMU_VARIANTS & 4) != 0)
        return launch_tiled<Int8TileSmall>(name, d, xq, wq, relu, y, c, sched);
      break;
    case Int8Variant::Narrow:
      if constexpr ((EMU_VARIANTS & 8) != 0)
        return launch_tiled<Int8TileNarrow>(name, d, xq, wq, relu, y, c, sched);
      break;
  }
  return "variant " + name + " is not compiled into this build";
}

constexpr int variant_bit(Int8Variant v) {
  return v == Int8Variant::Large    ? 1
         : v == Int8Variant::Medium ? 2
         : v == Int8Variant::Small  ? 4
                                    : 8;
}

LaunchLimits limits(const Spec& c, int sms) {
  LaunchLimits lim;
  lim.sm_count = sms;
  if (c.cap > 0) lim.max_blocks_1d = lim.max_grid_y = lim.max_sum_blocks = c.cap;
  return lim;
}

// First index where two word buffers differ, or -1.
int64_t first_difference(const uint32_t* got, const std::vector<uint32_t>& want) {
  for (size_t i = 0; i < want.size(); ++i)
    if (got[i] != want[i]) return int64_t(i);
  return -1;
}

// One variant under every schedule; returns nothing, reports failures.
void check_variant(const std::string& label, const Data& d, const Int8Launch& c, bool relu) {
  const size_t out_size = d.y.size();
  std::vector<uint32_t> first;
  for (const emu::Schedule& sched : kSchedules) {
    const std::string where = label + " schedule=" + sched.name;
    Buffer<uint32_t> xq(size_t(c.quantize_total)), wq(size_t(c.pack_total));
    std::memset(xq.data(), sched.poison, xq.n * 4);
    std::memset(wq.data(), sched.poison, wq.n * 4);
    Buffer<emu::F32> y(out_size);
    for (size_t i = 0; i < out_size; ++i) y.data()[i] = emu::F32(NAN);
    emu::WriteCounter wc;
    wc.begin = reinterpret_cast<const char*>(y.data());
    wc.end = wc.begin + out_size * sizeof(emu::F32);
    wc.elem = sizeof(emu::F32);
    wc.counts.assign(out_size, 0);
    std::string err = emu::Device::get().launch(
        "int8_quantize", dim3(unsigned(c.quantize_blocks)), dim3(kThreads), sched, [&] {
          adder2d_int8_quantize<emu::F32>(d.x.p.get(), d.scale, xq.data(), d.q, c.quantize_total);
        });
    if (err.empty())
      err = emu::Device::get().launch(
          "int8_pack_weight", dim3(unsigned(c.pack_blocks)), dim3(kThreads), sched,
          [&] { adder2d_int8_pack_weight(d.w.p.get(), wq.data(), d.q, c.pack_total); });
    if (!err.empty()) {
      fail(where + ": " + err);
      return;
    }
    const int64_t bad_x = first_difference(xq.data(), d.xq),
                  bad_w = first_difference(wq.data(), d.wq);
    if (bad_x >= 0 || bad_w >= 0) {
      char msg[200];
      if (bad_x >= 0)
        std::snprintf(msg, sizeof msg, ": input code word %lld is %08x, reference %08x",
                      (long long)bad_x, xq.data()[bad_x], d.xq[size_t(bad_x)]);
      else
        std::snprintf(msg, sizeof msg, ": weight code word %lld is %08x, reference %08x",
                      (long long)bad_w, wq.data()[bad_w], d.wq[size_t(bad_w)]);
      fail(where + msg);
      return;
    }
    emu::g_writes = &wc;
    err = launch_forward(d, xq.data(), wq.data(), relu, y.data(), c, sched);
    emu::g_writes = nullptr;
    if (!err.empty()) {
      fail(where + ": " + err);
      return;
    }
    for (size_t i = 0; i < out_size; ++i) {
      if (wc.counts[i] != 1) {
        fail(where + ": output element " + std::to_string(i) + " written " +
             std::to_string(wc.counts[i]) + " times (expected exactly once)");
        return;
      }
    }
    std::vector<uint32_t> bits(out_size);
    for (size_t i = 0; i < out_size; ++i) bits[i] = emu::f32_bits(float(y.data()[i]));
    if (first.empty()) {
      first = bits;
      for (size_t i = 0; i < out_size; ++i) {
        if (bits[i] != emu::f32_bits(d.y[i])) {
          char msg[256];
          std::snprintf(msg, sizeof msg,
                        ": element %zu is %.9g, reference %.9g (S = %lld): not bitwise equal", i,
                        double(float(y.data()[i])), double(d.y[i]), (long long)d.sums[i]);
          fail(where + msg);
          return;
        }
      }
    } else if (bits != first) {
      size_t i = 0;
      while (bits[i] == first[i]) ++i;
      fail(where + ": output differs from schedule " + kSchedules[0].name + " at element " +
           std::to_string(i) + " (a race on shared or global memory)");
      return;
    }
  }
}

void run_case(const Spec& c) {
  uint32_t seed = 0;
  for (char ch : c.name) seed = seed * 131 + uint8_t(ch);
  const Adder2dShape s = shape_of(c);
  const Adder2dInt8Geom q = adder2d_int8_geom(s);
  std::map<Int8Variant, int> variants;  // variant -> how: bit i = picked at kSms[i], kForced
  for (int i = 0; i < 3; ++i)
    variants[adder2d_int8_launch(q, limits(c, kSms[i])).variant] |= 1 << i;
  if (c.force)
    for (Int8Variant v :
         {Int8Variant::Large, Int8Variant::Medium, Int8Variant::Small, Int8Variant::Narrow})
      variants.emplace(v, kForced);
  const bool empty = s.batch * s.out_channels * s.out_h * s.out_w == 0;
  for (bool affine : {false, true}) {
    const Data d(c, affine, seed + (affine ? 1 : 0));
    for (const auto& [v, how] : variants) {
      if (!(EMU_VARIANTS & variant_bit(v))) continue;
      const Int8Launch cfg = adder2d_int8_launch_variant(q, v, limits(c, 1));
      const std::string label = c.name + (affine ? " affine " : " sums ") + int8_variant_name(v) +
                                " grid=" + std::to_string(cfg.grid_x) + "x" +
                                std::to_string(cfg.grid_y);
      if (!empty) check_variant(label, d, cfg, affine && c.relu);  // the entry returns before
      if (affine) {                                                // launching when empty
        Counts& n = g_counts[int8_variant_name(v)];
        ++n.cases;
        for (int i = 0; i < 3; ++i) n.picked[i] += (how >> i) & 1;
        n.forced += (how & kForced) ? 1 : 0;
      }
    }
  }
}

bool parse(const std::string& line, Spec& c) {
  std::istringstream in(line);
  return bool(in >> c.name >> c.n >> c.c >> c.h >> c.w >> c.co >> c.kh >> c.kw >> c.sh >> c.sw >>
              c.ph >> c.pw >> c.dh >> c.dw >> c.groups >> c.relu >> c.force >> c.cap);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s CASE_FILE\n", argv[0]);
    return 2;
  }
  std::ifstream file(argv[1]);
  if (!file) {
    std::fprintf(stderr, "cannot read %s\n", argv[1]);
    return 2;
  }
  int cases = 0;
  for (std::string line; std::getline(file, line);) {
    if (line.empty() || line[0] == '#') continue;
    Spec c;
    if (!parse(line, c)) {
      std::fprintf(stderr, "bad case line: %s\n", line.c_str());
      return 2;
    }
    // Printed first, so that a sanitizer report that ends the process names its case.
    std::fprintf(stderr, "case %s\n", line.c_str());
    const auto start = std::chrono::steady_clock::now();
    run_case(c);
    ++cases;
    std::printf("TIME %s %.2f s\n", c.name.c_str(),
                std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  }
  for (const auto& [kernel, n] : g_counts)
    std::printf("COUNT %s %d %d %d %d %d\n", kernel.c_str(), n.cases, n.picked[0], n.picked[1],
                n.picked[2], n.forced);
  std::printf("DONE cases=%d failures=%d shared_arrays=%zu\n", cases, g_failures,
              emu::Device::get().shared_arrays().size());
  return g_failures ? 1 : 0;
}
