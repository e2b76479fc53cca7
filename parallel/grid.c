// The process grid (see grid.h): layout checks, coordinates from the world rank, and the four
// sub-communicators split from the world.
#include "parallel/grid.h"

#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "framework/core/check.h"
#include "framework/core/log.h"
#include "framework/core/mem.h"
#include "parallel/comm_nccl.h"

Grid *grid_create(Comm *world, int pp, int ep, int E) {
    const int W = world->size;
    // Every rank reaches the same verdict from the same numbers, so every rank stops with the same
    // message before any communication has started.
    if (pp < 1 || ep < 1)
        core_usage_error("grid: --pp (%d) and --ep (%d) must be at least 1", pp, ep);
    if (W % pp != 0)
        core_usage_error("grid: %d processes cannot form %d pipeline stages: the process count must "
                         "be a multiple of --pp", W, pp);
    const int dp = W / pp;
    if (dp % ep != 0)
        core_usage_error("grid: %d data-parallel ranks per stage (%d processes / pp %d) cannot form "
                         "expert-parallel groups of --ep %d: start a multiple of %d processes",
                         dp, W, pp, ep, pp * ep);
    if (E % ep != 0)
        core_usage_error("grid: %d experts cannot be split evenly over --ep %d ranks: n_experts "
                         "must be divisible by ep", E, ep);
    Grid *g = core_alloc(sizeof *g);
    g->world = W;
    g->rank = world->rank;
    g->pp = pp;
    g->dp = dp;
    g->ep = ep;
    g->edp = dp / ep;
    g->pp_rank = g->rank / dp;
    g->dp_rank = g->rank % dp;
    g->ep_rank = g->dp_rank % ep;
    g->edp_rank = g->dp_rank / ep;
    g->world_comm = world;
    g->dp_comm = comm_split(world, g->pp_rank, g->dp_rank, "dp");
    g->ep_comm = comm_split(world, g->pp_rank * g->edp + g->edp_rank, g->ep_rank, "ep");
    g->edp_comm = comm_split(world, g->pp_rank * ep + g->ep_rank, g->edp_rank, "edp");
    g->pp_comm = comm_split(world, g->dp_rank, g->pp_rank, "pp");
    CHECK(g->dp_comm->size == dp && g->ep_comm->size == ep && g->edp_comm->size == g->edp &&
              g->pp_comm->size == pp && g->ep_comm->rank == g->ep_rank && g->dp_comm->rank == g->dp_rank,
          "grid: the split communicators disagree with the layout (dp %d/%d, ep %d/%d, edp %d/%d, pp %d/%d)",
          g->dp_comm->size, dp, g->ep_comm->size, ep, g->edp_comm->size, g->edp, g->pp_comm->size, pp);
    return g;
}

void grid_free(Grid *g) {
    if (!g) return;
    comm_free(g->dp_dev);
    comm_free(g->ep_dev);
    comm_free(g->edp_dev);
    comm_free(g->dp_comm);
    comm_free(g->ep_comm);
    comm_free(g->edp_comm);
    comm_free(g->pp_comm);
    core_free(g);
}

enum { HOST_MAX = 64 };  // bytes of a host name compared (as 16 int32 words)

// This process's host name into name, and every rank's (size, HOST_MAX), collective over world.
static char *host_names(Comm *world, char name[HOST_MAX]) {
    memset(name, 0, HOST_MAX);
    CHECK(gethostname(name, HOST_MAX - 1) == 0, "grid: gethostname failed");
    char *all = core_alloc((size_t)world->size * HOST_MAX);
    comm_allgather(world, name, all, HOST_MAX / 4, COMM_I32);
    return all;
}

int grid_local_rank(Comm *world, int *n_local) {
    char name[HOST_MAX];
    char *all = host_names(world, name);
    int local = 0, n = 0;
    for (int r = 0; r < world->size; r++) {
        const int same = memcmp(all + (size_t)r * HOST_MAX, name, HOST_MAX) == 0;
        local += same && r < world->rank;
        n += same;
    }
    core_free(all);
    if (n_local) *n_local = n;
    return local;
}

int grid_host_first(Comm *world) {
    char name[HOST_MAX];
    char *all = host_names(world, name);
    int r = 0;
    while (memcmp(all + (size_t)r * HOST_MAX, name, HOST_MAX) != 0) r++;
    core_free(all);
    return r;
}

void grid_to_device(Grid *g, const struct LayerOps *ops) {
    CHECK(!g->ops, "grid: the grid is on a device already");
    g->dp_dev = comm_nccl_create(g->dp_comm, "dp");
    g->ep_dev = comm_nccl_create(g->ep_comm, "ep");
    g->edp_dev = comm_nccl_create(g->edp_comm, "edp");
    g->ops = ops;
}

void grid_log(const Grid *g, int E, int R) {
    char experts[96];
    if (R > E)  // EPLB's redundant slots: each rank holds more slots than its share of the experts
        snprintf(experts, sizeof experts, "%d slots per rank (%d experts + %d redundant)", R / g->ep, E, R - E);
    else
        snprintf(experts, sizeof experts, "%d of %d experts per rank", E / g->ep, E);
    core_info0("grid: world %d = pp %d x dp %d, dp = ep %d x edp %d | %s | rank = pp_rank*%d + edp_rank*%d + ep_rank",
               g->world, g->pp, g->dp, g->ep, g->edp, experts, g->dp, g->ep);
    if (g->ep == 1) return;
    // The EP groups of stage 0 (the other stages repeat the pattern shifted by dp), at most 16.
    char line[512];
    int n = snprintf(line, sizeof line, "grid: ep groups of stage 0:");
    for (int e = 0; e < g->edp; e++) {
        if (e == 16) {
            snprintf(line + n, sizeof line - (size_t)n, " ... (%d groups)", g->edp);
            break;
        }
        n += snprintf(line + n, sizeof line - (size_t)n, " [%d..%d]", e * g->ep, e * g->ep + g->ep - 1);
    }
    core_info0("%s", line);
}
