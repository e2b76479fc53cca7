// The compute backend behind `--device`: the device name of a config to the layer-ops table
// (layers/ops.h) that the model, the MoE layer and the optimizer call through. "cpu" is the fp32
// CPU path; "cuda" is the GPU in bf16 compute with fp32 master weights, moments and reductions
// (docs/architecture.md §2); "cuda-fp32" is the GPU in fp32 end to end (exact comparison with the CPU).
#ifndef MOELAB_FRAMEWORK_BACKEND_H
#define MOELAB_FRAMEWORK_BACKEND_H

#include "framework/core/config.h"
#include "layers/ops.h"

#ifdef __cplusplus
extern "C" {
#endif

// The table for `device`, initializing GPU 0 on the first GPU request (one process per GPU). An
// unknown name, or a GPU in a build without --config=cuda, is a usage error (exit 2).
const LayerOps *backend_ops(const char *device);
// The same on GPU `gpu` (one process per GPU: under mpirun, the rank's GPU on its host).
const LayerOps *backend_ops_on(const char *device, int gpu);
// The fp32 table of ops' device (ops itself when its dt is fp32): for buffers that stay fp32 whatever
// the compute dtype, such as gradients, master weights and moments.
const LayerOps *backend_ops_f32(const LayerOps *ops);
// Applies c's backend keys to the process: threads (OpenMP threads of the CPU kernels; with 0, under
// mpirun, each of the n_local processes on this host takes its share of the cores), expert_gemm and
// gemm_streams (how the GPU runs the expert GEMMs), deterministic (cuDNN's attention backward
// algorithm). layers/ reads no config, so whoever runs a config calls this once its device is chosen.
void backend_configure(const MoeConfig *c, int n_local);
// NULL where ops can run a training step of c with no host wait, so that it can be captured as a
// CUDA graph: the GPU in bf16 with the expert GEMMs on CUTLASS's Hopper kernels, which size
// themselves from counts on the device (after backend_configure). Else why not, in a few words.
const char *backend_graph_blocker(const MoeConfig *c, const LayerOps *ops);

#ifdef __cplusplus
}
#endif
#endif
