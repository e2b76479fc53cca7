// The metadata probe (see h5.h, h5_probe): HDF5 walks a checkpoint's metadata in a child process
// before the reader opens the file, so that metadata damaged in a way that crashes HDF5 itself ends
// in a message and exit 2 instead of a signal in a training run.
//
// Why a child: HDF5 1.10.8 (Debian 12's) reads past its buffers on some multi-byte corruption of a
// file's metadata (a global-heap object of a virtual dataset's mappings, a layout message, a
// serialized selection; found by tests/checkpoints/fuzz_ckpt.c), before any check of ours can run.
// No reader above HDF5 can check those structures without parsing them as HDF5 does; a process that
// may die can. The child touches every object, attribute, virtual mapping and chunk index entry
// the reader can reach (more than the reader: it also lists groups), then exits 0. A child killed by
// a signal, or one that exits otherwise (a sanitizer's report), marks the file as damaged, and so
// does an object or a list of links the walk cannot read (the child says which, through a pipe):
// what lies behind it is out of the walk's reach, not of the reader's.
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "checkpoints/h5.h"
#include "framework/core/log.h"
#include "framework/core/mem.h"

// Groups one walk enters at most: a checkpoint has a few dozen (h5py's exports too). What did not
// read is said in at most PROBE_BAD bytes.
enum { PROBE_GROUPS = 4096, PROBE_BAD = 512 };
enum { PROBE_UNREAD = 3 };  // the child's exit status when the walk could not read something

// Opens and reads every attribute of loc: its type, extent and, for a variable-length string, its
// value, which lives in the global heap (moelab writes fixed-length strings only, held in the object
// header; h5py writes a Python str as a variable-length UTF-8 string). The string is read in its own
// character set: HDF5 converts between none, and a read as ASCII of a UTF-8 string failed before it
// touched the heap.
static herr_t probe_attr(hid_t loc, const char *name, const H5A_info_t *info, void *op) {
    (void)info, (void)op;
    hid_t a = H5Aopen(loc, name, H5P_DEFAULT);
    if (a < 0) return 0;
    hid_t t = H5Aget_type(a), s = H5Aget_space(a);
    if (t >= 0 && s >= 0 && H5Tis_variable_str(t) > 0 && H5Sget_simple_extent_npoints(s) == 1) {
        const H5T_cset_t cset = H5Tget_cset(t);
        hid_t mt = H5Tcopy(H5T_C_S1);
        char *str = NULL;
        if (mt >= 0 && cset >= 0 && H5Tset_size(mt, H5T_VARIABLE) >= 0 && H5Tset_cset(mt, cset) >= 0 &&
            H5Aread(a, mt, &str) >= 0 && str)
            H5free_memory(str);
        if (mt >= 0) H5Tclose(mt);
    }
    if (t >= 0) H5Tclose(t);
    if (s >= 0) H5Sclose(s);
    H5Aclose(a);
    return 0;
}

// A dataset's layout: a virtual dataset's every mapping (both selections, the source file and
// dataset names), a chunked dataset's every chunk index entry (fs: its dataspace).
static void probe_layout(hid_t d, hid_t fs) {
    hid_t dcpl = H5Dget_create_plist(d);
    if (dcpl < 0) return;
    const H5D_layout_t layout = H5Pget_layout(dcpl);
    if (layout == H5D_VIRTUAL) {
        size_t n = 0;
        if (H5Pget_virtual_count(dcpl, &n) < 0) n = 0;
        char buf[4096];
        for (size_t i = 0; i < n; i++) {
            hid_t vs = H5Pget_virtual_vspace(dcpl, i), ss = H5Pget_virtual_srcspace(dcpl, i);
            if (vs >= 0) H5Sclose(vs);
            if (ss >= 0) H5Sclose(ss);
            H5Pget_virtual_filename(dcpl, i, buf, sizeof buf);
            H5Pget_virtual_dsetname(dcpl, i, buf, sizeof buf);
        }
    } else if (layout == H5D_CHUNKED && fs >= 0) {
        // Counting the written chunks walks the whole index, entry by entry, as the reader's count
        // does (h5_check_stored). HDF5 1.10.8 takes a dataspace here, not H5S_ALL: with H5S_ALL it
        // refused the call, and no index was walked. H5Dget_chunk_info(i) walks the index again up
        // to entry i: once per entry, that is quadratic in the chunks (16,000 took 7 s), for
        // nothing the count has not read.
        hsize_t n;
        H5Dget_num_chunks(d, fs, &n);
    }
    H5Pclose(dcpl);
}

