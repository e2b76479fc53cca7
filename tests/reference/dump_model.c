// The C side of the PyTorch comparison: builds the model from a config (defaults below, overridden
// by --key value arguments), and dumps its parameters, a batch, its logits, loss and every gradient,
// then the losses of a few AdamW steps, for tests/reference/moe_reference.py to recompute.
// --device cuda-fp32 or cuda (a config key, like the others) runs the model on the GPU from the
// same host-initialized weights (parameters are dumped before they go over; results come back to
// the host to be dumped); the backend that ran is dumped as `backend`, which moe_reference.py checks.
// usage: dump_model OUT.dump [--n-steps S] [--device cpu|cuda|cuda-fp32] [--key value ...]
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "framework/backend.h"
#include "framework/core/check.h"
#include "framework/core/mem.h"
#include "framework/core/rng.h"
#include "framework/model.h"
#include "framework/optimizer.h"
#include "framework/train.h"
#include "tests/reference/tensor_dump.h"

static void random_tokens(int *out, size_t n, int V, uint32_t stream) {
    RngStream r = rng_stream(4242, stream);
    for (size_t i = 0; i < n; i++) out[i] = (int)(rng_next_u32(&r) % (uint32_t)V);
}

// Dumps the registry's tensors at base (the model's data or grad buffer, on the model's backend).
static void dump_registry(TensorDump *td, const Model *m, const float *dev_base, const char *prefix,
                          int with_buffers) {
    const size_t bytes = m->reg.total * sizeof(float);
    float *base = core_alloc(bytes);  // the whole buffer on the host
    m->ops->download(base, dev_base, bytes);
    char name[PARAM_NAME_MAX + 16];
    for (int i = 0; i < m->reg.n; i++) {
        const ParamInfo *p = &m->reg.p[i];
        if (p->kind == PARAM_BUFFER && !with_buffers) continue;
        snprintf(name, sizeof name, "%s%s", prefix, p->name);
        tdump_f32(td, name, base + p->offset, p->ndim, p->shape);
    }
    core_free(base);
}

int main(int argc, char **argv) {
    if (argc < 2 || !strcmp(argv[1], "--help")) {
        fprintf(stderr, "usage: dump_model OUT.dump [--n-steps S] [--device cpu|cuda|cuda-fp32] [--key value ...]\n");
        return 2;
    }
    int n_steps = 5;
    MoeConfig c;
    config_defaults(&c);
    // A small model that exercises every path: GQA, a dense and two MoE layers, shared experts,
    // the balance loss, untied head, gradient accumulation. Head size 16, the smallest the GPU's
    // attention takes.
    c.V = 64; c.D = 64; c.L = 3; c.H = 4; c.Hkv = 2; c.T = 16; c.n_dense_layers = 1; c.F = 48;
    c.E = 8; c.K = 2; c.S = 1; c.Fe = 16; c.batch_size = 2; c.grad_accum = 2; c.seed = 11;
    c.balance_alpha = 0.01f; c.bias_rate = 0.01f; c.lr = 3e-3f; c.min_lr = 3e-4f;
    c.warmup_steps = 2; c.steps = n_steps;
    int rest = config_apply_args(&c, argc - 2, argv + 2);
    for (int i = 0; i < rest; i++) {
        if (!strcmp(argv[2 + i], "--n-steps") && i + 1 < rest) n_steps = atoi(argv[2 + ++i]);
        else core_usage_error("dump_model: unknown option '%s'", argv[2 + i]);
    }
    c.steps = n_steps;
    config_validate(&c);

    Model *m = model_create(&c, 0, 1);
    model_init_weights(m);
    TensorDump *td = tdump_open(argv[1]);

    char *text = NULL;
    size_t text_len = 0;
    FILE *f = open_memstream(&text, &text_len);
    config_write(&c, f);
    fclose(f);
    int64_t n_text = (int64_t)text_len;
    tdump_u8(td, "config_text", (const uint8_t *)text, 1, &n_text);
    free(text);
    dump_registry(td, m, m->reg.data, "param.", 1);
    // The device is the config's (--device was once read apart from it, never saw the flag that the
    // config had taken, and ran every "GPU" comparison on the CPU).
    const LayerOps *ops = backend_ops(c.device);
    if (ops->dev != CORE_CPU) model_to_device(m, ops);
    int64_t n_name = (int64_t)strlen(ops->name);
    tdump_u8(td, "backend", (const uint8_t *)ops->name, 1, &n_name);

    // One micro-batch: logits, loss and gradients (of that micro-batch's loss alone).
    const int B = c.batch_size, T = c.T, A = c.grad_accum;
    const size_t mb = (size_t)B * (T + 1);
    int *tok = core_alloc(mb * sizeof(int));
    random_tokens(tok, mb, c.V, 0);
    int64_t dims[4] = {B, T + 1};
    tdump_i32(td, "tokens", tok, 2, dims);
    model_zero_grad(m);
    ModelActs a;
    float loss = model_forward(m, &a, tok, B, T, 1);
    int64_t ldims[3] = {B, T, c.V}, one = 1;
    // The logits are in the backend's activation dtype: to fp32 there, then to the host. Before
    // the backward, which turns them into their gradient in place.
    const size_t nl = (size_t)B * T * c.V;
    float *dlog = ops->alloc(nl * sizeof(float)), *logits = core_alloc(nl * sizeof(float));
    ops->from_act(dlog, a.logits, (long)nl);
    ops->download(logits, dlog, nl * sizeof(float));
    tdump_f32(td, "logits", logits, 3, ldims);
    ops->free(dlog);
    core_free(logits);
    model_backward_input(m, &a, 1.0f);
    model_backward_weight(m, &a, NULL);
    tdump_f32(td, "loss", &loss, 1, &one);
    tdump_f32(td, "ce_loss", &a.ce, 1, &one);
    model_acts_free(m, &a);
    dump_registry(td, m, m->reg.grad, "grad.", 0);

    // n_steps optimizer steps of A micro-batches each, from the same initial weights.
    int *steps_tok = core_alloc((size_t)n_steps * A * mb * sizeof(int));
    random_tokens(steps_tok, (size_t)n_steps * A * mb, c.V, 1);
    float *losses = core_alloc((size_t)n_steps * sizeof(float));
    AdamW opt;
    adamw_init_on(&opt, &m->reg, ops, m->wlow);
    for (int s = 0; s < n_steps; s++)
        losses[s] = train_step_tokens(m, &opt, &c, s, steps_tok + (size_t)s * A * mb).loss;
    int64_t sdims[4] = {n_steps, A, B, T + 1}, ns = n_steps;
    tdump_i32(td, "steps.tokens", steps_tok, 4, sdims);
    tdump_f32(td, "steps.loss", losses, 1, &ns);
    // Every tensor after the steps: step losses alone at 1e-4 would miss a wrong decay, beta or clip.
    dump_registry(td, m, m->reg.data, "final.", 1);
    tdump_close(td);
    adamw_free(&opt);
    core_free(tok);
    core_free(steps_tok);
    core_free(losses);
    model_free(m);
    return 0;
}
