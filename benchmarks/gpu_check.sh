#!/usr/bin/env bash
# The GPU check of addernet_cuda, for a machine with an NVIDIA GPU, the CUDA toolkit (nvcc,
# compute-sanitizer), torch (a CUDA build), pytest and ninja, and no network:
#
#   benchmarks/gpu_check.sh OUTDIR
#
# Stages, each under its own `timeout`, the whole run inside about 5 minutes:
#   build      python setup.py build_ext --inplace (TORCH_CUDA_ARCH_LIST=9.0 unless set; installs
#              nothing), then checks that the CUDA kernels are compiled in
#   tests      pytest tests/test_adder2d_cuda.py tests/test_adder2d.py, the CUDA tests of
#              tests/test_adder2d_int8.py (those present) and the libstdc++ export check of
#              tests/test_build.py, with ADDERNET_EXPECT_CUDA=1, on
#              GPU_CHECK_TEST_WORKERS (default 8) pytest-xdist workers where xdist is installed;
#              junit XML in OUTDIR/junit.xml
#   memcheck   compute-sanitizer --tool memcheck on a small forward + backward script
#              (tests/cuda_sanitizer_case.py), with the caching allocator off so every tensor is
#              its own allocation
#   racecheck  compute-sanitizer --tool racecheck on the same script (float32 only)
#   bench      python -m benchmarks.bench_adder2d --device cuda --out OUTDIR/bench
#              ("missing" when that module is absent): samples of 10 back-to-back calls
#   bench_full every layer of the benchmark (--full --no-reference --no-memory), in
#              OUTDIR/bench_full: VGG-small's and ResNet-18's layers fill the GPU, the quick set's
#              do not
# After every stage benchmarks/gpu_check_summary.py rewrites OUTDIR/summary.json (device, torch
# version, each stage's status and duration, test counts), so a run cut off midway still reports
# what it did; each stage's output is in OUTDIR/<stage>.log.
#
# Without a GPU (no nvidia-smi, or torch.cuda.is_available() False) it says so and exits 0.
# Exit status otherwise: 0 when no stage failed or timed out, 1 if one did.
# Environment: PYTHON (default python3), TORCH_CUDA_ARCH_LIST, MAX_JOBS, GPU_CHECK_BUDGET_S
# (total seconds, default 285), GPU_CHECK_TEST_WORKERS.
set -u

if [ $# -ne 1 ]; then
  echo "usage: $0 OUTDIR" >&2
  exit 2
fi
mkdir -p "$1" || exit 2
OUT=$(cd "$1" && pwd)
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT" || exit 2
PY=${PYTHON:-python3}
START=$(date +%s)
BUDGET=${GPU_CHECK_BUDGET_S:-285}
STAGES="$OUT/stages.jsonl"
: > "$STAGES"
rm -f "$OUT/summary.json" "$OUT/junit.xml"
DEVICE_NAME=""
TORCH_VERSION=""
FAILED=0

# Rewrites OUTDIR/summary.json from OUTDIR/stages.jsonl (atomically: write, then rename).
write_summary() {
  "$PY" -m benchmarks.gpu_check_summary "$OUT" "$DEVICE_NAME" "$TORCH_VERSION" "$START" \
    || echo "[gpu_check] could not write summary.json" >&2
}

# record STAGE STATUS DURATION_S [EXTRA_JSON_FIELDS]
record() {
  local extra=""
  [ -n "${4:-}" ] && extra=", $4"
  printf '{"stage": "%s", "status": "%s", "duration_s": %s%s}\n' "$1" "$2" "$3" "$extra" >> "$STAGES"
  case "$2" in failed | timeout) FAILED=1 ;; esac
  echo "[gpu_check] $1: $2 (${3} s)"
  write_summary
}

remaining() { echo $((START + BUDGET - $(date +%s))); }

# run_stage NAME CAP_S COMMAND...: runs COMMAND (output in OUTDIR/NAME.log) under
# timeout min(CAP_S, time left); sets STATUS (passed, failed, timeout, skipped_no_time) and
# DURATION.
run_stage() {
  local name=$1 cap=$2 left rc begin
  shift 2
  left=$(remaining)
  [ "$left" -lt "$cap" ] && cap=$left
  if [ "$cap" -lt 15 ]; then
    STATUS=skipped_no_time
    DURATION=0
    return
  fi
  begin=$(date +%s)
  timeout --kill-after=10 "$cap" "$@" > "$OUT/$name.log" 2>&1
  rc=$?
  DURATION=$(($(date +%s) - begin))
  if [ $rc -eq 0 ]; then
    STATUS=passed
  elif [ $rc -eq 124 ] || [ $rc -eq 137 ]; then
    STATUS=timeout
  else
    STATUS=failed
  fi
}

no_gpu() {
  echo "[gpu_check] no GPU on this machine ($1): nothing to check."
  record "gpu" "no_gpu" 0 "\"reason\": \"$1\""
  exit 0
}

