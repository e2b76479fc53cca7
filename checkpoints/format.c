// The checked checkpoint reader (see format.h): every object is validated before a byte of tensor
// data is read, so that a damaged, truncated or hostile file ends in one clear message.
#include "checkpoints/format.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "checkpoints/ckpt.h"
#include "framework/core/check.h"
#include "framework/core/mem.h"
#include "framework/core/num.h"

const char *const CKPT_GROUPS[CKPT_NGROUPS] = {"/model", "/optim/m", "/optim/v"};

void ckpt_dir_of(const char *path, char *dir, size_t n) {
    if (strlen(path) >= n) core_usage_error("checkpoint path too long: %.80s...", path);
    strcpy(dir, path);
    char *slash = strrchr(dir, '/');
    if (slash) slash[slash == dir] = '\0';  // "/x.h5" lives in "/"
    else strcpy(dir, ".");
}

size_t ckpt_count_nonfinite(const float *x, size_t n) {
    size_t bad = 0;
    for (size_t i = 0; i < n; i++) bad += !isfinite(x[i]);
    return bad;
}

size_t ckpt_count_negative(const float *x, size_t n) {
    size_t bad = 0;
    for (size_t i = 0; i < n; i++) bad += x[i] < 0;
    return bad;
}

void ckpt_part_path(const char *path, int r, int n, char *out, size_t len) {
    int k = snprintf(out, len, "%s.part-%d-of-%d", path, r, n);
    if (k < 0 || (size_t)k >= len) core_usage_error("checkpoint path too long: %s", path);
}

int ckpt_part_suffix(const char *s, int *r, int *n) {
    int end = 0;
    return sscanf(s, ".part-%d-of-%d%n", r, n, &end) == 2 && end > 0 && s[end] == '\0';
}

// Checks a file's format name and version attributes; returns the version.
static int64_t check_format(const H5Io *io, hid_t f, const char *want) {
    char *fmt = h5_attr_read_str(io, f, "file", "format", 64);
    // A part file given where a checkpoint is wanted (an easy slip in a folder of step_N.h5 and its
    // step_N.h5.part-R-of-N) said only "format is 'moelab-checkpoint-part', not 'moelab-checkpoint'":
    // say what it is and name its index.
    if (!strcmp(want, CKPT_FORMAT_NAME) && !strcmp(fmt, CKPT_PART_FORMAT_NAME)) {
        const char *part = NULL;
        for (const char *at = strstr(io->path, ".part-"); at; at = strstr(at + 1, ".part-")) part = at;
        H5_FAIL(io, "is one part file of a checkpoint saved by several processes, not a checkpoint: pass "
                    "its index%s%.*s", part ? ", " : "", part ? (int)(part - io->path) : 0, io->path);
    }
    if (strcmp(fmt, want) != 0) H5_FAIL(io, "format is '%s', not '%s'", fmt, want);
    core_free(fmt);
    int64_t v;
    h5_attr_read(io, f, "file", "format_version", H5T_STD_I64LE, H5T_NATIVE_INT64, 0, &v);
    // Version 1 stored W1 and W3 as two tensors (w1, w3), version 2 as one (w13: docs/checkpoint-format.md).
    if (v == 1)
        H5_FAIL(io, "format version 1 (W1 and W3 as two tensors, moelab before 2026-12-03): this build reads "
                    "version %d, whose w13 holds them as one", CKPT_FORMAT_VERSION);
    if (v != CKPT_FORMAT_VERSION)
        H5_FAIL(io, "unknown format version %lld (this build reads version %d)", (long long)v,
                CKPT_FORMAT_VERSION);
    return v;
}

