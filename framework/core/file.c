// Inputs by path that must be regular files, the same-file test, outputs written whole or not at
// all (their temporaries removed on any polite end of the process), directory locks, and the final
// state of stdout (file.h).
#include "framework/core/file.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include "framework/core/check.h"
#include "framework/core/mem.h"

FILE *core_open_regular(const char *path, const char **why) {
    // O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer for ever.
    int fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0) {
        *why = strerror(errno);
        return NULL;
    }
    struct stat sb;
    int err = fstat(fd, &sb) != 0 ? errno : !S_ISREG(sb.st_mode) ? -1 : 0;
    // Blocking again for the reads (a regular file never blocks, but stdio should see no flag).
    FILE *f = NULL;
    if (!err && !(f = fcntl(fd, F_SETFL, 0) == 0 ? fdopen(fd, "rb") : NULL)) err = errno;
    if (err) {
        close(fd);
        *why = err < 0 ? "not a regular file" : strerror(err);
        errno = err < 0 ? 0 : err;  // 0: the path's fault, not the system's (file.h)
    }
    return f;
}

int core_read_all(FILE *f, size_t max, char **buf, size_t *len) {
    *buf = NULL;
    *len = 0;
    struct stat st;
    if (fstat(fileno(f), &st) != 0) return errno;
    if ((unsigned long long)st.st_size > max) {
        *len = (size_t)st.st_size;
        return EFBIG;
    }
    size_t cap = st.st_size > 0 ? (size_t)st.st_size : 4096, n;
    char *b = core_alloc_uninit(cap + 1);
    n = fread(b, 1, cap, f);
    while (st.st_size == 0 && n == cap && n <= max && !ferror(f)) {
        b = core_grow(b, n, 2 * cap + 1, 1);
        n += fread(b + cap, 1, cap, f);
        cap *= 2;
    }
    *len = n;
    // Fewer bytes than stated: a file that shrank meanwhile states its new size now; a file of /sys
    // states a page (4096) and holds less, and goes on stating it.
    struct stat now;
    const int shrank = st.st_size > 0 && n != (size_t)st.st_size &&
                       (fstat(fileno(f), &now) != 0 || now.st_size != st.st_size);
    const int err = ferror(f) ? (errno ? errno : EIO) : n > max ? EFBIG : shrank ? CORE_READ_CHANGED : 0;
    if (err) {
        core_free(b);
        return err;
    }
    b[n] = '\0';
    *buf = b;
    return 0;
}

const char *core_read_error(int err) { return err == CORE_READ_CHANGED ? "changed while it was read" : strerror(err); }

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

const char core_kind_hdf5[] = "an HDF5 file (a checkpoint)";

size_t core_bom_len(const char *text, size_t n) { return n >= 3 && !memcmp(text, "\xEF\xBB\xBF", 3) ? 3 : 0; }

