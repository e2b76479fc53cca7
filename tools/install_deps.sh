#!/bin/bash
# Installs the Debian packages moelab builds and runs with (as root, or through sudo when present),
# two pinned header-only libraries of the CUDA build, unpacked from the Python package registry:
# CUTLASS (the Hopper kernels; nvidia-cutlass, into /opt/moelab/cutlass) and cuDNN's C++ frontend
# (fused attention; nvidia-cudnn-frontend, into /opt/moelab/cudnn_frontend), and the two PyPI
# packages the export test reads its output with (safetensors, tokenizers: small wheels, no PyTorch
# from pip: the tests run Debian's python3-torch under /usr/bin/python3). Safe to run again: what
# is already there is skipped.
#   usage: bash tools/install_deps.sh
set -euo pipefail
source "$(dirname "$0")/usage.sh" "$@"
usage_no_args "$@"
PKGS=(bazel-bootstrap bazel-rules-java g++ libopenblas-dev libopenblas-openmp-dev libopenmpi-dev openmpi-bin libhdf5-dev
      hdf5-tools zlib1g-dev libgtest-dev python3-torch python3-h5py python3-numpy python3-pip fortunes clang
      libclang-rt-14-dev unzip)
PIP_PKGS=(safetensors==0.8.0 tokenizers==0.23.3)
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || { echo "install_deps: run as root, or install sudo" >&2; exit 1; }
    SUDO="sudo"
fi
missing=()
for p in "${PKGS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
    echo "install_deps: all ${#PKGS[@]} packages present"
else
    echo "install_deps: installing ${missing[*]}"
    $SUDO apt-get update -q
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
if /usr/bin/python3 -c "import safetensors, tokenizers" 2>/dev/null; then
    echo "install_deps: safetensors and tokenizers present"
else
    echo "install_deps: pip installing ${PIP_PKGS[*]} into /usr/bin/python3"
    $SUDO /usr/bin/python3 -m pip install -q --break-system-packages --root-user-action=ignore "${PIP_PKGS[@]}"
fi

# Unpacks the include trees of a pinned wheel from the Python package registry into DIR (header-only
# libraries: nothing of the wheel is installed). Skipped where DIR/VERSION says that version.
#   wheel_headers NAME DIR VERSION 'DOWNLOAD FLAGS' MEMBER:DEST...  (MEMBER a folder of the wheel,
#   DEST its place under DIR)
wheel_headers() {
    local name=$1 dir=$2 version=$3 flags=$4 tmp pair
    shift 4
    if [ "$(cat "$dir/VERSION" 2>/dev/null)" = "$version" ]; then
        echo "install_deps: $name $version present"
        return
    fi
    echo "install_deps: installing $name $version headers into $dir"
    tmp=$(mktemp -d)
    # shellcheck disable=SC2086  # flags is a list of words
    python3 -m pip download -q --no-deps --only-binary=:all: $flags -d "$tmp" "$name==$version"
    $SUDO rm -rf "$dir"
    for pair in "$@"; do
        unzip -q "$tmp"/*.whl "${pair%%:*}/*" -d "$tmp/x"
        $SUDO mkdir -p "$(dirname "$dir/${pair#*:}")"
        $SUDO mv "$tmp/x/${pair%%:*}" "$dir/${pair#*:}"
    done
    echo "$version" | $SUDO tee "$dir/VERSION" > /dev/null
    rm -rf "$tmp"
}

# CUTLASS (the Hopper grouped GEMM): its include trees, cute/ and cutlass/, and the util headers.
wheel_headers nvidia-cutlass /opt/moelab/cutlass 4.2.0.0 "" \
    cutlass_library/source/include:include cutlass_library/source/tools/util/include:util/include
# cuDNN's C++ frontend (fused attention): the wheel also holds Python bindings, hence one interpreter
# and platform named; the headers are the same in every wheel. cuDNN itself is not installed: the
# build needs only the cudnn*.h of the CUDA toolkit, and the library is loaded at run time where
# present (docs/gpu.md).
wheel_headers nvidia-cudnn-frontend /opt/moelab/cudnn_frontend 1.16.0 \
    "--python-version 3.11 --platform manylinux_2_28_x86_64" include:include
