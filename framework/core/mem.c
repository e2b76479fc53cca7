// Checked host allocation and the per-device allocator table (see mem.h).
#include "framework/core/mem.h"

#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "framework/core/check.h"

void *core_alloc(size_t bytes) {
    if (bytes == 0) bytes = 1;
    size_t rounded = (bytes + 63) & ~(size_t)63;
    void *p = aligned_alloc(64, rounded);
    CHECK(p != NULL, "out of host memory allocating %zu bytes", bytes);
    memset(p, 0, rounded);
    return p;
}

void core_free(void *p) { free(p); }

double core_host_memory_bytes(void) {
    const long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
    CHECK(pages > 0 && page > 0, "cannot read this machine's memory size (sysconf)");
    return (double)pages * (double)page;
}

static void cpu_copy(void *dst, CoreDevice dd, const void *src, CoreDevice sd, size_t bytes) {
    (void)dd; (void)sd;
    memmove(dst, src, bytes);
}

static CoreAllocator g_alloc[2] = {{core_alloc, core_free, cpu_copy}, {NULL, NULL, NULL}};

void core_register_allocator(CoreDevice dev, const CoreAllocator *a) { g_alloc[dev] = *a; }

static const CoreAllocator *allocator(CoreDevice dev) {
    CHECK(dev == CORE_CPU || dev == CORE_CUDA, "unknown device %d", (int)dev);
    CHECK(g_alloc[dev].alloc != NULL,
          "the CUDA backend is not available: rebuild with --config=cuda and run on a GPU machine");
    return &g_alloc[dev];
}

void *core_device_alloc(CoreDevice dev, size_t bytes) { return allocator(dev)->alloc(bytes); }
void core_device_free(CoreDevice dev, void *p) { if (p) allocator(dev)->free(p); }

void core_copy(void *dst, CoreDevice dst_dev, const void *src, CoreDevice src_dev, size_t bytes) {
    // A copy that touches the GPU on either side goes through the CUDA backend.
    CoreDevice via = (dst_dev == CORE_CUDA || src_dev == CORE_CUDA) ? CORE_CUDA : CORE_CPU;
    allocator(via)->copy(dst, dst_dev, src, src_dev, bytes);
}
