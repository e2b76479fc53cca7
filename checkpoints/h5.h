// Thin helpers over the HDF5 C API for the checkpoint code: one check macro around every HDF5 call
// (file, line and HDF5's own message, in one error), typed attributes that are checked on read, and
// float32 datasets chunked with the Fletcher-32 filter. Internal to checkpoints/.
#ifndef MOELAB_CHECKPOINTS_H5_H
#define MOELAB_CHECKPOINTS_H5_H

#include <hdf5.h>
#include <stdint.h>

#include "framework/core/check.h"

// The file a sequence of calls concerns, and how a failure ends: CORE_EXIT_USAGE (2) while reading
// (the file is bad input), CORE_EXIT_FAILURE (1) while writing (the system failed us).
typedef struct {
    const char *path;
    int code;
} H5Io;

// Turns off HDF5's automatic printing of its error stack: our check macro prints one message.
void h5_init(void);

// Returns r when r >= 0; otherwise ends the process with "checkpoint PATH: <what>: <HDF5 message>"
// and the call site. Every hid_t, herr_t, htri_t and hssize_t result goes through it.
int64_t h5_ok_at(int64_t r, const H5Io *io, const char *file, int line, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));
#define H5_OK(io, call, ...) h5_ok_at((int64_t)(call), (io), __FILE__, __LINE__, __VA_ARGS__)

// Our own findings about a file (wrong shape, missing object, ...), reported like H5_OK's but
// without a call site: the message says what is wrong.
CORE_NORETURN void h5_fail(const H5Io *io, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
#define H5_FAIL(io, ...) h5_fail((io), __VA_ARGS__)

// Dataset creation lists: every one we open is registered, and a failure closes the registered ones
// before the process exits, because HDF5 1.10 crashes at exit when the creation list of a virtual
// dataset is still open. h5_dcpl_of returns a dataset's list, h5_new_dcpl a new one.
hid_t h5_dcpl_of(const H5Io *io, hid_t d, const char *name);
hid_t h5_new_dcpl(const H5Io *io);
void h5_dcpl_close(hid_t dcpl);

// Creates `file` (truncating; messages name io->path) or opens io->path read-only, in the HDF5 1.10
// format (whose superblock, object headers and chunk indexes carry their own checksums). A file
// opened as input (io->code CORE_EXIT_USAGE) is probed first (h5_probe).
hid_t h5_create_file(const H5Io *io, const char *file);
hid_t h5_open_file(const H5Io *io);

// Reads every piece of io->path's HDF5 metadata in a child process (h5_probe.c): where HDF5 itself
// crashes on it (damage no check above HDF5 can see), or cannot read an object or a group's links
// (which would hide what lies behind them), ends with "its HDF5 metadata is damaged" and io->code
// instead of taking the caller down with a signal.
void h5_probe(const H5Io *io);
// Turns the probe of h5_open_file off (0) or on (1, the default): ckpt_set_probe.
void h5_set_probe(int on);
// Seconds a read of a checkpoint's metadata may take, in the probe (per file) and under h5_watch
// (per call): any real checkpoint's takes well under one. 120, or the test seam
// MOELAB_TEST_H5_SECONDS.
int h5_metadata_seconds(void);
// A watchdog over the reader's metadata calls on io->path, from h5_watch to h5_unwatch: HDF5 1.10.8
// loops without end opening some damaged objects, and the probe cannot always reach them first (a
// damaged group can hide from a walk of its links an object that a lookup by name finds: found by
// tests/checkpoints/fuzz_ckpt.c, 2026-12-04). Past h5_metadata_seconds a SIGALRM ends the process
// with "its HDF5 metadata is damaged: HDF5 did not finish <what> in N s" and io->code.
void h5_watch(const H5Io *io, const char *what);
void h5_unwatch(void);

// A group that remembers creation order (so tools list tensors in the model's order).
hid_t h5_create_group(const H5Io *io, hid_t loc, const char *name);
// 1 if loc has a link called name (a missing intermediate group counts as absent).
int h5_exists(const H5Io *io, hid_t loc, const char *name);

// "(a, b, c)": a shape or a position for messages.
void h5_shape_str(char *out, size_t n, int ndim, const hsize_t *d);

// Attributes: n == 0 means a scalar, else a 1-D array of n values. Reading checks that the
// attribute exists, has exactly the stored type `ftype` and the expected extent.
void h5_attr_write(const H5Io *io, hid_t obj, const char *name, hid_t ftype, hid_t mtype, int n,
                   const void *v);
void h5_attr_read(const H5Io *io, hid_t obj, const char *where, const char *name, hid_t ftype,
                  hid_t mtype, int n, void *out);
// Fixed-length string attributes. Reading returns a core_alloc'd copy of at most max_len bytes.
void h5_attr_write_str(const H5Io *io, hid_t obj, const char *name, const char *s);
char *h5_attr_read_str(const H5Io *io, hid_t obj, const char *where, const char *name, size_t max_len);

// A chunked dataset of type ftype with the Fletcher-32 filter. Chunks span whole trailing rows
// and hold about 4 MiB; with one_per_row, each leading-axis row (an expert) gets chunks of its own.
hid_t h5_create_dataset(const H5Io *io, hid_t loc, const char *name, hid_t ftype, int ndim,
                        const hsize_t *dims, int one_per_row);
// Writes or reads rows [row0, row0 + n) of a chunked dataset from h5_create_dataset (extent dims,
// ndim dims) from / into the contiguous memory buf of type mtype (which must equal the file's type).
// Chunks move whole through HDF5's direct chunk I/O, with their Fletcher-32 checksums computed or
// verified on every core (HDF5's filter pipeline would use one); the result is byte for byte what the
// filter stores and checks. Writes must start and end on chunk boundaries (each leading-axis row of
// an expert tensor is, and whole tensors are).
void h5_write_rows(const H5Io *io, hid_t d, const char *name, hid_t mtype, int ndim,
                   const hsize_t *dims, hsize_t row0, hsize_t n, const void *buf);
void h5_read_rows(const H5Io *io, hid_t d, const char *name, hid_t mtype, int ndim,
                  const hsize_t *dims, hsize_t row0, hsize_t n, void *buf);

// Checks a stored (not virtual) dataset before anything is read from it: type ftype, chunked with
// the Fletcher-32 filter, and every chunk written (an unwritten chunk would read as silent zeros).
void h5_check_stored(const H5Io *io, hid_t d, const char *name, hid_t ftype);
// The dataset's extent: returns ndim (at most 4, else a failure) and fills dims.
int h5_dims(const H5Io *io, hid_t d, const char *name, hsize_t dims[4]);

#endif
