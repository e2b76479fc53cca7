// Saving and loading checkpoints (API in ckpt.h, format in docs/checkpoint-format.md): the logical
// layout written from any expert-parallel layout (one file, or part files joined by an index of
// HDF5 virtual datasets), atomic commits, and a loader that checks everything before reading.
#include "checkpoints/ckpt.h"

#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "checkpoints/format.h"
#include "framework/core/check.h"
#include "framework/core/file.h"
#include "framework/core/log.h"
#include "framework/core/mem.h"

static void (*save_hook)(int);
static int saved_datasets;

void ckpt_set_save_hook(void (*hook)(int datasets_written)) { save_hook = hook; }

static void dataset_done(void) {
    saved_datasets++;
    if (save_hook) save_hook(saved_datasets);
}

// ---------------------------------------------------------------------------------------------
// Expert slots: which logical expert each physical slot holds, and who writes it.

CkptShard ckpt_shard_identity(int ep_rank, int ep_size, int E) {
    CkptShard s;
    memset(&s, 0, sizeof s);
    s.part = s.ep_rank = ep_rank;
    s.parts = s.ep_size = ep_size;
    s.write_dense = ep_rank == 0;
    s.write_experts = 1;
    s.R = E;
    return s;
}

static int slot_expert(const CkptShard *sh, int l, int p) {
    return sh->phy2log ? sh->phy2log[(size_t)l * sh->R + p] : p;
}

// A shard or view that does not fit the model is the caller's bug, not bad input: CHECK (exit 1).
static void check_shard(const CkptShard *sh, const CkptView *v) {
    const MoeConfig *c = v->cfg;
    const ParamRegistry *r = v->reg;
    CHECK(sh->parts >= 1 && sh->part >= 0 && sh->part < sh->parts, "checkpoint shard: part %d of %d",
          sh->part, sh->parts);
    CHECK(sh->ep_size >= 1 && sh->ep_rank >= 0 && sh->ep_rank < sh->ep_size && sh->R >= c->E &&
              sh->R % sh->ep_size == 0,
          "checkpoint shard: EP rank %d of %d with %d slots for %d experts", sh->ep_rank, sh->ep_size,
          sh->R, c->E);
    CHECK(sh->phy2log || sh->R == c->E, "checkpoint shard: %d slots for %d experts need a phy2log map",
          sh->R, c->E);
    CHECK(v->data && (!v->m) == (!v->v) && (!v->m || v->adam_t),
          "checkpoint view: values, and both AdamW moments with the step count or none of them");
    for (int i = 0; i < r->n; i++)
        CHECK(r->p[i].kind != PARAM_EXPERT || r->p[i].local_rows == sh->R / sh->ep_size,
              "checkpoint shard: %s holds %lld slots here, the shard says %d", r->p[i].name,
              (long long)r->p[i].local_rows, sh->R / sh->ep_size);
    if (!sh->phy2log) return;
    char *seen = core_alloc((size_t)c->E);
    // Dense layers [0, n_dense_layers) hold no experts.
    for (int l = c->n_dense_layers; l < c->L; l++) {
        memset(seen, 0, (size_t)c->E);
        for (int p = 0; p < sh->R; p++) {
            int e = slot_expert(sh, l, p);
            CHECK(e >= 0 && e < c->E, "checkpoint shard: layer %d slot %d holds expert %d", l, p, e);
            seen[e] = 1;
        }
        for (int e = 0; e < c->E; e++) CHECK(seen[e], "checkpoint shard: layer %d holds no copy of expert %d", l, e);
    }
    core_free(seen);
}

// The logical experts this rank writes for layer l, ascending, and the local slot of each; returns
// their number. Each expert is written once, from the lowest physical slot holding it.
static int owned_rows(const CkptShard *sh, int E, int l, int *slot, int *expert) {
    const int n = sh->R / sh->ep_size, first = sh->ep_rank * n;
    int *first_slot = core_alloc((size_t)E * sizeof(int));
    for (int e = 0; e < E; e++) first_slot[e] = -1;
    for (int p = 0; p < sh->R; p++)
        if (first_slot[slot_expert(sh, l, p)] < 0) first_slot[slot_expert(sh, l, p)] = p;
    int k = 0;
    for (int e = 0; e < E; e++)
        if (first_slot[e] >= first && first_slot[e] < first + n) {
            slot[k] = first_slot[e] - first;
            expert[k++] = e;
        }
    core_free(first_slot);
    return k;
}

// Length of the run of a[] starting at i that steps by one: rows that move in one HDF5 call.
static int run_len(const int *a, int i, int n) {
    int k = 1;
    while (i + k < n && a[i + k] == a[i] + k) k++;
    return k;
}

// ---------------------------------------------------------------------------------------------
// Writing.

