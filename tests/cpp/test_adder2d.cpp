// C++ test of the adder2d op library through the dispatcher, without Python:
//   Y[n,co,oh,ow] = -sum_{ci,kh,kw} |Xp[n,ci,oh*s+kh-p,ow*s+kw-p] - W[co,ci,kh,kw]|  (+ bias)
// against a direct loop, plus the weight gradient on one tap and an argument error; and the CPU
// forward's division of work into claims (item_claims and direct_claims in cpu/adder2d_cpu.h).
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <stdexcept>
#include <string>
#include <vector>

#include "cpu/adder2d_cpu.h"

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

// Every item in exactly one claim, in order; at most max_items a claim; a multiple of the threads
// in number; and threads that take claims in turn get shares within one item of each other.
void check_item_claims() {
  constexpr int64_t max_items = 8;
  for (int64_t threads = 1; threads <= 4; ++threads) {
    for (int64_t items = 0; items <= 300; ++items) {
      const addernet::cpu::ItemClaims c = addernet::cpu::item_claims(items, threads, max_items);
      const std::string what =
          " (" + std::to_string(items) + " items, " + std::to_string(threads) + " threads)";
      expect(c.count > 0 && c.count % threads == 0, "claims a multiple of the threads" + what);
      expect(c.begin(0) == 0 && c.end(c.count - 1) == items, "claims cover the items" + what);
      int64_t low = items, high = 0;
      for (int64_t t = 0; t < threads; ++t) {
        int64_t share = 0;
        for (int64_t j = t; j < c.count; j += threads) {
          const int64_t n = c.end(j) - c.begin(j);
          expect(n >= 0 && n <= max_items, "claim size within max_items" + what);
          share += n;
        }
        low = std::min(low, share);
        high = std::max(high, share);
      }
      expect(high - low <= 1, "shares in turn within one item" + what);
    }
  }
  // ResNet-18's 7 x 7 layers at batch 8: 50 tiles, 25 to each of two threads.
  const addernet::cpu::ItemClaims c = addernet::cpu::item_claims(50, 2, max_items);
  expect(c.count == 8 && c.q == 6 && c.r == 2, "50 items in 8 claims of 6 or 7");
}

// The direct path's image-by-image claims: every (image, group, tile) in exactly one claim; the
// images before the last `tail` whole, one claim each; the last `tail` images by claims of at most
// tail_tiles tiles of one group.
void check_direct_claims() {
  for (int64_t images : {1, 2, 5, 9, 32})
    for (int64_t tail : {0, 1, 2, 3})
      for (int64_t groups : {1, 3})
        for (int64_t tiles : {1, 4, 7, 64})
          for (int64_t tail_tiles : {1, 2, 4, 5}) {
            const addernet::cpu::DirectClaims c =
                addernet::cpu::direct_claims(images, tail, groups, tiles, tail_tiles);
            const std::string what = " (" + std::to_string(images) + " images, tail " +
                                     std::to_string(tail) + ", " + std::to_string(groups) +
                                     " groups, " + std::to_string(tiles) + " tiles, " +
                                     std::to_string(tail_tiles) + " per tail claim)";
            const int64_t head = images - std::min(tail, images);
            std::vector<int> covered(images * groups * tiles, 0);
            for (int64_t j = 0; j < c.count; ++j) {
              const addernet::cpu::DirectClaim d = c.claim(j);
              expect(d.image >= 0 && d.image < images, "claim's image in range" + what);
              expect(d.whole == (d.image < head), "whole images exactly before the tail" + what);
              if (d.image < 0 || d.image >= images) continue;
              const int64_t g0 = d.whole ? 0 : d.group, g1 = d.whole ? groups : d.group + 1;
              const int64_t t0 = d.whole ? 0 : d.tile0, t1 = d.whole ? tiles : d.tile0 + d.ntiles;
              expect(d.whole || (d.ntiles >= 1 && d.ntiles <= tail_tiles && t1 <= tiles),
                     "a tail claim's tiles within tail_tiles and the image" + what);
              for (int64_t g = g0; g < g1; ++g)
                for (int64_t t = t0; t < t1 && t < tiles; ++t)
                  ++covered[(d.image * groups + g) * tiles + t];
            }
            expect(std::all_of(covered.begin(), covered.end(), [](int n) { return n == 1; }),
                   "every tile of every image and group in exactly one claim" + what);
          }
  // ResNet-20's third stage at batch 32 on 2 threads: 30 whole images, then 2 x 4 claims of 1 tile.
  const addernet::cpu::DirectClaims c = addernet::cpu::direct_claims(32, 2, 1, 4, 1);
  expect(c.head == 30 && c.count == 38, "32 images: 30 whole, 8 tail claims");
}

}  // namespace

int main() {
  check_item_claims();
  check_direct_claims();
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
