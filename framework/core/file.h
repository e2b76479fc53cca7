// Files a command reads or writes by path: inputs opened so that a path that is no regular file
// fails with a reason instead of blocking (a FIFO) or reporting a length it does not have (a
// directory), outputs written whole or not at all, and locks on the folders they go to.
#ifndef MOELAB_CORE_FILE_H
#define MOELAB_CORE_FILE_H

#include <signal.h>
#include <stddef.h>
#include <stdio.h>

#ifdef __cplusplus
extern "C" {
#endif

// `path` opened for reading ("rb") if it is a regular file; else NULL with *why set to the
// reason (strerror's, or "not a regular file") and errno to the failure's (0 for "not a regular
// file"), so that core_path_error(errno, ...) gives the exit code.
FILE *core_open_regular(const char *path, const char **why);

// Reads f (opened by core_open_regular) whole into *buf (core_free it), NUL-terminated after its *len
// bytes. A file that states a size of 0 bytes (those of /proc) is read to its end; any other is read
// up to its stated size (one of /sys states 4096 and holds less: what it holds). 0; or the errno of
// a failed fstat or read; EFBIG where the file holds more than max bytes (*len then says how many it
// states, or how many were read of one of stated size 0); CORE_READ_CHANGED where it held fewer than
// it stated and now states another size (it changed while it was read). On a failure *buf is NULL;
// f stays open (the caller closes it).
enum { CORE_READ_CHANGED = -3 };
int core_read_all(FILE *f, size_t max, char **buf, size_t *len);
// The text of an error core_read_all returned: "changed while it was read", or strerror's.
const char *core_read_error(int err);

// 1 when a and b name the same file: the same device and inode, or, where neither exists yet, the
// same name in the same directory; else 0. An output path that is one of the run's inputs (or
// another output) is refused before it is truncated.
int core_same_file(const char *a, const char *b);

// What path holds when it is one of moelab's own data files, which no report, chart or trace may
// replace ("an HDF5 file (a checkpoint)", "a token shard", "a tokenizer"), else NULL. By the
// files' first 8 bytes: HDF5's signature, data/shard.h's and data/tokenizer.h's magic.
const char *core_data_file_kind(const char *path);
// core_data_file_kind's answer for an HDF5 file (compare the pointer).
extern const char core_kind_hdf5[];

// 3 where text (n bytes) starts with UTF-8's byte order mark, which some editors and spreadsheets
// write first and which is no part of the first line of a text file that moelab reads; else 0.
size_t core_bom_len(const char *text, size_t n);

// Temporaries: files (or folders of them) written under a temporary name and renamed once complete.
// While one is tracked, any end of the process removes it (a folder after the files tracked in
// it): an exit, a fatal error of check.h (before its abort hook, which may skip exit handlers), and
// SIGINT, SIGTERM, SIGHUP or SIGUSR1 (the signal then ends the process as it would have; see
// core_signals_defer for the one a training loop waits out). Only SIGKILL leaves one behind
// (`moelab ckpt clean` finds a checkpoint's, `data prepare` a dataset's). Up to 16 are tracked at
// once.
void core_temp_track(const char *tmp);
void core_temp_untrack(const char *tmp);  // after its rename
void core_temp_remove_all(void);
// Whether a file name is a temporary "NAME.tmp-<pid>" of a process no longer running on this
// machine (gone, or a zombie not yet reaped): 1 (a leftover of SIGKILL or a crash), 0 (its process
// runs: maybe a write under way), or -1 (no such name).
int core_temp_is_stale(const char *name);
// The temporary of path with suffix (".tmp-<pid>", or mkdtemp's template ".tmp-XXXXXX") into out:
// beside path, its name path's last name and the suffix; where a long name leaves no room for the
// suffix in NAME_MAX, its first bytes, '~' and a hash of the whole name (a valid name of 250 bytes
// was refused as "File name too long"; sweep, 2026-12-05). 0, or ENAMETOOLONG where out is too
// small.
int core_temp_name(char *out, size_t cap, const char *path, const char *suffix);

// fsync of a file or a directory (a rename becomes durable once its directory is synced): 0, or
// the errno of the open or the fsync (0 for a directory whose file system cannot sync one: EINVAL).
// core_fsync_parent syncs the directory that holds path.
int core_fsync(const char *path);
int core_fsync_parent(const char *path);

// An output file written whole or not at all. core_out_open creates the temporary
// "<path>.tmp-<pid>" beside path (core_temp_name; the same file system, so the rename is atomic)
// and tracks it; core_out_close flushes it, checks that every write reached it, syncs and closes
// it, renames it over path and syncs the directory. Any failure, or core_out_abort, removes the temporary and leaves path as it was; so
// does any end of the process before the close. A CoreOut that was never opened is {0} (or met a
// failed core_out_open): core_out_abort then does nothing.
typedef struct {
    FILE *f;         // write here between open and close
    char path[4096];
    char tmp[4160];  // "" where no temporary exists
} CoreOut;
// 0, or the errno of the failure (ENAMETOOLONG for a path over the buffer), or
// CORE_OUT_NOT_REGULAR where path exists and is no regular file (a directory, a FIFO, a device):
// the rename would replace it, so it is refused before anything is written; CORE_OUT_LINK where
// path is a symbolic link (likewise); or CORE_OUT_NO_CREATE where its folder exists but no file can
// be created in it (ENOENT in /proc).
enum { CORE_OUT_NOT_REGULAR = -1, CORE_OUT_NO_CREATE = -2, CORE_OUT_LINK = -3 };
int core_out_open(CoreOut *o, const char *path);
// The text of an error core_out_open or core_out_close returned (strerror's, or "not a regular
// file", "a symbolic link: ...", "its folder takes no new files ...").
const char *core_out_error(int err);
// The one message of an output that could not be written ("<what>: <reason>", what from fmt) and
// its exit code: 1 where the device failed (a full disk or quota, a file-size limit, an I/O error),
// 2 where the path given is wrong (core_errno_exit_code; "not a regular file" is the path's).
int core_out_report(int err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
// 0 when the file is in place, else the errno of the first failure (nothing left behind).
int core_out_close(CoreOut *o);
void core_out_abort(CoreOut *o);
// Closes n outputs as one: every one flushed, synced and closed (each checked) before the first
// rename, and the polite signals held back during the renames (core_signals_hold), so that old and
// new files are never mixed (only SIGKILL or a crash between two renames could). 0, or the errno of
// the first failure with *failed its index; the caller aborts them all.
int core_out_close_all(CoreOut *o, int n, int *failed);

// The polite signals (SIGINT, SIGTERM, SIGHUP, SIGUSR1) held back around renames that must happen
// together, whichever thread they reach, and let through again: one that came meanwhile then ends
// the process, as it would have (temporaries removed). Holds nest.
void core_signals_hold(void);
void core_signals_release(void);
// A graceful stop, for the training loop: from core_signals_defer(msg, saves) to
// core_signals_defer(NULL, 0), the first SIGINT, SIGTERM, SIGHUP or SIGUSR1 (the one mpirun
// forwards to every rank) does not end the process: msg goes to stderr (from the handler, as it is:
// "" for none) and core_signals_stop() returns the signal from then on, for the loop to stop where
// it can. A second one ends the process as it would have, and with saves 0 so does a first one
// other than SIGUSR1 that comes between core_signals_saving(1) and (0): a rank of a multi-rank
// save, whose SIGTERM may be Open MPI ending the job for another rank's failure (it never sends
// SIGUSR1 for that), would wait for that rank at the save's barriers until SIGKILL left its
// temporaries behind.
void core_signals_defer(const char *msg, int saves);
void core_signals_saving(int on);
int core_signals_stop(void);  // the deferred signal, or 0

// An advisory lock on a directory, held until core_dir_unlock or the end of the process: two
// commands writing one directory's files at once (two trains into one --out, a train and a `ckpt
// clean`, two `data prepare`s) would mix or delete each other's files. The lock's fd (>= 0);
// CORE_DIR_BUSY where another process holds it; CORE_DIR_NO_LOCK where none can be taken (no such
// directory, or a file system without locks): nothing is held and the caller goes on.
enum { CORE_DIR_BUSY = -1, CORE_DIR_NO_LOCK = -2 };
int core_dir_lock(const char *dir);
// A readers-writer lock on the file path (empty, beside the files it guards), for readers that must
// see a set of files from one writer's run (a train opening a dataset that a prepare may replace):
// the writer's (shared 0) is exclusive and creates the file where missing; a reader's (shared 1)
// is held by any number of readers and refused (CORE_DIR_BUSY) while a writer holds it; a writer's
// is refused while a reader holds it. CORE_DIR_NO_LOCK where none can be taken (a reader's lock
// file missing: files of a writer that made none). Released by core_dir_unlock. A lock of its own,
// not the folder's: readers of a folder that another command writes (a train saving into its
// --data) are not kept out (review, 2026-12-05).
int core_file_lock(const char *path, int shared);
void core_dir_unlock(int fd);

// mkdir -p: dir and every missing folder above it, or the process ends with one message naming the
// folder that could not be made and why (core_path_error's exit code), or that dir is not a
// directory (exit 2). what names the folder's role in the messages ("checkpoint directory"). The
// folders it makes are removed again with the temporaries (core_temp_remove_all) where they are
// still empty then: a command that fails before writing into its output folder leaves none behind.
void core_make_dirs(const char *dir, const char *what);

// The line (from 1) of the first NUL byte among text's n bytes, or 0 if there is none: a text
// input read whole and then parsed as C strings would otherwise end there, the rest unread.
int core_nul_line(const char *text, size_t n);


#ifdef __cplusplus
}
#endif
#endif
