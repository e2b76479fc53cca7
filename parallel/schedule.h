// Pipeline schedules as plain data (docs/architecture.md §5): for each rank, the ordered list of ops it
// runs. Pure generators for 1F1B, DualPipe and DualPipeV, a validator that plays all ranks against
// each other, and text / JSON writers. docs/pipeline.md explains the model in full.
#ifndef MOELAB_PARALLEL_SCHEDULE_H
#define MOELAB_PARALLEL_SCHEDULE_H

#include <stddef.h>
#include <stdio.h>

#include "framework/core/check.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum { SCHED_1F1B = 0, SCHED_DUALPIPE = 1, SCHED_DUALPIPEV = 2 } SchedKind;

// The two pipes a rank takes part in. 1F1B uses only DOWN. DualPipe: DOWN holds stage r on rank r,
// UP holds stage N−1−r on rank r. DualPipeV: DOWN is the first half of the V (stage r on rank r),
// UP the second half (stage 2N−1−r on rank r).
typedef enum { SCHED_DOWN = 0, SCHED_UP = 1 } SchedPipe;

typedef enum { SCHED_F = 0, SCHED_B = 1, SCHED_W = 2, SCHED_FB = 3 } SchedOpKind;

// One micro-batch on one of the rank's pipes. defer_w applies to backward parts only.
typedef struct {
    int mb;        // global micro-batch id, 0..C−1
    int pipe;      // SchedPipe
    int defer_w;   // backward: 1 = input gradient only, its W is queued for a later W op
} SchedCell;

// One op. F uses f; B uses b; W uses b (the deferred backward it completes: the oldest in the
// rank's queue); FB uses both (forward of f and backward of b run together).
typedef struct {
    int kind;      // SchedOpKind
    SchedCell f, b;
    int step;      // generator step that emitted it: 1..8 (DualPipe/V), 1 warm-up 2 steady 3 drain (1F1B)
} SchedOp;

typedef struct {
    int kind;      // SchedKind
    int N;         // ranks
    int C;         // micro-batches per step
    int *n_ops;    // (N) ops per rank
    SchedOp **ops; // (N) arrays of n_ops[r] ops, in execution order
} Schedule;

#define SCHED_ERR_LEN 512
// Writes a message of at most SCHED_ERR_LEN bytes into err (nothing when err is NULL): the one way the
// schedule, simulator and SVG functions report a problem to their caller.
#define sched_set_err(err, ...) core_set_err((err), SCHED_ERR_LEN, __VA_ARGS__)

// The generator of each kind: a new schedule, or NULL with a message in err (SCHED_ERR_LEN bytes)
// for invalid arguments. 1F1B: N ≥ 1, C ≥ 1. DualPipe: N even, C even, C ≥ 2N. DualPipeV: N ≥ 1,
// C ≥ 2N.
Schedule *sched_build(SchedKind kind, int N, int C, char *err);
void sched_free(Schedule *s);

// "1f1b" | "dualpipe" | "dualpipev" → kind; -1 for anything else.
int sched_kind_parse(const char *name);
const char *sched_kind_name(SchedKind kind);  // "1f1b" | "dualpipe" | "dualpipev"
const char *sched_pipe_name(int pipe);        // "down" | "up"

// Where micro-batches travel. Every micro-batch follows a path of sched_path_len stages; position
// k of micro-batch mb runs on rank sched_path_rank(s, mb, k) in pipe sched_path_pipe(s, mb, k).
// 1F1B and DualPipe: N positions; DualPipeV: 2N (down through ranks 0..N−1, then up back to 0).
int sched_path_len(const Schedule *s);
int sched_path_rank(const Schedule *s, int mb, int k);
int sched_path_pipe(const Schedule *s, int mb, int k);
// The position (0-based stage of the micro-batch's path) of micro-batch mb in `pipe` on `rank`,
// or -1 if mb never visits that pipe (e.g. a DualPipe down micro-batch in the up pipe).
int sched_path_pos(const Schedule *s, int rank, int pipe, int mb);
// The model stage a rank holds in a pipe (what the executor loads): DualPipe up → N−1−r,
// DualPipeV up → 2N−1−r, otherwise r.
int sched_stage(const Schedule *s, int rank, int pipe);
// The most micro-batches whose activations `rank` holds at once in `pipe` while it runs its ops,
// from their forwards (from = SCHED_F) or from their backwards with defer_w (SCHED_B), until their
// backward, or with defer_w until their W.
int sched_max_live(const Schedule *s, int rank, int pipe, SchedOpKind from);

// Plays every rank's op list against the others with unbounded message buffers (an op starts once
// its inputs exist; see docs/pipeline.md for the rule) and checks that every micro-batch runs F, B
// and W exactly once at every position of its path and that each W completes the oldest deferred
// B. Returns 0, or 1 with the first problem in err (SCHED_ERR_LEN bytes); a deadlock names the
// first stuck op of every rank that has not finished.
int sched_validate(const Schedule *s, char *err);
// The engine under sched_validate and the simulator. With dur non-NULL ((N) arrays of n_ops[r] op
// durations) it also fills start and end (the same shapes): an op starts once its rank is free and
// its inputs have arrived; an input made on another rank arrives p2p after its op ended.
int sched_play(const Schedule *s, double *const *dur, double p2p, double **start, double **end,
               char *err);

// Compact op token: F3d, B0u (full backward), B0u* (W deferred), W0u (the deferred backward it
// completes), FB(4d,1u). buf of at least 32 bytes. Returns buf.
char *sched_op_label(const SchedOp *op, char *buf, size_t len);
// Parses a token written by sched_op_label; 0 on success, 1 if the text is not a token.
int sched_op_parse(const char *text, SchedOp *op);

// One line per rank: "rank 0: F0d F1d FB(2d,0u) ...".
void sched_write_text(const Schedule *s, FILE *f);
// {"ranks": [[op, ...], ...]} with op {"op":"F","mb":3,"pipe":"down"},
// {"op":"B","mb":0,"pipe":"up","defer_w":true}, {"op":"W","mb":0,"pipe":"up"} or
// {"op":"FB","f":{"mb":4,"pipe":"down"},"b":{"mb":1,"pipe":"up","defer_w":false}}.
void sched_write_json(const Schedule *s, FILE *f);

#ifdef __cplusplus
}
#endif
#endif
