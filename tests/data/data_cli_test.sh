#!/bin/bash
# The dataset files end to end through the moelab binary, on the paths a fuzzer found: a FIFO given
# where a file is read (`data prepare --input`, `train --config`, DATA/train.bin and DATA/tokenizer.bin
# for `train` and `sample`) is refused at once with exit 2, never waited on, and a directory as
# DATA/tokenizer.bin is "not a regular file"; `data prepare` replaces its three outputs together or
# not at all: a directory where val.bin must go is exit 2, a failed write (a file-size limit standing
# in for a full disk) exit 1, and either way the old dataset stays whole and nothing new is left. A
# folder another command writes now is refused by prepare, train --out and ckpt clean.
# Every command runs under `timeout`, so that one that blocks fails the test instead of hanging it.
set -euo pipefail
source "$TEST_SRCDIR/moelab/tests/util/cli_lib.sh"  # root, moelab, tmp

expect_exit() {  # expect_exit CODE REGEX COMMAND...: exit status CODE and REGEX in stderr
    local code=$1 re=$2; shift 2
    set +e
    timeout 60 "$@" >/dev/null 2>"$tmp/err"
    local rc=$?
    set -e
    [ $rc -eq "$code" ] || { echo "FAIL: $*: exit $rc, expected $code"; cat "$tmp/err"; exit 1; }
    grep -qE -e "$re" "$tmp/err" || { echo "FAIL: $*: message lacks /$re/:"; cat "$tmp/err"; exit 1; }
}
listing() { ls -A "$1" | tr '\n' ' '; }  # listing DIR: its entries on one line
same_files() {  # same_files A B: the three dataset files of A and B byte for byte
    local f
    for f in tokenizer.bin train.bin val.bin; do
        cmp -s "$1/$f" "$2/$f" || { echo "FAIL: $2/$f differs from $1/$f"; exit 1; }
    done
}
model=(--vocab-size 300 --seq-len 16 --d-model 32 --n-experts 8 --top-k 2 --d-expert 16 --d-ff 64
       --val-every 0 --val-batches 1 --batch-size 2)

make_corpus "$tmp/text"
timeout 60 "$moelab" data prepare --input "$tmp/text" --vocab 300 --out "$tmp/data" >/dev/null
# A vocabulary the text cannot fill is said, with the --vocab-size that train then needs.
timeout 60 "$moelab" data prepare --input "$tmp/text" --vocab 60000 --out "$tmp/big_vocab" 2>"$tmp/vocab.err" >/dev/null
grep -qE "ran out of pairs to merge: vocabulary ([0-9]+), not 60000 \(train with --vocab-size \1\)" "$tmp/vocab.err" ||
    { echo "FAIL: no usable vocabulary warning"; cat "$tmp/vocab.err"; exit 1; }
mkfifo "$tmp/fifo"

