#!/usr/bin/env bash
# The CPU forward kernels of two trees timed against each other (benchmarks/forward_ab.cpp): A is
# csrc/ at git revision REV (a commit, tag or branch), B the working tree's csrc/. One pinned
# thread, outside torch; needs g++ with AVX2 and a CPU that runs it.
#
#   benchmarks/forward_ab.sh REV [rounds]
#
# runs the layers of benchmarks/NOTES.md's section "Forward: the five layers short of 85%, taken
# apart" (ResNet-20's third stage on the direct path, ResNet-18's on the batch path).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
rev=${1:?usage: benchmarks/forward_ab.sh REV [rounds]}
rounds=${2:-41}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/A"
git -C "$root" archive "$rev" csrc | tar -x -C "$work/A"
# Both kernel files compile against the working tree's adder2d_cpu.h and adder2d_shape.h (one
# KernelSet and one set of layouts in the program): where REV's differ, REV's kernels must still
# fit them (the compiler says so if not; the bitwise comparison of the outputs catches a layout
# that compiles but means something else).
for shared in cpu/adder2d_cpu.h adder2d_shape.h; do
  if ! cmp -s "$work/A/csrc/$shared" "$root/csrc/$shared"; then
    echo "note: csrc/$shared differs between $rev and the working tree; A's kernels are" \
      "compiled against the working tree's" >&2
  fi
done
g++ -O3 -std=c++17 -ffp-contract=off -falign-loops=64 -Wall -Wno-psabi -I "$root/csrc/cpu" \
  -DKERNELS_A="\"$work/A/csrc/cpu/adder2d_cpu_kernels.h\"" \
  -DKERNELS_B="\"$root/csrc/cpu/adder2d_cpu_kernels.h\"" \
  -o "$work/forward_ab" "$root/benchmarks/forward_ab.cpp"
# The last CPU this process may run on.
cpu=$(grep Cpus_allowed_list /proc/self/status | awk '{print $2}' | tr ',' '\n' | tail -1)
cpu=${cpu##*-}
echo "A: $rev ($(git -C "$root" rev-parse --short "$rev")), B: the working tree; 1 thread on CPU $cpu"
run() { taskset -c "$cpu" "$work/forward_ab" "$@"; }
run direct 32 32 16 16 64 3 2 1 "$rounds" res20.s3.down3x3
run direct 32 64 8 8 64 3 1 1 "$rounds" res20.s3.3x3
run batch 8 64 56 56 128 3 2 1 "$rounds" res18.l2.down3x3
run batch 8 256 14 14 512 3 2 1 "$rounds" res18.l4.down3x3
run batch 8 512 7 7 512 3 1 1 "$rounds" res18.l4.3x3
