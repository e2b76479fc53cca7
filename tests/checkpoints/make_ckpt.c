// Writes checkpoints for the h5py test of docs/checkpoint-format.md: DIR/single.h5 (one process) and
// DIR/index.h5 with its two EP part files, both of the same state, and DIR/expected.bin with every
// logical tensor of that state, so that a reader without our code can be checked value for value.
//
// expected.bin, per tensor in registry order (little-endian): u32 name length, the name, u32 ndim,
// i64 dims[ndim], u32 has_moments, then the float32 values and, if has_moments, m and v.
#include <stdio.h>
#include <string.h>

#include "checkpoints/ckpt.h"
#include "framework/core/check.h"
#include "framework/core/log.h"
#include "framework/model.h"
#include "framework/optimizer.h"

// Moments derived from the weights, so that every layout computes the same logical values.
static void fill_moments(Model *m, AdamW *o) {
    for (size_t i = 0; i < m->reg.total; i++) {
        o->m[i] = 0.5f * m->reg.data[i];
        o->v[i] = m->reg.data[i] * m->reg.data[i];
    }
    o->t = 5;
}

int main(int argc, char **argv) {
    CHECK(argc == 2, "usage: make_ckpt DIR");
    core_set_quiet(1);
    MoeConfig c;
    config_defaults(&c);
    c.V = 32; c.D = 16; c.L = 3; c.H = 4; c.Hkv = 2; c.T = 8; c.n_dense_layers = 1;
    c.F = 24; c.E = 4; c.K = 2; c.S = 1; c.Fe = 8;
    const CkptState st = {.step = 5, .data = {0, 40}, .rng = {c.seed, 7, 0}};  // lineage and tokenizer unknown
    char path[4096];

    Model *full = model_create(&c, 0, 1);
    AdamW of;
    model_init_weights(full);
    adamw_init(&of, &full->reg);
    fill_moments(full, &of);
    CkptShard sh = ckpt_shard_identity(0, 1, c.E);
    snprintf(path, sizeof path, "%s/single.h5", argv[1]);
    const CkptView fv = {&full->cfg, &full->reg, full->reg.data, of.m, of.v, &of.t};
    ckpt_save(path, &sh, &fv, &st, NULL);

    snprintf(path, sizeof path, "%s/index.h5", argv[1]);
    Model *half[2];
    AdamW oh[2];
    for (int r = 0; r < 2; r++) {
        half[r] = model_create(&c, r, 2);
        model_init_weights(half[r]);
        adamw_init(&oh[r], &half[r]->reg);
        fill_moments(half[r], &oh[r]);
        CkptShard hs = ckpt_shard_identity(r, 2, c.E);
        const CkptView hv = {&half[r]->cfg, &half[r]->reg, half[r]->reg.data, oh[r].m, oh[r].v, &oh[r].t};
        ckpt_save_part(path, &hs, &hv);
    }
    ckpt_save_index(path, 2, &c, oh[0].t, &st, NULL);

    snprintf(path, sizeof path, "%s/expected.bin", argv[1]);
    FILE *f = fopen(path, "wb");
    CHECK(f, "cannot write %s", path);
    for (int i = 0; i < full->reg.n; i++) {
        const ParamInfo *p = &full->reg.p[i];
        const uint32_t len = (uint32_t)strlen(p->name), nd = (uint32_t)p->ndim;
        const uint32_t moments = p->kind != PARAM_BUFFER;
        fwrite(&len, 4, 1, f);
        fwrite(p->name, 1, len, f);
        fwrite(&nd, 4, 1, f);
        fwrite(p->shape, 8, nd, f);
        fwrite(&moments, 4, 1, f);
        fwrite(full->reg.data + p->offset, 4, p->numel, f);
        if (moments) {
            fwrite(of.m + p->offset, 4, p->numel, f);
            fwrite(of.v + p->offset, 4, p->numel, f);
        }
    }
    CHECK(fclose(f) == 0, "cannot write %s", path);
    for (int r = 0; r < 2; r++) {
        adamw_free(&oh[r]);
        model_free(half[r]);
    }
    adamw_free(&of);
    model_free(full);
    return 0;
}
