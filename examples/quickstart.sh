#!/usr/bin/env bash
# Quick start: installs the dependencies (Debian 12, apt-get), builds tapegrad into
# build/, and trains the GroupNorm segmentation U-Net, writing pictures into out/.
set -euo pipefail
cd "$(dirname "$0")/.."
bash .ci/install-deps
[ -f build/build.ninja ] || meson setup build
ninja -C build
./build/examples/segmentation --out out "$@"
