// EPLB planner (docs/architecture.md §6): balanced packing, replication, and the hierarchical policy; the
// global policy is the hierarchical one run with a single group on a single node.
#include "parallel/eplb.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

#include "framework/core/check.h"
#include "framework/core/mem.h"

// Per-layer workspace of a plan, sized once by eplb_plan_create. "Local" means within one node.
struct EplbScratch {
    double *gload;           // (Ng) summed load of each expert group
    int *gnode, *grank;      // (Ng) node of each group and its arrival order on that node
    int *log2mlog;           // (E) renumbered id of each logical expert (node k owns a block)
    int *mlog2log;           // (E) inverse of log2mlog
    double *mload;           // (E) loads in renumbered order
    int *item, *irank;       // (R/Nn) local expert of each local replica and its replica rank
    int *cnt;                // (E/Nn) replicas of each local expert
    int *heap;               // (E/Nn) eplb_replicate's scratch
    double *rw;              // (R/Nn) weight of each local replica: its expert's load / count
    int *rpack, *rrip;       // (R/Nn) rank within the node of each replica, and its place there
    void *pack_work;         // eplb_pack scratch, large enough for both packings
};

// Index of the first weight that is negative, NaN or infinite, or -1 when all are usable.
static long first_bad(const double *w, long n) {
    for (long i = 0; i < n; i++)
        if (!(w[i] >= 0) || isinf(w[i])) return i;
    return -1;
}

const char *eplb_shape_error(const EplbShape *s, char *buf, size_t cap) {
    const struct { const char *what; int v; } f[] = {
        {"L (layers)", s->L}, {"E (logical experts)", s->E}, {"R (physical slots)", s->R},
        {"Ng (expert groups)", s->Ng}, {"Nn (nodes)", s->Nn}, {"G (ranks)", s->G}};
    for (size_t i = 0; i < sizeof f / sizeof f[0]; i++)
        if (f[i].v < 1) {
            snprintf(buf, cap, "%s must be >= 1, got %d", f[i].what, f[i].v);
            return buf;
        }
    if (s->R < s->E)
        snprintf(buf, cap, "rule R >= E broken: R = %d physical slots cannot hold E = %d logical experts",
                 s->R, s->E);
    else if (s->R % s->G != 0)
        snprintf(buf, cap, "rule R %% G == 0 broken: R = %d physical slots do not split evenly over G = %d ranks",
                 s->R, s->G);
    else if (s->E % s->Ng != 0)
        snprintf(buf, cap, "rule E %% Ng == 0 broken: E = %d experts do not split into Ng = %d equal groups",
                 s->E, s->Ng);
    else if (s->G % s->Nn != 0)
        snprintf(buf, cap, "rule G %% Nn == 0 broken: G = %d ranks do not split evenly over Nn = %d nodes",
                 s->G, s->Nn);
    else
        return NULL;
    return buf;
}

const char *eplb_load_error(const double *load, int L, int E, char *buf, size_t cap) {
    long i = first_bad(load, (long)L * E);
    if (i < 0) return NULL;
    snprintf(buf, cap, "load of layer %ld, expert %ld is %g: loads must be finite and >= 0", i / E, i % E,
             load[i]);
    return buf;
}

size_t eplb_pack_work_bytes(int n, int m) {
    return (size_t)m * sizeof(double) + (2 * (size_t)m + 2 * (size_t)n) * sizeof(int);
}

// A binary heap of indices whose top comes first under `before`. The packing and the replication
// choose from it in O(log) instead of scanning every pack or item each time (the scans took hours on
// the largest plans `moelab eplb` accepts: review, 2026-12-05); `before` orders by value, then index,
// as the scans did, so the choices are the same.
typedef int (*HeapBefore)(const void *ctx, int a, int b);

static void heap_down(int *h, int size, int pos, HeapBefore before, const void *ctx) {
    for (;;) {
        int top = pos, l = 2 * pos + 1, r = l + 1;
        if (l < size && before(ctx, h[l], h[top])) top = l;
        if (r < size && before(ctx, h[r], h[top])) top = r;
        if (top == pos) return;
        int t = h[pos]; h[pos] = h[top]; h[top] = t;
        pos = top;
    }
}