static herr_t probe_object(hid_t loc, const char *name, const H5O_info_t *info, void *op) {
    (void)op;
    hid_t o = H5Oopen(loc, name, H5P_DEFAULT);
    if (o < 0) return 0;
    hsize_t at = 0;
    H5Aiterate2(o, H5_INDEX_NAME, H5_ITER_NATIVE, &at, probe_attr, NULL);
    if (info->type == H5O_TYPE_DATASET) {
        hid_t t = H5Dget_type(o), s = H5Dget_space(o);
        if (t >= 0) H5Tclose(t);
        probe_layout(o, s);
        if (s >= 0) H5Sclose(s);
    }
    H5Oclose(o);
    return 0;
}

// A walk: the groups it has entered, by address (a damaged file may link a group into itself), and
// the first object or list of links it could not read.
typedef struct {
    haddr_t seen[PROBE_GROUPS];
    int n;
    char bad[PROBE_BAD];  // "the links of /model", "the object /optim/m", ...; empty while all read
} ProbeWalk;

// Notes what did not read, "WHAT GROUP/NAME" (or "WHAT GROUP" without a name), and ends the walk.
static herr_t walk_fails(ProbeWalk *w, hid_t g, const char *what, const char *name) {
    char gn[PROBE_BAD / 2];
    if (H5Iget_name(g, gn, sizeof gn) <= 0) snprintf(gn, sizeof gn, "?");
    if (!name) snprintf(w->bad, sizeof w->bad, "%s %s", what, gn);
    else snprintf(w->bad, sizeof w->bad, "%s %s%s%s", what, gn, strcmp(gn, "/") ? "/" : "", name);
    return 1;  // stops every H5Literate up the walk
}

static void walk_group(ProbeWalk *w, hid_t g);

// Probes the object a link of group g names, and walks into it if it is a group. An object whose
// header does not read, or a group whose links do not, ends the walk and fails the file: the walk
// cannot reach what lies behind it, but the reader, which looks tensors up by name, may. The probe
// walked with H5Ovisit2, which also ends at such an object but quietly: a damaged /eplb hid the
// /model tensors behind it, and a damaged list of /model's links all of them, one of which then
// crashed the reader (SIGABRT in HDF5's selection decoding; sweep, 2026-12-07).
static herr_t probe_link(hid_t g, const char *name, const H5L_info_t *link, void *op) {
    ProbeWalk *w = op;
    if (link->type != H5L_TYPE_HARD) return 0;  // moelab writes none, and the reader follows none
    H5O_info_t info;
    if (H5Oget_info_by_name2(g, name, &info, H5O_INFO_BASIC, H5P_DEFAULT) < 0)
        return walk_fails(w, g, "the object", name);
    probe_object(g, name, &info, NULL);
    if (info.type != H5O_TYPE_GROUP) return 0;
    for (int i = 0; i < w->n; i++)
        if (w->seen[i] == info.addr) return 0;
    if (w->n == PROBE_GROUPS) return 0;  // more groups than a checkpoint has: the reader says what is wrong
    w->seen[w->n++] = info.addr;
    hid_t sub = H5Gopen2(g, name, H5P_DEFAULT);
    if (sub < 0) return walk_fails(w, g, "the group", name);
    walk_group(w, sub);
    H5Gclose(sub);
    return w->bad[0] != 0;
}

static void walk_group(ProbeWalk *w, hid_t g) {
    hsize_t at = 0;
    if (H5Literate(g, H5_INDEX_NAME, H5_ITER_NATIVE, &at, probe_link, w) < 0 && !w->bad[0])
        walk_fails(w, g, "the links of", NULL);
}

// The child's work: everything in the file. Errors inside an object are left to the reader, which
// reports them; what the walk could not read is in w->bad.
static void probe_walk(const char *path, ProbeWalk *w) {
    h5_init();
    hid_t f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    if (f < 0) return;  // the reader's own open says why
    H5O_info_t root;
    if (H5Oget_info2(f, &root, H5O_INFO_BASIC) < 0) {
        snprintf(w->bad, sizeof w->bad, "the root group");
    } else {
        probe_object(f, ".", &root, NULL);
        w->seen[w->n++] = root.addr;
        walk_group(w, f);
    }
    H5Fclose(f);
}