// Writes registry buffer `base` (values, or one AdamW moment) into a new group gname of parent: the
// non-expert tensors whole (if this rank writes them) and the expert rows this rank owns, in logical
// order. In a part file, expert datasets are labelled with the logical ids of their rows.
static void write_group(const H5Io *io, hid_t parent, const char *gname, const CkptView *v, const float *base,
                        const CkptShard *sh, int with_buffers, int in_part) {
    hid_t g = h5_create_group(io, parent, gname);
    const ParamRegistry *r = v->reg;
    const int E = v->cfg->E;
    int *slot = core_alloc((size_t)E * sizeof(int)), *expert = core_alloc((size_t)E * sizeof(int));
    for (int i = 0; i < r->n; i++) {
        const ParamInfo *p = &r->p[i];
        const int is_expert = p->kind == PARAM_EXPERT;
        if ((p->kind == PARAM_BUFFER && !with_buffers) || !(is_expert ? sh->write_experts : sh->write_dense))
            continue;
        hsize_t dims[4];
        for (int k = 0; k < p->ndim; k++) dims[k] = (hsize_t)p->shape[k];
        const float *x = base + p->offset;
        const size_t row = p->numel / (size_t)p->local_rows;
        int n = is_expert ? owned_rows(sh, E, p->layer, slot, expert) : 0;
        if (is_expert && n == 0) continue;
        if (is_expert) dims[0] = (hsize_t)n;
        hid_t d = h5_create_dataset(io, g, p->name, H5T_IEEE_F32LE, p->ndim, dims, is_expert);
        if (!is_expert) h5_write_rows(io, d, p->name, H5T_NATIVE_FLOAT, p->ndim, dims, 0, dims[0], x);
        for (int k = 0, len; k < n; k += len) {
            len = run_len(slot, k, n);
            h5_write_rows(io, d, p->name, H5T_NATIVE_FLOAT, p->ndim, dims, (hsize_t)k, (hsize_t)len,
                          x + (size_t)slot[k] * row);
        }
        h5_attr_write_str(io, d, "kind", ckpt_kind_name(p->kind));
        if (is_expert && in_part) h5_attr_write(io, d, "experts", H5T_STD_I32LE, H5T_NATIVE_INT, n, expert);
        H5Dclose(d);
        dataset_done();
    }
    core_free(slot);
    core_free(expert);
    H5Gclose(g);
}

static void write_tensors(const H5Io *io, hid_t f, const CkptShard *sh, const CkptView *v, int in_part) {
    write_group(io, f, "model", v, v->data, sh, 1, in_part);
    hid_t go = h5_create_group(io, f, "optim");
    write_group(io, go, "m", v, v->m, sh, 0, in_part);
    write_group(io, go, "v", v, v->v, sh, 0, in_part);
    H5Gclose(go);
}

// The config as `key = value` lines (config_write's output), malloc'd.
static char *config_text(const MoeConfig *c) {
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    CHECK(f, "open_memstream failed");
    config_write(c, f);
    fclose(f);
    return text;
}

// An (L, cols) integer dataset of /eplb: one value per slot (phy2log) or logical expert (counts) of
// every layer.
static void write_eplb_rows(const H5Io *io, hid_t g, const char *name, hid_t ftype, hid_t mtype, int L, int cols,
                            const void *x) {
    const hsize_t dims[2] = {(hsize_t)L, (hsize_t)cols};
    hid_t d = h5_create_dataset(io, g, name, ftype, 2, dims, 0);
    h5_write_rows(io, d, name, mtype, 2, dims, 0, dims[0], x);
    H5Dclose(d);
    dataset_done();
}

// The config text, /state and the optional /eplb group: what the single file and the index hold
// besides tensors.
static void write_state(const H5Io *io, hid_t f, const MoeConfig *c, long adam_t, const CkptState *st,
                        const CkptEplb *e) {
    char *text = config_text(c);
    h5_attr_write_str(io, f, "config", text);
    free(text);
    hid_t g = h5_create_group(io, f, "state");
    const int64_t step = st->step, t = adam_t;
    h5_attr_write(io, g, "step", H5T_STD_I64LE, H5T_NATIVE_INT64, 0, &step);
    h5_attr_write(io, g, "adam_t", H5T_STD_I64LE, H5T_NATIVE_INT64, 0, &t);
    h5_attr_write(io, g, "data_epoch", H5T_STD_U64LE, H5T_NATIVE_UINT64, 0, &st->data.epoch);
    h5_attr_write(io, g, "data_index", H5T_STD_U64LE, H5T_NATIVE_UINT64, 0, &st->data.index);
    h5_attr_write(io, g, "rng_seed", H5T_STD_U64LE, H5T_NATIVE_UINT64, 0, &st->rng.seed);
    h5_attr_write(io, g, "rng_stream", H5T_STD_U32LE, H5T_NATIVE_UINT32, 0, &st->rng.stream);
    h5_attr_write(io, g, "rng_counter", H5T_STD_U64LE, H5T_NATIVE_UINT64, 0, &st->rng.counter);
    h5_attr_write(io, g, "lineage", H5T_STD_U64LE, H5T_NATIVE_UINT64, 0, &st->lineage);
    if (st->tok_fp) h5_attr_write(io, g, "tokenizer", H5T_STD_U32LE, H5T_NATIVE_UINT32, 0, &st->tok_fp);
    if (st->data_fp) h5_attr_write(io, g, "train_data", H5T_STD_U64LE, H5T_NATIVE_UINT64, 0, &st->data_fp);
    if (st->global_batch)
        h5_attr_write(io, g, "global_batch", H5T_STD_I64LE, H5T_NATIVE_INT64, 0, &st->global_batch);
    H5Gclose(g);
    if (!e || (!e->phy2log && !e->counts && !e->load)) return;
    g = h5_create_group(io, f, "eplb");
    if (e->phy2log) {
        CHECK(e->R >= c->E, "EPLB plan with %d slots for %d experts", e->R, c->E);
        for (int l = c->n_dense_layers; l < c->L; l++)
            for (int p = 0; p < e->R; p++)
                CHECK(e->phy2log[(size_t)l * e->R + p] >= 0 && e->phy2log[(size_t)l * e->R + p] < c->E,
                      "EPLB plan: layer %d slot %d holds expert %d", l, p, e->phy2log[(size_t)l * e->R + p]);
        write_eplb_rows(io, g, "phy2log", H5T_STD_I32LE, H5T_NATIVE_INT, c->L, e->R, e->phy2log);
    }
    if (e->counts) write_eplb_rows(io, g, "expert_counts", H5T_STD_I64LE, H5T_NATIVE_LONG, c->L, c->E, e->counts);
    if (e->load) write_eplb_rows(io, g, "load", H5T_STD_I64LE, H5T_NATIVE_LONG, c->L, c->E, e->load);
    H5Gclose(g);
}

