// Failure-mode driver for the multi-rank tests (run under mpirun by failure_test.sh):
//   comm_driver hang SECONDS     rank 0 waits in a barrier the others never join (they wait for a
//                                message rank 0 never sends): every rank must end with a timeout;
//                                rank 0 waits twice as long, so the receivers' message, naming
//                                their peer, comes first
//   comm_driver stall SECONDS    the last rank never joins the EP dispatcher's row exchange (an
//                                all-to-all-v with uneven counts) that the others enter: a peer
//                                that hangs where mpirun cannot see it; every rank must end with a
//                                timeout naming the operation and the group
//   comm_driver grid PP EP E     builds the process grid: a bad layout must end every rank with exit 2
//   comm_driver b16sum           all-reduces 16-bit words, which are only moved: every rank must end
//                                with the message
//   comm_driver badexpert        the EP dispatcher plans a routing in which rank 1 alone names an
//                                expert outside [0, E): rank 1 names the fault, and every rank ends
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "framework/core/check.h"
#include "framework/core/log.h"
#include "layers/moe.h"
#include "parallel/comm.h"
#include "parallel/ep_dispatch.h"
#include "parallel/grid.h"

int main(int argc, char **argv) {
    comm_init(&argc, &argv);
    Comm *w = comm_world();
    if (argc == 3 && !strcmp(argv[1], "hang")) {
        comm_set_timeout(atof(argv[2]) * (w->rank == 0 ? 2 : 1));
        if (w->rank == 0) {
            comm_barrier(w);
        } else {
            int x;
            comm_recv(w, &x, 1, COMM_I32, 0, 1);
        }
        core_info("unreachable: the unmatched operations completed");
    } else if (argc == 3 && !strcmp(argv[1], "stall")) {
        comm_set_timeout(atof(argv[2]));
        if (w->rank == w->size - 1) {
            sleep(60);  // ended by the others' MPI_Abort long before
        } else {
            // Rank r sends r + j + 1 floats to rank j and receives j + r + 1 from it.
            size_t sc[64], rc[64], ns = 0, nr = 0;
            CHECK(w->size <= 64, "comm_driver: at most 64 ranks");
            for (int j = 0; j < w->size; j++) {
                sc[j] = rc[j] = (size_t)(w->rank + j + 1);
                ns += sc[j];
                nr += rc[j];
            }
            float *send = calloc(ns, sizeof(float)), *recv = calloc(nr, sizeof(float));
            comm_alltoallv(w, send, sc, recv, rc, COMM_F32);
            free(send);
            free(recv);
        }
        core_info("unreachable: the all-to-all-v completed without its last rank");
    } else if (argc == 5 && !strcmp(argv[1], "grid")) {
        Grid *g = grid_create(w, atoi(argv[2]), atoi(argv[3]), atoi(argv[4]));
        grid_log(g, atoi(argv[4]), atoi(argv[4]));
        grid_free(g);
    } else if (argc == 2 && !strcmp(argv[1], "b16sum")) {
        unsigned short x = 1;
        comm_allreduce(w, &x, 1, COMM_B16, COMM_SUM);
        core_info("unreachable: 16-bit words were summed");
    } else if (argc == 2 && !strcmp(argv[1], "badexpert")) {
        const int E = 2 * w->size, N = 4, K = 1;
        int idx[4] = {0, 1, E - 1, w->rank == 1 ? E : 0}, counts[2], n_rows;
        MoeDispatcher *d = ep_dispatcher_create(w, E);
        MoeDispatchPlan *p = d->plan(d, idx, N, K, &n_rows, counts);
        // Rank 1 has ended the job by now; the others may get this far before MPI_Abort reaches them.
        d->release(d, p);
        d->destroy(d);
        comm_barrier(w);
        core_info("unreachable: a routing to expert %d was planned", E);
    } else {
        core_usage_error("usage: comm_driver hang SECONDS | stall SECONDS | grid PP EP E | b16sum | badexpert");
    }
    comm_finalize();
    return 0;
}