// Makes h (size) a heap.
static void heap_make(int *h, int size, HeapBefore before, const void *ctx) {
    for (int i = size / 2 - 1; i >= 0; i--) heap_down(h, size, i, before, ctx);
}

// The lighter pack first; equally light: the lower index. ctx: the packs' totals.
static int pack_before(const void *ctx, int a, int b) {
    const double *t = ctx;
    return t[a] < t[b] || (t[a] == t[b] && a < b);
}

typedef struct {
    const double *w;
    const int *count;
} ReplicaOrder;

// The larger load per copy first; equal: the lower index.
static int replica_before(const void *ctx, int a, int b) {
    const ReplicaOrder *o = ctx;
    const double va = o->w[a] / o->count[a], vb = o->w[b] / o->count[b];
    return va > vb || (va == vb && a < b);
}

// Sorts idx (n) by descending w, equal weights keeping their current order. A stable bottom-up merge
// sort because the tie rule needs stability (qsort gives none) and planning must not allocate
// (glibc's qsort may). tmp (n) is scratch.
static void sort_desc_stable(int *idx, int *tmp, const double *w, int n) {
    int *src = idx, *dst = tmp;
    for (int width = 1; width < n; width *= 2) {
        for (int lo = 0; lo < n; lo += 2 * width) {
            int mid = lo + width < n ? lo + width : n;
            int hi = lo + 2 * width < n ? lo + 2 * width : n;
            int a = lo, b = mid, k = lo;
            // Strictly heavier on the right goes first; on equal weights the left run wins.
            while (a < mid && b < hi) dst[k++] = w[src[b]] > w[src[a]] ? src[b++] : src[a++];
            while (a < mid) dst[k++] = src[a++];
            while (b < hi) dst[k++] = src[b++];
        }
        int *t = src; src = dst; dst = t;
    }
    if (src != idx) memcpy(idx, src, (size_t)n * sizeof(int));
}

void eplb_pack(const double *w, int n, int m, int *pack_of, int *rank_in_pack, void *work) {
    CHECK(n >= 1 && m >= 1 && n % m == 0, "eplb_pack: %d items cannot fill %d packs equally", n, m);
    long bad = first_bad(w, n);
    CHECK(bad < 0, "eplb_pack: weight %ld is %g, weights must be finite and >= 0", bad, bad < 0 ? 0 : w[bad]);
    int per = n / m;
    if (per == 1) {
        for (int i = 0; i < n; i++) pack_of[i] = i, rank_in_pack[i] = 0;
        return;
    }
    double *total = work;            // (m) running weight of each pack
    int *cnt = (int *)(total + m);   // (m) items in each pack so far
    int *order = cnt + m;            // (n) visiting order
    int *tmp = order + n;            // (n) sort scratch
    int *heap = tmp + n;             // (m) the packs with room, lightest on top
    for (int j = 0; j < m; j++) total[j] = 0, cnt[j] = 0, heap[j] = j;
    for (int i = 0; i < n; i++) order[i] = i;
    sort_desc_stable(order, tmp, w, n);
    int open = m;
    heap_make(heap, open, pack_before, total);
    for (int k = 0; k < n; k++) {
        const int i = order[k], best = heap[0];
        pack_of[i] = best;
        rank_in_pack[i] = cnt[best]++;
        total[best] += w[i];
        // A full pack leaves the heap; the others only got heavier: back down from the top.
        if (cnt[best] == per) heap[0] = heap[--open];
        heap_down(heap, open, 0, pack_before, total);
    }
}

void eplb_replicate(const double *w, int n, int r, int *phy2item, int *rank, int *count, int *heap) {
    CHECK(n >= 1 && r >= n, "eplb_replicate: %d slots cannot hold %d items", r, n);
    long bad = first_bad(w, n);
    CHECK(bad < 0, "eplb_replicate: weight %ld is %g, weights must be finite and >= 0", bad,
          bad < 0 ? 0 : w[bad]);
    for (int i = 0; i < n; i++) phy2item[i] = i, rank[i] = 0, count[i] = 1, heap[i] = i;
    const ReplicaOrder ro = {w, count};
    heap_make(heap, n, replica_before, &ro);
    for (int p = n; p < r; p++) {
        const int best = heap[0];
        phy2item[p] = best;
        rank[p] = count[best]++;
        heap_down(heap, n, 0, replica_before, &ro);  // its load per copy fell
    }
}