# An --input folder that holds an earlier prepare's dataset (its --out was that folder): its
# tokenizer.bin, train.bin and val.bin were read as three more text documents (second fuzzing pass;
# still so into another --out until the sweep of 2026-12-05: exit 0, three times the tokens).
# moelab's outputs are skipped, each with a line; the text beside them makes the same dataset as
# alone, into another folder or into that folder itself.
cp -r "$tmp/text" "$tmp/self"
cp "$tmp/data"/*.bin "$tmp/self/"
timeout 60 "$moelab" data prepare --input "$tmp/self" --vocab 300 --out "$tmp/other" >"$tmp/self.log" 2>&1
for f in "tokenizer.bin: a tokenizer" "train.bin: a token shard" "val.bin: a token shard"; do
    grep -q "prepare: skipped .*self/$f, not text" "$tmp/self.log" ||
        { echo "FAIL: no line for the skipped $f:"; cat "$tmp/self.log"; exit 1; }
done
same_files "$tmp/data" "$tmp/other"
timeout 60 "$moelab" data prepare --input "$tmp/self" --vocab 300 --out "$tmp/self" >/dev/null 2>&1
same_files "$tmp/data" "$tmp/self"
# A file reached twice is read once: named beside the folder that holds it, and a link beside it in
# the folder (both were read twice, exit 0: sweep, 2026-12-06), each skipped with a line; the
# dataset is the folder's alone.
cp -r "$tmp/text" "$tmp/reached"
first=$(ls "$tmp/reached" | head -n 1)
ln -s "$first" "$tmp/reached/zz_link.txt"
timeout 60 "$moelab" data prepare --input "$tmp/reached" "$tmp/reached/$first" --vocab 300 --out "$tmp/once" \
    >"$tmp/once.log" 2>&1 || { echo "FAIL: prepare of a file reached twice:"; cat "$tmp/once.log"; exit 1; }
[ "$(grep -c "prepare: skipped .*: the same file as .*, read once" "$tmp/once.log")" = 2 ] ||
    { echo "FAIL: not two lines for the files reached twice:"; cat "$tmp/once.log"; exit 1; }
same_files "$tmp/data" "$tmp/once"
# Named twice is still refused when a folder reached the file first (review, 2026-12-06), and so is
# a folder named twice (it was walked twice, every file of it skipped with a line, exit 0).
expect_exit 2 "--input names one file twice: .*reached/\\./$first and .*reached/$first" \
    "$moelab" data prepare --input "$tmp/reached" "$tmp/reached/$first" "$tmp/reached/./$first" --vocab 300 --out "$tmp/never"
expect_exit 2 "--input names one folder twice: .*reached and .*reached/." \
    "$moelab" data prepare --input "$tmp/reached" "$tmp/reached/." --vocab 300 --out "$tmp/never"
[ ! -e "$tmp/never" ] || { echo "FAIL: a refused prepare wrote $tmp/never"; exit 1; }
# Named as an input, an earlier output is refused; so is a file of text that this run would replace.
expect_exit 2 "--input .*data/train.bin is a token shard, not text" \
    "$moelab" data prepare --input "$tmp/data/train.bin" --vocab 300 --out "$tmp/never"
mkdir -p "$tmp/named" && cat "$tmp/text"/* >"$tmp/named/train.bin"
expect_exit 2 "--input reads .*named/train.bin, which this run writes \(--out .*named\)" \
    "$moelab" data prepare --input "$tmp/named/train.bin" --vocab 300 --out "$tmp/named"
[ ! -e "$tmp/never" ] || { echo "FAIL: a refused prepare wrote $tmp/never"; exit 1; }

# One input file larger than the machine's memory (a sparse one of 4 TiB) is named as such; it was
# "out of host memory allocating N bytes" with no file named (review, 2026-12-05).
mkdir -p "$tmp/huge" && truncate -s 4T "$tmp/huge/a.txt"
expect_exit 2 "input file .*huge/a.txt holds 4398046511104 bytes, more than this machine's memory" \
    "$moelab" data prepare --input "$tmp/huge" --vocab 300 --out "$tmp/never"
rm -rf "$tmp/huge"

# --val-fraction 0 made a dataset every train refused (an empty val.bin; review, 2026-12-05).
expect_exit 2 "--val-fraction 0 is too small: must be above 0 .0 leaves val.bin empty, and .moelab train. validates on it" \
    "$moelab" data prepare --input "$tmp/text" --vocab 300 --out "$tmp/never" --val-fraction 0
[ ! -e "$tmp/never" ] || { echo "--val-fraction 0 wrote $tmp/never"; exit 1; }
# An empty --out is no folder: refused as a missing one (dropping that check passed every test).
expect_exit 2 "missing --out DIR" "$moelab" data prepare --input "$tmp/text" --vocab 300 --out ""

# --input: a FIFO named is refused; one inside a walked directory is skipped like any non-file.
expect_exit 2 "cannot open input file .*/fifo: not a regular file" \
    "$moelab" data prepare --input "$tmp/fifo" --vocab 300 --out "$tmp/never"
[ ! -e "$tmp/never" ] || { echo "FAIL: a refused input created --out"; exit 1; }
mkfifo "$tmp/text/pipe"
timeout 60 "$moelab" data prepare --input "$tmp/text" --vocab 300 --out "$tmp/walked" >/dev/null
same_files "$tmp/data" "$tmp/walked"
rm "$tmp/text/pipe"

# A directory where val.bin must go: refused before anything is written (it used to leave
# tokenizer.bin and train.bin behind).
mkdir -p "$tmp/blocked/val.bin"
expect_exit 2 "cannot write .*/blocked/val.bin: it is a directory" \
    "$moelab" data prepare --input "$tmp/text" --vocab 300 --out "$tmp/blocked"
[ "$(listing "$tmp/blocked")" = "val.bin " ] || { echo "FAIL: left in blocked/: $(listing "$tmp/blocked")"; exit 1; }

