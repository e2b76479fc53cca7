// The CUDA backend's device plumbing (see cuda.h): one GPU per process, the main stream and its
// cuBLAS handle, side streams for worker threads (each thread's current stream is thread-local),
// the CORE_CUDA allocator, dtype conversion and the check functions behind CUDA_CHECK and
// CUBLAS_CHECK. Built by nvcc under --config=cuda only.
#include "framework/core/cuda.h"

#include <cublas_v2.h>
#include <cuda_profiler_api.h>
#include <string.h>

#include "framework/core/check.h"
#include "framework/core/log.h"

static int g_device = -1;                 // current GPU, -1 before core_cuda_init

struct CoreCudaStream {
    cudaStream_t stream;
    cublasHandle_t cublas;  // bound to stream
    void *state;            // core_cuda_stream_state's slot
};
static CoreCudaStream g_main;                        // made by core_cuda_init
// The calling thread's side stream, NULL: the main stream. Thread-local, so that two threads
// never issue work on one stream or share a cuBLAS handle.
static thread_local CoreCudaStream *t_side = NULL;

static cudaStream_t cur_stream(void) { return t_side ? t_side->stream : g_main.stream; }

void core_cuda_check_at(int err, const char *file, int line, const char *expr) {
    if (err == (int)cudaSuccess) return;
    cudaError_t e = (cudaError_t)err;
    core_fatal_at(file, line, CORE_EXIT_FAILURE, "%s failed: %s (%s)", expr, cudaGetErrorString(e),
                  cudaGetErrorName(e));
}

void core_cublas_check_at(int status, const char *file, int line, const char *expr) {
    if (status == (int)CUBLAS_STATUS_SUCCESS) return;
    cublasStatus_t s = (cublasStatus_t)status;
    core_fatal_at(file, line, CORE_EXIT_FAILURE, "%s failed: %s (%s)", expr,
                  cublasGetStatusString(s), cublasGetStatusName(s));
}

int core_cuda_available(void) {
    int n = 0;
    // No driver or no device is an answer here (0), not an error.
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
        cudaGetLastError();
        return 0;
    }
    return n > 0;
}

static void require_init(void) {
    CHECK(g_device >= 0, "the CUDA backend is not initialized: call core_cuda_init first");
}

// The device's stream-ordered pool, which every CORE_CUDA allocation comes from.
static cudaMemPool_t default_pool(void) {
    cudaMemPool_t pool;
    CUDA_CHECK(cudaDeviceGetDefaultMemPool(&pool, g_device));
    return pool;
}

// A non-blocking stream (no implicit ordering with the legacy default stream) and a cuBLAS handle
// on it, on the current device. Every stream's handle is set up the same way, so a GEMM picks the
// same algorithm, and gives the same bits, on any of them.
static void stream_init(CoreCudaStream *s) {
    CUDA_CHECK(cudaStreamCreateWithFlags(&s->stream, cudaStreamNonBlocking));
    CUBLAS_CHECK(cublasCreate(&s->cublas));
    CUBLAS_CHECK(cublasSetStream(s->cublas, s->stream));
    // Plain fp32 GEMMs stay fp32 (no TF32): the CPU comparison of fp32 runs depends on it.
    CUBLAS_CHECK(cublasSetMathMode(s->cublas, CUBLAS_DEFAULT_MATH));
}

void core_cuda_init(int device) {
    if (g_device >= 0) {
        CHECK(device == g_device, "core_cuda_init(%d): this process already uses GPU %d", device,
              g_device);
        return;
    }
    int n = 0;
    CUDA_CHECK(cudaGetDeviceCount(&n));
    if (device < 0 || device >= n)
        core_usage_error("--device cuda: GPU %d requested, but this process sees %d GPU(s)", device,
                         n);
    CUDA_CHECK(cudaSetDevice(device));
    g_device = device;
    // Keep freed stream-ordered blocks in the device's pool: every micro-batch (and every call of
    // the benchmarks) allocates and frees the same sizes, and returning memory to the driver at
    // each synchronization would cost a cudaMalloc each time.
    unsigned long long keep = ~0ull;
    CUDA_CHECK(cudaMemPoolSetAttribute(default_pool(), cudaMemPoolAttrReleaseThreshold, &keep));
    stream_init(&g_main);
    cudaDeviceProp prop;
    CUDA_CHECK(cudaGetDeviceProperties(&prop, device));
    // The kernels are sm_90 code and compute_90 PTX (tools/cuda.bzl), which no older GPU runs: every
    // launch there failed with "no kernel image is available" after the run's setup.
    if (prop.major < 9)
        core_usage_error("--device cuda: GPU %d (%s) has compute capability %d.%d, and this build runs on "
                         "9.0 (Hopper) and newer (tools/cuda.bzl)", device, prop.name, prop.major, prop.minor);
    core_info("cuda: GPU %d: %s, %d SMs, %.1f GiB, compute capability %d.%d", device, prop.name,
              prop.multiProcessorCount, prop.totalGlobalMem / 1073741824.0, prop.major, prop.minor);
}

