// The checkpoint file format's names and the checked reader shared by the loader, `ckpt inspect` and
// `ckpt verify`: opening a checkpoint (single file or index of parts) and opening one tensor dataset
// only after its type, shape, checksum filter, completeness and (for virtual datasets) every source
// part have been checked. Internal to checkpoints/; the format is docs/checkpoint-format.md.
#ifndef MOELAB_CHECKPOINTS_FORMAT_H
#define MOELAB_CHECKPOINTS_FORMAT_H

#include "checkpoints/ckpt.h"
#include "checkpoints/h5.h"
#include "framework/core/config.h"
#include "framework/core/params.h"

#define CKPT_FORMAT_NAME "moelab-checkpoint"
#define CKPT_PART_FORMAT_NAME "moelab-checkpoint-part"
#define CKPT_CONFIG_MAX (1 << 20)  // bytes of the stored config text we accept

// The three groups that hold tensors, in the order they are written.
#define CKPT_NGROUPS 3
#define CKPT_GROUP_V 2  // AdamW's second moments
extern const char *const CKPT_GROUPS[CKPT_NGROUPS];  // "/model", "/optim/m", "/optim/v"

// The directory of a file path ("." for a bare name).
void ckpt_dir_of(const char *path, char *dir, size_t n);
// Number of NaN and infinite values among x[0..n): a checkpoint holds none (the saver refuses them,
// the loader and `verify` reject them).
size_t ckpt_count_nonfinite(const float *x, size_t n);
// Number of negative values among x[0..n): none in /optim/v, whose second moments are running means
// of squares (the loader and `verify` reject them; a resumed run took them and ended at its save,
// blaming itself for diverging).
size_t ckpt_count_negative(const float *x, size_t n);
// A tensor's `kind` attribute: "expert", "buffer" or "dense".
const char *ckpt_kind_name(ParamKind k);
// "<path>.part-<r>-of-<n>": part r's file name.
void ckpt_part_path(const char *path, int r, int n, char *out, size_t len);
// 1 when s is exactly ".part-<r>-of-<n>" (a part file's name after its index's), with *r and *n set;
// else 0.
int ckpt_part_suffix(const char *s, int *r, int *n);

typedef struct {
    char name[256];   // as the index's virtual datasets name it (a plain file name)
    hid_t f;
} CkptPartFile;

// A checkpoint opened for reading.
typedef struct {
    H5Io io;                  // path: the single file or index
    hid_t f;
    char file[CKPT_PATH_MAX]; // the file itself: path, or where a symbolic link there leads
    char dir[CKPT_PATH_MAX];  // file's directory, where part files live
    int parts;                // 0 for a single file, else the number of part files
    uint64_t *part_ids;       // (parts) id each part file must carry
    CkptPartFile *open_parts; // (parts) part files checked so far
    int n_open;
    int64_t version;
} CkptFile;

// Checks that path exists, is HDF5, names our format and has a version this build reads.
void ckpt_file_open(CkptFile *cf, const char *path);
void ckpt_file_close(CkptFile *cf);
// The stored config, parsed on top of the defaults (a bad stored config exits 2).
void ckpt_file_config(CkptFile *cf, MoeConfig *c);
// The /state group: step, loader position, RNG stream and AdamW's step count, range-checked.
void ckpt_file_state(CkptFile *cf, CkptState *st, int64_t *adam_t);
// Every part file an index names (not only those its tensors map to: a rank of a later data-parallel
// replica writes a part without tensors) opened and checked against the index.
void ckpt_file_check_parts(CkptFile *cf);
// True if the float32 tensor `name` (e.g. "/model/embed") exists.
int ckpt_has_tensor(CkptFile *cf, const char *name);
// Opens tensor `name` after checking it completely (see the top of this file). With want != NULL its
// shape must equal want's logical shape; ndim and dims receive the stored extent. A missing dataset
// is an error that names it.
hid_t ckpt_open_tensor(CkptFile *cf, const char *name, const ParamInfo *want, int *ndim, hsize_t dims[4]);
// Reads rows [row0, row0 + n) of an opened tensor of extent dims into buf: from the file itself, or
// for a virtual dataset from the part files its mappings name (each read checks every checksum).
void ckpt_read_rows(CkptFile *cf, hid_t d, const char *name, int ndim, const hsize_t *dims,
                    hsize_t row0, hsize_t n, float *buf);
// The /eplb group (see ckpt_load_eplb), checked and read from an opened file.
int ckpt_file_eplb(CkptFile *cf, const MoeConfig *c, CkptEplb *out);

#endif
