// Two builds of the CPU forward kernels timed against each other in one process, outside torch:
// csrc/cpu/adder2d_cpu_kernels.h of two trees (KERNELS_A, KERNELS_B: paths given by the
// compiler's -D, see benchmarks/forward_ab.sh), each compiled for AVX2 + FMA in its own
// namespace, run on one thread the way the op runs one thread's share of a layer:
//
//   direct  image by image: every input plane prepared (forward_prepare_plane), then the tiles
//           by items of forward_tiles_direct;
//   batch   image groups of vector_lanes: every plane prepared (forward_prepare_batch_plane),
//           then forward_tiles_batch on claims of tiles cut by item_claims for one thread in
//           each image group (the op's claims on one thread when the batch is one image group;
//           with more, the op's claims run across the groups' boundaries);
//
// both with the weights interleaved first (forward_interleave_weights), as the op does at 256 or
// more uses per weight. Each round times A and B (the order alternating) in thread CPU time,
// each after its own run of A's register ceiling (register_ceiling, the benchmark's ceiling);
// prints the median fraction of the ceiling of each, the median [p20, p80] of the per-round
// time ratios B / A, and whether the two outputs are bitwise equal. Both kernel files compile
// against one csrc/cpu/adder2d_cpu.h and csrc/adder2d_shape.h (the -I path: the kernel sets'
// layouts come from there).
//
// usage: forward_ab direct|batch N C H W Co kernel stride pad rounds [label]
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <string>
#include <vector>

#include "adder2d_cpu.h"

#pragma GCC push_options
#pragma GCC target("avx2,fma")
#define ADDER_CPU_VECTOR_BYTES 32
#define ADDER_CPU_FMA 1
#define ADDER_CPU_ISA va
#include KERNELS_A
#undef ADDER_CPU_ISA
#define ADDER_CPU_ISA vb
#include KERNELS_B
#undef ADDER_CPU_ISA
#pragma GCC pop_options

using addernet::Adder2dShape;
using namespace addernet::cpu;

namespace {

double thread_seconds() {
  timespec t;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
  return double(t.tv_sec) + 1e-9 * double(t.tv_nsec);
}

double quantile(std::vector<double> v, double q) {
  std::sort(v.begin(), v.end());
  return v[size_t(q * double(v.size() - 1))];
}

// One thread's forward of the whole batch by kernel set ks, the path's way (see the top).
struct Layer {
  Adder2dShape s;
  bool batch_path;
  ForwardLayout direct;
  ForwardBatchLayout batch;
  std::vector<int64_t> offsets;
  std::vector<float> x, w;

  void run(const KernelSet<float>& ks, float* wi, float* prepared, float* scratch, float* y) const {
    const int64_t L = s.out_h * s.out_w, HW = s.in_h * s.in_w, CHW = s.in_channels * HW;
    ks.forward_interleave_weights(s, w.data(), wi, 0, s.out_channels);
    if (batch_path) {
      const int64_t lanes = ks.vector_lanes;
      // One thread's claims of an image group's tiles (item_claims; see the top).
      const ItemClaims claims = item_claims(batch.tiles, 1, FORWARD_BATCH_TILE_GROUP);
      for (int64_t n0 = 0; n0 < s.batch; n0 += lanes) {
        const int64_t images = std::min(lanes, s.batch - n0);
        for (int64_t c = 0; c < s.in_channels; ++c)
          ks.forward_prepare_batch_plane(s, batch, x.data() + n0 * CHW + c * HW, CHW, images,
                                         prepared + c * batch.plane);
        for (int64_t j = 0; j < claims.count; ++j)
          ks.forward_tiles_batch(s, batch, prepared, offsets.data(), wi, true, 0, nullptr,
                                 y + n0 * s.out_channels * L, images, claims.begin(j),
                                 claims.end(j) - claims.begin(j), scratch);
      }
      return;
    }
    // Items of tiles as the op forms them.
    const int64_t group = forward_direct_item_tiles(s, ks.tile_pixels);
    for (int64_t n = 0; n < s.batch; ++n) {
      for (int64_t c = 0; c < s.in_channels; ++c)
        ks.forward_prepare_plane(s, direct, x.data() + n * CHW + c * HW,
                                 prepared + c * direct.plane);
      for (int64_t t0 = 0; t0 < direct.tiles; t0 += group)
        ks.forward_tiles_direct(s, direct, prepared, offsets.data(), wi, true, nullptr,
                                y + n * s.out_channels * L, t0, std::min(group, direct.tiles - t0),
                                scratch);
    }
  }
};

}  // namespace

