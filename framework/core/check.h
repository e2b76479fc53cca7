// Check macros and fatal errors. Every failed check or library call ends the process with one
// message naming file, line and rank, and a non-zero exit; a multi-rank run installs an abort hook
// (MPI_Abort) so that one rank's failure ends every rank instead of leaving the others hanging.
#ifndef MOELAB_CORE_CHECK_H
#define MOELAB_CORE_CHECK_H

// C11 spells "does not return" `noreturn` (stdnoreturn.h); C++ (nvcc, the GoogleTest suites) spells
// it [[noreturn]]. One macro for both.
#ifdef __cplusplus
#define CORE_NORETURN [[noreturn]]
#else
#include <stdnoreturn.h>
#define CORE_NORETURN noreturn
#endif

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

// Exit codes: 1 for a runtime failure, 2 for bad input (config, command line, data, checkpoint).
enum { CORE_EXIT_FAILURE = 1, CORE_EXIT_USAGE = 2 };

// Prints "moelab: error [rank r] file:line: message" and exits with `code` through the abort hook.
CORE_NORETURN void core_fatal_at(const char *file, int line, int code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

// Prints "moelab: error: message" (no source location: the message is for the user) and exits 2.
CORE_NORETURN void core_usage_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
// The same line with exit 1: the environment failed (memory, a write mid-run), not the program.
CORE_NORETURN void core_failure_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

// The same line for a failed file operation whose errno is err: exit 1 when the environment failed
// (a full disk or quota, a file-size limit, an I/O error, no memory or file handles left), else exit 2 (the path the
// user gave is wrong: missing, not a directory, not permitted). core_errno_exit_code(err) says which.
CORE_NORETURN void core_path_error(int err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
int core_errno_exit_code(int err);

// Prints the same line as core_usage_error but returns CORE_EXIT_USAGE instead of exiting, for
// commands that hand their exit code back to main (and to tests that call them).
int core_usage_report(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
// The same line for a run that ends on its own failure (not bad input): returns CORE_EXIT_FAILURE, so
// that every rank can leave through its normal exit path together.
int core_failure_report(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

// Formats a message into the caller's buffer of cap bytes (cut to fit, NUL-terminated; nothing when
// buf is NULL): how the functions that hand an error back to their caller (a char *err argument)
// write it.
void core_set_err(char *buf, size_t cap, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

// The hook that ends the process; the default is exit(code). The MPI backend swaps in MPI_Abort.
typedef void (*core_abort_fn)(int code);
void core_set_abort_hook(core_abort_fn fn);
// A function run once when an error is about to end the process, before its temporaries are removed
// and the abort hook runs: for an output of several files that only its writer can name (the parts
// of a checkpoint whose index failed). NULL clears it.
void core_set_failure_cleanup(void (*fn)(void));

#define CHECK(cond, ...)                                                   \
    do {                                                                   \
        if (!(cond)) core_fatal_at(__FILE__, __LINE__, CORE_EXIT_FAILURE, __VA_ARGS__); \
    } while (0)

#define FATAL(...) core_fatal_at(__FILE__, __LINE__, CORE_EXIT_FAILURE, __VA_ARGS__)

#ifdef __cplusplus
}
#endif
#endif
