// Runs the adder2d CUDA kernels (csrc/cuda/*_kernels.cuh, the source nvcc compiles) on the CPU
// under the emulated execution model of cuda_emulation.h, built with AddressSanitizer and
// UndefinedBehaviorSanitizer, and checks every result.
//
// usage: emulate_adder2d CASE_FILE      (tests/test_cuda_emulation.py writes it from the shared
//                                        case table tests/adder2d_cases.py)
// One case per line:
//   name N C H W CO KH KW SH SW PH PW DH DW GROUPS BIAS DTYPES FORCE CAP OPS [OFFSET]
// DTYPES is a comma list of f32,f64,f16,bf16; FORCE=1 also runs every forward and input-gradient
// variant compiled for the dtype (not only the launcher's choices for 1, 108 and 132 SMs);
// CAP > 0 lowers every grid cap (LaunchLimits) to CAP, which runs the grid-stride and split loops;
// OPS is a comma list of fwd,igrad,wgrad. Values are uniform in [-2, 2]; OFFSET != 0 (default 0) gives X and W that
// share an offset instead, as in trained networks: X in OFFSET +- 0.5, W in OFFSET +- 0.2.
//
// For each case and dtype: the forward (each variant), the input gradient (each variant, both
// modes) and the weight gradient (one split or several, then the split sum), each under every
// schedule (threads and blocks forward, reversed, shuffled; shared memory poisoned with a
// different byte each).
// Checked: no divergent barrier; every output element written exactly once (outputs pre-filled
// with NaN, writes counted); bitwise equal outputs across schedules; and the error against a
// float64 reference computed here, within tol * bound + unit * |ref|, where bound is the sum of
// |terms| bound of tests/test_adder2d_cuda.py and unit the output dtype's unit roundoff; the
// weight gradient within the decomposition's elementwise bound (adder2d_weight_grad_kernels.cuh)
// for the launch's steps per split and splits. Buffers are allocated at their exact size, so ASan
// reports any out-of-bounds global access.
//
// Prints "FAIL ..." lines and exits 1 on any failure; per weight gradient run
// "WGRAD case dtype tiles splits chunk max_err/bound"; at the end, per kernel variant and dtype,
// "COUNT kernel dtype cases picked@1SM picked@108SMs picked@132SMs forced".
//
// Build-time selection (the mutation test rebuilds one kernel in one dtype): EMU_KERNELS, a mask
// of 1 direct, 2 tiled 128x128, 4 tiled 64x64, 8 tiled 32x128, 16 input-gradient gather,
// 32 weight grad, 64 input-gradient tiled, 128 tiled 16x256;
// EMU_DTYPES, a mask of 1 f32, 2 f64, 4 f16, 8 bf16.
#include "cuda_emulation.h"
// The kernels, after the emulation header that defines the CUDA keywords.
#include "cuda/adder2d_forward_kernels.cuh"
#include "cuda/adder2d_input_grad_kernels.cuh"
#include "cuda/adder2d_weight_grad_kernels.cuh"

#include <fstream>
#include <limits>
#include <map>
#include <set>
#include <sstream>

#ifndef EMU_KERNELS
#define EMU_KERNELS 255
#endif
#ifndef EMU_DTYPES
#define EMU_DTYPES 15
#endif

namespace addernet {
namespace cuda {
template <>
struct AccType<emu::F64> {
  using type = double;
};
}  // namespace cuda
}  // namespace addernet

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
  int bias, force;
  std::vector<std::string> dtypes;
  int64_t cap;
  std::set<std::string> ops;
  double offset = 0;  // != 0: X and W share this offset
};

int g_failures = 0;
// kernel -> dtype -> cases: in all, picked by the launcher at 1, 108, 132 SMs, forced
struct Counts {
  int cases = 0, picked[3] = {0, 0, 0}, forced = 0;
};
constexpr int kSms[3] = {1, 108, 132};
constexpr int kAllSms = 7, kForced = 8;
std::map<std::string, std::map<std::string, Counts>> g_counts;

