// The CUDA backend's device plumbing: device selection (--device cpu|cuda), the CORE_CUDA
// allocator, the stream and cuBLAS handle every kernel of a host thread uses (the main thread's,
// or a side stream a worker thread makes its own), dtype conversion, and the check macros for
// CUDA and cuBLAS calls. A CPU build links cuda_stub.c instead: every call there is one
// clear error, so code that mentions no CUDA type compiles and links in both builds.
#ifndef MOELAB_CORE_CUDA_H
#define MOELAB_CORE_CUDA_H

#include <stddef.h>

#include "framework/core/mem.h"

#include "framework/core/check.h"

#ifdef __cplusplus
extern "C" {
#endif

// Element type of a GPU tensor. docs/architecture.md §2: activations and the compute copy of the
// weights may be bf16; master weights, optimizer state, weight gradients and per-row statistics
// (rstd, lse, losses) are always fp32.
typedef enum { CORE_F32 = 0, CORE_BF16 = 1 } CoreDtype;

// Bytes per element (CHECKs that dt is a known dtype).
static inline size_t core_dtype_size(CoreDtype dt) {
    CHECK(dt == CORE_F32 || dt == CORE_BF16, "unknown dtype %d", (int)dt);
    return dt == CORE_BF16 ? 2 : 4;
}

// 1 when this build has the CUDA backend and the process sees at least one GPU, else 0.
int core_cuda_available(void);
// Makes GPU `device` current, creates the stream and the cuBLAS handle, and registers the
// CORE_CUDA allocator (cudaMalloc + zero fill, cudaFree, cudaMemcpy both ways). Calling it again
// with the same device does nothing; another device is an error (one process per GPU).
void core_cuda_init(int device);
// The runtime choice of --device: "cpu" gives CORE_CPU; "cuda" initializes GPU `index` and gives
// CORE_CUDA; anything else (or "cuda" in a CPU build) is a usage error (exit 2).
CoreDevice core_device_select(const char *name, int index);

// The calling thread's current stream: every kernel, copy, stream-ordered allocation and cuBLAS
// call a thread issues runs on it. It is the main stream (made by core_cuda_init) unless the
// thread made a side stream current with core_cuda_use_stream.
void *core_cuda_stream(void);   // the cudaStream_t of the calling thread
void *core_cuda_cublas(void);   // its cublasHandle_t, bound to that stream
void core_cuda_sync(void);      // waits for that stream; a failed kernel is reported here

// A side stream with a cuBLAS handle of its own (one handle per stream keeps cuBLAS bit-identical
// to the main stream's: each handle has its own default workspace), for a worker thread that
// runs kernels while the main thread runs others (the pipeline's F&B overlap).
typedef struct CoreCudaStream CoreCudaStream;
CoreCudaStream *core_cuda_stream_create(void);
void core_cuda_stream_free(CoreCudaStream *s);  // waits for its work first
// Makes s the calling thread's current stream and handle (NULL: the main ones again), and the
// process's GPU the thread's current device (a new thread starts on device 0). A stream is
// current on at most one thread at a time.
void core_cuda_use_stream(CoreCudaStream *s);
// A pointer slot of the calling thread's current stream (the main one or a side stream), NULL
// until set: per-stream state of other modules (layers/linear.cu's GEMM side streams), so that two
// threads never share it. What it points to is kept for the process.
void **core_cuda_stream_state(void);

// Events on the calling thread's stream: create one (a cudaEvent_t, timed), record it at the
// stream's current position, make the stream wait for the work before an event's last record
// (orders two streams), and the milliseconds between two recorded events (waits for b; prof.c).
void *core_cuda_event_create(void);
void core_cuda_event_destroy(void *ev);
void core_cuda_event_record(void *ev);
void core_cuda_stream_wait(void *ev);
float core_cuda_event_ms(void *a, void *b);
// Opens (on = 1) or closes (0) a measurement window for a profiler attached to the process
// (cudaProfilerStart / Stop: nsys's capture range, tools/trace's windows); without one, nothing.
void core_cuda_profiler_window(int on);

// CUDA graphs of the calling thread's stream. core_cuda_graph_begin starts capturing: from then on
// the stream's work is recorded, not run, until core_cuda_graph_end returns it as a graph ready to
// launch (any host wait on the stream in between fails the capture, and the process ends naming
// the call). Memory that the captured work allocates is the graph's own, mapped while a launch runs
// and kept between launches; the captured work should free what it allocates. Before the capture
// the stream-ordered pool gives back the memory it caches, so that the graph and the pool do not
// each hold a step's worth. core_cuda_graph_launch queues one run on the calling thread's stream;
// core_cuda_graph_free waits for the device and frees the graph and its memory.
void core_cuda_graph_begin(void);
void *core_cuda_graph_end(void);
void core_cuda_graph_launch(void *graph);
void core_cuda_graph_free(void *graph);
// Memory back to the driver, so that kernel-by-kernel work and a graph's launches do not each keep
// their peak: core_cuda_graph_trim waits for the device and unmaps the graphs' memory (before
// kernel-by-kernel work between launches; the next launch maps it again), core_cuda_pool_trim gives
// back what the pool caches (before a launch that follows such work).
void core_cuda_graph_trim(void);
void core_cuda_pool_trim(void);
// The most device memory the process's allocations have held at once: the pool's high-water mark,
// or where higher the use while a graph ran (the pool's use when the capture began plus the most
// the graphs have held at once). With the trims above the two never hold their peaks together.
size_t core_cuda_peak_bytes(void);

// dst (n) of dtype ddt = src (n) of dtype sdt, both on the GPU (bf16 rounds to nearest even).
void core_cuda_convert(void *dst, CoreDtype ddt, const void *src, CoreDtype sdt, long n);
// Sets `bytes` bytes of GPU memory to `byte` (0xFF makes every f32 and bf16 element a NaN).
void core_cuda_memset(void *dst, int byte, size_t bytes);
// Ends the process with "<what> <value> at position <i> is outside [0, limit)" if any of the n
// device ints is out of range. Synchronizes with the stream.
void core_cuda_check_indices(const int *idx, long n, int limit, const char *what);

// Check macros: a failed call ends the process with file, line, rank, the call's text and the
// library's own message (cudaGetErrorString, cublasGetStatusString).
void core_cuda_check_at(int err, const char *file, int line, const char *expr);
void core_cublas_check_at(int status, const char *file, int line, const char *expr);
#define CUDA_CHECK(call) core_cuda_check_at((int)(call), __FILE__, __LINE__, #call)
#define CUBLAS_CHECK(call) core_cublas_check_at((int)(call), __FILE__, __LINE__, #call)

#ifdef __cplusplus
}
#endif

