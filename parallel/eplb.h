// EPLB planner (docs/architecture.md §6): given the load of every logical expert of every MoE layer, choose
// how many replicas each expert gets and which physical slot (hence which rank) holds each replica.
// Pure functions, no communication; a plan object owns every buffer, so re-planning allocates nothing.
#ifndef MOELAB_PARALLEL_EPLB_H
#define MOELAB_PARALLEL_EPLB_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

// The problem size. Rules (checked by eplb_shape_error): every field ≥ 1, R ≥ E, R % G == 0,
// E % Ng == 0, G % Nn == 0. Slot p lives on rank p / (R/G); ranks are numbered node by node.
typedef struct {
    int L;   // MoE layers planned together
    int E;   // logical (routed) experts per layer
    int R;   // physical expert slots per layer: E plus the redundant replicas
    int Ng;  // expert groups: contiguous blocks of E/Ng experts that must stay on one node
    int Nn;  // nodes
    int G;   // ranks, G/Nn per node, R/G slots per rank
} EplbShape;

// NULL when the shape obeys every rule; otherwise writes into buf (cap bytes) one message that names
// the broken rule and its values, and returns buf.
const char *eplb_shape_error(const EplbShape *s, char *buf, size_t cap);
// NULL when every load (L, E) is finite and ≥ 0; otherwise a message naming the first bad entry
// (0-based layer and expert), in buf.
const char *eplb_load_error(const double *load, int L, int E, char *buf, size_t cap);

// ---- the two primitives of §6 ----

// Bytes of scratch eplb_pack needs for n items and m packs.
size_t eplb_pack_work_bytes(int n, int m);
// Balanced packing of n items with weights w (n) into m packs of exactly n/m items each (m | n).
// n/m == 1: item i goes to pack i. Otherwise items are visited heaviest first (equal weights in index
// order) and each goes to the pack with the smallest running total among packs with room (ties: the
// lowest pack index). Outputs pack_of (n) and rank_in_pack (n) = arrival order within the pack.
// work: eplb_pack_work_bytes(n, m) bytes, any alignment suitable for double (core_alloc is).
void eplb_pack(const double *w, int n, int m, int *pack_of, int *rank_in_pack, void *work);
// Replication of n items with weights w (n) onto r ≥ n slots: slot i < n holds item i; every further
// slot takes the item with the largest w/count (ties: the lowest index). Outputs phy2item (r), rank (r)
// = the item's count before this slot was added (0 for its first copy), count (n) ≥ 1. heap (n) is
// scratch.
void eplb_replicate(const double *w, int n, int r, int *phy2item, int *rank, int *count, int *heap);

// ---- whole plans ----

// A plan for L layers. Outputs are valid after eplb_plan_run and are overwritten by the next run.
typedef struct {
    EplbShape shape;
    int hierarchical;  // the policy in use, fixed by the shape (hierarchical where Ng % Nn == 0)
    int maxcnt;        // the largest logcnt over ALL layers of the last run: log2phy's row length,
                       // the same for every layer so that log2phy is one dense (L, E, maxcnt) array
    int *phy2log;      // (L, R) logical expert held by each physical slot
    int *phyrank;      // (L, R) replica rank of that copy: log2phy[l][phy2log[l][p]][phyrank[l][p]] == p
    int *logcnt;       // (L, E) replicas of each logical expert, ≥ 1, summing to R per layer
    int *log2phy;      // (L, E, maxcnt) slots of each expert's replicas by replica rank, −1 padded;
                       // capacity L·E·(R−E+1), the largest maxcnt possible
    struct EplbScratch *scratch;  // private per-layer workspace
} EplbPlan;

// Allocates a plan and all its workspace. A shape that breaks a rule is a usage error (exit 2).
EplbPlan *eplb_plan_create(const EplbShape *s);
void eplb_plan_free(EplbPlan *p);
// Plans every layer from load (L, E) (tokens per logical expert; finite and ≥ 0, else a usage error).
// Allocation-free and deterministic: the same loads always give the same plan.
void eplb_plan_run(EplbPlan *p, const double *load);

// Per-rank load imbalance max/mean of a placement of one layer: slot p lives on rank p / (R/G)
// (G | R), a replica carries load[e] / logcnt[e]. load (E); phy2log (R); logcnt (E). phy2log == NULL
// (then logcnt must be NULL and R == E) means the identity placement, expert p in slot p, which is the
// "before EPLB" layout of E/G experts per rank. All-zero loads give 1 (nothing to balance).
double eplb_rank_imbalance(const double *load, int E, const int *phy2log, const int *logcnt, int R,
                           int G);

#ifdef __cplusplus
}
#endif
#endif