void fail(const std::string& what) {
  ++g_failures;
  std::printf("FAIL %s\n", what.c_str());
  std::fflush(stdout);
}

// Exact-size device buffer of elements E (E[0] allocations are real too: any access is reported).
template <typename E>
struct Buffer {
  std::unique_ptr<E[]> p;
  size_t n;
  explicit Buffer(size_t size) : p(new E[size]), n(size) {}
  E* data() { return p.get(); }
};

template <typename T>
struct Dtype;
template <>
struct Dtype<emu::F32> {
  static constexpr const char* name = "f32";
  static constexpr int bit = 1;
  static constexpr double tol = 2e-6, unit = 0;
  static constexpr double roundoff = 0x1p-24, acc_roundoff = 0x1p-24;
};
template <>
struct Dtype<emu::F64> {
  static constexpr const char* name = "f64";
  static constexpr int bit = 2;
  static constexpr double tol = 1e-13, unit = 0;
  static constexpr double roundoff = 0x1p-53, acc_roundoff = 0x1p-53;
};
template <>
struct Dtype<emu::Half> {
  static constexpr const char* name = "f16";
  static constexpr int bit = 4;
  static constexpr double tol = 2e-6, unit = 1.0 / 2048;
  static constexpr double roundoff = 0x1p-11, acc_roundoff = 0x1p-24;
};
template <>
struct Dtype<emu::BFloat16> {
  static constexpr const char* name = "bf16";
  static constexpr int bit = 8;
  static constexpr double tol = 2e-6, unit = 1.0 / 256;
  static constexpr double roundoff = 0x1p-8, acc_roundoff = 0x1p-24;
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

// Values of one case in dtype T, with their float64 copies for the reference.
template <typename T>
struct Data {
  using A = typename AccType<T>::type;
  Adder2dShape s;
  Adder2dGeom g;
  std::vector<double> x, w, b, dy;
  Buffer<T> dx, dw, dwt, db, ddy;  // device copies; dwt: weight permuted to [KH, KW, C/g, Co]
  double amax_x = 0, amax_w = 0, amax_b = 0, amax_dy = 0;

  Data(const Spec& c, uint32_t seed)
      : s(shape_of(c)),
        g(adder2d_geom(s)),
        dx(size_t(s.batch * s.in_channels * s.in_h * s.in_w)),
        dw(size_t(s.out_channels * s.taps)),
        dwt(size_t(s.out_channels * s.taps)),
        db(size_t(c.bias ? s.out_channels : 0)),
        ddy(size_t(s.batch * s.out_channels * s.out_h * s.out_w)) {
    std::mt19937_64 rng(seed);
    std::uniform_real_distribution<double> u(-2.0, 2.0);
    const double off = c.offset;
    fill(x, dx, rng, u, amax_x, off, off ? 0.25 : 1.0);
    fill(w, dw, rng, u, amax_w, off, off ? 0.1 : 1.0);
    fill(b, db, rng, u, amax_b);
    fill(dy, ddy, rng, u, amax_dy);
    const int64_t cig = s.in_channels_per_group, kk = s.kernel_h * s.kernel_w;
    for (int64_t co = 0; co < s.out_channels; ++co)
      for (int64_t ci = 0; ci < cig; ++ci)
        for (int64_t k = 0; k < kk; ++k)
          dwt.data()[(k * cig + ci) * s.out_channels + co] = dw.data()[(co * cig + ci) * kk + k];
  }

