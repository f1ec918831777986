#!/bin/bash
# Prepares what bench/gpu/run.sh needs on a GPU machine that reaches no package registry
# (see bench/gpu/README.md). Run here, on the project's Debian 12 machine:
#
#   bench/gpu/fetch.sh            # -> .gpu-bundle/ (git-ignored), about 35 MB
#
# .gpu-bundle/deb/       the Debian packages of the build and run-time dependencies
#                        (apt-get download: OpenBLAS, LAPACKE, the OpenCL ICD loader, CLBlast,
#                        the Vulkan loader, glslang, Check, pkgconf), unpacked there into a
#                        prefix by run.sh, never installed
# .gpu-bundle/wheels/    meson and ninja as wheels (pip download), in case the machine has none
# .gpu-bundle/prebuilt/  nufilt and check_backend_ops built here (release, stripped), used
#                        there when it cannot build (no compiler, a failed configure)
# .gpu-bundle/MANIFEST   what is in it, from which commit
#
# Carry it with the run: the device tool's `carry: [".gpu-bundle"]`.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
B=$ROOT/.gpu-bundle
say() { echo "fetch.sh: $*" >&2; }

# The packages, by name (dependencies are listed explicitly: apt-get download fetches only
# what it is given). Runtime libraries first, then what only the build needs.
RUNTIME=(libopenblas0-pthread libgfortran5 libquadmath0 liblapacke libtmglib3
         ocl-icd-libopencl1 libclblast1 libvulkan1 libsubunit0)
BUILD=(libopenblas-pthread-dev libopenblas-dev liblapacke-dev ocl-icd-opencl-dev opencl-c-headers
       opencl-clhpp-headers libclblast-dev libvulkan-dev glslang-tools glslang-dev spirv-tools
       check libsubunit-dev pkgconf pkgconf-bin libpkgconf3)

rm -rf "$B.tmp"
mkdir -p "$B.tmp/deb" "$B.tmp/wheels" "$B.tmp/prebuilt"
say "downloading ${#RUNTIME[@]} + ${#BUILD[@]} Debian packages"
if ! (cd "$B.tmp/deb" && apt-get download "${RUNTIME[@]}" "${BUILD[@]}" >/dev/null 2>&1); then
  apt-get update -qq
  (cd "$B.tmp/deb" && apt-get download "${RUNTIME[@]}" "${BUILD[@]}" >/dev/null)
fi

say "meson and ninja wheels"
PIP=(python3 -m pip)
"${PIP[@]}" --version >/dev/null 2>&1 || PIP=("$HOME/.cache/nufilt-bench/venv/bin/pip")
"${PIP[@]}" download -q --disable-pip-version-check --no-deps --only-binary=:all: \
  --python-version 3.12 --implementation cp \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
  -d "$B.tmp/wheels" "meson==1.6.1" "ninja==1.11.1.1" >/dev/null

say "prebuilt release binaries (build-gpu-prebuilt/)"
PB=$ROOT/build-gpu-prebuilt
[ -f "$PB/build.ninja" ] || meson setup "$PB" "$ROOT" --buildtype=release >/dev/null
ninja -C "$PB" host/nufilt tests/check_backend_ops >/dev/null
strip -o "$B.tmp/prebuilt/nufilt" "$PB/host/nufilt"
strip -o "$B.tmp/prebuilt/check_backend_ops" "$PB/tests/check_backend_ops"

{
  echo "commit: $(git -C "$ROOT" describe --always --dirty 2>/dev/null || echo '?')"
  echo "made: $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(. /etc/os-release; echo "$PRETTY_NAME"), glibc $(ldd --version | head -1 | awk '{print $NF}')"
  (cd "$B.tmp" && find deb wheels prebuilt -type f -printf '%p %s\n' | sort)
} > "$B.tmp/MANIFEST"
rm -rf "$B"
mv "$B.tmp" "$B"
say "$(du -sh "$B" | cut -f1) in $B (carry it: \".gpu-bundle\")"
