// Device name → backend table (see backend.h). The CUDA tables exist only in a --config=cuda build
// (MOELAB_CUDA); elsewhere core_device_select names the missing backend.
#include "framework/backend.h"

#include <string.h>
#include <unistd.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "framework/core/check.h"
#include "framework/core/log.h"
#ifdef MOELAB_CUDA
#include "layers/attention_cudnn_cuda.h"
#include "layers/gemm_sm90_cuda.h"
#include "layers/linear_cuda.h"
#include "layers/moe_cuda.h"
#include "layers/ops_cuda.h"
#include "layers/rmsnorm_cuda.h"
#include "layers/router_cuda.h"
#endif

const LayerOps *backend_ops(const char *device) { return backend_ops_on(device, 0); }

const LayerOps *backend_ops_on(const char *device, int gpu) {
    if (!strcmp(device, "cpu")) return &layer_ops_cpu;
    const int fp32 = !strcmp(device, "cuda-fp32");
    if (!fp32 && strcmp(device, "cuda") != 0)
        core_usage_error("--device %s: expected cpu, cuda (bf16 compute) or cuda-fp32", device);
#ifdef MOELAB_CUDA
    core_device_select("cuda", gpu);
    return layer_ops_cuda(fp32 ? CORE_F32 : CORE_BF16);
#else
    (void)gpu;
    core_usage_error("--device %s: this build has no CUDA backend: rebuild with --config=cuda", device);
#endif
}

const LayerOps *backend_ops_f32(const LayerOps *ops) {
    if (ops->dt == CORE_F32) return ops;
#ifdef MOELAB_CUDA
    if (ops->dev == CORE_CUDA) return layer_ops_cuda(CORE_F32);
#endif
    core_fatal_at(__FILE__, __LINE__, CORE_EXIT_FAILURE, "backend_ops_f32: no fp32 table for %s", ops->name);
}

// OpenMP threads per rank: --threads, or else OpenMP's (OMP_NUM_THREADS, or every core this process
// may use). Under mpirun the ranks of one host share its cores; where their affinity does not part them
// (--oversubscribe binds no rank), the default would run ranks x cores threads on the cores, six
// times slower seen with 4 ranks on 2 cores: each rank then takes its share.
static void set_threads(const MoeConfig *c, int n_local) {
#ifdef _OPENMP
    if (c->threads > 0) {
        omp_set_num_threads(c->threads);
        return;
    }
    const int avail = omp_get_num_procs(), online = (int)sysconf(_SC_NPROCESSORS_ONLN);
    // A number chosen outside (OMP_NUM_THREADS) shows as another maximum than the cores': left alone.
    if (n_local > 1 && online > 0 && avail * n_local > online && omp_get_max_threads() == avail) {
        int n = online / n_local > 1 ? online / n_local : 1;
        if (n > avail) n = avail;
        omp_set_num_threads(n);
        core_info0("threads: %d OpenMP thread%s a rank (%d ranks share this host's %d cores; --threads N "
                   "sets another number)", n, n == 1 ? "" : "s", n_local, online);
    }
#else
    (void)c;
    (void)n_local;
#endif
}

// The shapes the GPU's kernels take, checked before anything is loaded or allocated: past them a
// run failed at its first step (exit 1) after its setup, for a config that is the user's to fix.
static void check_gpu_shapes(const MoeConfig *c) {
#ifdef MOELAB_CUDA
    if (!strcmp(c->device, "cpu")) return;
    const int hd = c->D / c->H, slots = c->E + c->eplb_redundant;
    if (hd != 16 && hd != 32 && hd != 64 && hd != 128)
        core_usage_error("--device %s: the GPU's attention takes head sizes 16, 32, 64 and 128, and "
                         "d_model / n_heads = %d / %d = %d (the CPU takes any even size)", c->device, c->D, c->H, hd);
    if (c->E > router_cuda_max_experts() || slots > moe_cuda_max_experts())
        core_usage_error("--device %s: the GPU's router takes at most %d experts and its dispatch plan %d "
                         "slots (n_experts + eplb_redundant); this model has %d and %d", c->device,
                         router_cuda_max_experts(), moe_cuda_max_experts(), c->E, slots);
    // (It failed in the first backward, exit 1: review, 2026-12-06.)
    if (c->D > rmsnorm_cuda_max_d())
        core_usage_error("--device %s: the GPU's RMSNorm backward takes d_model up to %d (a row per warp in "
                         "this GPU's shared memory), and d_model is %d", c->device, rmsnorm_cuda_max_d(), c->D);
#else
    (void)c;
#endif
}

void backend_configure(const MoeConfig *c, int n_local) {
    set_threads(c, n_local);
    check_gpu_shapes(c);
#ifdef MOELAB_CUDA
    // The config's names for the modes of layers/linear_cuda.h (config_set checked the name).
    static const struct { const char *name; int mode; } modes[] = {
        {"cutlass", LINEAR_GROUPED_CUTLASS}, {"grouped", LINEAR_GROUPED_CUBLAS},
        {"streams", LINEAR_GROUPED_STREAMS}, {"loop", LINEAR_GROUPED_LOOP}};
    int mode = -1;
    for (size_t i = 0; i < sizeof modes / sizeof *modes; i++)
        if (!strcmp(c->expert_gemm, modes[i].name)) mode = modes[i].mode;
    CHECK(mode >= 0, "backend: unknown expert_gemm '%s'", c->expert_gemm);
    linear_cuda_set_grouped_mode(mode);
    linear_cuda_set_gemm_streams(c->gemm_streams);
    attention_cudnn_set_deterministic(c->deterministic);
#else
    (void)c;
#endif
}

const char *backend_graph_blocker(const MoeConfig *c, const LayerOps *ops) {
    if (ops->dev != CORE_CUDA) return "not on a GPU";
#ifdef MOELAB_CUDA
    if (ops->dt != CORE_BF16) return "cuda-fp32 sizes its expert GEMMs on the host";
    // The routed experts' products: x (D) -> [W1; W3] (2 Fe), h (Fe) -> W2 (D), each way.
    if (linear_cuda_grouped_mode() != LINEAR_GROUPED_CUTLASS || !linear_cuda_cutlass_applies(ops->dt, ops->dt, c->D, 2 * c->Fe) ||
        !linear_cuda_cutlass_applies(ops->dt, ops->dt, c->Fe, c->D))
        return "the expert GEMMs are not CUTLASS's Hopper kernels (expert_gemm, the GPU or the widths)";
    // The dense layers' FFN takes the same grouped path (one group); where CUTLASS does not take its
    // widths it falls to cuBLAS's grouped call, whose capture no test has run (review, 2026-12-06).
    if (c->n_dense_layers > 0 && (!linear_cuda_cutlass_applies(ops->dt, ops->dt, c->D, 2 * c->F) ||
                                  !linear_cuda_cutlass_applies(ops->dt, ops->dt, c->F, c->D)))
        return "the dense FFN's GEMMs are not CUTLASS's Hopper kernels (its width d_ff)";
    if (!gemm_sm90_device_counts_ok(GEMM_SM90_BACKWARD_WEIGHT, c->E)) return "too many experts for one launch";
    return NULL;
#else
    (void)c;
    return "a build without CUDA";
#endif
}
