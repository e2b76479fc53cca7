// A test seam loaded with LD_PRELOAD: unlink of a path that contains $UNLINK_FAILS_MATCH fails with
// EIO (a disk that cannot remove it), every other unlink removes as usual; for `moelab ckpt clean`'s
// count and exit code where one leftover stays (ckpt_cli_test.sh).
#ifndef _GNU_SOURCE  // dlsym's RTLD_NEXT (the build defines it for every C file)
#define _GNU_SOURCE
#endif
#include <dlfcn.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

int unlink(const char *path) {
    const char *match = getenv("UNLINK_FAILS_MATCH");
    if (match && *match && strstr(path, match)) {
        errno = EIO;
        return -1;
    }
    int (*real)(const char *) = (int (*)(const char *))dlsym(RTLD_NEXT, "unlink");
    return real(path);
}