// A diverged state is never saved: every value and moment this process would write is checked before
// any file is created (a non-finite one fails the save, exit 1).
static void check_finite(const char *path, const CkptView *v) {
    const ParamRegistry *r = v->reg;
    const float *base[CKPT_NGROUPS] = {v->data, v->m, v->v};
    for (int g = 0; g < CKPT_NGROUPS; g++)
        for (int i = 0; i < r->n; i++) {
            if (g > 0 && r->p[i].kind == PARAM_BUFFER) continue;
            const size_t bad = ckpt_count_nonfinite(base[g] + r->p[i].offset, r->p[i].numel);
            if (bad)
                FATAL("checkpoint %s: refusing to save %s/%s: %zu of its values are NaN or infinite (the "
                      "run diverged)", path, CKPT_GROUPS[g], r->p[i].name, bad);
        }
}

// A file written under a temporary name and renamed only once complete and on disk.
typedef struct {
    const char *final;
    char tmp[CKPT_PATH_MAX + 32];
    char dir[CKPT_PATH_MAX];
    H5Io io;
    hid_t f;
} AtomicFile;

// Creates the temporary of path with its format attributes (format: the file's kind).
static void atomic_create(AtomicFile *a, const char *path, const char *format) {
    a->final = path;
    a->io.path = path;
    a->io.code = CORE_EXIT_FAILURE;
    ckpt_dir_of(path, a->dir, sizeof a->dir);
    // A missing or read-only directory is the user's doing (a bad --out): a usage error.
    if (access(a->dir, W_OK) != 0)
        core_usage_error("cannot write checkpoint %s: directory %s: %s", path, a->dir, strerror(errno));
    char suffix[32];
    snprintf(suffix, sizeof suffix, ".tmp-%ld", (long)getpid());
    CHECK(core_temp_name(a->tmp, sizeof a->tmp, path, suffix) == 0, "checkpoint path too long: %s", path);
    // Tracked: a failed save (a full disk, an I/O error, any check) or an interrupted one leaves no
    // partial file (framework/core/file.h).
    core_temp_track(a->tmp);
    a->f = h5_create_file(&a->io, a->tmp);
    saved_datasets = 0;
    const int64_t version = CKPT_FORMAT_VERSION;
    h5_attr_write_str(&a->io, a->f, "format", format);
    h5_attr_write(&a->io, a->f, "format_version", H5T_STD_I64LE, H5T_NATIVE_INT64, 0, &version);
}

static void fsync_or_die(const char *path) {
    const int err = core_fsync(path);
    if (err) FATAL("checkpoint: fsync %s: %s", path, strerror(err));
}

// Closing writes HDF5's last metadata, so the bytes are synced after the close: the temporary is
// then complete on the disk.
static void atomic_finish(AtomicFile *a) {
    H5_OK(&a->io, H5Fflush(a->f, H5F_SCOPE_GLOBAL), "flush");
    H5_OK(&a->io, H5Fclose(a->f), "close");
    fsync_or_die(a->tmp);
}

// The rename publishes the complete file; syncing the directory makes the rename itself durable.
static void atomic_publish(const char *tmp, const char *final, const char *dir) {
    if (rename(tmp, final) != 0) {
        const int err = errno;
        FATAL("checkpoint: rename %s to %s: %s", tmp, final, strerror(err));
    }
    core_temp_untrack(tmp);
    fsync_or_die(dir);
}

static void atomic_commit(AtomicFile *a) {
    atomic_finish(a);
    atomic_publish(a->tmp, a->final, a->dir);
}

// A save writes the moments: a view without them is the caller's bug.
static void check_save_view(const CkptShard *sh, const CkptView *v) {
    check_shard(sh, v);
    CHECK(v->m, "checkpoint save: the view has no AdamW moments");
}

void ckpt_save(const char *path, const CkptShard *sh, const CkptView *v, const CkptState *st,
               const CkptEplb *eplb) {
    check_save_view(sh, v);
    CHECK(sh->parts == 1 && sh->ep_size == 1 && sh->write_dense && sh->write_experts,
          "ckpt_save writes a whole model from one process (this shard is part %d of %d, EP %d of %d): "
          "use ckpt_save_part and ckpt_save_index", sh->part, sh->parts, sh->ep_rank, sh->ep_size);
    check_finite(path, v);
    AtomicFile a;
    atomic_create(&a, path, CKPT_FORMAT_NAME);
    write_state(&a.io, a.f, v->cfg, *v->adam_t, st, eplb);
    write_tensors(&a.io, a.f, sh, v, 0);
    atomic_commit(&a);
}

// An id that differs between saves and runs (time, process, salt): part ids let the index tell its
// own parts from stale ones of an earlier save under the same name; lineage ids tell runs apart.
static uint64_t new_id(uint64_t salt) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    uint64_t x = (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
    x ^= ((uint64_t)getpid() << 32) ^ (salt * 0x9E3779B97F4A7C15ull);
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    return x ^ (x >> 31);
}

uint64_t ckpt_new_lineage(void) {
    uint64_t id = new_id((uint64_t)1 << 40);
    return id ? id : 1;
}

// The parts of the multi-part save under way, while a part or the index is being written: an error
// there (a full disk) removes every part of the save, the other ranks' committed ones too, which
// without the index are only leftovers taking the space (a whole save's parts were left behind,
// review 2026-12-05). A rank ended by the failing rank's MPI_Abort removes its own temporary.
static char g_save_path[CKPT_PATH_MAX];
static int g_save_parts;
static void remove_save_parts(void) {
    // Committed (an error after the index's rename: the folder's sync): the parts are the
    // checkpoint's. The trainer removed any earlier index of this name before the parts (ckpt_clear).
    if (access(g_save_path, F_OK) == 0) return;
    char part[CKPT_PATH_MAX + 32];
    for (int r = 0; r < g_save_parts; r++) {
        ckpt_part_path(g_save_path, r, g_save_parts, part, sizeof part);
        unlink(part);
    }
}
static void arm_parts_cleanup(const char *path, int parts) {
    CHECK(strlen(path) < sizeof g_save_path, "checkpoint path too long: %s", path);
    snprintf(g_save_path, sizeof g_save_path, "%s", path);
    g_save_parts = parts;
    core_set_failure_cleanup(remove_save_parts);
}

