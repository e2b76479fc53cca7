// The Hugging Face export (see hf_export.h): check, load the checkpoint into one process holding every
// expert (whatever layout saved it), write the folder under a temporary name, rename it into place.
#include "tools/export/hf_export.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "checkpoints/ckpt.h"
#include "framework/core/check.h"
#include "framework/core/config.h"
#include "framework/core/file.h"
#include "framework/core/log.h"
#include "framework/core/mem.h"
#include "framework/model.h"
#include "tools/ckpt_model.h"
#include "tools/export/safetensors.h"

// modeling_moelab.py, embedded at build time (BUILD: genrule modeling_py) so that the one moelab
// binary is all an export needs.
extern const char hf_modeling_py[];
extern const unsigned long hf_modeling_py_len;

// The files of an export folder: all that --force may replace (with the modeling file's __pycache__).
static const char *const EXPORT_FILES[] = {"model.safetensors", "config.json", "generation_config.json",
                                           "modeling_moelab.py", "tokenizer.json", "tokenizer_config.json"};
#define N_EXPORT_FILES ((int)(sizeof EXPORT_FILES / sizeof EXPORT_FILES[0]))

// ---------------------------------------------------------------------------------------------
// Tensor names: moelab's registry names (docs/checkpoint-format.md) to the modeling file's modules.

typedef struct {
    const char *moelab;  // name after "layers.<l>." (or the whole name outside the layers)
    const char *hf;      // after "model.layers.<l>." ; "%d" is the expert or shared-expert row
    int split;           // 1: one Hugging Face tensor per row of the leading axis
} NameMap;

static const NameMap LAYER_NAMES[] = {
    {"attn_norm", "input_layernorm.weight", 0},
    {"wq", "self_attn.q_proj.weight", 0},
    {"wk", "self_attn.k_proj.weight", 0},
    {"wv", "self_attn.v_proj.weight", 0},
    {"wo", "self_attn.o_proj.weight", 0},
    {"ffn_norm", "post_attention_layernorm.weight", 0},
    {"w13", "mlp.gate_up_proj.weight", 0},
    {"w2", "mlp.down_proj.weight", 0},
    {"router", "mlp.gate.weight", 0},
    {"router_bias", "mlp.gate.e_score_correction_bias", 0},
    {"experts.w13", "mlp.experts.%d.gate_up_proj.weight", 1},
    {"experts.w2", "mlp.experts.%d.down_proj.weight", 1},
    {"shared.w13", "mlp.shared_experts.%d.gate_up_proj.weight", 1},
    {"shared.w2", "mlp.shared_experts.%d.down_proj.weight", 1},
};
static const NameMap TOP_NAMES[] = {
    {"embed", "model.embed_tokens.weight", 0},
    {"final_norm", "model.norm.weight", 0},
    {"lm_head", "lm_head.weight", 0},
};

// The Hugging Face name of moelab tensor `name` (e.g. "layers.3.experts.w13") restricted to row
// `row` of its leading axis for expert and shared-expert stacks (row is ignored for the others).
// Returns 1 if the tensor is split by rows (one Hugging Face tensor per expert), 0 if it maps whole.
static int hf_tensor_name(const char *name, int row, char *out, size_t n) {
    int layer, used = 0;
    if (sscanf(name, "layers.%d.%n", &layer, &used) == 1 && used > 0) {
        for (size_t i = 0; i < sizeof LAYER_NAMES / sizeof LAYER_NAMES[0]; i++) {
            if (strcmp(name + used, LAYER_NAMES[i].moelab) != 0) continue;
            char tail[ST_NAME_MAX];
            snprintf(tail, sizeof tail, LAYER_NAMES[i].hf, row);
            CHECK(snprintf(out, n, "model.layers.%d.%s", layer, tail) < (int)n, "name too long");
            return LAYER_NAMES[i].split;
        }
    }
    for (size_t i = 0; i < sizeof TOP_NAMES / sizeof TOP_NAMES[0]; i++)
        if (!strcmp(name, TOP_NAMES[i].moelab)) {
            snprintf(out, n, "%s", TOP_NAMES[i].hf);
            return 0;
        }
    FATAL("no Hugging Face name for tensor %s (update LAYER_NAMES in tools/export/hf_export.c)", name);
}

// ---------------------------------------------------------------------------------------------
// The folder's files

static FILE *create(const char *dir, const char *name) {
    char path[4200];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "wb");
    if (!f) core_path_error(errno, "export: cannot create %s: %s", path, strerror(errno));
    return f;
}

