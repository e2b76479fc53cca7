# Sourced first by the end-to-end `moelab` test scripts (tests/parallel, tests/checkpoints,
# tests/tools): where the binary and the scratch folder are, the tiny model of the `moelab train`
# runs, the corpus they train on, and comparisons of runs through their metrics files (JSON lines)
# and their checkpoints. Each check prints "FAIL: ..." and exits 1 on a mismatch.
py=/usr/bin/python3

# Every script's setting: the tree of its runfiles, the moelab binary, its scratch folder.
root="$TEST_SRCDIR/moelab"
moelab="$root/tools/moelab"
tmp="${TEST_TMPDIR:-/tmp}"

# closed_stdout CMD...: runs CMD with its standard output a pipe whose reader is already gone (a
# `| head` that has left), without a race; returns its exit code (128 + n where signal n ended it).
closed_stdout() {
    "$py" -c 'import os, subprocess, sys
r, w = os.pipe()
os.close(r)
rc = subprocess.call(sys.argv[1:], stdout=w)  # the child gets the default SIGPIPE back
sys.exit(128 - rc if rc < 0 else rc)' "$@"
}

# The runs' common arguments: the data of `prepare_corpus "$tmp/data"`, no validation, and the tiny
# model (8 experts, which EP 1, 2 and 4 divide). Each script adds its steps, layers, optimizer and
# layout.
tiny=(--data "$tmp/data" --val-every 0 --val-batches 1 --seq-len 16 --d-model 32 --n-experts 8 --top-k 2
      --d-expert 16 --d-ff 64)
# The optimizer of the runs that layouts are compared on: every step logged, one warm-up step, and a
# learning rate and router bias rate large enough that three steps move the weights visibly.
compared=(--log-every 1 --warmup-steps 1 --lr 0.01 --bias-rate 0.01 --balance-alpha 0.01)

# make_corpus DIR: writes DIR/corpus.txt, 48 KB of word salad from a fixed generator (Park-Miller,
# exact in awk's doubles), identical on every machine. The layout tests compare runs at 1e-5: a corpus
# taken from files of the tree would change with every edit to them, and with it which top-k choices
# are near-ties that summation order can flip.
make_corpus() {
    mkdir -p "$1"
    awk 'BEGIN {
        n = split("the of and a to in is it that was he for on are with as his they be at one have " \
                  "this from or had by word but what some we can out other were all there when up use " \
                  "your how said an each she which do their time if will way about many then them " \
                  "write would like so these her long make thing see him two has look more day could " \
                  "go come did number sound no most people my over know water than call first who may " \
                  "down side been now find expert router token layer", w, " ")
        x = 20261128
        for (bytes = 0; bytes < 48000;) {
            x = (x * 16807) % 2147483647; len = 4 + x % 9; s = ""
            for (i = 0; i < len; i++) { x = (x * 16807) % 2147483647; s = s (i ? " " : "") w[1 + x % n] }
            x = (x * 16807) % 2147483647
            s = toupper(substr(s, 1, 1)) substr(s, 2) (x % 5 ? "." : "?") (x % 3 ? " " : "\n")
            printf "%s", s; bytes += length(s)
        }
    }' >"$1/corpus.txt"
}

# prepare_corpus OUT: the byte-level (vocabulary 256) training data of make_corpus, in OUT.
prepare_corpus() {
    make_corpus "$1.txt"
    "$moelab" data prepare --input "$1.txt" --vocab 256 --out "$1" --val-fraction 0.1 >/dev/null
}

# expect_usage_of COMMAND REGEX ARGS...: `moelab COMMAND ARGS...` ends with exit code 2 and REGEX in its
# stderr, the usage error of bad input. Its stdout and stderr stay in $tmp/out and $tmp/err for the
# caller's further checks.
expect_usage_of() {
    local cmd=$1 re=$2
    shift 2
    set +e
    "$moelab" "$cmd" "$@" >"$tmp/out" 2>"$tmp/err"
    local rc=$?
    set -e
    [ $rc -eq 2 ] || { echo "$cmd $*: exit $rc, expected 2"; cat "$tmp/err"; exit 1; }
    grep -qE -e "$re" "$tmp/err" || { echo "$cmd $*: message lacks /$re/:"; cat "$tmp/err"; exit 1; }
}