# --- device -------------------------------------------------------------------------------------
command -v nvidia-smi > /dev/null 2>&1 || no_gpu "nvidia-smi not found"
DEVICE_NAME=$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2> /dev/null | head -n 1)
[ -n "$DEVICE_NAME" ] || no_gpu "nvidia-smi lists no GPU"
probe=$(timeout 60 "$PY" -c 'import torch; print(torch.__version__, int(torch.cuda.is_available()))' 2> /dev/null)
TORCH_VERSION=${probe% *}
[ "${probe##* }" = "1" ] || no_gpu "torch.cuda.is_available() is False (torch: ${TORCH_VERSION:-not importable})"
echo "[gpu_check] $DEVICE_NAME, torch $TORCH_VERSION, output in $OUT"
record "device" "passed" 0

export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
if [ -z "${CUDA_HOME:-}" ] && [ -x /usr/local/cuda/bin/nvcc ]; then export CUDA_HOME=/usr/local/cuda; fi

# --- build --------------------------------------------------------------------------------------
run_stage build 170 env TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}" MAX_JOBS="${MAX_JOBS:-$(nproc)}" \
  "$PY" setup.py build_ext --inplace --build-temp build/gpu-check
build_status=$STATUS
build_time=$DURATION
if [ "$build_status" = passed ]; then
  timeout 60 "$PY" -c 'import json, addernet_cuda; print(json.dumps(addernet_cuda.build_info()))' \
    > "$OUT/build_info.json" 2>> "$OUT/build.log"
  grep -q '"cuda"' "$OUT/build_info.json" 2> /dev/null || build_status=failed
fi
spills=$(grep -c "spilled" "$OUT/build.log" 2> /dev/null)
record build "$build_status" "$build_time" "\"spill_warnings\": ${spills:-0}"
if [ "$build_status" != passed ]; then
  tail -n 30 "$OUT/build.log" 2> /dev/null
  exit 1
fi

# --- tests --------------------------------------------------------------------------------------
tests=()
for f in tests/test_adder2d_cuda.py tests/test_adder2d.py; do [ -f "$f" ] && tests+=("$f"); done
# The build's own check that matters on a machine whose compiler links libstdc++ statically.
tests+=("tests/test_build.py::test_op_libraries_export_no_libstdcxx_of_their_own")
if [ -f tests/test_adder2d_int8.py ]; then
  for t in cuda_equals_cpu_bitwise cuda_sums_equal_reference_bitwise cuda_quantized_layer_equals_cpu \
    cuda_checks_the_scale cuda_rejects_an_image_past_2_to_the_31_code_words \
    cuda_image_of_padding_only cuda_channels_last_input_gives_channels_last_output; do
    tests+=("tests/test_adder2d_int8.py::test_$t")
  done
fi
# In parallel where pytest-xdist is installed: in one process, on a 16-thread host, this stage ran
# past 100 s.
parallel=()
threads=${OMP_NUM_THREADS:-}
if "$PY" -c "import xdist" > /dev/null 2>&1; then
  parallel=(-n "${GPU_CHECK_TEST_WORKERS:-8}")
  threads=${OMP_NUM_THREADS:-2} # per worker, so that the workers do not oversubscribe the host
fi
run_stage tests 150 env ADDERNET_EXPECT_CUDA=1 ${threads:+OMP_NUM_THREADS=$threads} "$PY" -m pytest \
  -q -p no:cacheprovider -rfEs ${parallel[@]+"${parallel[@]}"} --junitxml="$OUT/junit.xml" "${tests[@]}"
record tests "$STATUS" "$DURATION" "\"files\": \"${tests[*]}\""
tail -n 5 "$OUT/tests.log"

# --- compute-sanitizer ---------------------------------------------------------------------------
SANITIZER=$(command -v compute-sanitizer || { [ -n "${CUDA_HOME:-}" ] && ls "$CUDA_HOME/bin/compute-sanitizer" 2> /dev/null; })
for tool in memcheck racecheck; do
  if [ -z "$SANITIZER" ]; then
    record "$tool" missing 0 "\"reason\": \"compute-sanitizer not found\""
    continue
  fi
  if [ $tool = memcheck ]; then
    run_stage $tool 60 env PYTORCH_NO_CUDA_MEMORY_CACHING=1 "$SANITIZER" --tool memcheck \
      --error-exitcode 1 "$PY" tests/cuda_sanitizer_case.py float32 float16 float64
  else
    run_stage $tool 60 "$SANITIZER" --tool racecheck --error-exitcode 1 \
      "$PY" tests/cuda_sanitizer_case.py float32
  fi
  line=$(grep -E "(ERROR|RACECHECK) SUMMARY" "$OUT/$tool.log" 2> /dev/null | tail -n 1 | tr -d '"\\')
  record $tool "$STATUS" "$DURATION" "\"summary\": \"${line}\""
done

# --- benchmark -----------------------------------------------------------------------------------
if [ -f benchmarks/bench_adder2d.py ]; then
  run_stage bench 240 "$PY" -m benchmarks.bench_adder2d --device cuda --out "$OUT/bench"
  record bench "$STATUS" "$DURATION"
  run_stage bench_full 90 "$PY" -m benchmarks.bench_adder2d --device cuda --full --no-reference \
    --no-memory --out "$OUT/bench_full"
  record bench_full "$STATUS" "$DURATION"
else
  record bench missing 0 "\"reason\": \"benchmarks/bench_adder2d.py not found\""
fi

echo "[gpu_check] done in $(($(date +%s) - START)) s; summary: $OUT/summary.json"
exit $FAILED
