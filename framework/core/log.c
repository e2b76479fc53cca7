// Logging and fatal errors: rank-prefixed lines on stdout/stderr, and the abort hook that ends a
// failed run on every rank.
#include "framework/core/check.h"
#include "framework/core/file.h"
#include "framework/core/log.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <stdlib.h>

static int g_rank = 0, g_world = 1, g_quiet = 0;

static void default_abort(int code) { exit(code); }
static core_abort_fn g_abort = default_abort;

void core_set_rank(int rank, int world) { g_rank = rank; g_world = world; }
int core_rank(void) { return g_rank; }
void core_set_quiet(int quiet) { g_quiet = quiet; }
void core_set_abort_hook(core_abort_fn fn) { g_abort = fn ? fn : default_abort; }
static void (*g_cleanup)(void);
void core_set_failure_cleanup(void (*fn)(void)) { g_cleanup = fn; }

// Every fatal error ends here. The temporaries go first: the abort hook (MPI_Abort) may skip the
// exit handlers that would remove them.
static CORE_NORETURN void end_process(int code) {
    void (*cleanup)(void) = g_cleanup;
    g_cleanup = NULL;  // once: an error inside it ends the process here again
    if (cleanup) cleanup();
    core_temp_remove_all();
    g_abort(code);
    exit(code);  // the hook must not return; make sure
}

// A progress line open on stderr (core_progress): the next message would continue it, so every
// message of this file erases it first.
static int g_progress = 0;

void core_progress(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fputc('\r', stderr);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputs("\033[K", stderr);
    fflush(stderr);
    g_progress = 1;
}

void core_progress_end(void) {
    if (!g_progress) return;
    fputs("\r\033[K", stderr);
    fflush(stderr);
    g_progress = 0;
}

// The errno of the first failed flush of stdout: the later flushes of a stream in error fail with
// no errno of their own, so core_stdout_status would report EIO instead of the cause (ENOSPC, EPIPE).
static int g_stdout_err = 0;

static void vprint(FILE *f, const char *head, const char *fmt, va_list ap) {
    core_progress_end();
    if (g_world > 1) fprintf(f, "%s[rank %d] ", head, g_rank);
    else fputs(head, f);
    vfprintf(f, fmt, ap);
    fputc('\n', f);
    if (f == stdout) core_stdout_flush();
    else fflush(f);
}

void core_stdout_flush(void) {
    errno = 0;
    if (fflush(stdout) != 0 && !g_stdout_err) g_stdout_err = errno;
}

int core_stdout_status(void) {
    core_stdout_flush();
    if (g_stdout_err || !ferror(stdout)) return g_stdout_err;
    // A write that printf made itself (its buffer full) failed, and stdio dropped the buffer and
    // kept no errno: `moelab train --help` (8 KiB) into /dev/full said "Input/output error". One
    // more byte, written now, tells the cause (ENOSPC, EPIPE); EIO where that one goes through.
    clearerr(stdout);
    errno = 0;
    if ((fputc('\n', stdout) == EOF || fflush(stdout) != 0) && errno) g_stdout_err = errno;
    return g_stdout_err ? g_stdout_err : EIO;
}

void core_info(const char *fmt, ...) {
    if (g_quiet) return;
    va_list ap;
    va_start(ap, fmt);
    vprint(stdout, "", fmt, ap);
    va_end(ap);
}

void core_info0(const char *fmt, ...) {
    if (g_quiet || g_rank != 0) return;
    va_list ap;
    va_start(ap, fmt);
    vprint(stdout, "", fmt, ap);
    va_end(ap);
}

void core_warn(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vprint(stderr, "moelab: warning ", fmt, ap);
    va_end(ap);
}

// Writes "<head><message>\n" to stderr in one piece: the ranks of a job share stderr, and their lines
// must not mix.
static void error_line(const char *head, const char *fmt, va_list ap) {
    core_progress_end();
    fflush(stdout);
    char line[4096];
    int k = snprintf(line, sizeof line, "%s", head);
    vsnprintf(line + k, sizeof line - (size_t)k - 1, fmt, ap);
    strcat(line, "\n");
    fputs(line, stderr);
    fflush(stderr);
}

void core_fatal_at(const char *file, int line, int code, const char *fmt, ...) {
    char head[512];
    snprintf(head, sizeof head, "moelab: error [rank %d] %s:%d: ", g_rank, file, line);
    va_list ap;
    va_start(ap, fmt);
    error_line(head, fmt, ap);
    va_end(ap);
    end_process(code);
}

static void usage_line(const char *fmt, va_list ap) {
    char head[64];
    if (g_world > 1) snprintf(head, sizeof head, "moelab: error [rank %d]: ", g_rank);
    else snprintf(head, sizeof head, "moelab: error: ");
    error_line(head, fmt, ap);
}

// The usage_line of a variadic function's own arguments (fmt is its last named parameter).
#define USAGE_LINE(fmt)            \
    do {                           \
        va_list ap;                \
        va_start(ap, fmt);         \
        usage_line(fmt, ap);       \
        va_end(ap);                \
    } while (0)

void core_usage_error(const char *fmt, ...) {
    USAGE_LINE(fmt);
    end_process(CORE_EXIT_USAGE);
}

void core_failure_error(const char *fmt, ...) {
    USAGE_LINE(fmt);
    end_process(CORE_EXIT_FAILURE);
}

int core_errno_exit_code(int err) {
    switch (err) {
    case ENOSPC: case EDQUOT: case EFBIG: case EIO: case ENOMEM: case EMFILE: case ENFILE: return CORE_EXIT_FAILURE;
    default: return CORE_EXIT_USAGE;
    }
}

void core_path_error(int err, const char *fmt, ...) {
    USAGE_LINE(fmt);
    end_process(core_errno_exit_code(err));
}

int core_usage_report(const char *fmt, ...) {
    USAGE_LINE(fmt);
    return CORE_EXIT_USAGE;
}

int core_failure_report(const char *fmt, ...) {
    USAGE_LINE(fmt);
    return CORE_EXIT_FAILURE;
}

void core_set_err(char *buf, size_t cap, const char *fmt, ...) {
    if (!buf || cap == 0) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, cap, fmt, ap);
    va_end(ap);
}

const char *core_test_seam(const char *name) {
    static const char *announced[8];  // the seams already announced (there are six)
    CHECK(strncmp(name, "MOELAB_TEST_", 12) == 0, "test seam %s lacks the MOELAB_TEST_ prefix", name);
    const char *v = getenv(name);
    if (!v) return NULL;
    int i = 0;
    while (i < 8 && announced[i] && strcmp(announced[i], name) != 0) i++;
    if (i < 8 && !announced[i]) {
        announced[i] = name;
        core_warn("test seam %s=%s is set: fault injection for tests, never for a real run", name, v);
    }
    return v;
}
