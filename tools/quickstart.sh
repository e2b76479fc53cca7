#!/bin/bash
# The main job, from a fresh clone: install packages, build, prepare the fortunes corpus with a BPE
# vocabulary of 2048, train the quickstart model on the CPU, and compare the final validation loss
# with the loss of the training tokens' unigram model on the same tokens (the best a model that
# ignores context can do): exit 1 if it is not below it.
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
# The checkpoint this run saved last (out/ckpt may also hold an earlier run's), with paths that work
# from any folder.
last=$(sed -n 's/^saved //p' out/quickstart.log | tail -1)
[ -z "$last" ] ||
    echo "Sample more: $PWD/out/moelab sample --ckpt $PWD/$last --data $PWD/out/data --prompt \"The\" --tokens 200"
# The claim of the job, checked: the final validation loss below the training tokens' unigram model's.
grep -q "the model uses context" out/quickstart.log ||
    { echo "quickstart: the validation loss did not fall below the unigram model's (train longer)" >&2; exit 1; }
