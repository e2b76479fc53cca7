// `moelab ckpt inspect` and `moelab ckpt verify` (see ckpt.h): a checkpoint's state, config and
// tensors with their norms; and a full read of every dataset against the stored config.
#include <math.h>
#include <string.h>

#include "checkpoints/ckpt.h"
#include "checkpoints/format.h"
#include "framework/core/mem.h"

// Tensors are read in blocks of whole rows of at most this many floats (one row if a row is larger).
#define BLOCK_FLOATS ((size_t)1 << 22)

typedef struct {
    double sqsum;     // Σ x² in double
    long nonfinite;   // NaN or infinite values
    long negative;    // values below 0
    size_t n;         // values read
} Scan;

// Reads a checked tensor in row blocks (each block's chunks pass their Fletcher-32 check).
static Scan scan_tensor(CkptFile *cf, hid_t d, const char *name, int nd, const hsize_t *dims) {
    Scan s = {0, 0, 0, 0};
    size_t row = 1;
    for (int k = 1; k < nd; k++) row *= (size_t)dims[k];
    hsize_t rows = BLOCK_FLOATS / row > 0 ? BLOCK_FLOATS / row : 1;
    if (rows > dims[0]) rows = dims[0];
    float *buf = core_alloc((size_t)rows * row * sizeof(float));
    for (hsize_t r0 = 0; r0 < dims[0]; r0 += rows) {
        hsize_t n = dims[0] - r0 < rows ? dims[0] - r0 : rows;
        ckpt_read_rows(cf, d, name, nd, dims, r0, n, buf);
        for (size_t i = 0; i < (size_t)n * row; i++) {
            if (!isfinite(buf[i])) s.nonfinite++;
            else s.sqsum += (double)buf[i] * buf[i];
            s.negative += buf[i] < 0;
        }
        s.n += (size_t)n * row;
    }
    core_free(buf);
    return s;
}

static void print_header(CkptFile *cf, const MoeConfig *c, float (*lr)(const MoeConfig *, int), FILE *out) {
    CkptState st;
    int64_t t;
    ckpt_file_state(cf, &st, &t);
    fprintf(out, "checkpoint  %s\n", cf->io.path);
    if (cf->parts) fprintf(out, "format      %s version %lld, index of %d part files (virtual datasets)\n",
                           CKPT_FORMAT_NAME, (long long)cf->version, cf->parts);
    else fprintf(out, "format      %s version %lld, single file\n", CKPT_FORMAT_NAME, (long long)cf->version);
    fprintf(out, "step        %lld (AdamW t %lld), next learning rate %.4g\n", (long long)st.step,
            (long long)t, (double)lr(c, (int)st.step));
    fprintf(out, "data        epoch %llu, next sequence %llu", (unsigned long long)st.data.epoch,
            (unsigned long long)st.data.index);
    if (st.global_batch) fprintf(out, ", %lld sequences a step", (long long)st.global_batch);
    if (st.data_fp) fprintf(out, ", training shard fingerprint %016llx", (unsigned long long)st.data_fp);
    fputc('\n', out);
    fprintf(out, "rng         seed %llu, stream %u, counter %llu\n", (unsigned long long)st.rng.seed,
            st.rng.stream, (unsigned long long)st.rng.counter);
    if (st.tok_fp) fprintf(out, "tokenizer   fingerprint %08x\n", st.tok_fp);
    fprintf(out, "model       V %d D %d L %d (dense %d) H %d Hkv %d | E %d K %d S %d Fe %d\n", c->V, c->D,
            c->L, c->n_dense_layers, c->H, c->Hkv, c->E, c->K, c->S, c->Fe);
}

