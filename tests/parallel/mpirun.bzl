# Macros for the tests that run under mpirun (tests/parallel, tests/checkpoints, tests/gpu), so that
# each BUILD file names a suite once instead of repeating a rule per number of ranks.

def mpirun_tests(binary, ranks, **kwargs):
    """One sh_test BINARY_npN per N in ranks: the cc_binary :BINARY under `mpirun -np N`.

    mpirun_test.sh runs it through mpi_env.sh (its own short session folder, `timeout 300`).
    kwargs (size, timeout, tags) go to every sh_test.
    """
    for np in ranks:
        native.sh_test(
            name = "%s_np%d" % (binary, np),
            srcs = ["//tests/parallel:mpirun_test.sh"],
            args = [str(np), "$(location :%s)" % binary],
            data = [":" + binary, "//tests/parallel:mpi_env.sh"],
            **kwargs
        )

def mpirun_cli_test(name, data = [], **kwargs):
    """The sh_test NAME of the script NAME.sh: `moelab` end to end, in one process and under mpirun.

    The script sources tests/util/cli_lib.sh and tests/parallel/mpi_env.sh; data adds what else it
    runs. kwargs (size, timeout) go to the sh_test.
    """
    native.sh_test(
        name = name,
        srcs = [name + ".sh"],
        data = [
            "//tests/parallel:mpi_env.sh",
            "//tests/util:cli_lib.sh",
            "//tools:moelab",
        ] + data,
        **kwargs
    )
