// A test seam loaded with LD_PRELOAD: in the ranks $SLOW_OPEN_RANKS ("2,3"; "any" in a process of
// no MPI job too) of an Open MPI job, open() of a path that contains $SLOW_OPEN_MATCH waits one
// second first, so that these ranks read their checkpoint last (ckpt_pp_cli_test.sh: the other
// ranks must not act on a resume before it has passed its checks). With $SLOW_OPEN_UNLINK set, the
// file is removed instead, as a running train's --keep prunes a checkpoint between a reader's checks
// and its open (ckpt_cli_test.sh).
#ifndef _GNU_SOURCE  // dlsym's RTLD_NEXT (the build defines it for every C file)
#define _GNU_SOURCE
#endif
#include <dlfcn.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static void maybe_wait(const char *path) {
    const char *m = getenv("SLOW_OPEN_MATCH"), *ranks = getenv("SLOW_OPEN_RANKS");
    const char *rank = getenv("OMPI_COMM_WORLD_RANK");
    if (!m || !*m || !ranks || !strstr(path, m)) return;
    if (strcmp(ranks, "any") != 0) {
        char list[256], me[32];
        snprintf(list, sizeof list, ",%s,", ranks);
        snprintf(me, sizeof me, ",%s,", rank ? rank : "");
        if (!rank || !strstr(list, me)) return;
    }
    if (getenv("SLOW_OPEN_UNLINK")) unlink(path);
    else sleep(1);
}

// open and open64 (the same call where off_t is 64 bits; HDF5 may use either), after the wait.
static int forward(const char *sym, const char *path, int flags, mode_t mode) {
    maybe_wait(path);
    int (*real)(const char *, int, ...) = (int (*)(const char *, int, ...))dlsym(RTLD_NEXT, sym);
    return real(path, flags, mode);
}

// The mode argument exists only with O_CREAT or O_TMPFILE.
#define MODE_OF(flags, ap) ((flags) & (O_CREAT | O_TMPFILE) ? (mode_t)va_arg(ap, int) : 0)

int open(const char *path, int flags, ...) {
    va_list ap;
    va_start(ap, flags);
    const mode_t mode = MODE_OF(flags, ap);
    va_end(ap);
    return forward("open", path, flags, mode);
}

int open64(const char *path, int flags, ...) {
    va_list ap;
    va_start(ap, flags);
    const mode_t mode = MODE_OF(flags, ap);
    va_end(ap);
    return forward("open64", path, flags, mode);
}
