// Checked host allocation and the machine's memory size (see mem.h).
#include "framework/core/mem.h"

#include <malloc.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "framework/core/check.h"

// A training step frees and allocates the same large buffers every step (activations, logits,
// scratch). glibc gives each one above its mmap threshold (128 KiB, growing to 32 MiB) a fresh
// mapping that the kernel faults in and zeroes page by page, and trims the heap's top as soon as
// one below is freed: on 2 cores that was a quarter of the quickstart's CPU step (2026-12-04,
// docs/BENCHMARKS.md). Without mmap and with the trim threshold at 1 GiB the buffers come back
// from the heap step after step; the process keeps its peak, which a trainer reaches every step.
static double g_memory;  // the machine's physical memory in bytes
static void alloc_setup(void) {
    mallopt(M_MMAP_MAX, 0);
    mallopt(M_TRIM_THRESHOLD, 1 << 30);
    g_memory = core_host_memory_bytes();
}

// bytes rounded up to the 64-byte alignment, as aligned_alloc requires.
static size_t rounded(size_t bytes) { return ((bytes ? bytes : 1) + 63) & ~(size_t)63; }

void *core_alloc_uninit(size_t bytes) {
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    pthread_once(&once, alloc_setup);
    // More than the machine holds would only swap or be killed, and within 63 of SIZE_MAX the
    // rounding would wrap to a small buffer: such a request fails like a refused one.
    void *p = (double)bytes <= g_memory ? aligned_alloc(64, rounded(bytes)) : NULL;
    if (!p)
        core_failure_error("out of host memory allocating %zu bytes (%.1f GiB; the machine has %.1f GiB)", bytes,
                           (double)bytes / (1 << 30), g_memory / (1 << 30));
    return p;
}

void *core_alloc_filled(size_t bytes, int fill) {
    void *p = core_alloc_uninit(bytes);
    memset(p, fill, rounded(bytes));
    return p;
}

void *core_alloc(size_t bytes) { return core_alloc_filled(bytes, 0); }

void core_free(void *p) { free(p); }

void *core_grow(void *old, size_t n, size_t cap, size_t es) {
    void *p = core_alloc(cap * es);
    if (n) memcpy(p, old, n * es);
    core_free(old);
    return p;
}

double core_host_memory_bytes(void) {
    const long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
    CHECK(pages > 0 && page > 0, "cannot read this machine's memory size (sysconf)");
    return (double)pages * (double)page;
}

double core_host_resident_bytes(void) {
    // statm: size, resident, shared (file-backed) ... in pages. The mapped token shards count as
    // resident once read but are the page cache's to drop: only the anonymous rest is held.
    FILE *f = fopen("/proc/self/statm", "r");
    long size = 0, resident = 0, shared = 0;
    const int n = f ? fscanf(f, "%ld %ld %ld", &size, &resident, &shared) : 0;
    if (f) fclose(f);
    return n == 3 ? (double)(resident - shared) * (double)sysconf(_SC_PAGESIZE) : 0.0;
}
