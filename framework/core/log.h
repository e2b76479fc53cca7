// Logging with a rank prefix. Rank and world size are set once at start-up by comm_init
// (parallel/comm.c); a one-process run prints no prefix.
#ifndef MOELAB_CORE_LOG_H
#define MOELAB_CORE_LOG_H

#ifdef __cplusplus
extern "C" {
#endif

void core_set_rank(int rank, int world);
int core_rank(void);

// Quiet mode (tests) silences core_info; warnings and errors always print.
void core_set_quiet(int quiet);

// "[rank r] message\n" on stdout (every rank), flushed.
void core_info(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
// Flushes stdout and says whether everything written to it reached its destination: 0, or the
// errno of the first failure (ENOSPC when it is a full disk, EPIPE when the reader left). A
// command's output that was lost must not end with exit 0.
int core_stdout_status(void);
// fflush(stdout), the failure's errno kept for core_stdout_status: commands flush their output with
// it (a failed fflush whose result is dropped loses the cause).
void core_stdout_flush(void);
// The same on rank 0 only.
void core_info0(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
// "moelab: warning [rank r]: message\n" on stderr.
void core_warn(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

// A progress line on stderr, for a terminal only (the caller checks): "\r<message>" and an erase to
// the end of the line, each call overwriting the last. Until core_progress_end erases it, every
// message above and every error erases it first, so that none is printed onto it.
void core_progress(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void core_progress_end(void);

// Fault-injection seams for tests, the only environment variables moelab reads besides the MPI
// launcher's (docs/architecture.md lists them): the value of `name`, which must begin with
// MOELAB_TEST_, or NULL when unset. A set seam is announced once per name with core_warn, so that
// no real run carries one unnoticed. Every setting of a run is a config key instead.
const char *core_test_seam(const char *name);

#ifdef __cplusplus
}
#endif
#endif