// ---------------------------------------------------------------------------------------------
// Device-side helpers shared by the kernels of layers/*.cu (nvcc only).
#ifdef __CUDACC__
#include <cuda_bf16.h>
#include <cuda_runtime.h>

// Reports a failed launch (bad configuration) at the launch site.
#define CUDA_CHECK_LAUNCH() CUDA_CHECK(cudaGetLastError())

// Calls fn<T>(...) with T the element type of dt (float or __nv_bfloat16).
#define CORE_DTYPE_CALL(dt, fn, ...) \
    (core_dtype_size(dt) == 2 ? fn<__nv_bfloat16>(__VA_ARGS__) : fn<float>(__VA_ARGS__))

static inline cudaStream_t core_stream(void) { return (cudaStream_t)core_cuda_stream(); }

// Loads and stores convert through fp32: every kernel computes in fp32.
__device__ __forceinline__ float core_ld(const float *p) { return *p; }
__device__ __forceinline__ float core_ld(const __nv_bfloat16 *p) { return __bfloat162float(*p); }
__device__ __forceinline__ void core_st(float *p, float x) { *p = x; }
__device__ __forceinline__ void core_st(__nv_bfloat16 *p, float x) { *p = __float2bfloat16_rn(x); }

// W consecutive elements in one load or store of W·sizeof(T) bytes (p aligned to that), as fp32:
// 16-byte accesses move a row with a quarter (fp32) or an eighth (bf16) of the instructions.
template <typename T, int W>
struct alignas(sizeof(T) * W) CoreVec {
    T v[W];
};
template <int W, typename T>
__device__ __forceinline__ void core_ld_vec(float *out, const T *p) {
    CoreVec<T, W> r = *reinterpret_cast<const CoreVec<T, W> *>(p);
#pragma unroll
    for (int i = 0; i < W; i++) out[i] = core_ld(&r.v[i]);
}
template <int W, typename T>
__device__ __forceinline__ void core_st_vec(T *p, const float *x) {
    CoreVec<T, W> r;
#pragma unroll
    for (int i = 0; i < W; i++) core_st(&r.v[i], x[i]);
    *reinterpret_cast<CoreVec<T, W> *>(p) = r;
}
// out[i + j] = f(a[i + j], b[i + j]) for the W elements j of one 16-byte access (or one element):
// the body of an elementwise kernel of two inputs, f a functor of two floats.
template <int W, typename T, typename F>
__device__ __forceinline__ void core_zip_vec(T *out, const T *a, const T *b, long i, F f) {
    float x[W], y[W];
    core_ld_vec<W>(x, a + i);
    core_ld_vec<W>(y, b + i);
#pragma unroll
    for (int j = 0; j < W; j++) x[j] = f(x[j], y[j]);
    core_st_vec<W>(out + i, x);
}
// Whether W-element accesses fit: every pointer aligned to W elements and rows (or a whole buffer)
// of D = k·W elements.
static inline int core_vec_ok(int W, size_t elem, long D, const void *const *ptrs, int n) {
    if (D % W) return 0;
    for (int i = 0; i < n; i++)
        if (ptrs[i] && (size_t)ptrs[i] % (W * elem)) return 0;
    return 1;
}
// Launches kernel<T, W> with a thread per W of the n elements: W = 16 / sizeof(T) where the row
// length D and the buffers allow, else W = 1.
#define CORE_VEC_LAUNCH(kernel, T, n, D, ptrs, ...)                                                 \
    do {                                                                                            \
        const int W_ = 16 / sizeof(T);                                                              \
        if (core_vec_ok(W_, sizeof(T), (D), ptrs, (int)(sizeof ptrs / sizeof *ptrs)))               \
            kernel<T, 16 / sizeof(T)><<<core_blocks((n) / W_, 256), 256, 0, core_stream()>>>(__VA_ARGS__); \
        else                                                                                        \
            kernel<T, 1><<<core_blocks((n), 256), 256, 0, core_stream()>>>(__VA_ARGS__);            \
        CUDA_CHECK_LAUNCH();                                                                        \
    } while (0)

