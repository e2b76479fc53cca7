#!/bin/bash
# Installs the Debian packages moelab builds and runs with (as root, or through sudo when present),
# two pinned header-only libraries of the CUDA build, unpacked from the Python package registry:
# CUTLASS (the Hopper kernels; nvidia-cutlass, into /opt/moelab/cutlass) and cuDNN's C++ frontend
# (fused attention; nvidia-cudnn-frontend, into /opt/moelab/cudnn_frontend), and the two PyPI
# packages the export test reads its output with (safetensors, tokenizers: small wheels, no PyTorch
# from pip: the tests run Debian's python3-torch under /usr/bin/python3). Safe to run again: what
# is already there is skipped.
set -euo pipefail
PKGS=(bazel-bootstrap bazel-rules-java g++ libopenblas-dev libopenblas-openmp-dev libopenmpi-dev openmpi-bin libhdf5-dev
      hdf5-tools zlib1g-dev libgtest-dev python3-torch python3-h5py python3-numpy python3-pip fortunes gnuplot-nox clang
      libclang-rt-14-dev unzip)
PIP_PKGS=(safetensors==0.8.0 tokenizers==0.23.3)
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
missing=()
for p in "${PKGS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
    echo "install_deps: all ${#PKGS[@]} packages present"
else
    echo "install_deps: installing ${missing[*]}"
    $SUDO apt-get update -q
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
if /usr/bin/python3 -c "import safetensors, tokenizers" 2>/dev/null; then
    echo "install_deps: safetensors and tokenizers present"
else
    echo "install_deps: pip installing ${PIP_PKGS[*]} into /usr/bin/python3"
    $SUDO /usr/bin/python3 -m pip install -q --break-system-packages --root-user-action=ignore "${PIP_PKGS[@]}"
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

# cuDNN's C++ frontend, header-only: the include/ tree of its wheel (the wheel also holds Python
# bindings, hence one interpreter and platform named; the headers are the same in every wheel).
# cuDNN itself is not installed: the build needs only the cudnn*.h of the CUDA toolkit, and the
# library is loaded at run time where present (docs/gpu.md).
CUDNN_FRONTEND_VERSION=1.16.0
cudnn_fe=/opt/moelab/cudnn_frontend
if [ "$(cat "$cudnn_fe/VERSION" 2>/dev/null)" = "$CUDNN_FRONTEND_VERSION" ]; then
    echo "install_deps: cuDNN frontend $CUDNN_FRONTEND_VERSION present"
else
    echo "install_deps: installing cuDNN frontend $CUDNN_FRONTEND_VERSION headers into $cudnn_fe"
    tmp=$(mktemp -d)
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.11 \
        --platform manylinux_2_28_x86_64 -d "$tmp" "nvidia-cudnn-frontend==$CUDNN_FRONTEND_VERSION"
    unzip -q "$tmp"/nvidia_cudnn_frontend-*.whl 'include/*' -d "$tmp/x"
    $SUDO rm -rf "$cudnn_fe"
    $SUDO mkdir -p "$cudnn_fe"
    $SUDO mv "$tmp/x/include" "$cudnn_fe/include"
    echo "$CUDNN_FRONTEND_VERSION" | $SUDO tee "$cudnn_fe/VERSION" > /dev/null
    rm -rf "$tmp"
fi
