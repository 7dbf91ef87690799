#!/usr/bin/env bash
# Everything the CUDA backend needs checked on a machine with an NVIDIA GPU, in under
# 6 minutes: unpack the libraries fetched by tests/gpu/fetch-debs.sh (.debs/) into a
# local prefix, build with nvcc, run the GPU suites plainly and the CUDA suite's
# GroupNorm and op tests under compute-sanitizer memcheck, check ptxas's spill report,
# run the GroupNorm benchmark, and print one summary table last. Meant for a machine
# with the CUDA toolkit, meson, ninja and PyTorch but no -dev packages and no network.
#   tests/gpu/run.sh [BUILD_DIR]      (default build-gpu; logs in $OUT or BUILD_DIR-logs)
set -uo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
build=${1:-build-gpu}
logs=${OUT:-$root/$build-logs}
mkdir -p "$logs"
prefix=$root/.debs/root
names=() results=()
record() { names+=("$1"); results+=("$2"); }
step() { # step NAME SECONDS command...: runs with a time limit, logs to $logs/NAME.log
  local name=$1 limit=$2
  shift 2
  local t0=$SECONDS
  if timeout "$limit" "$@" >"$logs/$name.log" 2>&1; then
    record "$name" "ok ($((SECONDS - t0)) s)"
  else
    record "$name" "FAIL rc=$? ($((SECONDS - t0)) s, see $logs/$name.log)"
    tail -n 25 "$logs/$name.log"
  fi
}

# ---- the libraries, from .debs/ ----
if ! ls .debs/*.deb >/dev/null 2>&1; then
  echo "tests/gpu/run.sh: no .debs/*.deb (run tests/gpu/fetch-debs.sh on a Debian 12 machine first)"
  exit 2
fi
rm -rf "$prefix"
mkdir -p "$prefix"
for f in .debs/*.deb; do dpkg -x "$f" "$prefix"; done
# Absolute symlinks (libz.so -> /lib/...) and .pc files point into /usr: re-root them.
find "$prefix" -type l | while read -r l; do
  t=$(readlink "$l")
  case $t in /*) ln -sf "$prefix$t" "$l" ;; esac
done
find "$prefix" -name '*.pc' -exec sed -i -E "s#(=|-I|-L)/usr#\1$prefix/usr#g" {} +
multi=$prefix/usr/lib/x86_64-linux-gnu
export PKG_CONFIG_PATH=$multi/pkgconfig:$multi/openblas-pthread/pkgconfig:$prefix/usr/share/pkgconfig
export LD_LIBRARY_PATH=$multi:$multi/openblas-pthread:$prefix/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}
export LIBRARY_PATH=$LD_LIBRARY_PATH
native=$root/.debs/native.ini
pkgconf=$(command -v pkg-config || echo "$prefix/usr/bin/pkgconf")
printf "[binaries]\npkg-config = '%s'\n" "$pkgconf" >"$native"
export PATH=/usr/local/cuda/bin:$PATH

# ---- the machine ----
{
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv
  nvcc --version | tail -n 2
  python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.cuda.is_available())'
} 2>&1 | tee "$logs/machine.log"

# ---- build: nvcc for sm_80 and sm_90 (SASS) + PTX, warnings as errors ----
wipe=
[ -f "$build/meson-private/build.dat" ] && wipe=--wipe
step setup 120 meson setup "$build" $wipe --native-file "$native" -Dcuda=enabled \
  -Dexamples=false -Dbench=true -Dbuildtype=release
step build 240 ninja -C "$build"
# every kernel file of the library (ops, runtime, nn)
step ptxas-check 240 tests/gpu/ptxas-check.sh $(ls ops/*/*.cu runtime/*.cu nn/*.cu 2>/dev/null)

# ---- the GPU suites, then memcheck on GroupNorm and the ops ----
export TG_NUM_THREADS=8
step suites 200 meson test -C "$build" --print-errorlogs cuda tensor errors autograd \
  group_norm matmul optim dist opinfo cuda_conv cuda_conv_chunked \
  cuda_resample cuda_nn
grep -E "^ +[a-z_]+ +(float32|float64) +(no kernel|[^o])|ops vs cpu" \
  "$build/meson-logs/testlog.txt" >"$logs/cuda-rows.log" 2>/dev/null || true
sanitizer=$(command -v compute-sanitizer ||
  ls /usr/local/cuda*/bin/compute-sanitizer /usr/local/cuda/compute-sanitizer/compute-sanitizer \
    2>/dev/null | head -n 1)
# memcheck NAME SECONDS FILTER TEST [VAR=VALUE ...]: the cmocka tests of TEST matching
# FILTER (cmocka knows only * and ?) under memcheck; a filter that runs no test fails.
memcheck() {
  local name=$1 limit=$2 filter=$3 test=$4
  shift 4
  step "$name" "$limit" env TG_CUDA_FILL_NAN=1 TG_CUDA_LAUNCH_BLOCKING=1 \
    TG_TEST_FILTER="$filter" "$@" "${sanitizer:-compute-sanitizer}" --tool memcheck \
    --error-exitcode 1 --leak-check full "$build/tests/$test"
  if grep -q "Running 0 test" "$logs/$name.log"; then
    results[${#results[@]} - 1]="FAIL (no test matched $filter)"
  fi
}
memcheck memcheck-gn 120 'test_group_norm*' test_cuda
memcheck memcheck-ops 200 'test_ops_vs_cpu' test_cuda
# the convolutions' rows, reproducibility and errors (the gradchecks repeat the kernels)
memcheck memcheck-conv 150 'test_conv_*' test_cuda_conv TG_CONV_CUDA_CHUNK_BYTES=4096
# the resamplings' and dropout's rows, gradchecks and errors
memcheck memcheck-resample 150 '*' test_cuda_resample
# the optimizers' kernels, steps and state across devices
memcheck memcheck-nn 120 'test_o*' test_cuda_nn

# ---- the benchmarks ----
step bench 120 "$build/bench/group_norm" --device cuda 20
step train-bench 150 "$build/bench/train_step" --device cuda

echo
echo "== bench/group_norm --device cuda"
grep -vE "^$" "$logs/bench.log" | tail -n 12
echo
echo "== bench/train_step --device cuda"
grep -vE "^$" "$logs/train-bench.log" | tail -n 8
echo
echo "== CUDA rows without a kernel / failing"
cat "$logs/cuda-rows.log" 2>/dev/null
echo
echo "== summary (logs in $logs)"
fail=0
for i in "${!names[@]}"; do
  printf '%-12s %s\n' "${names[$i]}" "${results[$i]}"
  case ${results[$i]} in FAIL*) fail=1 ;; esac
done
exit $fail
