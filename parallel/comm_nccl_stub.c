// The CPU build's stand-in for the NCCL backend (see comm_nccl.h): there is no GPU to serve, so
// asking for a device communicator is one clear usage error.
#include "parallel/comm_nccl.h"

#include "framework/core/check.h"

Comm *comm_nccl_create(Comm *host, const char *name) {
    core_usage_error("NCCL communicator '%s' (over group %s): this build has no CUDA backend: rebuild "
                     "with --config=cuda", name, host->name);
}