void ckpt_file_open(CkptFile *cf, const char *path) {
    memset(cf, 0, sizeof *cf);
    cf->io.path = path;
    cf->io.code = CORE_EXIT_USAGE;
    struct stat sb;
    if (stat(path, &sb) != 0) core_usage_error("checkpoint %s: %s", path, strerror(errno));
    if (!S_ISREG(sb.st_mode)) core_usage_error("checkpoint %s: not a regular file", path);
    // A link to an index (a `latest.h5`) has the parts of the index it leads to, beside that one
    // and named after it (they were looked for under the link's name: review, 2026-12-06).
    // CKPT_PATH_MAX is PATH_MAX, realpath's size.
    const int link = lstat(path, &sb) == 0 && S_ISLNK(sb.st_mode);
    if (link ? !realpath(path, cf->file) : snprintf(cf->file, sizeof cf->file, "%s", path) >= (int)sizeof cf->file)
        core_usage_error("checkpoint %s: %s", path, link ? strerror(errno) : "path too long");
    ckpt_dir_of(cf->file, cf->dir, sizeof cf->dir);
    cf->f = h5_open_file(&cf->io);
    cf->version = check_format(&cf->io, cf->f, CKPT_FORMAT_NAME);
    if (H5_OK(&cf->io, H5Aexists(cf->f, "parts"), "look up attribute parts")) {
        int64_t n;
        h5_attr_read(&cf->io, cf->f, "index", "parts", H5T_STD_I64LE, H5T_NATIVE_INT64, 0, &n);
        if (n < 1 || n > (1 << 20)) H5_FAIL(&cf->io, "index names %lld part files", (long long)n);
        cf->parts = (int)n;
        cf->part_ids = core_alloc((size_t)n * sizeof *cf->part_ids);
        h5_attr_read(&cf->io, cf->f, "index", "part_ids", H5T_STD_U64LE, H5T_NATIVE_UINT64, cf->parts,
                     cf->part_ids);
        cf->open_parts = core_alloc((size_t)n * sizeof *cf->open_parts);
    }
}

void ckpt_file_close(CkptFile *cf) {
    for (int i = 0; i < cf->n_open; i++) H5Fclose(cf->open_parts[i].f);
    core_free(cf->open_parts);
    core_free(cf->part_ids);
    if (cf->f > 0) H5Fclose(cf->f);
    memset(cf, 0, sizeof *cf);
}

void ckpt_file_config(CkptFile *cf, MoeConfig *c) {
    char *text = h5_attr_read_str(&cf->io, cf->f, "file", "config", CKPT_CONFIG_MAX);
    config_defaults(c);
    char name[CKPT_PATH_MAX + 64];
    snprintf(name, sizeof name, "checkpoint %s, stored config", cf->io.path);
    config_load_stored(c, text, name);
    core_free(text);
    // A stored config no run could have had is damage (the model built from it is what verify checks).
    config_validate_as(c, name);
}

