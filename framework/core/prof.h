// Time by layer type for `moelab bench`: the model marks where each kind of work starts
// (prof_mark(PROF_ATTN) before the attention block, ...), and every interval between two marks
// counts for the region the first one named. Off unless prof_start ran, so a mark costs a call
// and a test; on the GPU a mark records a CUDA event on the compute stream (GPU time, not the
// host's launch time), on the CPU it reads the wall clock.
#ifndef MOELAB_CORE_PROF_H
#define MOELAB_CORE_PROF_H

#ifdef __cplusplus
extern "C" {
#endif

typedef enum {
    PROF_OTHER,     // everything not marked: data upload, gradient clipping, bookkeeping
    PROF_EMBED,     // token embedding, forward and weight gradient
    PROF_ATTN,      // q/k/v/out projections, RoPE, attention, the residual add
    PROF_NORM,      // RMSNorms
    PROF_FFN,       // dense SwiGLU feed-forward
    PROF_ROUTER,    // router logits, scores, top-k, balance loss, and their backward
    PROF_DISPATCH,  // plan and permute rows to the experts, and back
    PROF_EXPERTS,   // routed and shared expert SwiGLUs
    PROF_COMBINE,   // the gate-weighted sum of the expert outputs, and its backward
    PROF_HEAD,      // final norm, LM head, cross-entropy
    PROF_OPTIM,     // AdamW
    PROF_N
} ProfRegion;

// From now on the time counts for r (no-op unless started).
void prof_mark(ProfRegion r);
// Starts counting in PROF_OTHER; gpu: time with CUDA events on core_cuda's stream.
void prof_start(int gpu);
// Stops and adds each region's milliseconds since prof_start to ms[PROF_N] (waits for the GPU).
void prof_stop(double ms[PROF_N]);
const char *prof_name(ProfRegion r);
// 1 between prof_start and prof_stop (a CUDA graph of the step would take no marks: the training
// step runs eagerly then).
int prof_active(void);

#ifdef __cplusplus
}
#endif
#endif