// Opens, checks and reads the whole tensor `name` of group gi, as the loader would take it (want:
// its expected shape), and refuses what no checkpoint holds: NaN or infinite values, negative second
// moments. inspect and verify both read through here, so that they refuse the same files (inspect
// listed a tensor of the wrong shape, and printed NaN counts, where verify refused: sweep 2026-12-05).
static Scan scan_checked(CkptFile *cf, const char *name, int gi, const ParamInfo *want) {
    int nd;
    hsize_t dims[4];
    hid_t d = ckpt_open_tensor(cf, name, want, &nd, dims);
    Scan s = scan_tensor(cf, d, name, nd, dims);
    H5Dclose(d);
    if (s.nonfinite)
        H5_FAIL(&cf->io, "%s holds %ld NaN or infinite values (saved by a diverged run)", name, s.nonfinite);
    if (gi == CKPT_GROUP_V && s.negative) H5_FAIL(&cf->io, "%s holds %ld negative second moments", name, s.negative);
    return s;
}

// "%12.6g" of the norm of `name` of group gi ("-" for a buffer's moments, which no file holds).
static void norm_of(CkptFile *cf, const char *name, int gi, const ParamInfo *want, char *out, size_t n) {
    if (gi > 0 && want->kind == PARAM_BUFFER) {
        snprintf(out, n, "%12s", "-");
        return;
    }
    snprintf(out, n, "%12.6g", sqrt(scan_checked(cf, name, gi, want).sqsum));
}

// Group gname must hold the tensors of the stored config's model and nothing else. Each of them is
// opened by name afterwards (a missing one is named then), and names within a group are unique, so a
// larger link count means an object that does not belong. The links are counted, never listed: HDF5
// 1.10 crashes listing a group whose link storage (heap blocks, heap header, name index) is damaged,
// where a lookup by name fails cleanly. (The loader, which may hold one pipeline stage, does not
// look for extra objects; it runs every other check here.)
static void check_no_extra(CkptFile *cf, const char *gname, const ParamRegistry *r, int with_buffers) {
    if (!h5_exists(&cf->io, cf->f, gname)) H5_FAIL(&cf->io, "group %s is missing", gname);
    hid_t g = H5_OK(&cf->io, H5Gopen2(cf->f, gname, H5P_DEFAULT), "open %s", gname);
    H5G_info_t gi;
    H5_OK(&cf->io, H5Gget_info(g, &gi), "%s: group info", gname);
    H5Gclose(g);
    hsize_t want = 0;
    for (int i = 0; i < r->n; i++) want += with_buffers || r->p[i].kind != PARAM_BUFFER;
    if (gi.nlinks > want)
        H5_FAIL(&cf->io, "group %s holds %llu objects, but the stored config's model has %llu tensors there",
                gname, (unsigned long long)gi.nlinks, (unsigned long long)want);
}

