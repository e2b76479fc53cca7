// Checked host allocation and the machine's memory size (see mem.h).
#include "framework/core/mem.h"

#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "framework/core/check.h"

void *core_alloc_filled(size_t bytes, int fill) {
    if (bytes == 0) bytes = 1;
    size_t rounded = (bytes + 63) & ~(size_t)63;
    void *p = aligned_alloc(64, rounded);
    CHECK(p != NULL, "out of host memory allocating %zu bytes", bytes);
    memset(p, fill, rounded);
    return p;
}

void *core_alloc(size_t bytes) { return core_alloc_filled(bytes, 0); }

void core_free(void *p) { free(p); }

double core_host_memory_bytes(void) {
    const long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
    CHECK(pages > 0 && page > 0, "cannot read this machine's memory size (sysconf)");
    return (double)pages * (double)page;
}

