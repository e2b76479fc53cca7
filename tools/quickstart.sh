#!/bin/bash
# The main job, from a fresh clone: install packages, build, prepare the fortunes corpus with a BPE
# vocabulary of 2048, train the quickstart model on the CPU, and compare the final validation loss
# with the corpus's unigram entropy (what a model that ignores context would score).
#   usage: bash tools/quickstart.sh [moelab train options, e.g. --steps 200]
set -euo pipefail
source "$(dirname "$0")/usage.sh" "$@"
cd "$(dirname "$0")/.."
bash tools/install_deps.sh
bazel build //tools:moelab
mkdir -p out
cp -f "$(bazel info bazel-bin)/tools/moelab" out/moelab
out/moelab data prepare --input /usr/share/games/fortunes --vocab 2048 --out out/data
out/moelab train --config configs/quickstart.cfg --data out/data --metrics out/quickstart.jsonl --out out/ckpt "$@" |
    tee out/quickstart.log
# The checkpoint this run saved last (out/ckpt may also hold an earlier run's).
last=$(sed -n 's/^saved //p' out/quickstart.log | tail -1)
[ -z "$last" ] || echo "Sample more: out/moelab sample --ckpt $last --prompt \"The\" --tokens 200"
