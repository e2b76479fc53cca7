// The C side of tests/tools/export/export_check.py (and of tools/gpu_run.sh's `export` stage):
//   export_probe make DIR [--key value ...]     a model of that config, initialized with nonzero
//       balancing biases, saved as DIR/single.h5 (one process) and DIR/eplb.h5, an index of two EP
//       parts under an EPLB plan with a replica of every expert (R = 2E slots), of the same weights
//   export_probe encode TOKENIZER RECORDS OUT   encodes each record (u32 length, bytes) of RECORDS and
//       writes (u32 count, u32 ids[count]) per record to OUT
//   export_probe logits CKPT TOKENS B T OUT     forward of the checkpoint's model on TOKENS (int32
//       (B, T + 1)): writes the logits (B, T, V) as float32 to OUT and prints the mean cross-entropy
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "checkpoints/ckpt.h"
#include "data/tokenizer.h"
#include "framework/core/check.h"
#include "framework/core/log.h"
#include "framework/core/mem.h"
#include "framework/core/rng.h"
#include "framework/model.h"
#include "framework/optimizer.h"

static void *read_all(const char *path, size_t *n) {
    FILE *f = fopen(path, "rb");
    CHECK(f != NULL, "cannot open %s", path);
    fseek(f, 0, SEEK_END);
    *n = (size_t)ftell(f);
    fseek(f, 0, SEEK_SET);
    void *buf = core_alloc(*n + 1);
    CHECK(fread(buf, 1, *n, f) == *n, "cannot read %s", path);
    fclose(f);
    return buf;
}

static int make(const char *dir, int argc, char **argv) {
    MoeConfig c;
    config_defaults(&c);
    c.V = 512; c.D = 32; c.L = 3; c.H = 4; c.Hkv = 2; c.T = 16; c.n_dense_layers = 1; c.F = 48;
    c.E = 4; c.K = 2; c.S = 1; c.Fe = 16; c.seed = 3;
    CHECK(config_apply_args(&c, argc, argv) == 0, "make: unknown arguments");
    config_validate(&c);
    Model *m = model_create(&c, 0, 1);
    model_init_weights(m);
    // Nonzero balancing biases of different sizes, so that the export must carry them to choose.
    RngStream r = rng_stream(99, 1);
    for (int i = 0; i < m->reg.n; i++) {
        const ParamInfo *p = &m->reg.p[i];
        if (p->kind != PARAM_BUFFER) continue;
        for (size_t k = 0; k < p->numel; k++) m->reg.data[p->offset + k] = 0.05f * (float)(rng_next_u32(&r) % 9) - 0.2f;
    }
    AdamW o;
    adamw_init(&o, &m->reg);
    const CkptState st = {.step = 7, .rng = {c.seed, 7, 0}};  // lineage and tokenizer unknown
    char path[4096];
    CkptShard sh = ckpt_shard_identity(0, 1, c.E);
    snprintf(path, sizeof path, "%s/single.h5", dir);
    const CkptView v = {&m->cfg, &m->reg, m->reg.data, o.m, o.v, &o.t};
    ckpt_save(path, &sh, &v, &st, NULL);

    // EPLB: 2E slots over two ranks; slot s of layer l holds expert (s / 2 + l) mod E, so every
    // expert has two adjacent replicas and each rank owns half of the experts, rotated by layer.
    const int R = 2 * c.E;
    int *phy2log = core_alloc(sizeof(int) * (size_t)(c.L * R));
    for (int l = 0; l < c.L; l++)
        for (int s = 0; s < R; s++) phy2log[l * R + s] = (s / 2 + l) % c.E;
    Model *rank[2];
    AdamW ro[2];
    snprintf(path, sizeof path, "%s/eplb.h5", dir);
    for (int k = 0; k < 2; k++) {
        rank[k] = model_create(&c, 0, 1);  // E local slots = this rank's half of the R slots
        adamw_init(&ro[k], &rank[k]->reg);
        for (int i = 0; i < m->reg.n; i++) {
            const ParamInfo *p = &m->reg.p[i];
            const float *src = m->reg.data + p->offset;
            float *dst = rank[k]->reg.data + p->offset;
            if (p->kind != PARAM_EXPERT) {
                memcpy(dst, src, p->numel * sizeof(float));
                continue;
            }
            const size_t row = p->numel / (size_t)p->local_rows;
            for (int s = 0; s < c.E; s++)
                memcpy(dst + s * row, src + (size_t)phy2log[p->layer * R + k * c.E + s] * row, row * sizeof(float));
        }
        CkptShard hs = {k, 2, k, 2, k == 0, 1, R, phy2log};
        const CkptView rv = {&rank[k]->cfg, &rank[k]->reg, rank[k]->reg.data, ro[k].m, ro[k].v, &ro[k].t};
        ckpt_save_part(path, &hs, &rv);
    }
    long *counts = core_alloc(sizeof(long) * (size_t)(c.L * c.E));
    CkptEplb e = {R, phy2log, counts, NULL};
    ckpt_save_index(path, 2, &c, ro[0].t, &st, &e);
    for (int k = 0; k < 2; k++) {
        adamw_free(&ro[k]);
        model_free(rank[k]);
    }
    core_free(counts);
    core_free(phy2log);
    adamw_free(&o);
    model_free(m);
    return 0;
}

