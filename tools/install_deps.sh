#!/bin/bash
# Installs the Debian packages moelab builds and runs with (as root, or through sudo when present),
# and the two PyPI packages the export test reads its output with (safetensors, tokenizers: small
# wheels, no PyTorch from pip: the tests run Debian's python3-torch under /usr/bin/python3).
# Safe to run again: apt-get and pip skip what is already there.
set -euo pipefail
PKGS=(bazel-bootstrap bazel-rules-java g++ libopenblas-dev libopenblas-openmp-dev libopenmpi-dev openmpi-bin libhdf5-dev
      hdf5-tools zlib1g-dev libgtest-dev python3-torch python3-h5py python3-numpy python3-pip fortunes gnuplot-nox clang
      libclang-rt-14-dev)
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
