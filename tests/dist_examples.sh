#!/bin/sh
# The segmentation example as two mpirun ranks against one process, on a few scenes:
# the held-out mean IoU agrees (to float32 rounding: the ranks sum their gradients in
# another order), only rank 0 writes pictures, and the checkpoint it saves holds the
# weights. Usage: dist_examples.sh MPIRUN SEGMENTATION
set -eu
mpirun=$1
seg=$2
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
args="--train-size 32 --eval-size 16 --epochs 1 --threads 1"
"$seg" $args --out "$out/one" --save "$out/one.safetensors" >"$out/one.log"
"$mpirun" -np 2 --oversubscribe --bind-to none "$seg" $args --out "$out/two" \
  --save "$out/two.safetensors" >"$out/two.log"
one=$(sed -n 's/^held-out mIoU: \([0-9.]*\).*/\1/p' "$out/one.log")
two=$(sed -n 's/^held-out mIoU: \([0-9.]*\).*/\1/p' "$out/two.log")
echo "held-out mIoU: one process $one, two ranks $two"
awk -v a="$one" -v b="$two" 'BEGIN { d = a - b; exit !(a != "" && b != "" &&
  d < 0.002 && d > -0.002) }' || { echo "FAIL: the runs differ"; exit 1; }
wrote=$(grep -c '^wrote ' "$out/two.log" || true)
[ "$wrote" -eq 2 ] || { echo "FAIL: $wrote 'wrote' lines, not rank 0's two"; exit 1; }
[ -s "$out/two/samples.png" ] && [ -s "$out/two.safetensors" ] ||
  { echo "FAIL: rank 0 wrote no pictures or checkpoint"; exit 1; }
[ "$(grep -c 'data-parallel: 2 ranks' "$out/two.log")" -eq 1 ] ||
  { echo "FAIL: stdout is not rank 0's alone"; exit 1; }