void ckpt_file_state(CkptFile *cf, CkptState *st, int64_t *adam_t) {
    const H5Io *io = &cf->io;
    if (!h5_exists(io, cf->f, "state")) H5_FAIL(io, "group /state is missing");
    hid_t g = H5_OK(io, H5Gopen2(cf->f, "state", H5P_DEFAULT), "open /state");
    h5_attr_read(io, g, "/state", "step", H5T_STD_I64LE, H5T_NATIVE_INT64, 0, &st->step);
    h5_attr_read(io, g, "/state", "adam_t", H5T_STD_I64LE, H5T_NATIVE_INT64, 0, adam_t);
    h5_attr_read(io, g, "/state", "data_epoch", H5T_STD_U64LE, H5T_NATIVE_UINT64, 0, &st->data.epoch);
    h5_attr_read(io, g, "/state", "data_index", H5T_STD_U64LE, H5T_NATIVE_UINT64, 0, &st->data.index);
    h5_attr_read(io, g, "/state", "rng_seed", H5T_STD_U64LE, H5T_NATIVE_UINT64, 0, &st->rng.seed);
    h5_attr_read(io, g, "/state", "rng_stream", H5T_STD_U32LE, H5T_NATIVE_UINT32, 0, &st->rng.stream);
    h5_attr_read(io, g, "/state", "rng_counter", H5T_STD_U64LE, H5T_NATIVE_UINT64, 0, &st->rng.counter);
    // Optional: files saved before lineages existed belong to none; before tokenizer fingerprints,
    // their tokenizer is unknown.
    st->lineage = 0;
    if (H5_OK(io, H5Aexists(g, "lineage"), "/state: look up attribute lineage"))
        h5_attr_read(io, g, "/state", "lineage", H5T_STD_U64LE, H5T_NATIVE_UINT64, 0, &st->lineage);
    st->tok_fp = 0;
    if (H5_OK(io, H5Aexists(g, "tokenizer"), "/state: look up attribute tokenizer")) {
        h5_attr_read(io, g, "/state", "tokenizer", H5T_STD_U32LE, H5T_NATIVE_UINT32, 0, &st->tok_fp);
        if (!st->tok_fp) H5_FAIL(io, "/state: tokenizer fingerprint 0 (a saved one is never 0)");
    }
    // What the run trained on, for a resume to compare (absent before 2026-12-06): 0 is unknown.
    st->data_fp = 0;
    if (H5_OK(io, H5Aexists(g, "train_data"), "/state: look up attribute train_data")) {
        h5_attr_read(io, g, "/state", "train_data", H5T_STD_U64LE, H5T_NATIVE_UINT64, 0, &st->data_fp);
        if (!st->data_fp) H5_FAIL(io, "/state: train_data fingerprint 0 (a saved one is never 0)");
    }
    st->global_batch = 0;
    if (H5_OK(io, H5Aexists(g, "global_batch"), "/state: look up attribute global_batch")) {
        h5_attr_read(io, g, "/state", "global_batch", H5T_STD_I64LE, H5T_NATIVE_INT64, 0, &st->global_batch);
        if (st->global_batch < 1)
            H5_FAIL(io, "/state: global_batch %lld (a saved one is at least 1)", (long long)st->global_batch);
    }
    H5Gclose(g);
    // t counts AdamW's steps, one per training step at most: a larger t passed, and a t near 2^63
    // overflowed in the resumed run, which then wrote a checkpoint its own verify refused.
    if (st->step < 0 || st->step > INT32_MAX || *adam_t < 0 || *adam_t > st->step)
        H5_FAIL(io, "/state holds step %lld and AdamW t %lld (t must be within 0..step)", (long long)st->step,
                (long long)*adam_t);
    // The loader's shuffle has 2^32 epochs (a stream each): a later one passed `ckpt verify` and ended
    // --resume at its first step with an internal error (exit 1).
    if (st->data.epoch > UINT32_MAX)
        H5_FAIL(io, "/state holds data epoch %llu, beyond the data loader's 2^32 epochs",
                (unsigned long long)st->data.epoch);
}

int ckpt_has_tensor(CkptFile *cf, const char *name) { return h5_exists(&cf->io, cf->f, name); }

