#!/usr/bin/env bash
# setup.sh — the README's quick start: install what is missing (Debian 12, as root),
# build braid, then run the main job or the tests.
#
#   bash tools/setup.sh demo    # install, build, train a tiny hybrid model on the CPU (minutes)
#   bash tools/setup.sh test    # install, build, run the whole test suite (ctest)
#   bash tools/setup.sh build   # install and build only
#
# Environment: BUILD_DIR (default build), JOBS (default: all cores).
set -euo pipefail
cd "$(dirname "$0")/.."
mode=${1:-build}
case "$mode" in demo|test|build) ;; *) echo "usage: bash tools/setup.sh demo|test|build" >&2; exit 2 ;; esac
BUILD_DIR=${BUILD_DIR:-build}
JOBS=${JOBS:-$(nproc)}

# Debian packages: compiler and build tools, the libraries of DESIGN.md, and the Python
# used by tools/ (numpy, h5py, matplotlib; PyTorch for the independent reference checks).
packages=(build-essential cmake pkg-config libopenblas-openmp-dev libyaml-dev libhdf5-dev check
          libsubunit-dev python3 python3-numpy python3-h5py python3-matplotlib)
[ "$mode" = test ] && packages+=(python3-torch)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  if [ "$(id -u)" -ne 0 ]; then
    echo "setup: missing Debian packages: ${missing[*]} — run as root or install them with apt-get" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

cmake -S . -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build "$BUILD_DIR" -j "$JOBS"

case "$mode" in
  demo)
    run_dir=runs/quickstart
    echo "setup: training configs/jamba-tiny.yaml on the CPU; metrics in $run_dir/metrics.jsonl"
    "$BUILD_DIR"/train --config configs/jamba-tiny.yaml --set train.run_dir=$run_dir
    ;;
  test)
    ctest --test-dir "$BUILD_DIR" --output-on-failure -j 2
    ;;
esac
