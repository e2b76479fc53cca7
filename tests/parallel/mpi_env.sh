# Sourced by this package's test scripts: how to run mpirun inside Bazel's sandbox.
# - Sandboxes share /tmp and /dev/shm and reuse the same PIDs, so OpenMPI's session directory
#   (/tmp/ompi.<host>.<uid>/pid.<pid>) and shared-memory files (/dev/shm/vader_segment.<host>.<job>,
#   the job id derived from the PID) would collide between tests running at the same time: each
#   script puts them all in its own short directory (short: PMIx puts a Unix socket there).
# - One OpenMP thread per rank keeps oversubscribed ranks (more ranks than cores) from spinning.
# - Several ranks of one GoogleTest binary would race for Bazel's premature-exit marker file.
# - `timeout` bounds every job, so a deadlock fails the test instead of hanging CI.
# - Under --config=debug LeakSanitizer checks every rank at exit, but OpenMPI keeps thousands of
#   allocations from MPI_Init to the end: its libraries' leaks are suppressed. Their frames have
#   no frame pointers, so only the slow unwinder finds them in a leak's stack; a leak of our own
#   still fails the test.
export OMP_NUM_THREADS=1
unset TEST_PREMATURE_EXIT_FILE
MPI_SESSION_DIR=$(mktemp -d /tmp/moelab-mpi.XXXXXX)
trap 'rm -rf "$MPI_SESSION_DIR"' EXIT
export OMPI_MCA_orte_tmpdir_base="$MPI_SESSION_DIR"
export OMPI_MCA_btl_vader_backing_directory="$MPI_SESSION_DIR"
export OMPI_MCA_shmem_mmap_backing_file_base_dir="$MPI_SESSION_DIR"
printf 'leak:%s\n' libmpi.so libopen-rte.so libopen-pal.so libevent libpmix libhwloc >"$MPI_SESSION_DIR/lsan.supp"
export LSAN_OPTIONS="suppressions=$MPI_SESSION_DIR/lsan.supp:fast_unwind_on_malloc=0${LSAN_OPTIONS:+:$LSAN_OPTIONS}"

# mpi NP [mpirun options] PROGRAM [ARGS...]
mpi() {
    local np=$1
    shift
    timeout 300 mpirun --allow-run-as-root --oversubscribe -x OMP_NUM_THREADS -x TEST_TMPDIR -np "$np" "$@"
}

# expect_exit2 NAME REGEX NP ARGS...: exit 2 and REGEX in the output of an NP-rank `moelab train`
# (the sourcing script defines $moelab and $tmp).
expect_exit2() {
    local name=$1 regex=$2 np=$3 rc=0
    shift 3
    mpi "$np" "$moelab" train "$@" >"$tmp/$name.out" 2>&1 || rc=$?
    [ $rc -eq 2 ] || { echo "FAIL: $name exited with $rc, expected 2:"; cat "$tmp/$name.out"; exit 1; }
    grep -Eq -e "$regex" "$tmp/$name.out" || { echo "FAIL: $name: no /$regex/ in:"; cat "$tmp/$name.out"; exit 1; }
    echo "ok: $name"
}