const char *core_data_file_kind(const char *path) {
    static const struct { char sig[9]; const char *what; } KINDS[] = {
        {"\x89HDF\r\n\x1a\n", core_kind_hdf5},
        {"MOELTOK1", "a token shard"},
        {"MOELBPE1", "a tokenizer"},
    };
    const char *why;
    FILE *f = core_open_regular(path, &why);
    if (!f) return NULL;
    char head[8];
    const int n = (int)fread(head, 1, 8, f);
    fclose(f);
    for (size_t k = 0; n == 8 && k < sizeof KINDS / sizeof KINDS[0]; k++)
        if (!memcmp(head, KINDS[k].sig, 8)) return KINDS[k].what;
    return NULL;
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

// The temporaries registered now, with the process that registered them: any end of the process
// before their rename removes them (file.h). The pid keeps a forked child's exit from removing its
// parent's. The signal handler reads the table as it stands; it only calls getpid and unlink, which
// are safe in a handler.
enum { MAX_TEMPS = 16 };
static char g_temp[MAX_TEMPS][4160];
static volatile pid_t g_temp_pid[MAX_TEMPS];

// The folders core_make_dirs made, each path as it was made (so `new/../old/run` names `new` and
// `new/../old/run`, never the user's `old`). A run refused for a bad --resume, or a dataset that
// failed on a full disk, left its new, empty --out behind (review, 2026-12-06).
#define MAX_MADE 8
static char g_made[MAX_MADE][4096];
static int g_made_n;
static pid_t g_made_pid;

// Removes the folders made, the last made first; one that is not empty (written into) stays, and so
// do the ones it is in. The count is taken first: a signal's handler that runs this again meanwhile
// finds nothing to do.
static void remove_made_dirs(void) {
    if (g_made_pid != getpid()) return;
    const int n = g_made_n;
    g_made_n = 0;
    for (int k = n - 1; k >= 0; k--) rmdir(g_made[k]);
}

// Newest first, so that a temporary folder's files (tracked after it) go before the folder; the
// folders core_make_dirs made last.
void core_temp_remove_all(void) {
    for (int i = MAX_TEMPS - 1; i >= 0; i--)
        if (g_temp_pid[i] == getpid() && g_temp[i][0]) {
            if (unlink(g_temp[i]) != 0 && errno == EISDIR) rmdir(g_temp[i]);
            g_temp_pid[i] = 0;
        }
    remove_made_dirs();
}

int core_temp_is_stale(const char *name) {
    const char *t = strstr(name, ".tmp-");
    if (!t) return -1;
    char *end;
    const long pid = strtol(t + 5, &end, 10);
    if (*end != '\0' || pid <= 0 || t[5] == '-' || t[5] == '+') return -1;
    if (!(kill((pid_t)pid, 0) == 0 || errno == EPERM)) return 1;
    // A zombie (ended, not yet reaped: a rank killed a moment ago whose mpirun has not waited for it)
    // writes nothing any more: its temporary was kept by `ckpt clean` (review, 2026-12-06).
    char stat_path[32], buf[256] = "";
    snprintf(stat_path, sizeof stat_path, "/proc/%ld/stat", pid);
    FILE *f = fopen(stat_path, "r");
    const size_t n = f ? fread(buf, 1, sizeof buf - 1, f) : 0;
    if (f) fclose(f);
    buf[n] = '\0';
    const char *paren = strrchr(buf, ')');  // the state follows the command name in parentheses
    return paren && paren[1] == ' ' && paren[2] == 'Z';
}

// While signals are held (core_signals_hold), the number of holds and the polite signal that came
// meanwhile. A flag, not a signal mask: a mask holds a signal back from the calling thread only,
// and the kernel hands a process's signal to any thread (an OpenMP worker of a command that read a
// checkpoint), whose handler would then remove the temporaries in the middle of the renames.
static volatile sig_atomic_t g_holds, g_pending;
// While a training loop defers (core_signals_defer), the first polite signal is only recorded in
// g_stop and announced with g_defer_msg; a second one ends the process as before, and so does a
// first one other than SIGUSR1 during a save (core_signals_saving) unless g_defer_saves.
static volatile sig_atomic_t g_defer, g_defer_saves, g_saving, g_stop;
static char g_defer_msg[256];

static void on_polite_signal(int sig) {
    if (g_holds) {
        g_pending = sig;
        // Released between the check and the store: core_signals_release may have missed it.
        if (g_holds) return;
    }
    sig_atomic_t none = 0;  // two threads' handlers may run at once: one of them records its signal
    if (g_defer && (g_defer_saves || sig == SIGUSR1 || !g_saving) &&
        __atomic_compare_exchange_n(&g_stop, &none, sig, 0, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST)) {
        const ssize_t n = write(STDERR_FILENO, g_defer_msg, strlen(g_defer_msg));
        (void)n;  // nothing to do about a closed stderr inside a handler
        return;
    }
    core_temp_remove_all();
    signal(sig, SIG_DFL);
    raise(sig);
}

// Once per process: the exit handler, and the handler of the signals that end a process politely
// (Ctrl-C, kill, a closed terminal; mpirun ends the other ranks of a failed job with SIGTERM, and
// forwards SIGUSR1 to every rank). A signal someone else already handles (or ignores) is left to
// them.
static void install_handlers(void) {
    static int done;
    if (done) return;
    done = 1;
    atexit(core_temp_remove_all);
    const int sigs[4] = {SIGINT, SIGTERM, SIGHUP, SIGUSR1};
    for (int i = 0; i < 4; i++) {
        struct sigaction old;
        if (sigaction(sigs[i], NULL, &old) != 0 || old.sa_handler != SIG_DFL) continue;
        struct sigaction sa;
        memset(&sa, 0, sizeof sa);
        sa.sa_handler = on_polite_signal;
        // A deferred signal returns to the interrupted call: a write to a full pipe (stdout into
        // `tee`) must go on, not fail with EINTR.
        sa.sa_flags = SA_RESTART;
        // Not interrupted by another of them on this thread: a second signal then finds the first
        // recorded, and ends the process.
        sigemptyset(&sa.sa_mask);
        for (int j = 0; j < 4; j++) sigaddset(&sa.sa_mask, sigs[j]);
        sigaction(sigs[i], &sa, NULL);
    }
}

void core_signals_defer(const char *msg, int saves) {
    install_handlers();
    if (msg) snprintf(g_defer_msg, sizeof g_defer_msg, "%s", msg);
    g_defer_saves = saves;
    g_defer = msg != NULL;
}

void core_signals_saving(int on) { g_saving = on; }

int core_signals_stop(void) { return g_stop; }

void core_temp_track(const char *tmp) {
    install_handlers();
    // Slot order is the order of tracking where it can be: the first free slot after every slot in
    // use, else the first free one.
    int last = MAX_TEMPS;
    while (last > 0 && g_temp_pid[last - 1] != getpid()) last--;
    for (int k = 0; k < MAX_TEMPS; k++) {
        const int i = (last + k) % MAX_TEMPS;
        if (g_temp_pid[i] != getpid()) {
            g_temp_pid[i] = 0;  // the slot is free, or an ancestor's entry a forked child may reuse
            snprintf(g_temp[i], sizeof g_temp[i], "%s", tmp);
            g_temp_pid[i] = getpid();
            return;
        }
    }
}

void core_temp_untrack(const char *tmp) {
    for (int i = 0; i < MAX_TEMPS; i++)
        if (g_temp_pid[i] == getpid() && !strcmp(g_temp[i], tmp)) {
            g_temp_pid[i] = 0;
            return;
        }
}

int core_temp_name(char *out, size_t cap, const char *path, const char *suffix) {
    char dir[4096];
    const char *base = split_path(path, dir, sizeof dir);
    const int len = (int)strlen(base), room = NAME_MAX - (int)strlen(suffix);
    int n;
    if (len <= room) {
        n = snprintf(out, cap, "%s%s", path, suffix);
    } else {
        // The name's first bytes and a hash of all of it (FNV-1a), so that two long names alike in
        // their first bytes get temporaries of their own (one process writes several outputs).
        const uint32_t h = core_fnv1a32(CORE_FNV32_START, base, (size_t)len);
        n = snprintf(out, cap, "%.*s%.*s~%08x%s", (int)(base - path), path, room - 9, base, h, suffix);
    }
    return n < 0 || (size_t)n >= cap ? ENAMETOOLONG : 0;
}

int core_out_open(CoreOut *o, const char *path) {
    o->f = NULL;
    o->tmp[0] = '\0';
    if (snprintf(o->path, sizeof o->path, "%s", path) >= (int)sizeof o->path) return ENAMETOOLONG;
    // The rename would replace a symbolic link by a regular file (a --trace through a link did, and
    // overwrote a loop of links with exit 0; sweep, 2026-12-05); following it would write where the
    // caller's checks of the path (its folder's lock, the outputs that may not replace an input)
    // never looked (review). So a link is refused, as export refuses one for its folder.
    struct stat sb;
    if (lstat(path, &sb) == 0 && S_ISLNK(sb.st_mode)) return CORE_OUT_LINK;
    if (stat(path, &sb) == 0 && !S_ISREG(sb.st_mode)) return CORE_OUT_NOT_REGULAR;
    int err;
    char suffix[32];
    snprintf(suffix, sizeof suffix, ".tmp-%ld", (long)getpid());
    if ((err = core_temp_name(o->tmp, sizeof o->tmp, path, suffix))) {
        o->tmp[0] = '\0';
        return err;
    }
    // Tracked before it exists: a signal just after the create would otherwise leave it behind.
    core_temp_track(o->tmp);
    o->f = fopen(o->tmp, "wb");
    if (!o->f) {
        err = errno;
        core_temp_untrack(o->tmp);
        o->tmp[0] = '\0';
        // "No such file or directory" for a folder that exists (/proc, /sys take no new files) read
        // as if the path were wrong (sweep, 2026-12-05).
        char dir[4096];
        split_path(path, dir, sizeof dir);
        if (err == ENOENT && stat(dir, &sb) == 0) err = CORE_OUT_NO_CREATE;
        return err;
    }
    return 0;
}

const char *core_out_error(int err) {
    if (err == CORE_OUT_NOT_REGULAR) return "not a regular file";
    if (err == CORE_OUT_NO_CREATE) return "its folder takes no new files (the temporary beside it cannot be created)";
    if (err == CORE_OUT_LINK) return "a symbolic link: name the file it points to (the output is renamed into place)";
    return strerror(err);
}

int core_out_report(int err, const char *fmt, ...) {
    char what[4400];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof what, fmt, ap);
    va_end(ap);
    if (core_errno_exit_code(err) == CORE_EXIT_FAILURE) return core_failure_report("%s: %s", what, core_out_error(err));
    return core_usage_report("%s: %s", what, core_out_error(err));
}