void ckpt_part_write(const char *path, const CkptShard *sh, const CkptView *v, CkptPartWrite *out) {
    check_save_view(sh, v);
    check_finite(path, v);
    ckpt_part_path(path, sh->part, sh->parts, out->final, sizeof out->final);
    arm_parts_cleanup(path, sh->parts);
    AtomicFile a;
    atomic_create(&a, out->final, CKPT_PART_FORMAT_NAME);
    const int64_t r = sh->part, n = sh->parts;
    const uint64_t id = new_id((uint64_t)sh->part);
    h5_attr_write(&a.io, a.f, "part", H5T_STD_I64LE, H5T_NATIVE_INT64, 0, &r);
    h5_attr_write(&a.io, a.f, "parts", H5T_STD_I64LE, H5T_NATIVE_INT64, 0, &n);
    h5_attr_write(&a.io, a.f, "part_id", H5T_STD_U64LE, H5T_NATIVE_UINT64, 0, &id);
    write_tensors(&a.io, a.f, sh, v, 1);
    atomic_finish(&a);
    snprintf(out->tmp, sizeof out->tmp, "%s", a.tmp);
    snprintf(out->dir, sizeof out->dir, "%s", a.dir);
}

void ckpt_part_commit(const CkptPartWrite *pf) {
    atomic_publish(pf->tmp, pf->final, pf->dir);
    core_set_failure_cleanup(NULL);
}

void ckpt_save_part(const char *path, const CkptShard *sh, const CkptView *v) {
    CkptPartWrite pf;
    ckpt_part_write(path, sh, v, &pf);
    ckpt_part_commit(&pf);
}

// One virtual mapping: rows [row0, row0 + n) of the logical tensor are rows [src0, src0 + n) of the
// same-named dataset (src_rows rows) in part `part`.
typedef struct {
    int part;
    hsize_t src_rows, src0, row0, n;
} VMap;

typedef struct {
    char name[PARAM_NAME_MAX];
    char kind[16];
    int ndim;
    hsize_t dims[4];   // logical extent
    int nmap, cap;
    VMap *map;
} VTensor;

static void *grow(void *p, int n, int *cap, size_t elem) {
    if (n < *cap) return p;
    *cap = *cap ? 2 * *cap : 16;
    return core_grow(p, (size_t)n, (size_t)*cap, elem);
}

static void add_map(VTensor *v, int part, hsize_t src_rows, hsize_t src0, hsize_t row0, hsize_t n) {
    v->map = grow(v->map, v->nmap, &v->cap, sizeof *v->map);
    v->map[v->nmap++] = (VMap){part, src_rows, src0, row0, n};
}

// HDF5 reads '%' in a virtual source name as a printf-like pattern: "%%" is a literal '%'.
static void escape_percent(const char *s, char *out, size_t n) {
    size_t k = 0;
    for (; *s && k + 2 < n; s++) {
        if (*s == '%') out[k++] = '%';
        out[k++] = *s;
    }
    out[k] = '\0';
}