CoreDevice core_device_select(const char *name, int index) {
    if (!strcmp(name, "cpu")) return CORE_CPU;
    if (strcmp(name, "cuda") != 0) core_usage_error("--device %s: expected cpu or cuda", name);
    if (!core_cuda_available())
        core_usage_error("--device cuda: no GPU is visible to this process (driver or device "
                         "missing)");
    core_cuda_init(index);
    return CORE_CUDA;
}

void *core_cuda_stream(void) {
    require_init();
    return (void *)cur_stream();
}

void *core_cuda_cublas(void) {
    require_init();
    return (void *)(t_side ? t_side->cublas : g_main.cublas);
}

void core_cuda_sync(void) {
    require_init();
    CUDA_CHECK(cudaStreamSynchronize(cur_stream()));
}

CoreCudaStream *core_cuda_stream_create(void) {
    require_init();
    CoreCudaStream *s = (CoreCudaStream *)core_alloc(sizeof *s);
    stream_init(s);
    return s;
}

void core_cuda_stream_free(CoreCudaStream *s) {
    if (!s) return;
    CHECK(t_side != s, "core_cuda_stream_free: the stream is still current on this thread");
    CUDA_CHECK(cudaStreamSynchronize(s->stream));
    CUBLAS_CHECK(cublasDestroy(s->cublas));
    CUDA_CHECK(cudaStreamDestroy(s->stream));
    core_free(s);
}

void **core_cuda_stream_state(void) {
    require_init();
    return t_side ? &t_side->state : &g_main.state;
}

void core_cuda_use_stream(CoreCudaStream *s) {
    require_init();
    // The current device is per host thread; the one process's GPU for every thread.
    CUDA_CHECK(cudaSetDevice(g_device));
    t_side = s;
}

void *core_cuda_event_create(void) {
    require_init();
    cudaEvent_t ev;
    CUDA_CHECK(cudaEventCreate(&ev));
    return (void *)ev;
}

void core_cuda_event_destroy(void *ev) { CUDA_CHECK(cudaEventDestroy((cudaEvent_t)ev)); }

void core_cuda_event_record(void *ev) { CUDA_CHECK(cudaEventRecord((cudaEvent_t)ev, cur_stream())); }

void core_cuda_stream_wait(void *ev) { CUDA_CHECK(cudaStreamWaitEvent(cur_stream(), (cudaEvent_t)ev, 0)); }

float core_cuda_event_ms(void *a, void *b) {
    float ms = 0.0f;
    CUDA_CHECK(cudaEventSynchronize((cudaEvent_t)b));
    CUDA_CHECK(cudaEventElapsedTime(&ms, (cudaEvent_t)a, (cudaEvent_t)b));
    return ms;
}

static size_t g_graph_base;  // the pool's bytes in use when the last capture began
static bool g_captured;      // a capture has begun in this process

void core_cuda_graph_begin(void) {
    require_init();
    CUDA_CHECK(cudaStreamSynchronize(cur_stream()));
    core_cuda_pool_trim();
    unsigned long long used = 0;
    CUDA_CHECK(cudaMemPoolGetAttribute(default_pool(), cudaMemPoolAttrUsedMemCurrent, &used));
    g_graph_base = (size_t)used;
    g_captured = true;
    // Relaxed: a library's first-call set-up (a cudaMalloc) may happen inside; a wait on the
    // stream still fails the capture.
    CUDA_CHECK(cudaStreamBeginCapture(cur_stream(), cudaStreamCaptureModeRelaxed));
}

void *core_cuda_graph_end(void) {
    require_init();
    cudaGraph_t graph;
    cudaGraphExec_t exec;
    CUDA_CHECK(cudaStreamEndCapture(cur_stream(), &graph));
    CUDA_CHECK(cudaGraphInstantiate(&exec, graph, 0));
    CUDA_CHECK(cudaGraphDestroy(graph));
    return (void *)exec;
}