void core_out_abort(CoreOut *o) {
    if (!o->tmp[0]) return;
    if (o->f) fclose(o->f);
    o->f = NULL;
    unlink(o->tmp);
    core_temp_untrack(o->tmp);
    o->tmp[0] = '\0';
}

// The temporary flushed, on the disk and closed: 0, or the errno of the first failure (the
// temporary stays, for core_out_abort). Some file systems (NFS) report a full quota or an I/O
// error only at the close.
static int out_finish(CoreOut *o) {
    int err = fflush(o->f) != 0 ? errno : 0;
    // A write that failed earlier left only the stream's error flag, not its errno: one more byte
    // (into the temporary, which goes anyway) meets the same cause again (ENOSPC, EFBIG, EIO).
    if (!err && ferror(o->f)) {
        clearerr(o->f);
        errno = 0;
        err = fputc(0, o->f) == EOF || fflush(o->f) != 0 ? errno : 0;
        if (!err) err = EIO;
    }
    if (!err && fsync(fileno(o->f)) != 0) err = errno;
    if (fclose(o->f) != 0 && !err) err = errno;
    o->f = NULL;
    return err;
}

// The finished temporary renamed over its path (removed where that fails).
static int out_commit(CoreOut *o) {
    const int err = rename(o->tmp, o->path) != 0 ? errno : 0;
    if (err) unlink(o->tmp);
    core_temp_untrack(o->tmp);
    o->tmp[0] = '\0';
    return err;
}