// Collects group gname's datasets from every part and creates the index's virtual datasets, after
// checking that the parts agree on shapes and cover every logical row exactly once.
static void join_group(const H5Io *io, hid_t f, const char *gname, const hid_t *pf, char (*pnames)[CKPT_PATH_MAX],
                       int parts, int E) {
    VTensor *t = NULL;
    int nt = 0, cap = 0;
    for (int r = 0; r < parts; r++) {
        H5Io pio = {pnames[r], CORE_EXIT_FAILURE};
        if (!h5_exists(&pio, pf[r], gname)) continue;
        hid_t g = H5_OK(&pio, H5Gopen2(pf[r], gname, H5P_DEFAULT), "open %s", gname);
        H5G_info_t gi;
        H5_OK(&pio, H5Gget_info(g, &gi), "%s: group info", gname);
        for (hsize_t k = 0; k < gi.nlinks; k++) {
            char name[PARAM_NAME_MAX];
            ssize_t len = H5_OK(&pio, H5Lget_name_by_idx(g, ".", H5_INDEX_CRT_ORDER, H5_ITER_INC, k, name,
                                                         sizeof name, H5P_DEFAULT), "%s: link %llu", gname,
                                (unsigned long long)k);
            CHECK(len < (ssize_t)sizeof name, "part %s: dataset name too long in %s", pnames[r], gname);
            hid_t d = H5_OK(&pio, H5Dopen2(g, name, H5P_DEFAULT), "open %s/%s", gname, name);
            hsize_t dims[4];
            int nd = h5_dims(&pio, d, name, dims);
            char *kind = h5_attr_read_str(&pio, d, name, "kind", 15);
            int v = 0;
            while (v < nt && strcmp(t[v].name, name) != 0) v++;
            if (v == nt) {
                t = grow(t, nt, &cap, sizeof *t);
                memset(&t[nt], 0, sizeof t[nt]);
                strcpy(t[nt].name, name);
                strcpy(t[nt].kind, kind);
                t[nt].ndim = nd;
                memcpy(t[nt].dims, dims, sizeof dims);
                if (!strcmp(kind, "expert")) t[nt].dims[0] = (hsize_t)E;
                nt++;
            }
            VTensor *vt = &t[v];
            int same = nd == vt->ndim && !strcmp(kind, vt->kind);
            for (int i = 1; same && i < nd; i++) same = dims[i] == vt->dims[i];
            CHECK(same, "checkpoint parts disagree on the shape or kind of %s/%s (part %s)", gname, name, pnames[r]);
            if (!strcmp(kind, "expert")) {
                int *ids = core_alloc((size_t)dims[0] * sizeof(int));
                h5_attr_read(&pio, d, name, "experts", H5T_STD_I32LE, H5T_NATIVE_INT, (int)dims[0], ids);
                for (hsize_t i = 0; i < dims[0]; i++)
                    CHECK(ids[i] >= 0 && ids[i] < E, "part %s: %s holds expert %d of %d", pnames[r], name, ids[i], E);
                for (int i = 0, n; i < (int)dims[0]; i += n) {
                    n = run_len(ids, i, (int)dims[0]);
                    add_map(vt, r, dims[0], (hsize_t)i, (hsize_t)ids[i], (hsize_t)n);
                }
                core_free(ids);
            } else {
                add_map(vt, r, dims[0], 0, 0, dims[0]);
            }
            core_free(kind);
            H5Dclose(d);
        }
        H5Gclose(g);
    }
    const float nan = NAN;
    for (int v = 0; v < nt; v++) {
        VTensor *vt = &t[v];
        char full[PARAM_NAME_MAX + 16];
        snprintf(full, sizeof full, "%s/%s", gname, vt->name);
        unsigned char *covered = core_alloc(vt->dims[0]);
        hid_t dcpl = h5_new_dcpl(io);
        // Rows no part maps read as NaN, never as plausible zeros (the loader refuses them anyway).
        H5_OK(io, H5Pset_fill_value(dcpl, H5T_NATIVE_FLOAT, &nan), "%s: fill value", full);
        hid_t vs = H5_OK(io, H5Screate_simple(vt->ndim, vt->dims, NULL), "%s: dataspace", full);
        for (int i = 0; i < vt->nmap; i++) {
            const VMap *mp = &vt->map[i];
            for (hsize_t row = mp->row0; row < mp->row0 + mp->n; row++) {
                CHECK(!covered[row], "checkpoint parts: row %llu of %s is saved twice", (unsigned long long)row, full);
                covered[row] = 1;
            }
            hsize_t start[4] = {mp->row0, 0, 0, 0}, count[4], sdims[4];
            for (int k = 0; k < vt->ndim; k++) {
                count[k] = k == 0 ? mp->n : vt->dims[k];
                sdims[k] = k == 0 ? mp->src_rows : vt->dims[k];
            }
            H5_OK(io, H5Sselect_hyperslab(vs, H5S_SELECT_SET, start, NULL, count, NULL), "%s: rows", full);
            hid_t ss = H5_OK(io, H5Screate_simple(vt->ndim, sdims, NULL), "%s: source dataspace", full);
            start[0] = mp->src0;
            H5_OK(io, H5Sselect_hyperslab(ss, H5S_SELECT_SET, start, NULL, count, NULL), "%s: source rows", full);
            const char *base = strrchr(pnames[mp->part], '/');
            char src[512];
            escape_percent(base ? base + 1 : pnames[mp->part], src, sizeof src);
            H5_OK(io, H5Pset_virtual(dcpl, vs, src, full, ss), "%s: virtual mapping", full);
            H5Sclose(ss);
        }
        for (hsize_t row = 0; row < vt->dims[0]; row++)
            CHECK(covered[row], "checkpoint parts: no part saved row %llu of %s", (unsigned long long)row, full);
        H5_OK(io, H5Sselect_all(vs), "%s: dataspace", full);
        hid_t d = H5_OK(io, H5Dcreate2(f, full, H5T_IEEE_F32LE, vs, H5P_DEFAULT, dcpl, H5P_DEFAULT),
                        "create virtual dataset %s", full);
        h5_attr_write_str(io, d, "kind", vt->kind);
        H5Dclose(d);
        H5Sclose(vs);
        h5_dcpl_close(dcpl);
        core_free(covered);
        core_free(vt->map);
        dataset_done();
    }
    core_free(t);
}

void ckpt_save_index(const char *path, int parts, const MoeConfig *c, long adam_t, const CkptState *st,
                     const CkptEplb *eplb) {
    CHECK(parts >= 1, "checkpoint index of %d parts", parts);
    arm_parts_cleanup(path, parts);
    h5_init();
    hid_t *pf = core_alloc((size_t)parts * sizeof *pf);
    uint64_t *ids = core_alloc((size_t)parts * sizeof *ids);
    char(*pnames)[CKPT_PATH_MAX] = core_alloc((size_t)parts * sizeof *pnames);
    for (int r = 0; r < parts; r++) {
        ckpt_part_path(path, r, parts, pnames[r], sizeof pnames[r]);
        H5Io pio = {pnames[r], CORE_EXIT_FAILURE};
        pf[r] = h5_open_file(&pio);
        int64_t pr, pn;
        h5_attr_read(&pio, pf[r], "part", "part", H5T_STD_I64LE, H5T_NATIVE_INT64, 0, &pr);
        h5_attr_read(&pio, pf[r], "part", "parts", H5T_STD_I64LE, H5T_NATIVE_INT64, 0, &pn);
        h5_attr_read(&pio, pf[r], "part", "part_id", H5T_STD_U64LE, H5T_NATIVE_UINT64, 0, &ids[r]);
        CHECK(pr == r && pn == parts, "checkpoint part %s says it is part %lld of %lld", pnames[r],
              (long long)pr, (long long)pn);
    }
    AtomicFile a;
    atomic_create(&a, path, CKPT_FORMAT_NAME);
    const int64_t n = parts;
    h5_attr_write(&a.io, a.f, "parts", H5T_STD_I64LE, H5T_NATIVE_INT64, 0, &n);
    h5_attr_write(&a.io, a.f, "part_ids", H5T_STD_U64LE, H5T_NATIVE_UINT64, parts, ids);
    write_state(&a.io, a.f, c, adam_t, st, eplb);
    H5Gclose(h5_create_group(&a.io, a.f, "model"));
    hid_t g = h5_create_group(&a.io, a.f, "optim");
    H5Gclose(h5_create_group(&a.io, g, "m"));
    H5Gclose(h5_create_group(&a.io, g, "v"));
    H5Gclose(g);
    for (int i = 0; i < CKPT_NGROUPS; i++) join_group(&a.io, a.f, CKPT_GROUPS[i], pf, pnames, parts, c->E);
    atomic_commit(&a);
    core_set_failure_cleanup(NULL);
    for (int r = 0; r < parts; r++) H5Fclose(pf[r]);
    core_free(pf);
    core_free(ids);
    core_free(pnames);
}