static void finish(FILE *f, const char *dir, const char *name) {
    int ok = !ferror(f) && fflush(f) == 0 && fsync(fileno(f)) == 0;
    int err = errno;
    if (fclose(f) != 0 && ok) ok = 0, err = errno;
    if (!ok) core_path_error(err, "export: cannot write %s/%s: %s", dir, name, strerror(err));
}

// A float as JSON that reads back as the same float32, and as a float: with a decimal point where
// %.9g gives none (transformers refuses `"temperature": 2`, an integer, for sampling).
static void json_float(FILE *f, const char *key, float x) {
    char v[32];
    snprintf(v, sizeof v, "%.9g", x);
    fprintf(f, "  \"%s\": %s%s,\n", key, v, strpbrk(v, ".en") ? "" : ".0");
}
static void json_int(FILE *f, const char *key, long x) { fprintf(f, "  \"%s\": %ld,\n", key, x); }
static void json_bool(FILE *f, const char *key, int x) { fprintf(f, "  \"%s\": %s,\n", key, x ? "true" : "false"); }

// config.json: the architecture's sizes under the names transformers models use where one fits.
static void write_config(const char *dir, const MoeConfig *c, int bf16, long step) {
    FILE *f = create(dir, "config.json");
    fputs("{\n  \"architectures\": [\"MoelabForCausalLM\"],\n"
          "  \"auto_map\": {\"AutoConfig\": \"modeling_moelab.MoelabConfig\",\n"
          "               \"AutoModelForCausalLM\": \"modeling_moelab.MoelabForCausalLM\"},\n"
          "  \"model_type\": \"moelab\",\n", f);
    json_int(f, "vocab_size", c->V);
    json_int(f, "hidden_size", c->D);
    json_int(f, "num_hidden_layers", c->L);
    json_int(f, "num_attention_heads", c->H);
    json_int(f, "num_key_value_heads", c->Hkv);
    json_int(f, "head_dim", c->D / c->H);
    json_int(f, "max_position_embeddings", c->T);
    json_int(f, "n_dense_layers", c->n_dense_layers);
    json_int(f, "intermediate_size", c->F);
    json_int(f, "n_routed_experts", c->E);
    json_int(f, "num_experts_per_tok", c->K);
    json_int(f, "n_shared_experts", c->S);
    json_int(f, "moe_intermediate_size", c->Fe);
    fprintf(f, "  \"scoring_func\": \"%s\",\n", c->score);
    json_float(f, "routed_scaling_factor", c->route_scale);
    json_bool(f, "norm_topk_prob", c->norm_topk);
    json_float(f, "rope_theta", c->rope_theta);
    json_float(f, "rms_norm_eps", c->norm_eps);
    // Tied embeddings are the model's own business (the head reads embed_tokens): transformers'
    // tying machinery differs between versions, so it is kept out (tie_word_embeddings false).
    json_bool(f, "tie_embeddings", c->tie_embeddings);
    json_bool(f, "tie_word_embeddings", 0);
    json_bool(f, "use_cache", 0);
    fprintf(f, "  \"torch_dtype\": \"%s\",\n", bf16 ? "bfloat16" : "float32");
    json_int(f, "moelab_step", step);
    json_int(f, "moelab_checkpoint_format_version", CKPT_FORMAT_VERSION);
    fputs("  \"moelab_export_version\": 2\n}\n", f);
    finish(f, dir, "config.json");
}

// generation_config.json: `moelab sample`'s defaults (temperature, top-k from the training config).
static void write_generation_config(const char *dir, const MoeConfig *c) {
    FILE *f = create(dir, "generation_config.json");
    // Temperature 0 is moelab's greedy decoding, which transformers spells do_sample = false (it
    // refuses to sample at temperature 0).
    if (c->temperature > 0) {
        fputs("{\n  \"do_sample\": true,\n", f);
        json_float(f, "temperature", c->temperature);
        json_int(f, "top_k", c->top_k_sample);
    } else {
        fputs("{\n  \"do_sample\": false,\n", f);
    }
    fputs("  \"use_cache\": false\n}\n", f);
    finish(f, dir, "generation_config.json");
}

static void write_tokenizer(const char *dir, const Tokenizer *t, const MoeConfig *c) {
    FILE *f = create(dir, "tokenizer.json");
    hf_tokenizer_write(t, f);
    finish(f, dir, "tokenizer.json");
    f = create(dir, "tokenizer_config.json");
    fprintf(f, "{\n  \"tokenizer_class\": \"PreTrainedTokenizerFast\",\n  \"model_max_length\": %d,\n"
               "  \"clean_up_tokenization_spaces\": false,\n  \"add_prefix_space\": false,\n"
               "  \"model_input_names\": [\"input_ids\", \"attention_mask\"]\n}\n", c->T);
    finish(f, dir, "tokenizer_config.json");
}

