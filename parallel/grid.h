// The process grid of docs/architecture.md §4: world = PP × DP pipeline stages by data-parallel ranks,
// with expert parallelism inside DP (DP = EP × EDP), and the communicators each parameter group
// needs. Layout (pp-major, EP groups contiguous):
//     rank = pp_rank · DP + dp_rank,   dp_rank = edp_rank · EP + ep_rank
// so the EP ranks that exchange tokens every layer are neighbours (the same node when ranks are
// packed by node), and the expert-data-parallel replicas of one expert are EP apart.
#ifndef MOELAB_PARALLEL_GRID_H
#define MOELAB_PARALLEL_GRID_H

#include "parallel/comm.h"

#ifdef __cplusplus
extern "C" {
#endif

struct LayerOps;

typedef struct Grid {
    int world, rank;          // processes in the job and this one's rank in it
    int pp, dp, ep, edp;      // sizes: world = pp · dp, dp = ep · edp
    int pp_rank, dp_rank, ep_rank, edp_rank;
    Comm *world_comm;         // all processes (not owned)
    Comm *dp_comm;            // the DP ranks of this pipeline stage: dense gradients, losses, counts
    Comm *ep_comm;            // this EP group: token dispatch and combine
    Comm *edp_comm;           // same stage and EP rank in every EP group: expert gradients
    Comm *pp_comm;            // the stages of this data-parallel rank: activations, global norm
    // On GPUs (grid_to_device): NCCL twins of dp, ep and edp for device buffers, and the backend
    // whose memory the gradients and token rows live in. NULL on the CPU.
    Comm *dp_dev, *ep_dev, *edp_dev;
    const struct LayerOps *ops;
} Grid;

// Checks world % pp, DP % ep and E % ep on every rank before any communication (a usage error,
// exit 2, naming the rule and the fix), then splits the four communicators (collective over world).
Grid *grid_create(Comm *world, int pp, int ep, int E);
void grid_free(Grid *g);
// The rank of this process among the processes of its host (collective over world): the GPU it
// uses, one process per GPU. *n_local (if not NULL) gets how many processes share the host.
int grid_local_rank(Comm *world, int *n_local);
// The lowest world rank on this process's host (collective over world): one id per machine.
int grid_host_first(Comm *world);
// Makes the NCCL twins of the dp, ep and edp groups (collective over world; GPU runs, after
// core_cuda_init) and records ops, the device backend: dp_sync then works on device gradients.
void grid_to_device(Grid *g, const struct LayerOps *ops);
// Logs the layout on rank 0: sizes, experts (E, in R slots) per rank, and the ranks of every EP group.
void grid_log(const Grid *g, int E, int R);

#ifdef __cplusplus
}
#endif
#endif