void core_cuda_graph_launch(void *graph) { CUDA_CHECK(cudaGraphLaunch((cudaGraphExec_t)graph, cur_stream())); }

void core_cuda_graph_free(void *graph) {
    if (!graph) return;
    CUDA_CHECK(cudaDeviceSynchronize());
    CUDA_CHECK(cudaGraphExecDestroy((cudaGraphExec_t)graph));
    CUDA_CHECK(cudaDeviceGraphMemTrim(g_device));
}

void core_cuda_graph_trim(void) {
    require_init();
    CUDA_CHECK(cudaDeviceSynchronize());
    CUDA_CHECK(cudaDeviceGraphMemTrim(g_device));
}

void core_cuda_pool_trim(void) {
    require_init();
    CUDA_CHECK(cudaMemPoolTrimTo(default_pool(), 0));
}

size_t core_cuda_peak_bytes(void) {
    require_init();
    unsigned long long pool = 0, graph = 0;
    CUDA_CHECK(cudaMemPoolGetAttribute(default_pool(), cudaMemPoolAttrUsedMemHigh, &pool));
    if (g_captured) CUDA_CHECK(cudaDeviceGetGraphMemAttribute(g_device, cudaGraphMemAttrUsedMemHigh, &graph));
    const size_t while_graph = g_captured ? g_graph_base + (size_t)graph : 0;
    return while_graph > (size_t)pool ? while_graph : (size_t)pool;
}

void core_cuda_profiler_window(int on) { CUDA_CHECK(on ? cudaProfilerStart() : cudaProfilerStop()); }

template <typename D, typename S>
__global__ void convert_kernel(D *dst, const S *src, long n) {
    long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) core_st(dst + i, core_ld(src + i));
}

template <typename D>
static void convert_from(void *dst, const void *src, CoreDtype sdt, long n) {
    unsigned blocks = core_blocks(n, 256);
    if (sdt == CORE_BF16)
        convert_kernel<<<blocks, 256, 0, cur_stream()>>>((D *)dst, (const __nv_bfloat16 *)src, n);
    else
        convert_kernel<<<blocks, 256, 0, cur_stream()>>>((D *)dst, (const float *)src, n);
    CUDA_CHECK_LAUNCH();
}

void core_cuda_convert(void *dst, CoreDtype ddt, const void *src, CoreDtype sdt, long n) {
    require_init();
    CHECK(n >= 0, "core_cuda_convert: bad element count %ld", n);
    core_dtype_size(sdt);
    if (n == 0) return;
    CORE_DTYPE_CALL(ddt, convert_from, dst, src, sdt, n);
}

void core_cuda_memset(void *dst, int byte, size_t bytes) {
    require_init();
    CUDA_CHECK(cudaMemsetAsync(dst, byte, bytes, cur_stream()));
}

// first (1) = the lowest position whose index is outside [0, limit), or n if none.
__global__ void check_indices_kernel(unsigned long long *first, const int *idx, long n,
                                     int limit) {
    long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n && (idx[i] < 0 || idx[i] >= limit)) atomicMin(first, (unsigned long long)i);
}

void core_cuda_check_indices(const int *idx, long n, int limit, const char *what) {
    require_init();
    if (n == 0) return;
    unsigned long long first = (unsigned long long)n, *d_first;
    CUDA_CHECK(cudaMallocAsync((void **)&d_first, sizeof first, cur_stream()));
    CUDA_CHECK(cudaMemcpyAsync(d_first, &first, sizeof first, cudaMemcpyHostToDevice, cur_stream()));
    check_indices_kernel<<<core_blocks(n, 256), 256, 0, cur_stream()>>>(d_first, idx, n, limit);
    CUDA_CHECK_LAUNCH();
    CUDA_CHECK(cudaMemcpyAsync(&first, d_first, sizeof first, cudaMemcpyDeviceToHost, cur_stream()));
    CUDA_CHECK(cudaFreeAsync(d_first, cur_stream()));
    CUDA_CHECK(cudaStreamSynchronize(cur_stream()));
    if (first == (unsigned long long)n) return;
    int bad;
    CUDA_CHECK(cudaMemcpy(&bad, idx + first, sizeof bad, cudaMemcpyDeviceToHost));
    FATAL("%s %d at position %llu is outside [0, %d)", what, bad, first, limit);
}