// ---------------------------------------------------------------------------------------------
// Loading.

// Keys that fix tensor shapes must agree; other keys that change the math or the data order may
// differ on purpose (a new schedule, fine-tuning), so they only draw a warning; layout, I/O and
// how-it-runs keys are free (resharding is the point; a timeout, the CUDA graph, the deterministic
// attention backward, recomputation and EPLB's grouping change no value the run trains towards).
static const char *const SHAPE_KEYS[] = {"vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads",
                                         "n_dense_layers", "d_ff", "n_experts", "n_shared", "d_expert",
                                         "tie_embeddings"};
static const char *const FREE_KEYS[] = {"log_every", "val_every", "val_batches", "sample_tokens",
                                        "temperature", "top_k_sample", "threads",
                                        "ep", "pp", "chunks", "schedule", "fb_overlap", "dp_overlap", "ep_overlap", "ep_chunks",
                                        "zero", "expert_gemm", "gemm_streams", "eplb_interval", "eplb_redundant",
                                        "device", "data", "metrics", "out", "resume", "trace",
                                        "save_every", "keep", "nonfinite_skip", "comm_timeout", "cuda_graph",
                                        "deterministic", "recompute", "recompute_layers",
                                        "recompute_keep_attention", "eplb_groups",
                                        "eplb_nodes"};

static int key_in(const char *key, const char *const *list, int n) {
    for (int i = 0; i < n; i++)
        if (!strcmp(key, list[i])) return 1;
    return 0;
}

// Refuses a saved config of other shapes; lists in changed (cap bytes) the keys that differ and
// take their new values, ending in ", ..." where the rest does not fit (room for the mark is kept).
static void check_config(const char *path, const MoeConfig *saved, const MoeConfig *now, char *changed,
                         size_t cap) {
    char *a = config_text(saved), *b = config_text(now);
    size_t w = 0;
    int full = 0;
    changed[0] = '\0';
    // config_write prints the keys in one fixed order, so the two texts pair up line by line.
    for (char *la = a, *lb = b; la && lb;) {
        char *na = strchr(la, '\n'), *nb = strchr(lb, '\n');
        if (na) *na = '\0';
        if (nb) *nb = '\0';
        char *ea = strstr(la, " = "), *eb = strstr(lb, " = ");
        if (ea && eb && strcmp(la, lb) != 0) {
            *ea = '\0';
            const char *key = la, *va = ea + 3, *vb = eb + 3;
            if (key_in(key, SHAPE_KEYS, (int)(sizeof SHAPE_KEYS / sizeof *SHAPE_KEYS)))
                core_usage_error("checkpoint %s was saved with %s = %s, but this model has %s = %s", path,
                                 key, va, key, vb);
            if (!key_in(key, FREE_KEYS, (int)(sizeof FREE_KEYS / sizeof *FREE_KEYS)) && !full) {
                const char *sep = w ? ", " : "";
                size_t n = (size_t)snprintf(NULL, 0, "%s%s %s -> %s", sep, key, va, vb);
                if (w + n + sizeof ", ..." <= cap) {
                    w += (size_t)snprintf(changed + w, cap - w, "%s%s %s -> %s", sep, key, va, vb);
                } else {
                    snprintf(changed + w, cap - w, "%s...", sep);
                    full = 1;
                }
            }
        }
        la = na ? na + 1 : NULL;
        lb = nb ? nb + 1 : NULL;
    }
    free(a);
    free(b);
}

// Reads one tensor into this process's layout: non-expert tensors whole, expert tensors slot by
// slot from their logical rows (runs of consecutive experts in one hyperslab read).
static void read_tensor(CkptFile *cf, hid_t d, const char *name, const ParamInfo *p, float *x,
                        const CkptShard *sh) {
    hsize_t dims[4];
    for (int k = 0; k < p->ndim; k++) dims[k] = (hsize_t)p->shape[k];
    if (p->kind != PARAM_EXPERT) {
        ckpt_read_rows(cf, d, name, p->ndim, dims, 0, dims[0], x);
        return;
    }
    const int n = (int)p->local_rows;
    const size_t row = p->numel / (size_t)n;
    int *ids = core_alloc((size_t)n * sizeof(int));
    for (int s = 0; s < n; s++) ids[s] = slot_expert(sh, p->layer, sh->ep_rank * n + s);
    for (int s = 0, len; s < n; s += len) {
        len = run_len(ids, s, n);
        ckpt_read_rows(cf, d, name, p->ndim, dims, (hsize_t)ids[s], (hsize_t)len, x + (size_t)s * row);
    }
    core_free(ids);
}

