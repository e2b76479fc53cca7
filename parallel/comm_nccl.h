// The NCCL backend of the communicator API (parallel/comm.h) for buffers in GPU memory: an NCCL
// communicator over the same processes as a host (MPI) communicator, bootstrapped over it, with its
// own CUDA stream. Built under --config=cuda (comm_nccl.c); the CPU build links comm_nccl_stub.c,
// whose calls are one clear usage error. See docs/parallel.md.
#ifndef MOELAB_PARALLEL_COMM_NCCL_H
#define MOELAB_PARALLEL_COMM_NCCL_H

#include "parallel/comm.h"

#ifdef __cplusplus
extern "C" {
#endif

// A communicator with host's processes, ranks and size whose operations take device buffers of
// this process's GPU (core_cuda_init first). Collective over host: rank 0 makes the ncclUniqueId
// and a timed all-gather over host hands it out. Unlike the MPI backend it also serves a group of
// one process (the front end's shortcuts copy host memory, which a device buffer is not). Free it
// with comm_free.
//
// Each operation first makes its stream wait for the work queued so far on the compute stream
// (core_cuda_stream: the producers of its buffers), enqueues the NCCL call, and returns once the
// call has completed: it polls ncclCommGetAsyncError and the stream against comm_timeout(), and on
// expiry aborts the NCCL communicator and ends every rank with the MPI backend's message
// ("<op> on group <name> timed out after Ns"). A non-blocking operation (comm_isend, comm_i*
// collectives) returns once NCCL has queued it, with an event after it on the
// communicator's stream as its request: comm_wait polls that event the same way, and the compute
// stream's later kernels overlap the transfer. The communicators are non-blocking (NCCL's
// config.blocking = 0), so neither their set-up nor a first connection to a missing peer can hang
// the host. Point-to-point calls ignore tags: NCCL matches a pair's transfers in issue order.
// comm_split of an NCCL communicator uses ncclCommSplit; a one-process result of it has no backend
// (host copies only), so make device groups with comm_nccl_create instead.
Comm *comm_nccl_create(Comm *host, const char *name);

#ifdef __cplusplus
}
#endif
#endif