EplbPlan *eplb_plan_create(const EplbShape *s) {
    char msg[256];
    if (eplb_shape_error(s, msg, sizeof msg)) core_usage_error("eplb: %s", msg);
    EplbPlan *p = core_alloc(sizeof *p);
    p->shape = *s;
    p->hierarchical = s->Ng % s->Nn == 0;  // else the global policy
    int L = s->L, E = s->E, R = s->R;
    // The global policy runs the same steps with one group on one node.
    int Ng = p->hierarchical ? s->Ng : 1, Nn = p->hierarchical ? s->Nn : 1;
    int Rn = R / Nn, Gn = s->G / Nn;
    p->phy2log = core_alloc((size_t)L * R * sizeof(int));
    p->phyrank = core_alloc((size_t)L * R * sizeof(int));
    p->logcnt = core_alloc((size_t)L * E * sizeof(int));
    // Room for the largest stride, R - E + 1 (all replicas on one expert); a plan writes only its
    // first L·E·maxcnt entries (eplb_plan_run), so the rest is left untouched, never zero-filled:
    // that fill was 16.8 GB of memory for a 16 MB plan (review, 2026-12-05).
    p->log2phy = core_alloc_uninit((size_t)L * E * (size_t)(R - E + 1) * sizeof(int));
    struct EplbScratch *w = core_alloc(sizeof *w);
    w->gload = core_alloc((size_t)Ng * sizeof(double));
    w->gnode = core_alloc((size_t)Ng * sizeof(int));
    w->grank = core_alloc((size_t)Ng * sizeof(int));
    w->log2mlog = core_alloc((size_t)E * sizeof(int));
    w->mlog2log = core_alloc((size_t)E * sizeof(int));
    w->mload = core_alloc((size_t)E * sizeof(double));
    w->item = core_alloc((size_t)Rn * sizeof(int));
    w->irank = core_alloc((size_t)Rn * sizeof(int));
    w->cnt = core_alloc((size_t)(E / Nn) * sizeof(int));
    w->heap = core_alloc((size_t)(E / Nn) * sizeof(int));
    w->rw = core_alloc((size_t)Rn * sizeof(double));
    w->rpack = core_alloc((size_t)Rn * sizeof(int));
    w->rrip = core_alloc((size_t)Rn * sizeof(int));
    size_t a = eplb_pack_work_bytes(Ng, Nn), b = eplb_pack_work_bytes(Rn, Gn);
    w->pack_work = core_alloc(a > b ? a : b);
    p->scratch = w;
    return p;
}

void eplb_plan_free(EplbPlan *p) {
    if (!p) return;
    struct EplbScratch *w = p->scratch;
    core_free(w->gload); core_free(w->gnode); core_free(w->grank);
    core_free(w->log2mlog); core_free(w->mlog2log); core_free(w->mload);
    core_free(w->item); core_free(w->irank); core_free(w->cnt); core_free(w->heap);
    core_free(w->rw); core_free(w->rpack); core_free(w->rrip); core_free(w->pack_work);
    core_free(w);
    core_free(p->phy2log); core_free(p->phyrank); core_free(p->logcnt); core_free(p->log2phy);
    core_free(p);
}