# A full disk, as a 16 KiB file-size limit (the train shard is larger): exit 1, nothing new in a fresh
# directory, and over an existing dataset (of another vocabulary) the old three files as they were.
# SIGXFSZ keeps its default action here: moelab itself must ignore it (it ended prepare by the signal,
# with its temporaries left).
full_disk=(bash -c 'ulimit -f 16; exec "$@"' full_disk)  # then the command
[ "$(stat -c %s "$tmp/data/train.bin")" -gt 16384 ] || { echo "FAIL: the corpus is too small to fill 16 KiB"; exit 1; }
expect_exit 1 "cannot write .*/fresh/train.bin: File too large" \
    "${full_disk[@]}" "$moelab" data prepare --input "$tmp/text" --vocab 300 --out "$tmp/fresh"
[ "$(listing "$tmp/fresh")" = "" ] || { echo "FAIL: left in fresh/: $(listing "$tmp/fresh")"; exit 1; }
timeout 60 "$moelab" data prepare --input "$tmp/text" --vocab 260 --out "$tmp/old" >/dev/null
cp -r "$tmp/old" "$tmp/old.copy"
expect_exit 1 "cannot write .*/old/train.bin: File too large" \
    "${full_disk[@]}" "$moelab" data prepare --input "$tmp/text" --vocab 300 --out "$tmp/old"
same_files "$tmp/old.copy" "$tmp/old"
[ "$(listing "$tmp/old")" = ".moelab.lock tokenizer.bin train.bin val.bin " ] || { echo "FAIL: left in old/: $(listing "$tmp/old")"; exit 1; }

# A file of /proc says it has 0 bytes and holds text (it read as empty: "hold no training text");
# /proc/self/smaps is larger than the reader's first 4 KiB.
timeout 60 "$moelab" data prepare --input /proc/self/smaps --vocab 256 --out "$tmp/proc" >/dev/null
[ "$(stat -c %s "$tmp/proc/train.bin")" -gt 8192 ] || { echo "FAIL: /proc/self/smaps read short"; exit 1; }

# The readers: --config, DATA/train.bin and DATA/tokenizer.bin as FIFOs, tokenizer.bin a directory.
expect_exit 2 "cannot open config file '.*/fifo': not a regular file" "$moelab" train --config "$tmp/fifo" --steps 1
for f in train.bin tokenizer.bin; do
    cp -r "$tmp/data" "$tmp/fifo_$f"
    rm "$tmp/fifo_$f/$f"
    mkfifo "$tmp/fifo_$f/$f"
done
expect_exit 2 "cannot open token shard .*/fifo_train.bin/train.bin: not a regular file" \
    "$moelab" train --data "$tmp/fifo_train.bin" "${model[@]}" --steps 1
expect_exit 2 "cannot open tokenizer file .*/fifo_tokenizer.bin/tokenizer.bin: not a regular file" \
    "$moelab" train --data "$tmp/fifo_tokenizer.bin" "${model[@]}" --steps 1
cp -r "$tmp/data" "$tmp/dir_tok"
rm "$tmp/dir_tok/tokenizer.bin"
mkdir "$tmp/dir_tok/tokenizer.bin"
expect_exit 2 "cannot open tokenizer file .*/dir_tok/tokenizer.bin: not a regular file" \
    "$moelab" train --data "$tmp/dir_tok" "${model[@]}" --steps 1
timeout 300 "$moelab" train --data "$tmp/data" "${model[@]}" --steps 1 --out "$tmp/ckpt" >/dev/null
ckpt="$tmp/ckpt/$(ls "$tmp/ckpt" | grep -E '^step_.*\.h5$' | sort | tail -1)"
expect_exit 2 "cannot open tokenizer file .*/fifo_tokenizer.bin/tokenizer.bin: not a regular file" \
    "$moelab" sample --ckpt "$ckpt" --data "$tmp/fifo_tokenizer.bin" --tokens 2

