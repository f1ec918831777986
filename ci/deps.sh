#!/bin/sh
# Installs everything nufilt needs to build and test on Debian 12 (bookworm): the compiler and
# meson, OpenBLAS + LAPACKE, Check, the OpenCL (CLBlast, PoCL) and Vulkan (loader, lavapipe,
# glslang) stacks, python3-numpy for the end-to-end reference, and what `pip install .` and the
# Python package's tests use offline (python3-venv, python3-mesonpy, python3-pytest), and Open MPI
# for merges over several ranks (libopenmpi-dev, openmpi-bin). Uses sudo when not root.
set -e
SUDO=
[ "$(id -u)" = 0 ] || SUDO=sudo
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends \
  build-essential meson ninja-build pkg-config python3 python3-numpy \
  python3-venv python3-mesonpy python3-pytest \
  libopenblas-pthread-dev libopenblas-dev liblapacke-dev check \
  libclblast-dev ocl-icd-opencl-dev opencl-headers pocl-opencl-icd clinfo \
  libvulkan-dev mesa-vulkan-drivers vulkan-tools glslang-dev glslang-tools spirv-tools valgrind \
  libopenmpi-dev openmpi-bin \
  >/dev/null
echo "ci/deps.sh: build and test dependencies installed"
