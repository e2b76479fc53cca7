// A test seam linked into a test binary (tests/util:fsync_fails): its own fsync, which the dynamic
// linker finds before the C library's, fails with a chosen errno for directories or for other files,
// as a disk that reports a write error only at the sync, or a file system that cannot sync a
// directory, would. Everything else syncs as usual.
#ifndef MOELAB_TESTS_UTIL_FSYNC_FAILS_H
#define MOELAB_TESTS_UTIL_FSYNC_FAILS_H

#ifdef __cplusplus
extern "C" {
#endif

typedef enum { FSYNC_FAILS_NONE, FSYNC_FAILS_FILES, FSYNC_FAILS_DIRS } FsyncFailsWhat;

// From now on fsync of `what` fails with errno err (FSYNC_FAILS_NONE: every fsync syncs).
void fsync_fails_set(FsyncFailsWhat what, int err);

#ifdef __cplusplus
}
#endif

#endif