# One folder written by two commands at once (fourth fuzzing pass: two prepares mixed their files,
# two trains replaced each other's checkpoints without a word, `ckpt clean` deleted a live save's
# part files). A folder another process holds (flock(1) stands in for it) is refused, and nothing in
# it changes.
cp -r "$tmp/data" "$tmp/held"
expect_exit 2 "--out .*/held is in use by another moelab command running now \\(train, data prepare or ckpt clean\\)"     flock "$tmp/held" "$moelab" data prepare --input "$tmp/text" --vocab 260 --out "$tmp/held"
same_files "$tmp/data" "$tmp/held"
expect_exit 2 "--out .*/ckpt is in use by another moelab command running now \\(train, data prepare or ckpt clean\\)"     flock "$tmp/ckpt" "$moelab" train --data "$tmp/data" "${model[@]}" --steps 2 --out "$tmp/ckpt"
touch "$tmp/ckpt/step_9.h5.tmp-999999999"
expect_exit 2 "ckpt clean: .*/ckpt is in use by another moelab command running now \\(train, data prepare or ckpt clean\\)" flock "$tmp/ckpt" "$moelab" ckpt clean "$tmp/ckpt"
[ "$(ls "$tmp/ckpt" | tr '\n' ' ')" = "step_1.h5 step_9.h5.tmp-999999999 " ] || { echo "FAIL: held ckpt/ changed: $(listing "$tmp/ckpt")"; exit 1; }
# A train opens its --data under the shared lock of the dataset's lock file, which a prepare
# writing the dataset holds alone: a train whose prepare ran meanwhile trained on files of two
# prepares, and ranks of one job on two datasets (sweep, 2026-12-05). A writer's lock (flock -x)
# refuses the train; a reader's (flock -s) the prepare, which then changes nothing. The folder's own
# lock (a train saving into its --data) keeps no reader out (review, 2026-12-05).
lockf="$tmp/held/.moelab.lock"
[ -f "$lockf" ] || { echo "FAIL: prepare made no $lockf"; exit 1; }
expect_exit 2 "--data .*/held is being written by a moelab data prepare running now" \
    flock "$lockf" "$moelab" train --data "$tmp/held" "${model[@]}" --steps 1
expect_exit 2 "--out .*/held is being read by a moelab train starting now" \
    flock -s "$lockf" "$moelab" data prepare --input "$tmp/text" --vocab 260 --out "$tmp/held"
same_files "$tmp/data" "$tmp/held"
flock -s "$lockf" "$moelab" train --data "$tmp/held" "${model[@]}" --steps 1 >/dev/null  # readers share it
flock "$tmp/held" "$moelab" train --data "$tmp/held" "${model[@]}" --steps 1 >/dev/null
# An output that is a symbolic link into another dataset is refused, and that dataset stays whole:
# the rename replaced the link, and for a while the link's target was written, outside the folder
# this prepare locked (review, 2026-12-05).
mkdir -p "$tmp/linked" && ln -s "$tmp/held/tokenizer.bin" "$tmp/linked/tokenizer.bin"
expect_exit 2 "cannot write .*/linked/tokenizer.bin: a symbolic link: name the file it points to" \
    "$moelab" data prepare --input "$tmp/text" --vocab 260 --out "$tmp/linked"
same_files "$tmp/data" "$tmp/held"
[ "$(listing "$tmp/linked")" = "tokenizer.bin " ] || { echo "FAIL: left in linked/: $(listing "$tmp/linked")"; exit 1; }

# The temporaries of a prepare that was killed (SIGKILL) are removed by the next prepare into the
# folder (fourth fuzzing pass: they stayed for ever, 36 MB a run, and `ckpt clean` ignores them);
# those of a live process and other names stay.
sleep 0 & dead=$!
wait $dead
sleep 60 & alive=$!
cp -r "$tmp/data" "$tmp/killed"
touch "$tmp/killed/train.bin.tmp-$dead" "$tmp/killed/val.bin.tmp-$dead" "$tmp/killed/val.bin.tmp-$alive" \
      "$tmp/killed/notes.tmp-$dead"
timeout 60 "$moelab" data prepare --input "$tmp/text" --vocab 300 --out "$tmp/killed" > "$tmp/killed.log"
grep -q "removed .*/killed/train.bin.tmp-$dead (left by a prepare that was killed)" "$tmp/killed.log" ||
    { echo "FAIL: no removal reported:"; cat "$tmp/killed.log"; exit 1; }
kill $alive
[ "$(listing "$tmp/killed")" = ".moelab.lock notes.tmp-$dead tokenizer.bin train.bin val.bin val.bin.tmp-$alive " ] ||
    { echo "FAIL: left in killed/: $(listing "$tmp/killed")"; exit 1; }
echo "data_cli_test: ok"
