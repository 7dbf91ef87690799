#!/usr/bin/env bash
# Prints ptxas's resource report (registers, stack frame, spills) for every kernel of
# the given .cu files (default: GroupNorm's) for sm_80 and sm_90, and fails when any
# kernel spills or uses a stack frame. Needs nvcc only, no GPU.
#   tests/gpu/ptxas-check.sh [file.cu ...]
set -euo pipefail
cd "$(dirname "$0")/../.."
nvcc=${NVCC:-$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)}
files=("$@")
[ ${#files[@]} -gt 0 ] || files=(ops/norm/group_norm.cu)
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
bad=0
# every (file, arch) compiles at once (nvcc is single-threaded), then the reports in order
jobs=${PTXAS_JOBS:-$(nproc)}
i=0
for f in "${files[@]}"; do
  for arch in 80 90; do
    i=$((i + 1))
    echo "$i $arch $f"
  done
done | xargs -P "$jobs" -L 1 bash -c '"$0" -O3 -std=c++17 -I. -DTG_HAVE_CUDA \
  -gencode "arch=compute_$2,code=sm_$2" -Xptxas -v -c "$3" -o "'"$out"'/$1.o" \
  2>"'"$out"'/$1.log" || { echo "ptxas-check: nvcc failed on $3 (sm_$2):"; cat "'"$out"'/$1.log"; exit 255; }' "$nvcc"
printf '%-44s %-6s %5s %6s %7s %7s\n' kernel arch regs stack spill_st spill_ld
i=0
for f in "${files[@]}"; do
  for arch in 80 90; do
    i=$((i + 1))
    # ptxas prints, per kernel: "Compiling entry function 'NAME' for 'sm_XX'", then
    # "N bytes stack frame, N bytes spill stores, N bytes spill loads", then
    # "Used N registers, ...".
    while IFS=$'\t' read -r name stack st ld regs; do
      short=$(echo "$name" | c++filt | sed -E 's/^(void )?(\(anonymous namespace\)::)?//; s/\(.*//')
      printf '%-44s sm_%-3s %5s %6s %7s %7s\n' "${short:0:44}" "$arch" "$regs" "$stack" "$st" "$ld"
      if [ "$st" != 0 ] || [ "$ld" != 0 ] || [ "$stack" != 0 ]; then bad=1; fi
    done < <(awk '
      /Compiling entry function/ { match($0, /function .[^'"'"']*/); name = substr($0, RSTART + 10, RLENGTH - 10) }
      /bytes stack frame/ { stack = $(NF - 11); st = $(NF - 7); ld = $(NF - 3) }
      /Used [0-9]+ registers/ { for (i = 1; i <= NF; i++) if ($i == "Used") regs = $(i + 1);
                                 printf "%s\t%s\t%s\t%s\t%s\n", name, stack, st, ld, regs }' "$out/$i.log")
  done
done
if [ $bad -ne 0 ]; then
  echo "ptxas-check: FAIL (a kernel spills or uses a stack frame)"
  exit 1
fi
echo "ptxas-check: ok (no spills, no stack frames)"