// Opens (once) and checks the part file `fname` named by a virtual mapping of the index.
static CkptPartFile *open_part(CkptFile *cf, const char *tensor, const char *fname) {
    for (int i = 0; i < cf->n_open; i++)
        if (strcmp(cf->open_parts[i].name, fname) == 0) return &cf->open_parts[i];
    // Only plain names in the index's own directory: a mapping may not reach elsewhere.
    if (strchr(fname, '/') || !strcmp(fname, ".") || !strcmp(fname, "..") || strlen(fname) >= 256)
        H5_FAIL(&cf->io, "%s maps to '%s', which is not a part file name", tensor, fname);
    // The mappings name the parts after the index's name at its save, and HDF5 (h5py) follows those
    // names: an index renamed with its parts reads as parts missing (review, 2026-12-06).
    const char *base = strrchr(cf->file, '/') ? strrchr(cf->file, '/') + 1 : cf->file;
    const char *suffix = NULL;
    for (const char *at = strstr(fname, ".part-"); at; at = strstr(at + 1, ".part-")) suffix = at;
    if (suffix && ((size_t)(suffix - fname) != strlen(base) || strncmp(fname, base, strlen(base))))
        H5_FAIL(&cf->io, "was saved as %.*s (%s maps to %s): a checkpoint of part files cannot be renamed; "
                "give it and its part files their names back", (int)(suffix - fname), fname, tensor, fname);
    if (cf->n_open == cf->parts)
        H5_FAIL(&cf->io, "%s maps to more part files than the %d the index names", tensor, cf->parts);
    CkptPartFile *p = &cf->open_parts[cf->n_open];
    char path[2 * CKPT_PATH_MAX];
    snprintf(path, sizeof path, "%s/%s", cf->dir, fname);
    struct stat sb;
    if (stat(path, &sb) != 0)
        H5_FAIL(&cf->io, "part file %s (holding part of %s) is missing: %s", path, tensor, strerror(errno));
    // The part's own messages name it; they still exit 2 (bad input).
    H5Io io = {path, CORE_EXIT_USAGE};
    p->f = h5_open_file(&io);
    check_format(&io, p->f, CKPT_PART_FORMAT_NAME);
    int64_t r, n;
    uint64_t id;
    h5_attr_read(&io, p->f, "part", "part", H5T_STD_I64LE, H5T_NATIVE_INT64, 0, &r);
    h5_attr_read(&io, p->f, "part", "parts", H5T_STD_I64LE, H5T_NATIVE_INT64, 0, &n);
    h5_attr_read(&io, p->f, "part", "part_id", H5T_STD_U64LE, H5T_NATIVE_UINT64, 0, &id);
    if (n != cf->parts || r < 0 || r >= n)
        H5_FAIL(&io, "is part %lld of %lld, but the index %s has %d parts", (long long)r, (long long)n,
                cf->io.path, cf->parts);
    // The part a file holds must be the one its name (".part-R-of-N", as the index maps it) says:
    // a copy or a link of another part under this name carries that part's own id, passes the id
    // check below, and would fill these rows with another rank's experts.
    int nr = -1, nn = -1;
    if (!suffix || !ckpt_part_suffix(suffix, &nr, &nn) || nr != r || nn != n)
        H5_FAIL(&io, "holds part %lld of %lld, not the part its name says (a copy or link of another part?)",
                (long long)r, (long long)n);
    if (id != cf->part_ids[r])
        H5_FAIL(&io, "belongs to another save than the index %s (part id %016llx, the index expects "
                "%016llx)", cf->io.path, (unsigned long long)id, (unsigned long long)cf->part_ids[r]);
    strcpy(p->name, fname);
    cf->n_open++;
    return p;
}

void ckpt_file_check_parts(CkptFile *cf) {
    char part[2 * CKPT_PATH_MAX];
    for (int r = 0; r < cf->parts; r++) {
        ckpt_part_path(cf->file, r, cf->parts, part, sizeof part);
        const char *base = strrchr(part, '/') ? strrchr(part, '/') + 1 : part;
        open_part(cf, "the index", base);
    }
}

// Rows [*r0, *r1] of a selection that must be one block of whole rows of a dataset of extent `full`
// (ndim dims; an "all" selection counts as one block).
static void one_row_block(const H5Io *io, hid_t s, const char *what, int ndim, const hsize_t *full,
                          hsize_t *r0, hsize_t *r1) {
    hsize_t start[4], end[4];
    H5S_sel_type type = H5_OK(io, H5Sget_select_type(s), "%s: selection", what);
    // "All" (what h5py writes for an unsliced source) is the whole dataset; HDF5 1.10 stores it
    // without its extent, which read as "0 dimensions" and refused a sound mapping (review, 2026-12-05).
    if (type == H5S_SEL_ALL) {
        if (full[0] == 0) H5_FAIL(io, "%s selects the rows of a dataset that has none", what);
        *r0 = 0;
        *r1 = full[0] - 1;
        return;
    }
    int nd = (int)H5_OK(io, H5Sget_simple_extent_ndims(s), "%s: rank", what);
    if (nd != ndim) H5_FAIL(io, "%s has %d dimensions, not %d", what, nd, ndim);
    if (type != H5S_SEL_HYPERSLABS || H5_OK(io, H5Sget_select_hyper_nblocks(s), "%s: selection", what) != 1)
        H5_FAIL(io, "%s is not one block of rows", what);
    H5_OK(io, H5Sget_select_bounds(s, start, end), "%s: selection bounds", what);
    if (end[0] >= full[0]) H5_FAIL(io, "%s selects rows beyond the dataset's %llu", what, (unsigned long long)full[0]);
    for (int i = 1; i < ndim; i++)
        if (start[i] != 0 || end[i] + 1 != full[i]) H5_FAIL(io, "%s does not span whole rows", what);
    *r0 = start[0];
    *r1 = end[0];
}

