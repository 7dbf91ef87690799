#!/usr/bin/env bash
# Run on a Debian 12 development machine (network, apt): downloads the .deb files that
# tests/gpu/run.sh unpacks on a GPU machine that has the CUDA toolkit, meson, ninja and
# PyTorch but none of these libraries' -dev packages and no package registry. They go
# to .debs/ (git-ignored; it travels with the working tree).
set -euo pipefail
cd "$(dirname "$0")/../.."
mkdir -p .debs
cd .debs
pkgs=(libcmocka0 libcmocka-dev
      libopenblas0 libopenblas0-pthread libopenblas-dev libopenblas-pthread-dev
      libgfortran5 libquadmath0
      libpng16-16 libpng-dev zlib1g zlib1g-dev
      pkgconf pkgconf-bin libpkgconf3)
apt-get download "${pkgs[@]}"
ls -l
