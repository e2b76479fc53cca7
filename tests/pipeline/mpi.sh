#!/bin/bash
# mpi.sh NP PROGRAM [ARGS...]: runs PROGRAM on NP ranks of this machine under a 300 s `timeout`
# (a deadlock fails the test instead of hanging CI). Also sourced by the CLI test for `mpi NP ...`.
# - Sandboxed tests share /tmp and reuse PIDs: each run gets its own short OpenMPI session directory.
# - One OpenMP thread per rank: the ranks oversubscribe CI's 2 cores.
# - Several ranks of one GoogleTest binary would race for Bazel's premature-exit marker file.
set -euo pipefail
export OMP_NUM_THREADS=1
unset TEST_PREMATURE_EXIT_FILE
MPI_SESSION_DIR=$(mktemp -d /tmp/moelab-pp.XXXXXX)
trap 'rm -rf "$MPI_SESSION_DIR"' EXIT
export OMPI_MCA_orte_tmpdir_base="$MPI_SESSION_DIR"

mpi() {
    local np=$1
    shift
    timeout 300 mpirun --allow-run-as-root --oversubscribe -x OMP_NUM_THREADS -x TEST_TMPDIR -np "$np" "$@"
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then mpi "$@"; fi