int main(int argc, char** argv) {
  if (argc < 11) {
    std::fprintf(stderr, "usage: %s direct|batch N C H W Co kernel stride pad rounds [label]\n",
                 argv[0]);
    return 2;
  }
  Layer layer;
  layer.batch_path = std::string(argv[1]) == "batch";
  Adder2dShape& s = layer.s;
  s = Adder2dShape{};
  s.batch = std::atol(argv[2]);
  s.in_channels = std::atol(argv[3]);
  s.in_h = std::atol(argv[4]);
  s.in_w = std::atol(argv[5]);
  s.out_channels = std::atol(argv[6]);
  s.kernel_h = s.kernel_w = std::atol(argv[7]);
  s.stride_h = s.stride_w = std::atol(argv[8]);
  s.pad_h = s.pad_w = std::atol(argv[9]);
  const int rounds = std::atoi(argv[10]);
  if (rounds < 1) {
    std::fprintf(stderr, "rounds must be at least 1, got %s\n", argv[10]);
    return 2;
  }
  s.dilation_h = s.dilation_w = 1;
  s.groups = 1;
  s.out_h = (s.in_h + 2 * s.pad_h - s.kernel_h) / s.stride_h + 1;
  s.out_w = (s.in_w + 2 * s.pad_w - s.kernel_w) / s.stride_w + 1;
  s.in_channels_per_group = s.in_channels;
  s.out_channels_per_group = s.out_channels;
  s.taps = s.in_channels * s.kernel_h * s.kernel_w;
  const KernelSet<float> sets[2] = {va::make_kernel_set<float>(), vb::make_kernel_set<float>()};
  const int64_t lanes = sets[0].vector_lanes;
  if (sets[1].vector_lanes != lanes) {
    std::fprintf(stderr, "the two kernel sets' vector_lanes differ: %ld and %ld\n", long(lanes),
                 long(sets[1].vector_lanes));
    return 2;
  }
  layer.direct = forward_layout(s, lanes, 2);
  layer.batch = forward_batch_layout(s, lanes, 2);
  if (layer.batch_path ? !layer.batch.valid : !layer.direct.direct) {
    std::fprintf(stderr, "this shape has no %s layout\n", argv[1]);
    return 2;
  }
  layer.offsets = layer.batch_path ? forward_batch_tap_offsets(s, layer.batch, lanes)
                                   : forward_direct_tap_offsets(s, layer.direct);
  layer.x.resize(s.batch * s.in_channels * s.in_h * s.in_w);
  layer.w.resize(s.out_channels * s.taps);
  std::srand(1);
  for (float& v : layer.x) v = float(std::rand() % 2001 - 1000) / 500.0f;
  for (float& v : layer.w) v = float(std::rand() % 2001 - 1000) / 500.0f;

  const int64_t L = s.out_h * s.out_w;
  const int64_t plane = layer.batch_path ? layer.batch.plane : layer.direct.plane;
  std::vector<float> wi(layer.w.size()), prepared(s.in_channels * plane + 64);
  std::vector<float> scratch(FORWARD_CALL_MAX_TILES * s.out_channels * 16);
  std::vector<float> y[2] = {std::vector<float>(s.batch * s.out_channels * L),
                             std::vector<float>(s.batch * s.out_channels * L)};
  const double terms = double(s.batch) * double(s.out_channels) * double(L) * double(s.taps);
  const int reps = std::max(1, int(3e7 / terms));  // about 1 ms or more per timing
  const int64_t ceiling_iterations = 500000;
  std::vector<double> fraction[2], ratio;
  for (int r = 0; r < rounds; ++r) {
    double seconds[2];
    for (int i = 0; i < 2; ++i) {
      const int v = (i + r) % 2;
      const double c0 = thread_seconds();
      volatile float sink = va::register_ceiling(ceiling_iterations);
      (void)sink;
      const double ceiling =
          double(ceiling_iterations) * double(va::CEILING_TERMS) / (thread_seconds() - c0);
      const double t0 = thread_seconds();
      for (int rep = 0; rep < reps; ++rep)
        layer.run(sets[v], wi.data(), prepared.data(), scratch.data(), y[v].data());
      seconds[v] = thread_seconds() - t0;
      fraction[v].push_back(double(reps) * terms / seconds[v] / ceiling);
    }
    ratio.push_back(seconds[1] / seconds[0]);
  }
  const bool equal = std::memcmp(y[0].data(), y[1].data(), y[0].size() * sizeof(float)) == 0;
  std::printf("%-18s A %.3f  B %.3f of the ceiling; B / A time %.3f [%.3f, %.3f]; %s\n",
              argc > 11 ? argv[11] : argv[1], quantile(fraction[0], 0.5),
              quantile(fraction[1], 0.5), quantile(ratio, 0.5), quantile(ratio, 0.2),
              quantile(ratio, 0.8), equal ? "bitwise equal" : "outputs DIFFER");
  return 0;
}
