// Logging with a rank prefix. Rank and world size are set once at start-up by the process grid;
// a one-process run prints no prefix.
#ifndef MOELAB_CORE_LOG_H
#define MOELAB_CORE_LOG_H

#ifdef __cplusplus
extern "C" {
#endif

void core_set_rank(int rank, int world);
int core_rank(void);
int core_world(void);

// Quiet mode (tests) silences core_info; warnings and errors always print.
void core_set_quiet(int quiet);

// "[rank r] message\n" on stdout (every rank), flushed.
void core_info(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
// The same on rank 0 only.
void core_info0(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
// "moelab: warning [rank r]: message\n" on stderr.
void core_warn(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

#ifdef __cplusplus
}
#endif
#endif