  // offset + scale * dist, rounded to T
  template <typename R, typename D>
  static void fill(std::vector<double>& host, Buffer<T>& dev, R& rng, D& dist, double& amax,
                   double offset = 0, double scale = 1) {
    host.resize(dev.n);
    for (size_t i = 0; i < dev.n; ++i) {
      dev.data()[i] = T(A(offset + scale * dist(rng)));
      host[i] = double(A(dev.data()[i]));
      amax = std::max(amax, std::fabs(host[i]));
    }
  }
};

// ---- float64 references ------------------------------------------------------------------------

std::vector<double> ref_forward(const Adder2dShape& s, const std::vector<double>& x,
                                const std::vector<double>& w, const std::vector<double>& b) {
  std::vector<double> y(size_t(s.batch * s.out_channels * s.out_h * s.out_w));
  const int64_t cig = s.in_channels_per_group, cog = s.out_channels_per_group;
  size_t i = 0;
  for (int64_t n = 0; n < s.batch; ++n)
    for (int64_t co = 0; co < s.out_channels; ++co)
      for (int64_t oh = 0; oh < s.out_h; ++oh)
        for (int64_t ow = 0; ow < s.out_w; ++ow) {
          double acc = 0;
          for (int64_t ci = 0; ci < cig; ++ci)
            for (int64_t kh = 0; kh < s.kernel_h; ++kh)
              for (int64_t kw = 0; kw < s.kernel_w; ++kw) {
                const int64_t ih = adder2d_in_index(oh, kh, s.stride_h, s.pad_h, s.dilation_h);
                const int64_t iw = adder2d_in_index(ow, kw, s.stride_w, s.pad_w, s.dilation_w);
                const int64_t c = co / cog * cig + ci;
                const bool in = ih >= 0 && ih < s.in_h && iw >= 0 && iw < s.in_w;
                const double xv =
                    in ? x[size_t(((n * s.in_channels + c) * s.in_h + ih) * s.in_w + iw)] : 0.0;
                acc += std::fabs(xv -
                                 w[size_t(((co * cig + ci) * s.kernel_h + kh) * s.kernel_w + kw)]);
              }
          y[i++] = (b.empty() ? 0.0 : b[size_t(co)]) - acc;
        }
  return y;
}

std::vector<double> ref_input_grad(const Adder2dShape& s, const std::vector<double>& dy,
                                   const std::vector<double>& x, const std::vector<double>& w,
                                   bool sign) {
  std::vector<double> gx(x.size());
  const int64_t cig = s.in_channels_per_group, cog = s.out_channels_per_group;
  size_t i = 0;
  for (int64_t n = 0; n < s.batch; ++n)
    for (int64_t c = 0; c < s.in_channels; ++c)
      for (int64_t ih = 0; ih < s.in_h; ++ih)
        for (int64_t iw = 0; iw < s.in_w; ++iw, ++i) {
          const int64_t grp = c / cig, ci = c % cig;
          double acc = 0;
          for (int64_t kh = 0; kh < s.kernel_h; ++kh)
            for (int64_t kw = 0; kw < s.kernel_w; ++kw) {
              const int64_t oh =
                  adder2d_out_index(ih, kh, s.stride_h, s.pad_h, s.dilation_h, s.out_h);
              const int64_t ow =
                  adder2d_out_index(iw, kw, s.stride_w, s.pad_w, s.dilation_w, s.out_w);
              if (oh < 0 || ow < 0) continue;
              for (int64_t co = grp * cog; co < (grp + 1) * cog; ++co) {
                const double z =
                    w[size_t(((co * cig + ci) * s.kernel_h + kh) * s.kernel_w + kw)] - x[i];
                const double ht =
                    sign ? double((z > 0) - (z < 0)) : std::min(1.0, std::max(-1.0, z));
                acc += dy[size_t(((n * s.out_channels + co) * s.out_h + oh) * s.out_w + ow)] * ht;
              }
            }
          gx[i] = acc;
        }
  return gx;
}

// dW, and in `terms` the elementwise scale of the decomposition's rounding error
// (adder2d_weight_grad_kernels.cuh): sum_p |dY| (|Xp - W| + 2 |W - c|), with c the mean of W over
// the kernel's 64-channel tile holding co (WG_BM), per tap.
std::vector<double> ref_weight_grad(const Adder2dShape& s, const std::vector<double>& dy,
                                    const std::vector<double>& x, const std::vector<double>& w,
                                    std::vector<double>& terms) {
  std::vector<double> gw(w.size());
  terms.assign(w.size(), 0.0);
  const int64_t cig = s.in_channels_per_group, cog = s.out_channels_per_group;
  size_t i = 0;
  for (int64_t co = 0; co < s.out_channels; ++co)
    for (int64_t ci = 0; ci < cig; ++ci)
      for (int64_t kh = 0; kh < s.kernel_h; ++kh)
        for (int64_t kw = 0; kw < s.kernel_w; ++kw, ++i) {
          const int64_t c = co / cog * cig + ci;
          const int64_t grp = co / cog, m0 = (co % cog) / WG_BM * WG_BM;
          const int64_t m1 = std::min<int64_t>(m0 + WG_BM, cog);
          double centre = 0;
          for (int64_t m = m0; m < m1; ++m)
            centre += w[size_t((grp * cog + m) * s.taps) + i % size_t(s.taps)];
          centre /= double(m1 - m0);
          long double acc = 0;  // the float64 weight gradient's bound is below double's own error
          double abs_diff = 0, abs_dy = 0;
          for (int64_t n = 0; n < s.batch; ++n)
            for (int64_t oh = 0; oh < s.out_h; ++oh)
              for (int64_t ow = 0; ow < s.out_w; ++ow) {
                const int64_t ih = adder2d_in_index(oh, kh, s.stride_h, s.pad_h, s.dilation_h);
                const int64_t iw = adder2d_in_index(ow, kw, s.stride_w, s.pad_w, s.dilation_w);
                const bool in = ih >= 0 && ih < s.in_h && iw >= 0 && iw < s.in_w;
                const double xv =
                    in ? x[size_t(((n * s.in_channels + c) * s.in_h + ih) * s.in_w + iw)] : 0.0;
                const double d =
                    dy[size_t(((n * s.out_channels + co) * s.out_h + oh) * s.out_w + ow)];
                acc += d * (xv - w[i]);
                abs_diff += std::fabs(d) * std::fabs(xv - w[i]);
                abs_dy += std::fabs(d);
              }
          gw[i] = double(acc);
          terms[i] = abs_diff + 2 * std::fabs(w[i] - centre) * abs_dy;
        }
  return gw;
}

// ---- running one op under every schedule --------------------------------------------------------

// One emulated launch of an op (one or two kernels) writing `out`; returns "" or an error.
template <typename T>
using OpRun = std::function<std::string(T* out, const emu::Schedule& sched)>;

// The error allowed against ref: tol * bound + unit * |ref| (see Dtype), or allowed[i] if given.
// Returns the largest error / allowed error (0 after a failure).
template <typename T>
double check_op(const std::string& label, size_t out_size, const OpRun<T>& run,
                const std::vector<double>& ref, double bound,
                const std::vector<double>* allowed_at = nullptr) {
  using A = typename AccType<T>::type;
  std::vector<std::vector<unsigned char>> results;
  double ratio = 0;
  for (const emu::Schedule& sched : kSchedules) {
    Buffer<T> out(out_size);
    for (size_t i = 0; i < out_size; ++i) out.data()[i] = T(A(NAN));
    emu::WriteCounter wc;
    wc.begin = reinterpret_cast<const char*>(out.data());
    wc.end = wc.begin + out_size * sizeof(T);
    wc.elem = sizeof(T);
    wc.counts.assign(out_size, 0);
    emu::g_writes = &wc;
    const std::string err = run(out.data(), sched);
    emu::g_writes = nullptr;
    const std::string where = label + " schedule=" + sched.name;
    if (!err.empty()) {
      fail(where + ": " + err);
      return 0;
    }
    for (size_t i = 0; i < out_size; ++i) {
      if (wc.counts[i] != 1) {
        fail(where + ": output element " + std::to_string(i) + " written " +
             std::to_string(wc.counts[i]) + " times (expected exactly once)");
        return 0;
      }
    }
    std::vector<unsigned char> bytes(out_size * sizeof(T));
    if (out_size) std::memcpy(bytes.data(), out.data(), bytes.size());
    if (!results.empty() && bytes != results[0]) {
      size_t first = 0;
      while (std::memcmp(&bytes[first * sizeof(T)], &results[0][first * sizeof(T)], sizeof(T)) == 0)
        ++first;
      fail(where + ": output differs from schedule " + kSchedules[0].name + " at element " +
           std::to_string(first) + " (a race on shared or global memory)");
      return 0;
    }
    results.push_back(std::move(bytes));
    if (results.size() == 1) {
      for (size_t i = 0; i < out_size; ++i) {
        const double got = double(A(out.data()[i]));
        const double allowed = allowed_at ? (*allowed_at)[i]
                                          : Dtype<T>::tol * (1 + Dtype<T>::unit) * bound +
                                                Dtype<T>::unit * std::fabs(ref[i]);
        if (!(std::fabs(got - ref[i]) <= allowed)) {
          char msg[256];
          std::snprintf(msg, sizeof msg,
                        ": element %zu is %.17g, float64 reference %.17g (allowed error %.3g)", i,
                        got, ref[i], allowed);
          fail(where + msg);
          return 0;
        }
        if (allowed > 0) ratio = std::max(ratio, std::fabs(got - ref[i]) / allowed);
      }
    }
  }
  return ratio;
}

template <typename T, typename A, typename Tile>
std::string launch_tiled(const std::string& name, Data<T>& d, T* y, const ForwardLaunch& c,
                         const emu::Schedule& sched) {
  const T* bp = d.db.n ? d.db.data() : nullptr;
  return emu::Device::get().launch(
      name, dim3(unsigned(c.grid_x), unsigned(c.grid_y)), dim3(kThreads), sched,
      [&] { adder2d_forward_tiled<T, A, Tile>(d.dx.data(), d.dwt.data(), bp, y, d.g); });
}

template <typename T>
std::string launch_forward(Data<T>& d, T* y, const ForwardLaunch& c, const emu::Schedule& sched) {
  using A = typename AccType<T>::type;
  const std::string name =
      std::string(forward_variant_name(c.variant)) + "<" + Dtype<T>::name + ">";
  constexpr bool dbl = std::is_same<A, double>::value;
  switch (c.variant) {
    case ForwardVariant::Direct:
      if constexpr ((EMU_KERNELS & 1) != 0) {
        const T* bp = d.db.n ? d.db.data() : nullptr;
        return emu::Device::get().launch(
            name, dim3(unsigned(c.grid_x)), dim3(kThreads), sched,
            [&] { adder2d_forward_direct<T, A>(d.dx.data(), d.dw.data(), bp, y, d.g, c.total); });
      }
      break;
    case ForwardVariant::TiledLarge:
      if constexpr (!dbl && (EMU_KERNELS & 2) != 0)
        return launch_tiled<T, A, TileLarge>(name, d, y, c, sched);
      break;
    case ForwardVariant::TiledMedium:
      if constexpr ((EMU_KERNELS & 4) != 0)
        return launch_tiled<T, A, TileMedium>(name, d, y, c, sched);
      break;
    case ForwardVariant::TiledSmall:
      if constexpr (!dbl && (EMU_KERNELS & 8) != 0)
        return launch_tiled<T, A, TileSmall>(name, d, y, c, sched);
      break;
    case ForwardVariant::TiledNarrow:
      if constexpr (!dbl && (EMU_KERNELS & 128) != 0)
        return launch_tiled<T, A, TileNarrow>(name, d, y, c, sched);
      break;
  }
  return "forward variant " + name + " is not compiled into this build";
}

constexpr int variant_bit(ForwardVariant v) {
  return v == ForwardVariant::Direct        ? 1
         : v == ForwardVariant::TiledLarge  ? 2
         : v == ForwardVariant::TiledMedium ? 4
         : v == ForwardVariant::TiledSmall  ? 8
                                            : 128;
}

// how: bit i set = picked by the launcher at kSms[i] SMs; kForced = run although not picked.
void count(const std::string& kernel, const char* dtype, int how) {
  Counts& c = g_counts[kernel][dtype];
  ++c.cases;
  for (int i = 0; i < 3; ++i) c.picked[i] += (how >> i) & 1;
  c.forced += (how & kForced) ? 1 : 0;
}

LaunchLimits limits(const Spec& c, int sms) {
  LaunchLimits lim;
  lim.sm_count = sms;
  if (c.cap > 0) lim.max_blocks_1d = lim.max_grid_y = lim.max_sum_blocks = c.cap;
  return lim;
}

template <typename T>
void run_forward(const Spec& c, Data<T>& d) {
  using A = typename AccType<T>::type;
  constexpr bool dbl = std::is_same<A, double>::value;
  const bool empty = d.s.batch * d.s.out_channels * d.s.out_h * d.s.out_w == 0;
  std::map<ForwardVariant, int> variants;  // variant -> how (see count)
  for (int i = 0; i < 3; ++i)
    variants[adder2d_forward_launch(d.g, dbl, limits(c, kSms[i])).variant] |= 1 << i;
  if (c.force) {
    for (ForwardVariant v :
         {ForwardVariant::Direct, ForwardVariant::TiledLarge, ForwardVariant::TiledMedium,
          ForwardVariant::TiledSmall, ForwardVariant::TiledNarrow})
      if (!dbl || v == ForwardVariant::Direct || v == ForwardVariant::TiledMedium)
        variants.emplace(v, kForced);
  }
  const std::vector<double> ref = ref_forward(d.s, d.x, d.w, d.b);
  const double bound = double(d.s.taps) * (d.amax_x + d.amax_w) + d.amax_b + 1.0;
  for (const auto& [v, how] : variants) {
    if (!(EMU_KERNELS & variant_bit(v))) continue;
    const ForwardLaunch cfg = adder2d_forward_launch_variant(d.g, v, limits(c, 1));
    const std::string label = c.name + " " + Dtype<T>::name + " " + forward_variant_name(v) +
                              " grid=" + std::to_string(cfg.grid_x) + "x" +
                              std::to_string(cfg.grid_y);
    if (!empty) {  // the op entry returns before launching for an empty output
      OpRun<T> op = [&](T* y, const emu::Schedule& sched) {
        return launch_forward<T>(d, y, cfg, sched);
      };
      check_op<T>(label, ref.size(), op, ref, bound);
    }
    count(forward_variant_name(v), Dtype<T>::name, how);
  }
}

template <typename T>
std::string launch_input_grad(Data<T>& d, T* gx, const InputGradLaunch& c, bool sign,
                              const std::string& name, const emu::Schedule& sched) {
  using A = typename AccType<T>::type;
  const T *dy = d.ddy.data(), *x = d.dx.data(), *w = d.dw.data();
  if (c.variant == InputGradVariant::Tiled) {
    if constexpr ((EMU_KERNELS & 64) != 0)
      return emu::Device::get().launch(name, dim3(unsigned(c.grid_x), unsigned(c.grid_y)),
                                       dim3(kThreads), sched, [&] {
                                         adder2d_input_grad_tiled_kernel<T, A>(d.g, sign)(
                                             dy, x, w, gx, d.g, c.pixel_tiles, c.channel_tiles);
                                       });
  } else {
    if constexpr ((EMU_KERNELS & 16) != 0)
      return emu::Device::get().launch(name, dim3(unsigned(c.grid_x)), dim3(kThreads), sched, [&] {
        if (sign)
          adder2d_input_grad_gather<T, A, true>(dy, x, w, gx, d.g, c.total);
        else
          adder2d_input_grad_gather<T, A, false>(dy, x, w, gx, d.g, c.total);
      });
  }
  return "input-gradient variant " + name + " is not compiled into this build";
}

template <typename T>
void run_input_grad(const Spec& c, Data<T>& d) {
  std::map<InputGradVariant, int> variants;  // variant -> how (see count)
  for (int i = 0; i < 3; ++i)
    variants[adder2d_input_grad_launch(d.g, limits(c, kSms[i])).variant] |= 1 << i;
  if (c.force) {  // the tiled kernel runs at strides up to IG_MAX_STRIDE
    variants.emplace(InputGradVariant::Gather, kForced);
    if (adder2d_input_grad_tiled_fits(d.g)) variants.emplace(InputGradVariant::Tiled, kForced);
  }
  for (bool sign : {false, true}) {
    const std::vector<double> ref = ref_input_grad(d.s, d.dy, d.x, d.w, sign);
    const double bound =
        double(d.s.kernel_h * d.s.kernel_w * d.s.out_channels_per_group) * d.amax_dy + 1.0;
    for (const auto& [v, how] : variants) {
      if (!(EMU_KERNELS & (v == InputGradVariant::Tiled ? 64 : 16))) continue;
      const InputGradLaunch cfg = adder2d_input_grad_launch_variant(d.g, v, limits(c, 1));
      // The tiled kernel's two instances count apart, named by the one the launcher's selector
      // returns.
      bool phased = false;
      if constexpr ((EMU_KERNELS & 64) != 0) {
        using A = typename AccType<T>::type;
        phased =
            v == InputGradVariant::Tiled && adder2d_input_grad_tiled_kernel<T, A>(d.g, false) ==
                                                &adder2d_input_grad_tiled<T, A, false, true>;
      }
      const std::string kernel = std::string(input_grad_variant_name(v)) +
                                 (phased ? "_phased" : "") + (sign ? "_exact" : "_hardtanh");
      if (cfg.total > 0) {  // the op entry returns before launching for an empty input
        OpRun<T> op = [&](T* gx, const emu::Schedule& sched) {
          return launch_input_grad<T>(d, gx, cfg, sign, kernel + "<" + Dtype<T>::name + ">", sched);
        };
        check_op<T>(c.name + " " + Dtype<T>::name + " " + kernel +
                        " grid=" + std::to_string(cfg.grid_x) + "x" + std::to_string(cfg.grid_y),
                    ref.size(), op, ref, bound);
      }
      count(kernel, Dtype<T>::name, how);
    }
  }
}

template <typename T>
void run_weight_grad(const Spec& c, Data<T>& d) {
  using A = typename AccType<T>::type;
  const WeightGradLaunch cfg = adder2d_weight_grad_launch(d.g, limits(c, 1));
  std::vector<double> terms;
  const std::vector<double> ref = ref_weight_grad(d.s, d.dy, d.x, d.w, terms);
  // |err| <= u_T |dW| + (m + 2) u sum_p |dY| (|Xp - W| + 2 |W - c|), m = WG_BP + steps + splits
  const double m = double(WG_BP + cfg.chunk / WG_BP + cfg.splits);
  std::vector<double> allowed(ref.size());
  for (size_t i = 0; i < ref.size(); ++i)
    allowed[i] =
        Dtype<T>::roundoff * std::fabs(ref[i]) + (m + 2) * Dtype<T>::acc_roundoff * terms[i];
  const std::string label =
      c.name + " " + Dtype<T>::name + " weight_grad tiles=" + std::to_string(cfg.tiles) +
      " splits=" + std::to_string(cfg.splits) + " chunk=" + std::to_string(cfg.chunk);
  if (cfg.elems > 0) {
    OpRun<T> op = [&](T* gw, const emu::Schedule& sched) -> std::string {
      std::unique_ptr<Buffer<A>> partial;
      if (cfg.splits > 1) {
        partial = std::make_unique<Buffer<A>>(size_t(cfg.splits * cfg.elems));
        std::fill(partial->data(), partial->data() + partial->n, A(NAN));
      }
      A* pp = partial ? partial->data() : nullptr;
      const std::string tname =
          std::string(cfg.splits > 1 ? "weight_grad_tiled_split" : "weight_grad_tiled") + "<" +
          Dtype<T>::name + ">";
      std::string err = emu::Device::get().launch(
          tname, dim3(unsigned(cfg.tiles), unsigned(cfg.splits)), dim3(kThreads), sched, [&] {
            adder2d_weight_grad_tiled<T, A>(d.ddy.data(), d.dx.data(), d.dw.data(), gw, pp, d.g,
                                            cfg.chunk);
          });
      if (!err.empty() || cfg.splits == 1) return err;
      for (size_t i = 0; i < partial->n; ++i)
        if (std::isnan(double(pp[i])))
          return "partial workspace element " + std::to_string(i) + " never written by " + tname;
      return emu::Device::get().launch(
          std::string("weight_grad_sum_splits<") + Dtype<T>::name + ">",
          dim3(unsigned(cfg.sum_blocks)), dim3(kThreads), sched,
          [&] { adder2d_weight_grad_sum_splits<T, A>(pp, gw, cfg.elems, int(cfg.splits)); });
    };
    const double ratio = check_op<T>(label, size_t(cfg.elems), op, ref, 0.0, &allowed);
    std::printf("WGRAD %s %s %lld %lld %lld %.3g\n", c.name.c_str(), Dtype<T>::name,
                (long long)cfg.tiles, (long long)cfg.splits, (long long)cfg.chunk, ratio);
    // The bound is a worst case that an uncentred decomposition (c = 0) still meets on small
    // cases; its error is larger all the same. On offset statistics in float32 the centred one
    // measured 0.048 of the bound (wgrad_offset4), c = 0 gave 0.335: the centring is required
    // here, with 3x margin.
    constexpr double kCentredOffsetRatio = 0.15;
    if (c.offset != 0 && std::is_same<T, emu::F32>::value && ratio > kCentredOffsetRatio) {
      char msg[160];
      std::snprintf(msg, sizeof msg,
                    ": error %.3g of the bound on offset statistics, above %.3g (not centred?)",
                    ratio, kCentredOffsetRatio);
      fail(label + msg);
    }
  }
  count(cfg.splits > 1 ? "weight_grad_tiled_split" : "weight_grad_tiled", Dtype<T>::name, kAllSms);
  if (cfg.splits > 1) count("weight_grad_sum_splits", Dtype<T>::name, kAllSms);
}

template <typename T>
void run_case(const Spec& c) {
  // if constexpr: what the build leaves out is not even instantiated (faster mutation builds).
  if constexpr ((EMU_DTYPES & Dtype<T>::bit) != 0) {
    uint32_t seed = 0;
    for (char ch : c.name) seed = seed * 131 + uint8_t(ch);
    Data<T> d(c, seed);
    if (c.ops.count("fwd")) run_forward<T>(c, d);
    if constexpr ((EMU_KERNELS & (16 | 64)) != 0)
      if (c.ops.count("igrad")) run_input_grad<T>(c, d);
    if constexpr ((EMU_KERNELS & 32) != 0)
      if (c.ops.count("wgrad")) run_weight_grad<T>(c, d);
  }
}

bool parse(const std::string& line, Spec& c) {
  std::istringstream in(line);
  std::string dtypes, ops;
  if (!(in >> c.name >> c.n >> c.c >> c.h >> c.w >> c.co >> c.kh >> c.kw >> c.sh >> c.sw >> c.ph >>
        c.pw >> c.dh >> c.dw >> c.groups >> c.bias >> dtypes >> c.force >> c.cap >> ops))
    return false;
  if (!(in >> c.offset)) c.offset = 0;  // optional
  std::stringstream ds(dtypes), os(ops);
  for (std::string t; std::getline(ds, t, ',');) c.dtypes.push_back(t);
  for (std::string t; std::getline(os, t, ',');) c.ops.insert(t);
  return true;
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
    for (const std::string& t : c.dtypes) {
      if (t == "f32")
        run_case<emu::F32>(c);
      else if (t == "f64")
        run_case<emu::F64>(c);
      else if (t == "f16")
        run_case<emu::Half>(c);
      else if (t == "bf16")
        run_case<emu::BFloat16>(c);
      else {
        std::fprintf(stderr, "unknown dtype %s\n", t.c_str());
        return 2;
      }
    }
    ++cases;
    std::printf("TIME %s %.2f s\n", c.name.c_str(),
                std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  }
  for (const auto& [kernel, by_dtype] : g_counts)
    for (const auto& [dtype, n] : by_dtype)
      std::printf("COUNT %s %s %d %d %d %d %d\n", kernel.c_str(), dtype.c_str(), n.cases,
                  n.picked[0], n.picked[1], n.picked[2], n.forced);
  std::printf("DONE cases=%d failures=%d shared_arrays=%zu\n", cases, g_failures,
              emu::Device::get().shared_arrays().size());
  return g_failures ? 1 : 0;
}