// Mapping i of a virtual dataset, checked: logical rows [v0, v1] come from source rows [s0, s1] of
// the dataset of the same name in a checked part file, which is present, float32, chunked with
// Fletcher-32 and completely written. Returns the opened source dataset and its extent.
typedef struct {
    hsize_t v0, v1, s0, s1;
    hsize_t src_dims[4];
    hid_t src;
    char path[2 * CKPT_PATH_MAX];   // of the part file (for messages)
} VirtualMap;

static void virtual_map(CkptFile *cf, hid_t dcpl, size_t i, const char *name, int ndim,
                        const hsize_t *dims, VirtualMap *m) {
    const H5Io *io = &cf->io;
    char what[300], fname[256], dname[300];
    snprintf(what, sizeof what, "%s (virtual mapping %zu)", name, i);
    ssize_t fl = H5_OK(io, H5Pget_virtual_filename(dcpl, i, NULL, 0), "%s: source file", what);
    ssize_t dl = H5_OK(io, H5Pget_virtual_dsetname(dcpl, i, NULL, 0), "%s: source dataset", what);
    if (fl >= (ssize_t)sizeof fname || dl >= (ssize_t)sizeof dname) H5_FAIL(io, "%s: source name too long", what);
    H5_OK(io, H5Pget_virtual_filename(dcpl, i, fname, sizeof fname), "%s: source file", what);
    H5_OK(io, H5Pget_virtual_dsetname(dcpl, i, dname, sizeof dname), "%s: source dataset", what);
    if (strcmp(dname, name) != 0) H5_FAIL(io, "%s maps to dataset '%s' of its part", what, dname);
    CkptPartFile *p = open_part(cf, name, fname);
    hid_t vs = H5_OK(io, H5Pget_virtual_vspace(dcpl, i), "%s", what);
    one_row_block(io, vs, what, ndim, dims, &m->v0, &m->v1);
    H5Sclose(vs);
    snprintf(m->path, sizeof m->path, "%s/%s", cf->dir, fname);
    H5Io pio = {m->path, CORE_EXIT_USAGE};
    if (!h5_exists(&pio, p->f, name)) H5_FAIL(&pio, "dataset %s (mapped by the index) is missing", name);
    m->src = H5_OK(&pio, H5Dopen2(p->f, name, H5P_DEFAULT), "open %s", name);
    h5_check_stored(&pio, m->src, name, H5T_IEEE_F32LE);
    if (h5_dims(&pio, m->src, name, m->src_dims) != ndim)
        H5_FAIL(&pio, "%s has another number of dimensions than the index's", name);
    for (int k = 1; k < ndim; k++)
        if (m->src_dims[k] != dims[k]) H5_FAIL(&pio, "%s's rows differ in shape from the index's", name);
    hid_t ss = H5_OK(io, H5Pget_virtual_srcspace(dcpl, i), "%s: source selection", what);
    one_row_block(io, ss, what, ndim, m->src_dims, &m->s0, &m->s1);
    H5Sclose(ss);
    if (m->s1 - m->s0 != m->v1 - m->v0)
        H5_FAIL(io, "%s: source rows %llu..%llu do not match rows %llu..%llu", what, (unsigned long long)m->s0,
                (unsigned long long)m->s1, (unsigned long long)m->v0, (unsigned long long)m->v1);
    // An expert tensor's rows in a part are labelled with their logical experts: a mapping that
    // takes other experts' rows was called sound and loaded them into the wrong slots (review,
    // 2026-12-05). The labels must be there (h5_attr_read says so when they are not).
    char *kind = h5_attr_read_str(&pio, m->src, name, "kind", 15);
    const int expert = strcmp(kind, ckpt_kind_name(PARAM_EXPERT)) == 0;
    core_free(kind);
    if (expert) {
        int *ex = core_alloc((size_t)m->src_dims[0] * sizeof(int));
        h5_attr_read(&pio, m->src, name, "experts", H5T_STD_I32LE, H5T_NATIVE_INT, (int)m->src_dims[0], ex);
        for (hsize_t k = 0; k <= m->v1 - m->v0; k++)
            if (ex[m->s0 + k] != (int)(m->v0 + k))
                H5_FAIL(io, "%s: the part's row %llu holds expert %d, not the mapped expert %llu", what,
                        (unsigned long long)(m->s0 + k), ex[m->s0 + k], (unsigned long long)(m->v0 + k));
        core_free(ex);
    }
}