// Sums over a warp and over a block (float or double), in a fixed order: reruns give the same bits.
template <typename X>
__device__ __forceinline__ X core_warp_sum(X x) {
    for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
    return x;
}
__device__ __forceinline__ float core_warp_max(float x) {
    for (int o = 16; o > 0; o >>= 1) x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, o));
    return x;
}
// Sum over a block of blockDim.x threads (a multiple of 32, at most 1024), returned to every
// thread. The order is fixed by the launch shape, so results are bit-identical run to run.
template <typename X>
__device__ __forceinline__ X core_block_sum(X x) {
    __shared__ X part[32];
    int lane = threadIdx.x % 32, warp = threadIdx.x / 32, nw = blockDim.x / 32;
    x = core_warp_sum(x);
    __syncthreads();  // part[] may still be read by a previous call
    if (lane == 0) part[warp] = x;
    __syncthreads();
    x = lane < nw ? part[lane] : (X)0;
    return core_warp_sum(x);
}
__device__ __forceinline__ float core_block_max(float x) {
    __shared__ float part[32];
    int lane = threadIdx.x % 32, warp = threadIdx.x / 32, nw = blockDim.x / 32;
    x = core_warp_max(x);
    __syncthreads();
    if (lane == 0) part[warp] = x;
    __syncthreads();
    x = lane < nw ? part[lane] : -INFINITY;
    return core_warp_max(x);
}

// Blocks of `threads` covering n items (at least 1, so that a launch over n = 0 stays valid).
static inline unsigned core_blocks(long n, int threads) {
    long b = (n + threads - 1) / threads;
    return (unsigned)(b > 0 ? b : 1);
}
#endif  // __CUDACC__

#endif
