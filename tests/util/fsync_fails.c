// The fsync of tests/util/fsync_fails.h: fails as set, else the system call itself.
#include "tests/util/fsync_fails.h"

#include <errno.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

static FsyncFailsWhat g_what = FSYNC_FAILS_NONE;
static int g_err;

void fsync_fails_set(FsyncFailsWhat what, int err) {
    g_what = what;
    g_err = err;
}

int fsync(int fd) {
    struct stat st;
    if (g_what != FSYNC_FAILS_NONE && fstat(fd, &st) == 0 &&
        (S_ISDIR(st.st_mode) != 0) == (g_what == FSYNC_FAILS_DIRS)) {
        errno = g_err;
        return -1;
    }
    return (int)syscall(SYS_fsync, fd);
}