// The mappings of a virtual dataset, their count checked against its rows.
static size_t virtual_count(CkptFile *cf, hid_t dcpl, const char *name, const hsize_t *dims) {
    size_t n;
    H5_OK(&cf->io, H5Pget_virtual_count(dcpl, &n), "%s: virtual mappings", name);
    if (n == 0 || n > dims[0])
        H5_FAIL(&cf->io, "%s has %zu virtual mappings for %llu rows", name, n, (unsigned long long)dims[0]);
    return n;
}

// A virtual dataset: every mapping checked (virtual_map), and together they cover each row of the
// logical tensor exactly once (HDF5 would fill a row whose source is missing with the fill value,
// silently).
static void check_virtual(CkptFile *cf, hid_t d, const char *name, int ndim, const hsize_t *dims) {
    const H5Io *io = &cf->io;
    if (cf->parts == 0) H5_FAIL(io, "%s is a virtual dataset, but the file is not an index of parts", name);
    hid_t dcpl = h5_dcpl_of(io, d, name);
    const size_t n = virtual_count(cf, dcpl, name, dims);
    unsigned char *covered = core_alloc(dims[0]);
    for (size_t i = 0; i < n; i++) {
        VirtualMap m;
        virtual_map(cf, dcpl, i, name, ndim, dims, &m);
        H5Dclose(m.src);
        for (hsize_t r = m.v0; r <= m.v1; r++) {
            if (covered[r]) H5_FAIL(io, "%s: row %llu is mapped twice", name, (unsigned long long)r);
            covered[r] = 1;
        }
    }
    for (hsize_t r = 0; r < dims[0]; r++)
        if (!covered[r]) H5_FAIL(io, "%s: row %llu comes from no part file", name, (unsigned long long)r);
    core_free(covered);
    h5_dcpl_close(dcpl);
}

void ckpt_read_rows(CkptFile *cf, hid_t d, const char *name, int ndim, const hsize_t *dims,
                    hsize_t row0, hsize_t n, float *buf) {
    hid_t dcpl = h5_dcpl_of(&cf->io, d, name);
    if (H5_OK(&cf->io, H5Pget_layout(dcpl), "%s: layout", name) != H5D_VIRTUAL) {
        h5_dcpl_close(dcpl);
        h5_read_rows(&cf->io, d, name, H5T_NATIVE_FLOAT, ndim, dims, row0, n, buf);
        return;
    }
    // Each mapping's share of the rows comes straight from its part (our own direct chunk reads
    // check every checksum; they do not go through HDF5's virtual-dataset layer).
    size_t row = 1;
    for (int k = 1; k < ndim; k++) row *= (size_t)dims[k];
    const size_t nmap = virtual_count(cf, dcpl, name, dims);
    for (size_t i = 0; i < nmap; i++) {
        // Mappings that hold none of the rows are skipped before their part is touched.
        hsize_t v0, v1;
        hid_t vs = H5_OK(&cf->io, H5Pget_virtual_vspace(dcpl, i), "%s: virtual mapping %zu", name, i);
        one_row_block(&cf->io, vs, name, ndim, dims, &v0, &v1);
        H5Sclose(vs);
        if (v1 < row0 || v0 >= row0 + n) continue;
        VirtualMap m;
        virtual_map(cf, dcpl, i, name, ndim, dims, &m);
        const hsize_t a = row0 > m.v0 ? row0 : m.v0, b = row0 + n < m.v1 + 1 ? row0 + n : m.v1 + 1;
        H5Io pio = {m.path, CORE_EXIT_USAGE};
        h5_read_rows(&pio, m.src, name, H5T_NATIVE_FLOAT, ndim, m.src_dims, m.s0 + (a - m.v0), b - a,
                     buf + (size_t)(a - row0) * row);
        H5Dclose(m.src);
    }
    h5_dcpl_close(dcpl);
}

