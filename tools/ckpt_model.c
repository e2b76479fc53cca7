// A checkpoint's trained model and its tokenizer (see ckpt_model.h).
#include "tools/ckpt_model.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "framework/core/check.h"

Model *ckpt_model_load(const char *ckpt, const MoeConfig *c, CkptState *st) {
    Model *m = model_create_stored(c, 1, ckpt);
    // verify's errors end the command; its summary line is not wanted here.
    char *summary = NULL;
    size_t summary_len = 0;
    FILE *sink = open_memstream(&summary, &summary_len);
    CHECK(sink != NULL, "open_memstream: %s", strerror(errno));
    ckpt_verify(ckpt, &m->reg, sink);
    fclose(sink);
    free(summary);
    CkptShard sh = ckpt_shard_identity(0, 1, c->E);
    const CkptView weights = {&m->cfg, &m->reg, m->reg.data, NULL, NULL, NULL};
    ckpt_load(ckpt, &sh, &weights, st);
    return m;
}

Tokenizer *ckpt_tokenizer_load(const char *cmd, const char *ckpt, const MoeConfig *c, const char *data, char *path,
                               size_t n) {
    // An empty directory would name /tokenizer.bin (an empty --data is refused with the flags).
    const char *dir = data ? data : c->data;
    if (!*dir) core_usage_error("%s: %s names no data directory: pass --data DIR (its tokenizer)", cmd, ckpt);
    if (snprintf(path, n, "%s/tokenizer.bin", dir) >= (int)n) core_usage_error("%s: path too long: %s", cmd, dir);
    char why[TOK_ERR_LEN];
    Tokenizer *tok = tok_load_try(path, why);
    if (!tok && data) core_usage_error("%s: %s (--data)", cmd, why);
    // The checkpoint names its run's data directory as given then: a relative one from elsewhere
    // points at nothing.
    if (!tok)
        core_usage_error("%s: %s (%s; --data DIR names another)", cmd, why,
                         dir[0] == '/' ? "the checkpoint's data directory"
                                       : "the checkpoint's data directory, relative to where it was trained");
    if (tok->V != c->V)
        core_usage_error("%s: %s has %d tokens but the checkpoint's model has vocab_size %d", cmd, path, tok->V,
                         c->V);
    // Same size, other merges: the data directory prepared again since the run, or another one. The
    // ids would decode into other text (and export would ship the wrong tokenizer) without a word.
    CkptState st;
    ckpt_read_state(ckpt, &st);
    if (st.tok_fp && st.tok_fp != tok_fingerprint(tok))
        core_usage_error("%s: %s is not the tokenizer %s was trained with (fingerprints %08x and %08x): was "
                         "the data directory prepared again? --data DIR names the run's", cmd, path, ckpt,
                         tok_fingerprint(tok), st.tok_fp);
    return tok;
}
