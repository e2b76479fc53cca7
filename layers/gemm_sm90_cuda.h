// Hopper grouped GEMMs for the experts (layers/gemm_sm90.cu): CUTLASS 3.x persistent kernels with
// TMA loads and wgmma, one launch for all experts, their problem sizes and pointers written on the
// device. bf16 operands, fp32 accumulation. Built for sm_90a only: gemm_sm90_available() says
// whether this process may call them (compute capability 9.0); elsewhere linear.cu keeps cuBLAS.
#ifndef MOELAB_LAYERS_GEMM_SM90_CUDA_H
#define MOELAB_LAYERS_GEMM_SM90_CUDA_H

#ifdef __cplusplus
extern "C" {
#endif

// The three products of linear_cuda.h's grouped calls, on rows [o_e, o_e + counts[e]) of expert e:
//   GEMM_SM90_FORWARD          y (n_e, OC) bf16    = a (n_e, IC) · b_e (OC, IC)ᵀ      (a: inp, b: W)
//   GEMM_SM90_BACKWARD_INPUT   y (n_e, IC) bf16   += a (n_e, OC) · b_e (OC, IC)       (a: dout, b: W)
//   GEMM_SM90_BACKWARD_WEIGHT  y_e (OC, IC) fp32  += a (n_e, OC)ᵀ · b (n_e, IC)       (a: dout, b: inp)
// (the backward products: = with acc 0, y written without being read)
typedef enum { GEMM_SM90_FORWARD, GEMM_SM90_BACKWARD_INPUT, GEMM_SM90_BACKWARD_WEIGHT } GemmSm90Kind;

// 1 when the current device is compute capability 9.0 (the sm_90a code runs there and only there).
int gemm_sm90_available(void);
// 1 when the shapes suit the kernels: IC and OC multiples of 8 (16-byte rows for TMA).
int gemm_sm90_shapes_ok(int IC, int OC);
// Runs the product kind for G groups in one launch (per GEMM_SM90_MAX_GROUPS groups) on the current
// stream. counts (G) are on the host; or, where gemm_sm90_device_counts_ok, counts is NULL and
// dcounts (G) on the device, written by work queued before: nothing waits for them. A group without
// rows is left out (its dW untouched). acc matters for the backward products only (the forward
// always overwrites).
void gemm_sm90_grouped(GemmSm90Kind kind, void *y, const void *a, const void *b, const int *counts,
                       const int *dcounts, int G, int IC, int OC, int acc);
// 1 when the product kind for G groups may take its counts on the device only: any product of at
// most GEMM_SM90_MAX_GROUPS groups (one launch). A weight gradient so sized runs on a fixed grid
// (with host counts it chooses the grid from them: layers/gemm_sm90.cu's grid_factor).
int gemm_sm90_device_counts_ok(GemmSm90Kind kind, int G);

enum { GEMM_SM90_MAX_GROUPS = 512 };

// The direction of the tiles' clusters of 2 (ping-pong 128 × 128 tiles): GEMM_SM90_PAIRS_BEST (the
// default: along N where that pads fewer tiles, layers/gemm_sm90.cu's cluster_along_n) or forced
// along M. For kernel_bench's comparison and the GPU tests, which run both; not for the trainer.
enum { GEMM_SM90_PAIRS_BEST = 0, GEMM_SM90_PAIRS_M = 1 };
void gemm_sm90_set_pairs(int pairs);
// CTAs per multiprocessor in the grid: 0 (the default) chooses per launch (layers/gemm_sm90.cu's
// grid_factor: 1, or up to 4 for a weight gradient of skewed counts), 1..GEMM_SM90_MAX_GRID_FACTOR
// forces it. For kernel_bench's sweep; not for the trainer.
enum { GEMM_SM90_MAX_GRID_FACTOR = 8 };
void gemm_sm90_set_grid_factor(int factor);
// The order in which the persistent kernel walks a group's output tiles: GEMM_SM90_RASTER_BEST (the
// default: along N for the forward and backward_input, along M for the weight gradient; see
// layers/gemm_sm90.cu's raster_along_n), or forced along M (consecutive tiles down a column of
// tiles, CUTLASS's default for grouped GEMMs) or along N (across a row of tiles). The order moves
// no bit of the results (each tile is summed the same way whichever CTA runs it). For kernel_bench
// and the GPU tests; not for the trainer.
enum { GEMM_SM90_RASTER_BEST = 0, GEMM_SM90_RASTER_M = 1, GEMM_SM90_RASTER_N = 2 };
void gemm_sm90_set_raster(int raster);

#ifdef __cplusplus
}
#endif
#endif