const char *ckpt_kind_name(ParamKind k) {
    return k == PARAM_EXPERT ? "expert" : k == PARAM_BUFFER ? "buffer" : "dense";
}

hid_t ckpt_open_tensor(CkptFile *cf, const char *name, const ParamInfo *want, int *ndim, hsize_t dims[4]) {
    const H5Io *io = &cf->io;
    char what[512];
    snprintf(what, sizeof what, "opening %s", name);
    h5_watch(io, what);  // metadata only, below: a damaged file can make HDF5 loop here (h5.h)
    if (!h5_exists(io, cf->f, name)) H5_FAIL(io, "dataset %s is missing", name);
    hid_t o = H5_OK(io, H5Oopen(cf->f, name, H5P_DEFAULT), "open %s", name);
    if (H5Iget_type(o) != H5I_DATASET) H5_FAIL(io, "%s is not a dataset", name);
    H5Oclose(o);
    hid_t d = H5_OK(io, H5Dopen2(cf->f, name, H5P_DEFAULT), "open %s", name);
    *ndim = h5_dims(io, d, name, dims);
    if (want) {
        hsize_t w[4];
        for (int i = 0; i < want->ndim; i++) w[i] = (hsize_t)want->shape[i];
        int same = *ndim == want->ndim;
        for (int i = 0; same && i < *ndim; i++) same = dims[i] == w[i];
        if (!same) {
            char a[128], b[128];
            h5_shape_str(a, sizeof a, *ndim, dims);
            h5_shape_str(b, sizeof b, want->ndim, w);
            H5_FAIL(io, "dataset %s has shape %s but the model expects %s", name, a, b);
        }
    }
    hid_t dcpl = h5_dcpl_of(io, d, name);
    H5D_layout_t layout = H5_OK(io, H5Pget_layout(dcpl), "%s: layout", name);
    h5_dcpl_close(dcpl);
    if (layout == H5D_VIRTUAL) {
        hid_t t = H5_OK(io, H5Dget_type(d), "%s: type", name);
        if (!H5_OK(io, H5Tequal(t, H5T_IEEE_F32LE), "%s: type", name))
            H5_FAIL(io, "%s has the wrong data type (little-endian float32 expected)", name);
        H5Tclose(t);
        check_virtual(cf, d, name, *ndim, dims);
    } else {
        h5_check_stored(io, d, name, H5T_IEEE_F32LE);
    }
    // What the rows are (an expert tensor's are placed slot by slot). Read by inspect only, a
    // missing or wrong kind passed verify and the loader (review, 2026-12-05).
    if (want) {
        char *kind = h5_attr_read_str(io, d, name, "kind", 15);
        if (strcmp(kind, ckpt_kind_name(want->kind)) != 0)
            H5_FAIL(io, "%s is of kind '%s', but the model's tensor is of kind '%s'", name, kind,
                    ckpt_kind_name(want->kind));
        core_free(kind);
    }
    h5_unwatch();
    return d;
}