static int encode(const char *tok_path, const char *rec_path, const char *out_path) {
    Tokenizer *t = tok_load(tok_path);
    size_t n;
    uint8_t *buf = read_all(rec_path, &n);
    FILE *f = fopen(out_path, "wb");
    CHECK(f != NULL, "cannot create %s", out_path);
    for (size_t at = 0; at + 4 <= n;) {
        uint32_t len;
        memcpy(&len, buf + at, 4);
        at += 4;
        CHECK(at + len <= n, "truncated record file");
        uint32_t *ids = core_alloc(sizeof(uint32_t) * (len + 1));
        const uint32_t k = (uint32_t)tok_encode(t, buf + at, len, ids);
        fwrite(&k, 4, 1, f);
        fwrite(ids, 4, k, f);
        core_free(ids);
        at += len;
    }
    CHECK(fclose(f) == 0, "cannot write %s", out_path);
    core_free(buf);
    tok_free(t);
    return 0;
}

static int logits(const char *ckpt, const char *tok_path, int B, int T, const char *out_path) {
    MoeConfig c;
    config_defaults(&c);
    ckpt_read_config_whole(ckpt, &c);  // one process, no EPLB slots, whatever layout saved it
    c.T = T;
    Model *m = model_create(&c, 0, 1);
    CkptShard sh = ckpt_shard_identity(0, 1, c.E);
    const CkptView weights = {&m->cfg, &m->reg, m->reg.data, NULL, NULL, NULL};
    ckpt_load(ckpt, &sh, &weights, NULL);
    size_t n;
    int *tok = read_all(tok_path, &n);
    CHECK(n == sizeof(int) * (size_t)B * (T + 1), "%s: expected %d x %d int32 tokens", tok_path, B, T + 1);
    ModelActs a;
    model_forward(m, &a, tok, B, T, 1);
    FILE *f = fopen(out_path, "wb");
    CHECK(f != NULL, "cannot create %s", out_path);
    fwrite(a.logits, sizeof(float), (size_t)B * T * c.V, f);
    CHECK(fclose(f) == 0, "cannot write %s", out_path);
    printf("%.9g\n", a.ce);
    model_acts_free(m, &a);
    model_free(m);
    core_free(tok);
    return 0;
}

int main(int argc, char **argv) {
    core_set_quiet(1);
    if (argc >= 3 && !strcmp(argv[1], "make")) return make(argv[2], argc - 3, argv + 3);
    if (argc == 5 && !strcmp(argv[1], "encode")) return encode(argv[2], argv[3], argv[4]);
    if (argc == 7 && !strcmp(argv[1], "logits")) return logits(argv[2], argv[3], atoi(argv[4]), atoi(argv[5]), argv[6]);
    fprintf(stderr, "usage: export_probe make DIR [--key value ...] | encode TOKENIZER RECORDS OUT |\n"
                    "       logits CKPT TOKENS B T OUT\n");
    return 2;
}
