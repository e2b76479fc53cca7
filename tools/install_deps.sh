#!/bin/bash
# Installs the Debian packages moelab builds and runs with (as root, or through sudo when present),
# and the pinned header-only CUTLASS the CUDA build's Hopper kernels use (unpacked from the
# nvidia-cutlass package of the Python package registry into /opt/moelab/cutlass). Safe to run
# again: what is already there is skipped.
set -euo pipefail
PKGS=(bazel-bootstrap bazel-rules-java g++ libopenblas-dev libopenblas-openmp-dev libopenmpi-dev openmpi-bin libhdf5-dev
      hdf5-tools libgtest-dev python3-torch python3-h5py python3-numpy fortunes gnuplot-nox clang
      libclang-rt-14-dev python3-pip unzip)
missing=()
for p in "${PKGS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
if [ ${#missing[@]} -eq 0 ]; then
    echo "install_deps: all ${#PKGS[@]} packages present"
else
    echo "install_deps: installing ${missing[*]}"
    $SUDO apt-get update -q
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

# CUTLASS, header-only: only its include trees are kept (cute/ and cutlass/, and the util headers).
CUTLASS_VERSION=4.2.0.0
cutlass=/opt/moelab/cutlass
if [ "$(cat "$cutlass/VERSION" 2>/dev/null)" = "$CUTLASS_VERSION" ]; then
    echo "install_deps: CUTLASS $CUTLASS_VERSION present"
else
    echo "install_deps: installing CUTLASS $CUTLASS_VERSION headers into $cutlass"
    tmp=$(mktemp -d)
    python3 -m pip download -q --no-deps --only-binary=:all: -d "$tmp" "nvidia-cutlass==$CUTLASS_VERSION"
    unzip -q "$tmp"/nvidia_cutlass-*.whl 'cutlass_library/source/include/*' \
        'cutlass_library/source/tools/util/include/*' -d "$tmp/x"
    $SUDO rm -rf "$cutlass"
    $SUDO mkdir -p "$cutlass/util"
    $SUDO mv "$tmp/x/cutlass_library/source/include" "$cutlass/include"
    $SUDO mv "$tmp/x/cutlass_library/source/tools/util/include" "$cutlass/util/include"
    echo "$CUTLASS_VERSION" | $SUDO tee "$cutlass/VERSION" > /dev/null
    rm -rf "$tmp"
fi