// A finite weight that bf16 cannot hold would be written as infinite: refused, naming the tensor,
// before a file is written (it was exported with exit 0; review, 2026-12-06).
static void check_bf16_range(const char *ckpt, const ParamRegistry *r) {
    for (int i = 0; i < r->n; i++) {
        const ParamInfo *p = &r->p[i];
        const float *x = r->data + p->offset;
        for (size_t j = 0; j < p->numel; j++)
            if ((st_bf16(x[j]) & 0x7F80u) == 0x7F80u)
                core_usage_error("export: %s: %s holds %g, beyond bf16's range (about ±3.39e38): export it with "
                                 "--dtype fp32", ckpt, p->name, (double)x[j]);
    }
}

// model.safetensors: every registry tensor under its Hugging Face name, expert stacks split by row.
static void write_weights(const char *dir, const Model *m, int bf16, long step) {
    int n = 0;
    for (int i = 0; i < m->reg.n; i++) {
        char name[ST_NAME_MAX];
        n += hf_tensor_name(m->reg.p[i].name, 0, name, sizeof name) ? (int)m->reg.p[i].shape[0] : 1;
    }
    StTensor *t = core_alloc(sizeof(StTensor) * (size_t)n);
    int k = 0;
    for (int i = 0; i < m->reg.n; i++) {
        const ParamInfo *p = &m->reg.p[i];
        const float *x = m->reg.data + p->offset;
        const int split = hf_tensor_name(p->name, 0, t[k].name, ST_NAME_MAX);
        const int rows = split ? (int)p->shape[0] : 1;
        const size_t row_numel = split ? p->numel / (size_t)rows : p->numel;
        for (int r = 0; r < rows; r++, k++) {
            hf_tensor_name(p->name, r, t[k].name, ST_NAME_MAX);
            t[k].ndim = split ? p->ndim - 1 : p->ndim;
            for (int d = 0; d < t[k].ndim; d++) t[k].shape[d] = p->shape[d + split];
            t[k].data = x + (size_t)r * row_numel;
        }
    }
    char step_str[32];
    snprintf(step_str, sizeof step_str, "%ld", step);
    const char *meta[] = {"moelab_step", step_str};
    char path[4200];
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    st_write(path, t, n, bf16 ? ST_BF16 : ST_F32, meta, 1);
    core_free(t);
}

static void write_modeling(const char *dir) {
    FILE *f = create(dir, "modeling_moelab.py");
    fwrite(hf_modeling_py, 1, hf_modeling_py_len, f);
    finish(f, dir, "modeling_moelab.py");
}

// ---------------------------------------------------------------------------------------------
// The temporary folder and the final rename

// Python's byte code of the modeling file (written next to it when it is imported from the folder):
// __pycache__/modeling_moelab.*.pyc counts as part of an export.
static int is_modeling_pyc(const char *name) {
    const size_t n = strlen(name);
    return strncmp(name, "modeling_moelab.", 16) == 0 && n > 20 && strcmp(name + n - 4, ".pyc") == 0;
}

// Calls fn(dir/name) for each entry of dir but . and ..; returns how many fn refused (fn != 0).
static int each_entry(const char *dir, int (*fn)(const char *dir, const char *name)) {
    DIR *d = opendir(dir);
    if (!d) return 0;
    int refused = 0;
    for (struct dirent *e; (e = readdir(d)) != NULL;)
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) refused += fn(dir, e->d_name) != 0;
    closedir(d);
    return refused;
}

static int unlink_entry(const char *dir, const char *name) {
    char path[8400];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    return unlink(path);
}

// Removes a folder of export files (and the modeling file's __pycache__), nothing else.
static void remove_export_folder(const char *dir) {
    char path[4200];
    for (int i = 0; i < N_EXPORT_FILES; i++) {
        snprintf(path, sizeof path, "%s/%s", dir, EXPORT_FILES[i]);
        unlink(path);
    }
    snprintf(path, sizeof path, "%s/__pycache__", dir);
    each_entry(path, unlink_entry);  // check_out_dir made sure it holds only modeling_moelab.*.pyc
    rmdir(path);
    rmdir(dir);
}

static int not_modeling_pyc(const char *dir, const char *name) {
    (void)dir;
    return !is_modeling_pyc(name);
}

