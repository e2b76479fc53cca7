// The CPU build's side of cuda.h: no GPU code is linked, core_cuda_available() says 0, and every
// other call ends with one message telling how to get the CUDA backend.
#include "framework/core/cuda.h"

#include <string.h>

#define NO_CUDA "this build has no CUDA backend: rebuild with --config=cuda"

int core_cuda_available(void) { return 0; }

void core_cuda_init(int device) { core_usage_error("--device cuda: " NO_CUDA); }

CoreDevice core_device_select(const char *name, int index) {
    if (!strcmp(name, "cpu")) return CORE_CPU;
    if (!strcmp(name, "cuda")) core_usage_error("--device cuda: " NO_CUDA);
    core_usage_error("--device %s: expected cpu or cuda", name);
}

void *core_cuda_stream(void) { FATAL(NO_CUDA); }
void *core_cuda_cublas(void) { FATAL(NO_CUDA); }
void core_cuda_sync(void) { FATAL(NO_CUDA); }
void *core_cuda_event_create(void) { FATAL(NO_CUDA); }
void core_cuda_event_destroy(void *ev) { FATAL(NO_CUDA); }
void core_cuda_event_record(void *ev) { FATAL(NO_CUDA); }
void core_cuda_stream_wait(void *ev) { FATAL(NO_CUDA); }
CoreCudaStream *core_cuda_stream_create(void) { FATAL(NO_CUDA); }
void core_cuda_stream_free(CoreCudaStream *s) {
    if (s) FATAL(NO_CUDA);
}
void core_cuda_use_stream(CoreCudaStream *s) { FATAL(NO_CUDA); }
void **core_cuda_stream_state(void) { FATAL(NO_CUDA); }
float core_cuda_event_ms(void *a, void *b) { FATAL(NO_CUDA); }
void core_cuda_profiler_window(int on) { FATAL(NO_CUDA); }
void core_cuda_graph_begin(void) { FATAL(NO_CUDA); }
void *core_cuda_graph_end(void) { FATAL(NO_CUDA); }
void core_cuda_graph_launch(void *graph) { FATAL(NO_CUDA); }
void core_cuda_graph_free(void *graph) {
    if (graph) FATAL(NO_CUDA);
}
void core_cuda_graph_trim(void) { FATAL(NO_CUDA); }
void core_cuda_pool_trim(void) { FATAL(NO_CUDA); }
size_t core_cuda_peak_bytes(void) { FATAL(NO_CUDA); }

void core_cuda_convert(void *dst, CoreDtype ddt, const void *src, CoreDtype sdt, long n) {
    FATAL(NO_CUDA);
}

void core_cuda_memset(void *dst, int byte, size_t bytes) { FATAL(NO_CUDA); }

void core_cuda_check_indices(const int *idx, long n, int limit, const char *what) {
    FATAL(NO_CUDA);
}

void core_cuda_check_at(int err, const char *file, int line, const char *expr) {
    if (err != 0)
        core_fatal_at(file, line, CORE_EXIT_FAILURE, "%s failed (%d): " NO_CUDA, expr, err);
}

void core_cublas_check_at(int status, const char *file, int line, const char *expr) {
    core_cuda_check_at(status, file, line, expr);
}