// Opens an integer dataset of /eplb after checking its type, checksum filter and extent (rows, cols).
static hid_t open_eplb(CkptFile *cf, const char *name, hid_t ftype, hsize_t rows, hsize_t *cols) {
    const H5Io *io = &cf->io;
    hid_t d = H5_OK(io, H5Dopen2(cf->f, name, H5P_DEFAULT), "open %s", name);
    h5_check_stored(io, d, name, ftype);
    hsize_t dims[4];
    if (h5_dims(io, d, name, dims) != 2 || dims[0] != rows || (*cols && dims[1] != *cols))
        H5_FAIL(io, "%s should have %llu rows of %s", name, (unsigned long long)rows,
                *cols ? "one count per expert" : "slots");
    *cols = dims[1];
    return d;
}

// An (L, E) count dataset of /eplb (NULL when absent): int64, one count per logical expert, none
// negative.
static long *read_expert_rows(CkptFile *cf, const MoeConfig *c, const char *name) {
    const H5Io *io = &cf->io;
    if (!h5_exists(io, cf->f, name)) return NULL;
    hsize_t E = (hsize_t)c->E;
    hid_t d = open_eplb(cf, name, H5T_STD_I64LE, (hsize_t)c->L, &E);
    long *x = core_alloc((size_t)c->L * E * sizeof(long));
    const hsize_t dims[2] = {(hsize_t)c->L, E};
    h5_read_rows(io, d, name, H5T_NATIVE_LONG, 2, dims, 0, dims[0], x);
    H5Dclose(d);
    // Within the loads every other input may hold: one near 2^63 overflowed when the resumed run
    // added its own counts (sweep, 2026-12-05), and one above NUM_MAX_LOAD made the run's own
    // metrics file one that `moelab plot` refuses.
    for (size_t i = 0; i < (size_t)c->L * E; i++) {
        if (x[i] < 0) H5_FAIL(io, "%s holds a negative count", name);
        if ((double)x[i] > NUM_MAX_LOAD) H5_FAIL(io, "%s holds a count of %ld, above %g", name, x[i], NUM_MAX_LOAD);
    }
    return x;
}

int ckpt_file_eplb(CkptFile *cf, const MoeConfig *c, CkptEplb *out) {
    memset(out, 0, sizeof *out);
    const H5Io *io = &cf->io;
    int found = h5_exists(io, cf->f, "/eplb");
    if (found && h5_exists(io, cf->f, "/eplb/phy2log")) {
        hsize_t R = 0;
        hid_t d = open_eplb(cf, "/eplb/phy2log", H5T_STD_I32LE, (hsize_t)c->L, &R);
        if (R < (hsize_t)c->E || R > ((hsize_t)1 << 20))
            H5_FAIL(io, "/eplb/phy2log has %llu slots per layer for %d experts", (unsigned long long)R, c->E);
        out->R = (int)R;
        out->phy2log = core_alloc((size_t)c->L * R * sizeof(int));
        const hsize_t dims[2] = {(hsize_t)c->L, R};
        h5_read_rows(io, d, "/eplb/phy2log", H5T_NATIVE_INT, 2, dims, 0, dims[0], out->phy2log);
        H5Dclose(d);
        // Every expert of a MoE layer needs a slot: the dispatchers send its tokens there. A placement
        // without one passed `ckpt verify` and ended --resume with an internal error (exit 1).
        char *seen = core_alloc((size_t)c->E);
        for (int l = c->n_dense_layers; l < c->L; l++) {
            memset(seen, 0, (size_t)c->E);
            for (hsize_t p = 0; p < R; p++) {
                if (out->phy2log[l * R + p] < 0 || out->phy2log[l * R + p] >= c->E)
                    H5_FAIL(io, "/eplb/phy2log: layer %d slot %llu holds expert %d of %d", l,
                            (unsigned long long)p, out->phy2log[l * R + p], c->E);
                seen[out->phy2log[l * R + p]] = 1;
            }
            for (int e = 0; e < c->E; e++)
                if (!seen[e]) H5_FAIL(io, "/eplb/phy2log: layer %d has no slot for expert %d", l, e);
        }
        core_free(seen);
    }
    if (found) out->counts = read_expert_rows(cf, c, "/eplb/expert_counts");
    if (found) out->load = read_expert_rows(cf, c, "/eplb/load");
    return found;
}