# steps FILE DIGITS: the metrics lines of the steps whose numbers are among DIGITS (e.g. 456), without
# the timing field.
steps() { sed 's/, "tokens_per_s": [0-9.]*//' "$1" | grep -E "\"step\": [$2]"; }

# same_steps REF RUN DIGITS: those steps' lines identical in both runs (every printed digit), one line
# per digit in each (two runs without them compared equal).
same_steps() {
    local f
    for f in "$1" "$2"; do
        [ "$(steps "$f" "$3" | wc -l)" -eq ${#3} ] || { echo "FAIL: $f lacks some of steps [$3]"; exit 1; }
    done
    diff <(steps "$1" "$3") <(steps "$2" "$3") || { echo "FAIL: steps [$3] of $2 differ from $1"; exit 1; }
}

# close_steps REF RUN DIGITS: loss, ce and grad_norm of those steps within 1e-5 relative (+1e-6) of
# REF's, one value per step.
close_steps() {
    local f
    for f in loss ce grad_norm; do
        paste <(steps "$1" "$3" | grep -o "\"$f\": [-0-9.e]*" | awk '{print $2}') \
              <(steps "$2" "$3" | grep -o "\"$f\": [-0-9.e]*" | awk '{print $2}') |
            awk -v run="$2" -v f=$f -v n=${#3} '
                { d = $1 - $2; if (d < 0) d = -d; s = $1 < 0 ? -$1 : $1
                  if (d > 1e-5 * s + 1e-6) { printf "FAIL: %s: %s %s vs %s (value %d)\n", run, f, $2, $1, NR; bad = 1 } }
                END { if (NR != n) { printf "FAIL: %s has %d %s values, expected %d\n", run, NR, f, n; bad = 1 }
                      exit bad }' || exit 1
    done
}

# same_checkpoints A B [TOL]: checkpoint B holds A's weights and AdamW moments (the logical tensors:
# each expert once, whatever its slots), and A's EPLB placement where A has one; bit for bit and
# all of /state, or with TOL (another run of the same steps: a layout, EPLB, ZeRO-1) each tensor
# within TOL of its largest value and /state but the run's own lineage. TOL "bits": another run
# whose tensors must still be equal bit for bit.
same_checkpoints() {
    "$py" - "$1" "$2" "${3:-0}" <<'PY' || exit 1
import sys, h5py, numpy as np
a, b = (h5py.File(p, "r") for p in sys.argv[1:3])
other_run = sys.argv[3] != "0"
tol = 0.0 if sys.argv[3] == "bits" else float(sys.argv[3])
name = lambda p: "/".join(p.split("/")[-2:])
n = 0
for g in ("model", "optim/m", "optim/v"):
    assert set(a[g]) == set(b[g]), g
    for k in a[g]:
        x, y = a[g][k][...], b[g][k][...]
        if tol == 0:
            same = np.array_equal(x, y)  # checkpoints hold no NaN
        else:
            x, y = x.astype(np.float64), y.astype(np.float64)
            same = np.abs(x - y).max() <= tol * max(np.abs(x).max(), 1e-30)
        assert same, "FAIL: %s differs from %s in %s/%s" % (name(sys.argv[2]), name(sys.argv[1]), g, k)
        n += 1
sa, sb = dict(a["state"].attrs), dict(b["state"].attrs)
if other_run:
    sa.pop("lineage", None), sb.pop("lineage", None)
assert sa.keys() == sb.keys() and all(np.array_equal(sa[k], sb[k]) for k in sa), ("FAIL: /state", sa, sb)
if "eplb/phy2log" in a:
    assert np.array_equal(a["eplb/phy2log"][...], b["eplb/phy2log"][...]), "FAIL: the EPLB placements differ"
print("ok: %s matches %s: %d datasets %s, /state" % (name(sys.argv[2]), name(sys.argv[1]), n,
      "bit for bit" if tol == 0 else "within %g" % tol))
PY
}