int core_fsync(const char *path) {
    const int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return errno;
    int err = fsync(fd) != 0 ? errno : 0;
    // A file system that cannot sync a directory says EINVAL: nothing was lost, and a checkpoint
    // saved there must not fail for it (its files themselves were synced).
    struct stat st;
    if (err == EINVAL && fstat(fd, &st) == 0 && S_ISDIR(st.st_mode)) err = 0;
    close(fd);
    return err;
}

int core_fsync_parent(const char *path) {
    char dir[4096];
    split_path(path, dir, sizeof dir);
    return core_fsync(dir);
}

int core_out_close(CoreOut *o) {
    if (!o->f) return EBADF;
    int err = out_finish(o);
    if (err) {
        core_out_abort(o);
        return err;
    }
    err = out_commit(o);
    // The rename made durable. Its failure is not reported: the file is in place and whole (synced
    // before the rename), and a file system that cannot sync a directory has already said so.
    if (!err) (void)core_fsync_parent(o->path);
    return err;
}

int core_out_close_all(CoreOut *o, int n, int *failed) {
    // Every file complete on the disk before the first rename: a failure at a flush, a sync or a
    // close leaves every old file in place. An output that a write already failed on is finished
    // first, so that it is the one reported: another one's bytes that waited in its buffer fail
    // only at its flush (a full disk in data prepare named its 368-byte tokenizer, not the shard
    // that filled the disk: review, 2026-12-06).
    for (int failing = 1; failing >= 0; failing--) {
        for (int k = 0; k < n; k++) {
            if (!o[k].f || (ferror(o[k].f) != 0) != failing) continue;
            const int err = out_finish(&o[k]);
            if (err) {
                *failed = k;
                return err;
            }
        }
    }
    // A polite signal between two renames would leave old and new files mixed: it waits until the
    // last rename, then ends the process as it would have.
    core_signals_hold();
    int err = 0;
    for (int k = 0; k < n && !err; k++) {
        err = out_commit(&o[k]);
        if (err) *failed = k;
    }
    core_signals_release();
    if (!err && n > 0) (void)core_fsync_parent(o[0].path);  // as core_out_close's
    return err;
}

