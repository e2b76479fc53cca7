#!/bin/bash
# mpirun inside Bazel's sandbox for this package's tests, the way tests/parallel/mpi_env.sh explains:
# a private OpenMPI session and shared-memory directory per test (concurrent sandboxes share /tmp and
# /dev/shm and reuse PIDs), one OpenMP thread per rank, no premature-exit marker races, and `timeout`
# on every job. Sourced, it defines `mpi NP PROGRAM [ARGS...]`; run as a test, `mpi.sh NP PROGRAM
# [ARGS...]` runs that one job.
export OMP_NUM_THREADS=1
unset TEST_PREMATURE_EXIT_FILE
MPI_SESSION_DIR=$(mktemp -d /tmp/moelab-eplb.XXXXXX)
trap 'rm -rf "$MPI_SESSION_DIR"' EXIT
export OMPI_MCA_orte_tmpdir_base="$MPI_SESSION_DIR"
export OMPI_MCA_btl_vader_backing_directory="$MPI_SESSION_DIR"
export OMPI_MCA_shmem_mmap_backing_file_base_dir="$MPI_SESSION_DIR"

mpi() {
    local np=$1
    shift
    timeout 300 mpirun --allow-run-as-root --oversubscribe -x OMP_NUM_THREADS -np "$np" "$@"
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
    set -euo pipefail
    mpi "$@"
fi