void ckpt_load(const char *path, const CkptShard *sh, const CkptView *v, CkptState *st) {
    check_shard(sh, v);
    CkptFile cf;
    ckpt_file_open(&cf, path);
    MoeConfig saved;
    ckpt_file_config(&cf, &saved);
    CkptState s;
    check_config(path, &saved, v->cfg, s.changed, sizeof s.changed);
    int64_t adam_t;
    ckpt_file_state(&cf, &s, &adam_t);
    // Every dataset is opened and checked before any is read, so that a bad file changes nothing.
    const ParamRegistry *r = v->reg;
    const int ng = v->m ? CKPT_NGROUPS : 1;
    hid_t *d = core_alloc((size_t)r->n * CKPT_NGROUPS * sizeof *d);
    char name[PARAM_NAME_MAX + 16];
    for (int i = 0; i < r->n; i++)
        for (int g = 0; g < ng; g++) {
            if (g > 0 && r->p[i].kind == PARAM_BUFFER) continue;
            snprintf(name, sizeof name, "%s/%s", CKPT_GROUPS[g], r->p[i].name);
            int nd;
            hsize_t dims[4];
            d[i * CKPT_NGROUPS + g] = ckpt_open_tensor(&cf, name, &r->p[i], &nd, dims);
        }
    for (int i = 0; i < r->n; i++)
        for (int g = 0; g < ng; g++) {
            if (g > 0 && r->p[i].kind == PARAM_BUFFER) continue;
            float *base = g == 0 ? v->data : g == 1 ? v->m : v->v;
            snprintf(name, sizeof name, "%s/%s", CKPT_GROUPS[g], r->p[i].name);
            read_tensor(&cf, d[i * CKPT_NGROUPS + g], name, &r->p[i], base + r->p[i].offset, sh);
            H5Dclose(d[i * CKPT_NGROUPS + g]);
            const size_t bad = ckpt_count_nonfinite(base + r->p[i].offset, r->p[i].numel);
            if (bad) H5_FAIL(&cf.io, "%s holds %zu NaN or infinite values (saved by a diverged run)", name, bad);
            const size_t neg = g == CKPT_GROUP_V ? ckpt_count_negative(base + r->p[i].offset, r->p[i].numel) : 0;
            if (neg) H5_FAIL(&cf.io, "%s holds %zu negative second moments", name, neg);
        }
    core_free(d);
    // The EPLB group is checked like the rest (the caller reads it with ckpt_load_eplb if it wants it),
    // so that a file the loader takes is one `ckpt verify` passes, and the other way round.
    CkptEplb e;
    if (ckpt_file_eplb(&cf, &saved, &e)) ckpt_eplb_free(&e);
    if (v->m) *v->adam_t = (long)adam_t;
    if (st) *st = s;
    ckpt_file_close(&cf);
}

void ckpt_set_probe(int on) { h5_set_probe(on); }

void ckpt_read_config(const char *path, MoeConfig *c) {
    CkptFile cf;
    ckpt_file_open(&cf, path);
    ckpt_file_config(&cf, c);
    ckpt_file_close(&cf);
}

void ckpt_read_config_whole(const char *path, MoeConfig *c) {
    ckpt_read_config(path, c);
    const char *const layout[] = {"ep", "pp", "chunks", "schedule", "zero", "eplb_interval", "eplb_redundant",
                                  "eplb_groups", "eplb_nodes"};
    for (size_t i = 0; i < sizeof layout / sizeof layout[0]; i++) config_reset_key(c, layout[i]);
}

void ckpt_read_state(const char *path, CkptState *st) {
    CkptFile cf;
    int64_t adam_t;
    ckpt_file_open(&cf, path);
    ckpt_file_state(&cf, st, &adam_t);
    ckpt_file_close(&cf);
}

int ckpt_load_eplb(const char *path, const MoeConfig *c, CkptEplb *out) {
    CkptFile cf;
    ckpt_file_open(&cf, path);
    int found = ckpt_file_eplb(&cf, c, out);
    ckpt_file_close(&cf);
    return found;
}

void ckpt_eplb_free(CkptEplb *e) {
    core_free(e->phy2log);
    core_free(e->counts);
    core_free(e->load);
    memset(e, 0, sizeof *e);
}

// ---------------------------------------------------------------------------------------------
// Checkpoint directories of a training run.

void ckpt_step_path(const char *dir, long step, char *out, size_t n) {
    int k = snprintf(out, n, "%s/step_%ld.h5", dir, step);
    if (k < 0 || (size_t)k >= n) core_usage_error("checkpoint path too long: %s/step_%ld.h5", dir, step);
}

void ckpt_make_dir(const char *dir) {
    core_make_dirs(dir, "checkpoint directory");
    if (access(dir, W_OK) != 0) core_usage_error("cannot write to checkpoint directory %s: %s", dir, strerror(errno));
}

// The step of "step_<n>.h5" as ckpt_step_path writes it, or -1 for any other name. Only that
// spelling: step_04.h5 or step_+4.h5 (which sscanf's %ld takes) named step 4 and made --keep count
// step_4.h5 twice, deleting one checkpoint too many (review, 2026-12-06).
static long step_of(const char *name) {
    if (strncmp(name, "step_", 5) != 0) return -1;
    const char *d = name + 5;
    if (!isdigit((unsigned char)d[0]) || (d[0] == '0' && isdigit((unsigned char)d[1]))) return -1;
    char *end;
    errno = 0;
    const long step = strtol(d, &end, 10);
    return errno == 0 && strcmp(end, ".h5") == 0 ? step : -1;
}

static int desc_long(const void *a, const void *b) {
    long x = *(const long *)a, y = *(const long *)b;
    return (x < y) - (x > y);
}

// The lineage stored in checkpoint `path`, or 0 when it has none or cannot be read: pruning leaves
// alone whatever it cannot prove to be its own.
static uint64_t lineage_of(const char *path) {
    // Not a regular file (a FIFO would hold the open for ever): not a checkpoint of this run.
    struct stat sb;
    if (stat(path, &sb) != 0 || !S_ISREG(sb.st_mode)) return 0;
    h5_init();
    uint64_t id = 0;
    hid_t f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    if (f < 0) return 0;
    if (H5Aexists_by_name(f, "state", "lineage", H5P_DEFAULT) > 0) {
        hid_t a = H5Aopen_by_name(f, "state", "lineage", H5P_DEFAULT, H5P_DEFAULT);
        if (a >= 0 && H5Aread(a, H5T_NATIVE_UINT64, &id) < 0) id = 0;
        if (a >= 0) H5Aclose(a);
    }
    H5Fclose(f);
    H5Eclear2(H5E_DEFAULT);
    return id;
}

