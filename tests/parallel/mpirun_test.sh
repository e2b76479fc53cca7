#!/bin/bash
# Runs a test program under mpirun: mpirun_test.sh NP PROGRAM [ARGS...] (see mpi_env.sh).
set -euo pipefail
source "$TEST_SRCDIR/moelab/tests/parallel/mpi_env.sh"
mpi "$@"