void ckpt_inspect(const char *path, const ParamRegistry *ref, float (*lr)(const MoeConfig *c, int step),
                  FILE *out) {
    CkptFile cf;
    ckpt_file_open(&cf, path);
    MoeConfig c;
    ckpt_file_config(&cf, &c);
    // A listing of the stored config's tensors would hide an object the model lacks (a config
    // edited to tie the embeddings over a file with lm_head was listed as sound: review, 2026-12-06).
    for (int gi = 0; gi < CKPT_NGROUPS; gi++) check_no_extra(&cf, CKPT_GROUPS[gi], ref, gi == 0);
    print_header(&cf, &c, lr, out);
    CkptEplb e;
    if (!ckpt_file_eplb(&cf, &c, &e)) fprintf(out, "eplb        none (identity placement)\n");
    else {
        if (e.phy2log) fprintf(out, "eplb        phy2log (%d layers, %d slots)", c.L, e.R);
        else fprintf(out, "eplb        identity placement");
        fprintf(out, "%s%s\n", e.counts ? ", expert_counts" : "", e.load ? ", load since the last rebalance" : "");
    }
    ckpt_eplb_free(&e);
    fprintf(out, "\n%-28s %-7s %-8s %-18s %12s %12s %12s\n", "tensor", "kind", "dtype", "shape", "norm",
            "adam m norm", "adam v norm");
    // The tensors of the stored config's model, in its order (the links are not listed: see
    // check_no_extra).
    double total = 0;
    for (int i = 0; i < ref->n; i++) {
        const char *name = ref->p[i].name;
        char full[PARAM_NAME_MAX + 16], shape[64], nm[3][32];
        int nd;
        hsize_t dims[4];
        snprintf(full, sizeof full, "/model/%s", name);
        H5Dclose(ckpt_open_tensor(&cf, full, &ref->p[i], &nd, dims));  // its kind checked there too
        h5_shape_str(shape, sizeof shape, nd, dims);
        for (int gi = 0; gi < CKPT_NGROUPS; gi++) {
            snprintf(full, sizeof full, "%s/%s", CKPT_GROUPS[gi], name);
            norm_of(&cf, full, gi, &ref->p[i], nm[gi], sizeof nm[gi]);
        }
        size_t numel = 1;
        for (int k = 0; k < nd; k++) numel *= (size_t)dims[k];
        total += (double)numel;
        fprintf(out, "%-28s %-7s %-8s %-18s %s %s %s\n", name, ckpt_kind_name(ref->p[i].kind), "float32", shape,
                nm[0], nm[1], nm[2]);
    }
    fprintf(out, "%.0f parameters (%.2fM)\n\nconfig:\n", total, total / 1e6);
    char *text = h5_attr_read_str(&cf.io, cf.f, "file", "config", CKPT_CONFIG_MAX);
    for (char *line = text, *next; line && *line; line = next) {
        next = strchr(line, '\n');
        if (next) *next++ = '\0';
        fprintf(out, "  %s\n", line);
    }
    core_free(text);
    ckpt_file_close(&cf);
}

void ckpt_verify(const char *path, const ParamRegistry *ref, FILE *out) {
    CkptFile cf;
    ckpt_file_open(&cf, path);
    MoeConfig c;
    ckpt_file_config(&cf, &c);
    CkptState st;
    int64_t t;
    ckpt_file_state(&cf, &st, &t);
    // A run saves no step past its --steps, which its stored config holds (a larger step passed,
    // and --resume then asked the user for a --steps of at least that: review, 2026-12-06).
    if (st.step > c.steps)
        H5_FAIL(&cf.io, "/state holds step %lld, beyond the stored config's steps = %d: no run saves that",
                (long long)st.step, c.steps);
    // The expected names and logical shapes come from the model the stored config builds (ref).
    int datasets = 0;
    double bytes = 0;
    for (int gi = 0; gi < CKPT_NGROUPS; gi++) {
        check_no_extra(&cf, CKPT_GROUPS[gi], ref, gi == 0);
        for (int i = 0; i < ref->n; i++) {
            if (gi > 0 && ref->p[i].kind == PARAM_BUFFER) continue;
            char name[PARAM_NAME_MAX + 16];
            snprintf(name, sizeof name, "%s/%s", CKPT_GROUPS[gi], ref->p[i].name);
            const Scan s = scan_checked(&cf, name, gi, &ref->p[i]);
            bytes += 4.0 * (double)s.n;
            datasets++;
        }
    }
    // Every part file too, even one no tensor maps to. After the tensors: their mappings name the
    // parts as saved, which tells an index renamed alone (its parts were "missing" under its new name).
    ckpt_file_check_parts(&cf);
    CkptEplb e;
    int eplb = ckpt_file_eplb(&cf, &c, &e);
    ckpt_eplb_free(&e);
    fprintf(out, "checkpoint %s: sound. %d tensor datasets (%.1f MB of float32)%s read with every "
            "Fletcher-32 checksum verified; %s; every tensor of the stored config's model (V %d D %d L %d "
            "E %d) present with its shape; step %lld\n",
            path, datasets, bytes / 1e6, eplb ? " and the EPLB group" : "",
            cf.parts ? "all part files present and matching the index" : "single file", c.V, c.D, c.L,
            c.E, (long long)st.step);
    ckpt_file_close(&cf);
}
