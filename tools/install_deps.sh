#!/bin/bash
# Installs the Debian packages moelab builds and runs with (as root, or through sudo when present).
# Safe to run again: apt-get skips what is already there.
set -euo pipefail
PKGS=(bazel-bootstrap bazel-rules-java g++ libopenblas-dev libopenblas-openmp-dev libopenmpi-dev openmpi-bin libhdf5-dev
      hdf5-tools zlib1g-dev libgtest-dev python3-torch python3-h5py python3-numpy fortunes gnuplot-nox clang
      libclang-rt-14-dev)
missing=()
for p in "${PKGS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
    echo "install_deps: all ${#PKGS[@]} packages present"
    exit 0
fi
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
echo "install_deps: installing ${missing[*]}"
$SUDO apt-get update -q
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