// Steps 1–3 of §6 and the mapping back of step 4 for one layer: load (E) → phy2log (R), phyrank (R),
// logcnt (E).
static void plan_layer(const EplbPlan *p, const double *load, int *phy2log, int *phyrank, int *logcnt) {
    struct EplbScratch *w = p->scratch;
    int E = p->shape.E, R = p->shape.R, G = p->shape.G;
    int Ng = p->hierarchical ? p->shape.Ng : 1, Nn = p->hierarchical ? p->shape.Nn : 1;
    int gsize = E / Ng, gpn = Ng / Nn, En = E / Nn, Rn = R / Nn, Gn = G / Nn, Rg = R / G;

    // (1) Pack contiguous groups onto nodes by summed load, then renumber so that node k owns the
    // block [k·En, (k+1)·En): group g at offset o becomes (node(g)·gpn + rank(g))·gsize + o.
    for (int g = 0; g < Ng; g++) {
        double sum = 0;
        for (int o = 0; o < gsize; o++) sum += load[g * gsize + o];
        w->gload[g] = sum;
    }
    eplb_pack(w->gload, Ng, Nn, w->gnode, w->grank, w->pack_work);
    for (int g = 0; g < Ng; g++)
        for (int o = 0; o < gsize; o++) {
            int e = g * gsize + o, m = (w->gnode[g] * gpn + w->grank[g]) * gsize + o;
            w->log2mlog[e] = m;
            w->mlog2log[m] = e;
            w->mload[m] = load[e];
        }

    for (int k = 0; k < Nn; k++) {
        const double *nload = w->mload + (size_t)k * En;  // (En) this node's experts
        // (2) Replicate the node's En experts onto its Rn slots.
        eplb_replicate(nload, En, Rn, w->item, w->irank, w->cnt, w->heap);
        // (3) Pack the node's replicas, each carrying an equal share of its expert's load, onto the
        // node's Gn ranks, Rg slots each.
        for (int j = 0; j < Rn; j++) w->rw[j] = nload[w->item[j]] / w->cnt[w->item[j]];
        eplb_pack(w->rw, Rn, Gn, w->rpack, w->rrip, w->pack_work);
        // (4) Global slot of each replica, and back from renumbered to logical expert ids.
        for (int j = 0; j < Rn; j++) {
            int slot = k * Rn + w->rpack[j] * Rg + w->rrip[j];
            phy2log[slot] = w->mlog2log[k * En + w->item[j]];
            phyrank[slot] = w->irank[j];
        }
        for (int i = 0; i < En; i++) logcnt[w->mlog2log[k * En + i]] = w->cnt[i];
    }
}

void eplb_plan_run(EplbPlan *p, const double *load) {
    const EplbShape *s = &p->shape;
    int L = s->L, E = s->E, R = s->R;
    char msg[256];
    if (eplb_load_error(load, L, E, msg, sizeof msg)) core_usage_error("eplb: %s", msg);
    int maxcnt = 1;
    for (int l = 0; l < L; l++) {
        int *cnt = p->logcnt + (size_t)l * E;
        plan_layer(p, load + (size_t)l * E, p->phy2log + (size_t)l * R, p->phyrank + (size_t)l * R, cnt);
        for (int e = 0; e < E; e++)
            if (cnt[e] > maxcnt) maxcnt = cnt[e];
    }
    // log2phy needs the stride maxcnt over all layers, so it is filled once every layer is planned.
    p->maxcnt = maxcnt;
    size_t n = (size_t)L * E * maxcnt;
    for (size_t i = 0; i < n; i++) p->log2phy[i] = -1;
    for (int l = 0; l < L; l++)
        for (int q = 0; q < R; q++) {
            size_t at = (size_t)l * R + q;
            p->log2phy[((size_t)l * E + p->phy2log[at]) * maxcnt + p->phyrank[at]] = q;
        }
}

double eplb_rank_imbalance(const double *load, int E, const int *phy2log, const int *logcnt, int R,
                           int G) {
    CHECK(G >= 1 && R >= 1 && R % G == 0, "eplb_rank_imbalance: %d slots do not split evenly over %d ranks",
          R, G);
    CHECK(phy2log ? logcnt != NULL : (logcnt == NULL && R == E),
          "eplb_rank_imbalance: give phy2log with logcnt, or neither for the identity placement (R == E)");
    int per = R / G;
    double total = 0, maxl = 0;
    for (int q = 0; q < G; q++) {
        double sum = 0;
        for (int s = q * per; s < (q + 1) * per; s++) {
            int e = phy2log ? phy2log[s] : s;
            sum += load[e] / (logcnt ? logcnt[e] : 1);
        }
        total += sum;
        if (sum > maxl) maxl = sum;
    }
    return total > 0 ? maxl * G / total : 1.0;
}