static int is_export_file(const char *dir, const char *name) {
    for (int i = 0; i < N_EXPORT_FILES; i++)
        if (!strcmp(name, EXPORT_FILES[i])) return 1;
    if (strcmp(name, "__pycache__") != 0) return 0;
    char path[4400];  // dir and a file name of up to 255 bytes
    snprintf(path, sizeof path, "%s/%s", dir, name);
    return each_entry(path, not_modeling_pyc) == 0;
}

// Refuses an out_dir that is not a directory, or not empty without --force, or holding anything
// but export files even with --force (so that --force can never delete someone's other files), or
// locked by another moelab command (a train's --out: the swap would take the folder from under
// it; sweep, 2026-12-05). Returns 1 if it exists (and may be replaced; *lock then holds its lock,
// kept until the commit), 0 if it does not.
static int check_out_dir(const char *dir, int force, int *lock) {
    // The folder is replaced by renames of the name given, which '.', '..' and a link cannot take.
    const char *slash = strrchr(dir, '/'), *base = slash ? slash + 1 : dir;
    if (!strcmp(base, ".") || !strcmp(base, ".."))
        core_usage_error("export: --out %s: name the folder itself, not '.' or '..' (the export is renamed "
                         "into place)", dir);
    struct stat st;
    if (lstat(dir, &st) == 0 && S_ISLNK(st.st_mode))
        core_usage_error("export: --out %s is a symbolic link: name the folder it points to (the export is "
                         "renamed into place)", dir);
    if (stat(dir, &st) != 0) {
        if (errno != ENOENT) core_usage_error("export: cannot read --out %s: %s", dir, strerror(errno));
        return 0;
    }
    if (!S_ISDIR(st.st_mode)) core_usage_error("export: --out %s exists and is not a directory", dir);
    *lock = core_dir_lock(dir);
    if (*lock == CORE_DIR_BUSY)
        core_usage_error("export: --out %s is in use by another moelab command running now (train, data prepare "
                         "or ckpt clean): export when it has ended, or choose another --out", dir);
    DIR *d = opendir(dir);
    if (!d) core_usage_error("export: cannot read --out %s: %s", dir, strerror(errno));
    int n = 0;
    for (struct dirent *e; (e = readdir(d)) != NULL;) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        n++;
        if (force && !is_export_file(dir, e->d_name)) {
            char name[256];  // e->d_name dies with closedir
            snprintf(name, sizeof name, "%s", e->d_name);
            closedir(d);
            core_usage_error("export: --out %s holds '%s', which is not an export file; --force replaces "
                             "only a folder of export files (remove it, or choose another --out)", dir, name);
        }
    }
    closedir(d);
    if (n > 0 && !force)
        core_usage_error("export: --out %s exists and is not empty (--force replaces an earlier export)", dir);
    return 1;
}

// The written folder tmp into place at out. Over an existing folder (empty, or an earlier export
// under --force) one atomic exchange where the file system has it; elsewhere the old folder is
// moved aside first, with polite signals held back, and put back if the second rename fails. So
// `out` holds one whole export or none (the old one) at every moment.
static void commit(const char *tmp, const char *out, int exists) {
    if (!exists) {
        // Not over a folder made meanwhile, even an empty one (another process's --out).
        int rc = renameat2(AT_FDCWD, tmp, AT_FDCWD, out, RENAME_NOREPLACE);
        if (rc != 0 && (errno == EINVAL || errno == ENOSYS || errno == ENOTSUP)) rc = rename(tmp, out);
        if (rc == 0) return;
        const int err = errno;
        // Another process (a second export to the same --out) created the folder meanwhile: its
        // files stay, and the message says why, where "Directory not empty" did not (sweep).
        if (err == ENOTEMPTY || err == EEXIST)
            core_usage_error("export: --out %s was created by another process while this export was written; "
                             "it is left as it is (run again to replace it with --force)", out);
        core_path_error(err, "export: cannot rename %s to %s: %s", tmp, out, strerror(err));
    }
    // After the exchange the old export sits under the temporary name, with its __pycache__ whose
    // byte-code files the exit handler does not know: it is removed before a signal is let through.
    core_signals_hold();
    if (renameat2(AT_FDCWD, tmp, AT_FDCWD, out, RENAME_EXCHANGE) == 0) {
        remove_export_folder(tmp);
        core_signals_release();
        return;
    }
    const int xerr = errno;
    core_signals_release();
    if (xerr != EINVAL && xerr != ENOSYS && xerr != ENOTSUP)
        core_path_error(xerr, "export: cannot put %s in place of %s: %s", tmp, out, strerror(xerr));
    char old[4200];
    // mkdtemp fills in the template's last six characters.
    CHECK(core_temp_name(old, sizeof old, out, ".old-XXXXXX") == 0, "export: --out path too long: %s", out);
    if (!mkdtemp(old)) core_path_error(errno, "export: cannot create a folder next to %s: %s", out, strerror(errno));
    // The old export goes before the signals are let through: a signal held until then would end
    // the process with the old folder left aside under a name nothing removes.
    core_signals_hold();
    int err = rename(out, old) != 0 ? errno : 0;
    if (err) rmdir(old);
    else if (rename(tmp, out) != 0) {
        err = errno;
        rename(old, out);
    }
    if (!err) remove_export_folder(old);
    core_signals_release();
    if (err) core_path_error(err, "export: cannot put %s in place of %s: %s", tmp, out, strerror(err));
}