// Whether the file at path was probed before, unchanged since (the same inode, size and change
// time): a resume opens one checkpoint several times (its config, its EPLB group, then each stage's
// tensors), and a file needs one probe. Remembers the last PROBED_MAX files that passed.
enum { PROBED_MAX = 64 };
static struct stat probed[PROBED_MAX];
static int n_probed;

static int same_file(const struct stat *a, const struct stat *b) {
    return a->st_dev == b->st_dev && a->st_ino == b->st_ino && a->st_size == b->st_size &&
           a->st_ctim.tv_sec == b->st_ctim.tv_sec && a->st_ctim.tv_nsec == b->st_ctim.tv_nsec;
}

void h5_probe(const H5Io *io) {
    // Test seam: the reader alone, so that its watchdog (h5_watch) is tested on a file whose fault
    // the probe would meet first.
    if (core_test_seam("MOELAB_TEST_H5_NO_PROBE")) return;
    struct stat st;
    const int known = stat(io->path, &st) == 0;
    for (int i = 0; known && i < n_probed && i < PROBED_MAX; i++)
        if (same_file(&probed[i], &st)) return;
    // Nothing buffered is written twice: the child leaves through _exit, which flushes nothing.
    fflush(stdout);
    fflush(stderr);
    // A corrupted cycle in HDF5's structures must not hang the run.
    const int seconds = h5_metadata_seconds();
    // The child's crash is reported by the parent, in one line: nothing of the child's own reaches
    // stderr or the terminal (glibc's "*** buffer overflow detected ***" came before moelab's
    // message, sweep 2026-12-05; older glibc releases write it to the terminal unless
    // LIBC_FATAL_STDERR_ is set), and it dumps no core. Its environment is made before the fork, so
    // that the child's own set-up is async-signal-safe calls only (a forked child of a threaded
    // process: OpenBLAS, OpenMP), as setenv is not.
    size_t n_env = 0;
    while (environ[n_env]) n_env++;
    char **env = core_alloc((n_env + 2) * sizeof *env);
    memcpy(env, environ, n_env * sizeof *env);
    env[n_env] = "LIBC_FATAL_STDERR_=1";
    env[n_env + 1] = NULL;
    const int null = open("/dev/null", O_WRONLY | O_CLOEXEC);
    int said[2];  // what the walk could not read, from the child
    if (pipe2(said, O_CLOEXEC) != 0) said[0] = said[1] = -1;
    const pid_t pid = fork();
    if (pid == 0) {
        if (null >= 0) dup2(null, STDERR_FILENO);
        environ = env;
        prctl(PR_SET_DUMPABLE, 0);
        alarm((unsigned)seconds);
        static ProbeWalk w;  // static: the child's stack need not hold it
        probe_walk(io->path, &w);
        if (!w.bad[0]) _exit(0);
        const ssize_t n = said[1] >= 0 ? write(said[1], w.bad, strlen(w.bad)) : 0;  // else "some of it"
        (void)n;
        _exit(PROBE_UNREAD);
    }
    if (null >= 0) close(null);
    if (said[1] >= 0) close(said[1]);
    core_free(env);
    int status = 0;
    pid_t got = pid;
    while (pid > 0 && (got = waitpid(pid, &status, 0)) < 0 && errno == EINTR)
        continue;
    char bad[PROBE_BAD] = "some of it";
    if (said[0] >= 0) {
        const ssize_t n = got > 0 ? read(said[0], bad, sizeof bad - 1) : 0;
        if (n > 0) bad[n] = 0;
        close(said[0]);
    }
    if (got <= 0) return;  // no process to spare, or none to wait for: the reader's own checks go on alone
    if (WIFEXITED(status) && WEXITSTATUS(status) == PROBE_UNREAD)
        H5_FAIL(io, "its HDF5 metadata is damaged: HDF5 cannot read %s (in a probe process)", bad);
    if (WIFSIGNALED(status) && WTERMSIG(status) == SIGALRM)
        H5_FAIL(io, "its HDF5 metadata is damaged: HDF5 did not finish reading it in %d s (in a probe process)",
                seconds);
    if (WIFSIGNALED(status))
        H5_FAIL(io, "its HDF5 metadata is damaged: reading it crashed HDF5 (%s, in a probe process)",
                strsignal(WTERMSIG(status)));
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
        H5_FAIL(io, "its HDF5 metadata is damaged: a probe process reading it exited with status %d",
                WIFEXITED(status) ? WEXITSTATUS(status) : -1);
    if (known) probed[n_probed++ % PROBED_MAX] = st;
}
