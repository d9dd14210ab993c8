#!/usr/bin/env bash
# gpu_deps.sh — bring what the GPU machine lacks (libyaml, Check) as Debian packages.
#
#   here (CPU machine):     bash tools/gpu_deps.sh download     -> .deps/*.deb (git-ignored)
#   there (GPU machine):    source tools/gpu_deps.sh unpack     -> .deps/prefix, PKG_CONFIG_PATH, LD_LIBRARY_PATH
#
# The device tool's `run` must name .deps in `carry`. Packages are unpacked into a
# prefix inside the repository (dpkg -x), never into /. Debian 12's builds run on the
# GPU machine's Ubuntu 24.04 (newer glibc).
set -eu
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
deps=$here/.deps
case "${1:-}" in
  download)
    mkdir -p "$deps"
    (cd "$deps" && apt-get download libyaml-0-2 libyaml-dev check libsubunit0 libsubunit-dev)
    ls -la "$deps"
    ;;
  unpack)
    prefix=$deps/prefix
    mkdir -p "$prefix"
    for f in "$deps"/*.deb; do dpkg -x "$f" "$prefix"; done
    # The .pc files name prefix=/usr; point them at the unpacked tree.
    for pc in "$prefix"/usr/lib/x86_64-linux-gnu/pkgconfig/*.pc; do
      sed -i "s#^prefix=.*#prefix=$prefix/usr#" "$pc"
    done
    export PKG_CONFIG_PATH=$prefix/usr/lib/x86_64-linux-gnu/pkgconfig${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH}
    export LD_LIBRARY_PATH=$prefix/usr/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
    export LIBRARY_PATH=$prefix/usr/lib/x86_64-linux-gnu${LIBRARY_PATH:+:$LIBRARY_PATH}
    export CPATH=$prefix/usr/include${CPATH:+:$CPATH}
    ;;
  *) echo "usage: bash tools/gpu_deps.sh download | source tools/gpu_deps.sh unpack" >&2; exit 2 ;;
esac