// The temporary folder and its files, tracked (on) so that any end of the process before the commit
// removes them (framework/core/file.h), or no longer (off).
static void track_tmp(const char *tmp, int on) {
    char path[4200];
    if (on) core_temp_track(tmp);
    for (int i = 0; i < N_EXPORT_FILES; i++) {
        snprintf(path, sizeof path, "%s/%s", tmp, EXPORT_FILES[i]);
        if (on) core_temp_track(path);
        else core_temp_untrack(path);
    }
    if (!on) core_temp_untrack(tmp);
}

// ---------------------------------------------------------------------------------------------

void hf_export(const HfExportOptions *o) {
    // The folder without trailing slashes: its temporary twin and the rename need the bare name.
    char out[4096];
    if (!o->out_dir || !*o->out_dir) core_usage_error("export: --out DIR is required");
    if (strlen(o->out_dir) >= sizeof out - 32) core_usage_error("export: --out path too long");
    snprintf(out, sizeof out, "%s", o->out_dir);
    for (size_t n = strlen(out); n > 1 && out[n - 1] == '/'; n--) out[n - 1] = '\0';
    int lock = CORE_DIR_NO_LOCK;
    const int exists = check_out_dir(out, o->force, &lock);

    // Everything that can be wrong with the input is found here, before a file is written.
    MoeConfig c;
    ckpt_read_config_whole(o->ckpt, &c);
    char tok_path[2 * CONFIG_STR + 32];
    Tokenizer *tok = ckpt_tokenizer_load("export", o->ckpt, &c, o->data_dir, tok_path, sizeof tok_path);
    char err[TOK_ERR_LEN];
    if (hf_tokenizer_check(tok, err)) core_usage_error("export: %s: %s", tok_path, err);
    CkptState st;
    Model *m = ckpt_model_load(o->ckpt, &c, &st);
    if (o->bf16) check_bf16_range(o->ckpt, &m->reg);

    // Written in a folder next to it (same file system, so the rename is atomic), named by mkdtemp
    // from the template <out>.tmp- and six characters it fills in (a long name cut to make room,
    // core_temp_name).
    char tmp[4128];  // out (under 4064 bytes) and ".tmp-XXXXXX"
    CHECK(core_temp_name(tmp, sizeof tmp, out, ".tmp-XXXXXX") == 0, "export: --out path too long: %s", out);
    if (!mkdtemp(tmp)) core_path_error(errno, "export: cannot create a folder next to %s: %s", out, strerror(errno));
    track_tmp(tmp, 1);
    const mode_t mask = umask(0);
    umask(mask);
    CHECK(chmod(tmp, 0777 & ~mask) == 0, "chmod %s: %s", tmp, strerror(errno));
    core_info0("export: %s (step %ld) -> %s (%s weights)", o->ckpt, (long)st.step, out, o->bf16 ? "bf16" : "fp32");
    write_weights(tmp, m, o->bf16, (long)st.step);
    write_config(tmp, &c, o->bf16, (long)st.step);
    write_generation_config(tmp, &c);
    write_tokenizer(tmp, tok, &c);
    write_modeling(tmp);
    // The files are synced as they close; the folder's entries, then the rename, here.
    // Not checked, as core_out_close's directory sync: everything is in place and whole by then.
    (void)core_fsync(tmp);
    commit(tmp, out, exists);
    core_dir_unlock(lock);
    track_tmp(tmp, 0);
    (void)core_fsync_parent(out);
    core_info0("export: wrote %s/{model.safetensors, config.json, generation_config.json, modeling_moelab.py, "
               "tokenizer.json, tokenizer_config.json}", out);
    model_free(m);
    tok_free(tok);
}