int ckpt_lineage_in(const char *dir, uint64_t lineage, int same, long first, long last, long every, char *newest,
                    size_t len) {
    DIR *dp = opendir(dir);
    if (!dp) return 0;
    int n = 0;
    long top = -1;
    char path[CKPT_PATH_MAX];
    for (struct dirent *e; (e = readdir(dp));) {
        const long s = step_of(e->d_name);
        if (s < first || s > last || (s != last && (every <= 0 || s % every))) continue;
        ckpt_step_path(dir, s, path, sizeof path);
        if ((lineage_of(path) == lineage) != (same != 0)) continue;
        n++;
        if (s > top) {
            top = s;
            snprintf(newest, len, "%s", path);
        }
    }
    closedir(dp);
    return n;
}

void ckpt_prune(const char *dir, int keep, uint64_t lineage, long newest, long from, const long *own,
                int n_own) {
    if (keep <= 0 || lineage == 0) return;
    DIR *dp = opendir(dir);
    if (!dp) core_usage_error("cannot list checkpoint directory %s: %s", dir, strerror(errno));
    long *steps = NULL;
    int n = 0, cap = 0;
    char path[CKPT_PATH_MAX];
    for (struct dirent *e; (e = readdir(dp));) {
        long s = step_of(e->d_name);
        if (s < 0 || s >= newest) continue;
        int mine = s <= from;
        for (int i = 0; i < n_own && !mine; i++) mine = own[i] == s;
        ckpt_step_path(dir, s, path, sizeof path);
        if (!mine || lineage_of(path) != lineage) continue;
        steps = grow(steps, n, &cap, sizeof *steps);
        steps[n++] = s;
    }
    if (n > 1) qsort(steps, (size_t)n, sizeof *steps, desc_long);
    // The checkpoint just saved is the newest of the `keep`.
    for (int i = keep - 1; i < n; i++) {
        ckpt_step_path(dir, steps[i], path, sizeof path);
        ckpt_clear(path, 1);
    }
    core_free(steps);
    closedir(dp);
}

void ckpt_clear(const char *path, int index_too) {
    // The index (or single file) goes first: a checkpoint is never visible with parts missing.
    if (index_too && unlink(path) != 0 && errno != ENOENT)
        core_warn("cannot remove old checkpoint %s: %s", path, strerror(errno));
    char dir[CKPT_PATH_MAX], part[2 * CKPT_PATH_MAX];
    ckpt_dir_of(path, dir, sizeof dir);
    const char *base = strrchr(path, '/') ? strrchr(path, '/') + 1 : path;
    DIR *dp = opendir(dir);
    if (!dp) core_usage_error("cannot list checkpoint directory %s: %s", dir, strerror(errno));
    struct stat sb;
    for (struct dirent *e; (e = readdir(dp));) {
        // Part files only (PATH.part-<r>-of-<n>): the temporaries of the save under way, whose
        // names extend those, are not an earlier checkpoint's.
        int r, n;
        if (strncmp(e->d_name, base, strlen(base)) != 0 || !ckpt_part_suffix(e->d_name + strlen(base), &r, &n))
            continue;
        snprintf(part, sizeof part, "%s/%s", dir, e->d_name);
        // Saves leave regular files only: anything else of such a name is not theirs.
        if (lstat(part, &sb) != 0 || !S_ISREG(sb.st_mode)) continue;
        if (unlink(part) != 0) core_warn("cannot remove old checkpoint part %s: %s", part, strerror(errno));
    }
    closedir(dp);
}

// 1 when the file at path, named `name`, can be what a checkpoint save left: a name of one
// (step_<n>.h5 or its part step_<n>.h5.part-<r>-of-<k>, with .tmp-<pid> after it for a temporary)
// and an HDF5 file or nothing yet. Another program's NAME.tmp-123 or movie.part-1-of-3 in the same
// folder is not a save's (ckpt clean removed such files by their names alone: sweep, 2026-12-06).
static int save_leftover(const char *path, const char *name) {
    char base[CKPT_PATH_MAX];
    const char *tmp = strstr(name, ".tmp-");
    snprintf(base, sizeof base, "%.*s", tmp ? (int)(tmp - name) : (int)strlen(name), name);
    char *part = strstr(base, ".part-");
    int r, k;
    if (part) {
        if (!ckpt_part_suffix(part, &r, &k)) return 0;
        *part = '\0';
    }
    if (step_of(base) < 0) return 0;
    struct stat sb;
    return stat(path, &sb) == 0 && (sb.st_size == 0 || core_data_file_kind(path) == core_kind_hdf5);
}

int ckpt_stale_files(const char *dir, void (*fn)(const char *path, const char *why, void *ctx), void *ctx) {
    DIR *dp = opendir(dir);
    if (!dp) core_usage_error("cannot list checkpoint directory %s: %s", dir, strerror(errno));
    int n = 0;
    char path[2 * CKPT_PATH_MAX], index[2 * CKPT_PATH_MAX];
    for (struct dirent *e; (e = readdir(dp));) {
        const char *why = NULL;
        const int stale = core_temp_is_stale(e->d_name);
        const char *part = strstr(e->d_name, ".part-");
        int r, k;
        struct stat sb;
        if (stale == 1) {
            why = "temporary file of a save that did not finish";
        } else if (stale < 0 && part && ckpt_part_suffix(part, &r, &k)) {
            snprintf(index, sizeof index, "%s/%.*s", dir, (int)(part - e->d_name), e->d_name);
            if (stat(index, &sb) != 0) why = "part file whose index is missing (a save that did not finish)";
        }
        if (!why) continue;
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        // Saves leave regular files only: a directory (or anything else) of such a name is not theirs.
        if (lstat(path, &sb) != 0 || !S_ISREG(sb.st_mode) || !save_leftover(path, e->d_name)) continue;
        fn(path, why, ctx);
        n++;
    }
    closedir(dp);
    return n;
}
