// Run configuration: model shape (docs/architecture.md §2), training, parallel layout and I/O, in
// one struct. Config files hold `key = value` lines with `#` comments; the command line overrides
// any key as `--key value` (dashes and underscores are the same: --eplb-interval ==
// --eplb_interval). An unknown key or a malformed value is a usage error that names the key and the
// expected form (exit code 2).
#ifndef MOELAB_CORE_CONFIG_H
#define MOELAB_CORE_CONFIG_H

#include <stdint.h>
#include <stdio.h>

#ifdef __cplusplus
extern "C" {
#endif

// Bytes of a text value with its NUL: paths (data, out, resume, metrics, trace) of up to 1023 bytes
// (255 refused deep but ordinary paths; sweep, 2026-12-05).
#define CONFIG_STR 1024

typedef struct {
    // --- model (§2) ---
    int V;               // vocab_size
    int D;               // d_model
    int L;               // n_layers
    int H;               // n_heads
    int Hkv;             // n_kv_heads
    int T;               // seq_len
    int n_dense_layers;  // the first n_dense_layers use a dense SwiGLU of width F
    int F;               // d_ff (dense SwiGLU width)
    int E;               // n_experts (routed)
    int K;               // top_k
    int S;               // n_shared (shared experts)
    int Fe;              // d_expert (expert SwiGLU width)
    char score[CONFIG_STR];  // "sigmoid" | "softmax"
    float route_scale;
    int norm_topk;       // bool
    float bias_rate;     // gamma of the aux-loss-free bias update
    float balance_alpha; // alpha of the sequence balance loss
    float rope_theta;
    float norm_eps;
    int tie_embeddings;  // bool
    // --- training ---
    uint64_t seed;
    int steps;
    int batch_size;      // B: sequences per micro-batch
    int grad_accum;      // micro-batches per optimizer step (per data-parallel rank)
    float lr, min_lr;
    int warmup_steps;
    float weight_decay, grad_clip, beta1, beta2, adam_eps;
    int nonfinite_skip;  // non-finite steps skipped in a row before the run stops (0: stop at once)
    int log_every, val_every, val_batches;
    int sample_tokens;   // tokens generated at the end of training (0: none)
    float temperature;
    int top_k_sample;
    int threads;         // OpenMP threads (0: library default)
    // --- parallel layout ---
    int ep, pp, chunks;
    char schedule[CONFIG_STR];   // "1f1b" | "dualpipe" | "dualpipev"
    int fb_overlap;      // bool: DualPipe/DualPipeV F&B ops run their forward and backward at once,
                         // on two GPU streams (the CPU runs them in turn); with ep > 1 MPI must
                         // provide MPI_THREAD_MULTIPLE
    int dp_overlap;      // bool: the DP gradient all-reduce overlaps the last backward (0: after it)
    int ep_overlap;      // bool: the shared experts overlap the EP dispatch all-to-all (0: after it)
    int ep_chunks;       // token chunks per EP MoE layer (1..8): chunk c's combine overlaps chunk c+1's experts
    int zero;            // ZeRO stage: 1 shards the AdamW moments and fp32 master weights over the
                         // data-parallel ranks (0: off)
    char expert_gemm[CONFIG_STR];  // GPU expert GEMMs: "cutlass" | "grouped" | "streams" | "loop"
    int gemm_streams;    // side streams of expert_gemm = streams (1..8)
    int cuda_graph;      // bool: on one GPU the training step's forward and backward run as a CUDA
                         // graph (docs/gpu.md "CUDA graph"; the default); 0: kernel by kernel
    int deterministic;   // bool: reruns bit-identical (the default); 0 lets cuDNN's attention
                         // backward use its faster algorithm, whose dQ sums (atomics) vary run to run
    int recompute;       // bool: every stage keeps each layer's input only and recomputes the rest
                         // of the layer's forward in its backward (same numbers, bit for bit)
    int recompute_layers;  // with recompute: only the first n layers of each stage do (0: all)
    int recompute_keep_attention;  // bool, with recompute: those layers keep the attention's output,
                                   // its state and the residual after it, and recompute the rest
    int eplb_interval, eplb_redundant;
    int eplb_groups, eplb_nodes;  // EPLB's expert groups and nodes (docs/architecture.md §6)
    float router_skew;   // test knob: expert i's balancing bias starts at skew*(E-1-i)/E (0: off)
    float comm_timeout;  // seconds a collective may wait before every rank is ended
    // --- I/O ---
    char device[CONFIG_STR];     // "cpu" | "cuda" (bf16 compute, fp32 master weights) | "cuda-fp32"
    char data[CONFIG_STR];       // directory from `moelab data prepare`: tokenizer.bin, train.bin,
                                 // val.bin
    char metrics[CONFIG_STR];    // JSON Lines file ("" = none)
    char out[CONFIG_STR];        // output directory for checkpoints ("" = none)
    char resume[CONFIG_STR];     // checkpoint to resume from ("" = none)
    char trace[CONFIG_STR];      // Chrome trace file ("" = none)
    int save_every, keep;
} MoeConfig;

// Fills every key with its default (a tiny CPU model).
void config_defaults(MoeConfig *c);
// Reads `key = value` lines from path; exits 2 with a message naming the file, line and key on error.
void config_load_file(MoeConfig *c, const char *path);
// The same from an open stream (not closed here); name stands for it in messages. A key set twice in
// one file is an error naming both lines.
void config_load_stream(MoeConfig *c, FILE *f, const char *name);
// The same from the text of a checkpoint's stored config; messages name "NAME line N", and keys
// retired since the checkpoint was saved are skipped.
void config_load_stored(MoeConfig *c, const char *text, const char *name);
// Sets one key from its text value; `origin` names where it came from for error messages.
void config_set(MoeConfig *c, const char *key, const char *value, const char *origin);
// Sets key back to its default.
void config_reset_key(MoeConfig *c, const char *key);
// Applies `--key value` pairs from argv[0..argc). `--config FILE` loads a file first (wherever it
// appears). Arguments that are not config keys are left for the caller: they are moved to the front
// of argv and their count is returned (they are the subcommand's own flags).
int config_apply_args(MoeConfig *c, int argc, char **argv);
// Checks cross-field rules (H % Hkv, D % H, K <= E, ...); exits 2 naming the rule on failure, after
// "config: " or, from config_validate_as, after what ("checkpoint F, stored config: ").
void config_validate(const MoeConfig *c);
void config_validate_as(const MoeConfig *c, const char *what);
// Writes every key as `key = value` lines (the format config_load_file reads).
void config_write(const MoeConfig *c, FILE *f);
// Writes every key as one JSON object, {"key": value, ...} in config_write's order, without a
// newline: numbers, true/false, and strings (the metrics file's first line holds it).
void config_write_json(const MoeConfig *c, FILE *f);
// Prints the keys with their defaults and help text (for --help).
void config_print_help(FILE *f);
// True if name (after the leading dashes, dash == underscore) is a config key.
int config_is_key(const char *name);
// True if name (after the leading dashes, dash == underscore) is the key `key`.
int config_names_key(const char *name, const char *key);
// 1 when name (leading dashes ignored) is a key of an older moelab that no longer does anything. config_set makes naming one
// a usage error that says what replaced it; a checkpoint's stored config skips it
// (checkpoints/format.c), so that checkpoints of those versions still load.
int config_is_retired(const char *name);

#ifdef __cplusplus
}
#endif
#endif
