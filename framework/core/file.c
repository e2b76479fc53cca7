// Inputs by path that must be regular files, the same-file test, outputs written whole or not at
// all, and the final state of stdout (file.h).
#include "framework/core/file.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

FILE *core_open_regular(const char *path, const char **why) {
    // O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer for ever.
    int fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0) {
        *why = strerror(errno);
        return NULL;
    }
    struct stat sb;
    if (fstat(fd, &sb) != 0) {
        *why = strerror(errno);
        close(fd);
        return NULL;
    }
    if (!S_ISREG(sb.st_mode)) {
        *why = "not a regular file";
        close(fd);
        return NULL;
    }
    // Blocking again for the reads (a regular file never blocks, but stdio should see no flag).
    FILE *f = fcntl(fd, F_SETFL, 0) == 0 ? fdopen(fd, "rb") : NULL;
    if (!f) {
        *why = strerror(errno);
        close(fd);
    }
    return f;
}

// The directory part of path ("." for a bare name) into dir, and its last name.
static const char *split_path(const char *path, char *dir, size_t cap) {
    const char *slash = strrchr(path, '/');
    if (!slash) {
        snprintf(dir, cap, ".");
        return path;
    }
    snprintf(dir, cap, "%.*s", slash == path ? 1 : (int)(slash - path), path);
    return slash + 1;
}

int core_same_file(const char *a, const char *b) {
    struct stat sa, sb;
    const int ea = stat(a, &sa) == 0, eb = stat(b, &sb) == 0;
    if (ea || eb) return ea && eb && sa.st_dev == sb.st_dev && sa.st_ino == sb.st_ino;
    // Neither exists yet: the same name in the same directory.
    char da[4096], db[4096];
    const char *na = split_path(a, da, sizeof da), *nb = split_path(b, db, sizeof db);
    return strcmp(na, nb) == 0 && stat(da, &sa) == 0 && stat(db, &sb) == 0 && sa.st_dev == sb.st_dev &&
           sa.st_ino == sb.st_ino;
}

// The temporaries of the outputs open now, with the process that opened them: an exit before their
// close (a usage error found while writing, a failed check) removes them, so that no partial file
// stays behind. Only a signal that kills the process leaves its "<path>.tmp-<pid>". The pid keeps a
// forked child's exit from removing its parent's.
enum { MAX_OPEN_OUTS = 16 };
static char g_open_tmp[MAX_OPEN_OUTS][sizeof ((CoreOut *)0)->tmp];
static pid_t g_open_pid[MAX_OPEN_OUTS];

static void remove_open_temporaries(void) {
    for (int i = 0; i < MAX_OPEN_OUTS; i++)
        if (g_open_tmp[i][0] && g_open_pid[i] == getpid()) unlink(g_open_tmp[i]);
}

// Starts (on) or ends tracking o's temporary.
static void track(const CoreOut *o, int on) {
    static int registered;
    if (on && !registered) registered = atexit(remove_open_temporaries) == 0;
    for (int i = 0; i < MAX_OPEN_OUTS; i++) {
        if (on && !g_open_tmp[i][0]) {
            strcpy(g_open_tmp[i], o->tmp);
            g_open_pid[i] = getpid();
            return;
        }
        if (!on && !strcmp(g_open_tmp[i], o->tmp)) {
            g_open_tmp[i][0] = '\0';
            return;
        }
    }
}

int core_out_open(CoreOut *o, const char *path) {
    o->f = NULL;
    if (snprintf(o->path, sizeof o->path, "%s", path) >= (int)sizeof o->path) return ENAMETOOLONG;
    struct stat sb;
    if (stat(path, &sb) == 0 && !S_ISREG(sb.st_mode)) return CORE_OUT_NOT_REGULAR;
    snprintf(o->tmp, sizeof o->tmp, "%s.tmp-%ld", path, (long)getpid());
    o->f = fopen(o->tmp, "wb");
    if (!o->f) return errno;
    track(o, 1);
    return 0;
}

const char *core_out_error(int err) { return err == CORE_OUT_NOT_REGULAR ? "not a regular file" : strerror(err); }

void core_out_abort(CoreOut *o) {
    if (!o->f) return;
    fclose(o->f);
    o->f = NULL;
    unlink(o->tmp);
    track(o, 0);
}

int core_out_close(CoreOut *o) {
    if (!o->f) return EBADF;
    int err = fflush(o->f) != 0 ? errno : 0;
    // A write that failed earlier left only the stream's error flag, not its errno: one more byte
    // (into the temporary, which goes anyway) meets the same cause again (ENOSPC, EFBIG, EIO).
    if (!err && ferror(o->f)) {
        clearerr(o->f);
        errno = 0;
        err = fputc(0, o->f) == EOF || fflush(o->f) != 0 ? errno : 0;
        if (!err) err = EIO;
    }
    if (fclose(o->f) != 0 && !err) err = errno;
    o->f = NULL;
    if (!err && rename(o->tmp, o->path) != 0) err = errno;
    if (err) unlink(o->tmp);
    track(o, 0);
    return err;
}

int core_nul_line(const char *text, size_t n) {
    const char *nul = memchr(text, '\0', n);
    if (!nul) return 0;
    int line = 1;
    for (const char *c = text; c < nul; c++) line += *c == '\n';
    return line;
}

int core_stdout_status(void) {
    errno = 0;
    if (fflush(stdout) != 0 || ferror(stdout)) return errno ? errno : EIO;
    return 0;
}
