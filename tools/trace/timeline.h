// The arithmetic of the kernel trace (kernel_trace.cc) apart from CUPTI, so that a CPU test checks
// the figures it prints: the work of a window clipped to it, the GPU's busy time (the union of the
// intervals: two streams can overlap) and its idle gaps bucketed by length, and kernels' names as
// a reader knows them.
#ifndef MOELAB_TOOLS_TRACE_TIMELINE_H
#define MOELAB_TOOLS_TRACE_TIMELINE_H

#include <cstdint>
#include <string>
#include <vector>

namespace trace {

// One piece of GPU work: [start, end) in nanoseconds; a kernel's mangled name, or for a copy or
// memset its kind ("memset", "copy HtoD", ...) and its bytes.
struct Work {
    uint64_t start, end;
    const char *name;
    uint64_t bytes;
    bool kernel;
};

// Idle gaps by length: under 5 µs, 5–20 µs, 20–100 µs, 0.1–1 ms, 1 ms and more. Short gaps are
// the GPU waiting for the next launch; long ones for the host.
constexpr int kGapBuckets = 5;
extern const char *const kGapLabels[kGapBuckets];

struct Idle {
    double span_ms = 0, busy_ms = 0;
    double gap_ms[kGapBuckets] = {0};
    int gap_n[kGapBuckets] = {0};
};

// The work that overlaps [start, end), clipped to it, in start order.
std::vector<Work> clip(const std::vector<Work> &all, uint64_t start, uint64_t end);
// The busy time and idle gaps of [start, end), given its work clipped and in start order (clip):
// the stretch before the first piece and after the last count as gaps too.
Idle idle_of(const std::vector<Work> &in, uint64_t start, uint64_t end);
// A kernel's name demangled, without its template arguments and parameters (CUTLASS's run to
// thousands of characters: "<…>" stands for them), cut to 90 characters.
std::string short_name(const char *mangled);

}  // namespace trace

#endif
