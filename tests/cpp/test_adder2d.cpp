// C++ test of the adder2d op library through the dispatcher, without Python:
//   Y[n,co,oh,ow] = -sum_{ci,kh,kw} |Xp[n,ci,oh*s+kh-p,ow*s+kw-p] - W[co,ci,kh,kw]|  (+ bias)
// against a direct loop, plus the weight gradient on one tap and an argument error.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <stdexcept>
#include <string>

namespace {

int failures = 0;

void expect(bool ok, const std::string& what) {
  if (!ok) {
    std::fprintf(stderr, "FAILED: %s\n", what.c_str());
    ++failures;
  }
}

at::Tensor call_adder2d(const at::Tensor& x, const at::Tensor& w,
                        const std::optional<at::Tensor>& b, int64_t stride, int64_t pad) {
  static auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("addernet::adder2d", "")
          .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
                            c10::IntArrayRef, c10::IntArrayRef, c10::IntArrayRef, int64_t,
                            c10::string_view)>();
  return op.call(x, w, b, {stride, stride}, {pad, pad}, {1, 1}, 1, "hardtanh");
}

at::Tensor direct(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b, int64_t s,
                  int64_t p) {
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  const int64_t Co = w.size(0), K = w.size(2);
  const int64_t OH = (H + 2 * p - K) / s + 1, OW = (W + 2 * p - K) / s + 1;
  auto y = at::zeros({N, Co, OH, OW}, x.options());
  auto xa = x.accessor<double, 4>();
  auto wa = w.accessor<double, 4>();
  auto ya = y.accessor<double, 4>();
  for (int64_t n = 0; n < N; ++n)
    for (int64_t co = 0; co < Co; ++co)
      for (int64_t oh = 0; oh < OH; ++oh)
        for (int64_t ow = 0; ow < OW; ++ow) {
          double acc = b[co].item<double>();
          for (int64_t ci = 0; ci < C; ++ci)
            for (int64_t kh = 0; kh < K; ++kh)
              for (int64_t kw = 0; kw < K; ++kw) {
                const int64_t ih = oh * s + kh - p, iw = ow * s + kw - p;
                const double v = (ih >= 0 && ih < H && iw >= 0 && iw < W) ? xa[n][ci][ih][iw] : 0.0;
                acc -= std::fabs(v - wa[co][ci][kh][kw]);
              }
          ya[n][co][oh][ow] = acc;
        }
  return y;
}

}  // namespace

int main() {
  at::manual_seed(0);
  const auto opts = at::TensorOptions().dtype(at::kDouble);
  for (int64_t stride : {1, 2}) {
    auto x = at::randn({2, 3, 9, 7}, opts);
    auto w = at::randn({5, 3, 3, 3}, opts);
    auto b = at::randn({5}, opts);
    auto y = call_adder2d(x, w, b, stride, 1);
    auto want = direct(x, w, b, stride, 1);
    expect(y.sizes() == want.sizes(), "output shape, stride " + std::to_string(stride));
    expect(at::allclose(y, want, 1e-12, 1e-12), "output values, stride " + std::to_string(stride));
  }

  // One tap: dW = dY * (X - W).
  auto grad_op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("addernet::adder2d_weight_grad", "")
          .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                            c10::IntArrayRef, c10::IntArrayRef, c10::IntArrayRef, int64_t)>();
  auto gw = grad_op.call(at::full({1, 1, 1, 1}, 2.0, opts), at::full({1, 1, 1, 1}, 0.5, opts),
                         at::full({1, 1, 1, 1}, 3.0, opts), {1, 1}, {0, 0}, {1, 1}, 1);
  expect(std::fabs(gw.item<double>() - 2.0 * (0.5 - 3.0)) < 1e-12, "weight gradient of one tap");

  bool threw = false;
  try {
    call_adder2d(at::randn({2, 4, 8, 8}, opts), at::randn({6, 3, 3, 3}, opts), std::nullopt, 1, 0);
  } catch (const std::exception& e) {  // std::runtime_error from the stable-ABI op library
    threw = std::string(e.what()).find("weight.size(1) must be in_channels / groups") !=
            std::string::npos;
  }
  expect(threw, "channel mismatch raises a named error");

  if (failures == 0) std::printf("adder2d C++ test: all checks passed\n");
  return failures == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
