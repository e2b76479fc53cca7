// The expert-parallel MoE dispatcher (the layers/moe.h interface over an EP communicator,
// docs/architecture.md §4, docs/parallel.md §4): each (token, choice) pair travels to the rank
// holding its expert's physical slot in one all-to-all-v per direction (rows packed by peer), is
// grouped by local slot for the grouped expert GEMMs by one permute pass on arrival, and comes back
// the same way. Which logical expert each physical slot holds is a table (the default is
// the identity block: slot s of EP rank r holds expert r·E/EP + s), so EPLB can swap in replicas.
#ifndef MOELAB_PARALLEL_EP_DISPATCH_H
#define MOELAB_PARALLEL_EP_DISPATCH_H

#include "layers/moe.h"
#include "parallel/comm.h"

#ifdef __cplusplus
extern "C" {
#endif

// A dispatcher over ep (not owned; it must outlive the dispatcher) for E logical experts with the
// identity placement: n_local = E / ep->size slots per rank. Every call of the returned dispatcher is
// collective over ep: all its ranks plan, dispatch and combine the same layers in the same order.
MoeDispatcher *ep_dispatcher_create(Comm *ep, int E);

// Whether the exchanges may stay in flight while the layer computes (to_experts_start,
// from_experts_start and finish: the default), so that the dispatch all-to-all overlaps the shared
// experts and, with token chunks, one chunk's exchanges overlap another's expert GEMMs; or each
// runs to its end first (on = 0, config key ep_overlap = 0, to measure the gain). The results are
// bit-identical either way.
void ep_dispatcher_set_overlap(MoeDispatcher *d, int on);

// Token chunks per micro-batch in the MoE layer (moe.h's MoeDispatcher.chunks; config key
// ep_chunks, 1..EP_CHUNKS_MAX, default 1): each chunk has its own plan and row exchanges, so that
// chunk c's combine travels while chunk c+1's experts compute. docs/parallel.md says when it pays.
#define EP_CHUNKS_MAX 8
void ep_dispatcher_set_chunks(MoeDispatcher *d, int chunks);

// The EPLB hook: the EP group's R physical slots (R % ep->size == 0; slot p lives on EP rank
// p / (R / ep->size), local slot p % (R / ep->size)) hold the logical experts phy2log (R); every
// expert needs at least one slot. n_local becomes R / ep->size from the next plan on. A pair routed
// to an expert with c replicas goes to replica (j + ep_rank) mod c, j counting this rank's pairs
// routed to that expert in (token, choice) order: deterministic, and balanced to within one pair
// per rank. The slots' weights are the caller's business (replicas must hold identical weights).
void ep_dispatcher_set_placement(MoeDispatcher *d, const int *phy2log, int R);

// Moves the dispatcher's rows to a GPU backend: from the next plan on, routings, rows and their
// permutes live in ops' memory and the rows travel over ep_dev, the NCCL twin of the dispatcher's
// group (parallel/comm_nccl.h; not owned). The plan is made on the device, the slot counts cross
// over ep_dev too, then the counts sent and received come to the host in one copy, and the
// receive permute's block offsets go back in one upload.
void ep_dispatcher_to_device(MoeDispatcher *d, Comm *ep_dev, const struct LayerOps *ops);

#ifdef __cplusplus
}
#endif
#endif