void core_signals_hold(void) {
    install_handlers();
    g_holds++;
}

void core_signals_release(void) {
    if (--g_holds > 0) return;
    const int sig = g_pending;
    g_pending = 0;
    if (sig) raise(sig);
}

static int lock_open(const char *path, int flags, int op) {
    const int fd = open(path, flags | O_CLOEXEC, 0644);
    if (fd < 0) return CORE_DIR_NO_LOCK;
    if (flock(fd, op | LOCK_NB) == 0) return fd;
    const int busy = errno == EWOULDBLOCK;
    close(fd);
    return busy ? CORE_DIR_BUSY : CORE_DIR_NO_LOCK;
}

int core_dir_lock(const char *dir) { return lock_open(dir, O_RDONLY | O_DIRECTORY, LOCK_EX); }

int core_file_lock(const char *path, int shared) {
    return lock_open(path, O_RDONLY | (shared ? 0 : O_CREAT), shared ? LOCK_SH : LOCK_EX);
}

void core_dir_unlock(int fd) {
    if (fd >= 0) close(fd);
}

void core_make_dirs(const char *dir, const char *what) {
    char p[4096];
    if (snprintf(p, sizeof p, "%s", dir) >= (int)sizeof p) core_usage_error("%s %s: path too long", what, dir);
    install_handlers();
    if (g_made_pid != getpid()) g_made_n = 0;  // a forked child's record starts empty
    g_made_pid = getpid();
    for (char *s = p + 1;; s++) {
        const char c = *s;
        if (c != '/' && c != '\0') continue;
        *s = '\0';
        if (mkdir(p, 0777) == 0) {
            // Recorded as each is made: a failure further down removes the ones made before it.
            // Past MAX_MADE (a path of that many new folders) the deeper ones are kept.
            if (g_made_n < MAX_MADE) {
                snprintf(g_made[g_made_n], sizeof g_made[0], "%s", p);
                g_made_n++;
            }
        } else if (errno != EEXIST) {
            core_path_error(errno, "cannot create %s %s: %s", what, p, strerror(errno));
        }
        *s = c;
        if (c == '\0') break;
    }
    struct stat st;
    if (stat(dir, &st) != 0 || !S_ISDIR(st.st_mode)) core_usage_error("%s %s is not a directory", what, dir);
}

int core_nul_line(const char *text, size_t n) {
    const char *nul = memchr(text, '\0', n);
    if (!nul) return 0;
    int line = 1;
    for (const char *c = text; c < nul; c++) line += *c == '\n';
    return line;
}

