// A kernel trace of any CUDA program, loaded by the CUDA driver through CUDA_INJECTION64_PATH:
// CUPTI records every kernel, copy and memset the GPU runs; the program's cudaProfilerStart /
// cudaProfilerStop calls mark measurement windows (`moelab bench` marks its timed steps); at exit
// it prints, per window, how much of the window the GPU was busy, the idle gaps between its work
// (what a CUDA graph of the step could remove), the host waits (synchronizing calls) and the
// kernels by total time. It answers "where does the step go, and how often does the GPU wait for
// the host" with a measurement instead of an estimate (docs/gpu.md, "Kernel trace").
//   usage: CUDA_INJECTION64_PATH=/path/libkernel_trace.so PROGRAM ARGS...   (report on stderr)
#include <cupti.h>

#include "tools/trace/timeline.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <string>
#include <vector>

namespace {

#define CUPTI_CHECK(call)                                                                  \
    do {                                                                                   \
        CUptiResult r_ = (call);                                                           \
        if (r_ != CUPTI_SUCCESS) {                                                         \
            const char *s_ = "?";                                                          \
            cuptiGetResultString(r_, &s_);                                                 \
            fprintf(stderr, "kernel_trace: %s failed: %s (trace off)\n", #call, s_);       \
            return;                                                                        \
        }                                                                                  \
    } while (0)

using trace::Work;

// A measurement window and the host waits inside it.
struct Window {
    uint64_t start = 0, end = 0;
    std::map<std::string, int> waits;  // synchronizing call → times called
};

std::mutex g_mu;
std::vector<Work> g_work;
std::vector<Window> g_windows;

constexpr size_t kBufferBytes = 8 << 20;

void CUPTIAPI buffer_requested(uint8_t **buf, size_t *size, size_t *max_records) {
    *buf = (uint8_t *)aligned_alloc(8, kBufferBytes);
    *size = *buf ? kBufferBytes : 0;
    *max_records = 0;
}

void CUPTIAPI buffer_completed(CUcontext, uint32_t, uint8_t *buf, size_t, size_t valid) {
    CUpti_Activity *rec = nullptr;
    std::lock_guard<std::mutex> lock(g_mu);
    while (cuptiActivityGetNextRecord(buf, valid, &rec) == CUPTI_SUCCESS) {
        if (rec->kind == CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL) {
            auto *k = (CUpti_ActivityKernel10 *)rec;
            g_work.push_back({k->start, k->end, k->name, 0, true});
        } else if (rec->kind == CUPTI_ACTIVITY_KIND_MEMCPY) {
            auto *m = (CUpti_ActivityMemcpy6 *)rec;
            const char *kind = m->copyKind == CUPTI_ACTIVITY_MEMCPY_KIND_HTOD   ? "copy HtoD"
                               : m->copyKind == CUPTI_ACTIVITY_MEMCPY_KIND_DTOH ? "copy DtoH"
                               : m->copyKind == CUPTI_ACTIVITY_MEMCPY_KIND_DTOD ? "copy DtoD"
                                                                                : "copy (other)";
            g_work.push_back({m->start, m->end, kind, m->bytes, false});
        } else if (rec->kind == CUPTI_ACTIVITY_KIND_MEMSET) {
            auto *m = (CUpti_ActivityMemset4 *)rec;
            g_work.push_back({m->start, m->end, "memset", m->bytes, false});
        }
    }
    free(buf);
}

// The runtime calls that make the host wait for the GPU, and the window marks. A callback runs
// only for the calls enabled here, so the launches pay nothing.
const struct {
    CUpti_CallbackId id;
    const char *name;
} kWaits[] = {
    {CUPTI_RUNTIME_TRACE_CBID_cudaStreamSynchronize_v3020, "cudaStreamSynchronize"},
    {CUPTI_RUNTIME_TRACE_CBID_cudaStreamSynchronize_ptsz_v7000, "cudaStreamSynchronize"},
    {CUPTI_RUNTIME_TRACE_CBID_cudaDeviceSynchronize_v3020, "cudaDeviceSynchronize"},
    {CUPTI_RUNTIME_TRACE_CBID_cudaEventSynchronize_v3020, "cudaEventSynchronize"},
    {CUPTI_RUNTIME_TRACE_CBID_cudaMemcpy_v3020, "cudaMemcpy"},
    {CUPTI_RUNTIME_TRACE_CBID_cudaMemcpy_ptds_v7000, "cudaMemcpy"},
};

void CUPTIAPI on_api(void *, CUpti_CallbackDomain, CUpti_CallbackId id, const void *data) {
    const auto *cb = (const CUpti_CallbackData *)data;
    uint64_t now = 0;
    cuptiGetTimestamp(&now);
    std::lock_guard<std::mutex> lock(g_mu);
    // The window opens when cudaProfilerStart returns and closes when cudaProfilerStop is called.
    if (id == CUPTI_RUNTIME_TRACE_CBID_cudaProfilerStart_v4000) {
        if (cb->callbackSite == CUPTI_API_EXIT) {
            g_windows.emplace_back();
            g_windows.back().start = now;
        }
        return;
    }
    if (id == CUPTI_RUNTIME_TRACE_CBID_cudaProfilerStop_v4000) {
        if (cb->callbackSite == CUPTI_API_ENTER && !g_windows.empty() && !g_windows.back().end)
            g_windows.back().end = now;
        return;
    }
    if (cb->callbackSite != CUPTI_API_ENTER || g_windows.empty() || g_windows.back().end) return;
    for (const auto &w : kWaits)
        if (w.id == id) g_windows.back().waits[w.name]++;
}

void report_window(int wi, const Window &w, const std::vector<Work> &work) {
    const std::vector<Work> in = trace::clip(work, w.start, w.end);
    const trace::Idle r = trace::idle_of(in, w.start, w.end);
    const double span = r.span_ms, busy = r.busy_ms;
    fprintf(stderr, "kernel_trace: window %d: %.1f ms, GPU busy %.1f ms (%.2f %%), idle %.2f ms (%.2f %%)\n", wi,
            span, busy, 100 * busy / span, span - busy, 100 * (span - busy) / span);
    for (int b = 0; b < trace::kGapBuckets; b++)
        fprintf(stderr, "kernel_trace:   idle gaps %-10s %6d  %9.3f ms  (%.2f %% of the window)\n",
                trace::kGapLabels[b], r.gap_n[b], r.gap_ms[b], 100 * r.gap_ms[b] / span);
    for (const auto &kv : w.waits)
        fprintf(stderr, "kernel_trace:   host waits: %s × %d\n", kv.first.c_str(), kv.second);
    // Kernels by total time (copies and memsets one line per kind).
    std::map<std::string, std::pair<double, int>> by;
    for (const Work &x : in) {
        auto &e = by[x.kernel ? trace::short_name(x.name) : std::string(x.name)];
        e.first += (x.end - x.start) * 1e-6;
        e.second++;
    }
    std::vector<std::pair<double, std::pair<int, std::string>>> rows;
    for (const auto &kv : by) rows.push_back({kv.second.first, {kv.second.second, kv.first}});
    std::sort(rows.rbegin(), rows.rend());
    fprintf(stderr, "kernel_trace:   %10s %7s %10s %6s  %s\n", "ms", "calls", "µs/call", "%busy", "kernel");
    for (size_t i = 0; i < rows.size() && i < 40; i++)
        fprintf(stderr, "kernel_trace:   %10.3f %7d %10.1f %6.2f  %s\n", rows[i].first, rows[i].second.first,
                1e3 * rows[i].first / rows[i].second.first, 100 * rows[i].first / busy,
                rows[i].second.second.c_str());
}

// The window's first n pieces of work in order (more than a step of moelab bench): when each
// started (from the window's start), the GPU's idle gap before it, its time and what it was. Where
// a profile's table says how much, this says in what order, which is what tells the call sites
// apart; the start times also show which pieces ran at once (on two streams: gap 0, starts closer
// than the earlier piece's time).
void report_sequence(int wi, const Window &w, const std::vector<Work> &work, size_t n) {
    const std::vector<Work> in = trace::clip(work, w.start, w.end);
    fprintf(stderr, "kernel_trace: window %d, its first %zu pieces of work: start (µs), gap before (µs), time (µs), what\n",
            wi, std::min(n, in.size()));
    uint64_t prev = w.start;
    for (size_t i = 0; i < in.size() && i < n; i++) {
        const Work &x = in[i];
        const double at = (x.start - w.start) * 1e-3, gap = x.start > prev ? (x.start - prev) * 1e-3 : 0.0,
                     t = (x.end - x.start) * 1e-3;
        if (x.kernel)
            fprintf(stderr, "kernel_trace: seq %10.1f %8.1f %9.1f  %s\n", at, gap, t, trace::short_name(x.name).c_str());
        else
            fprintf(stderr, "kernel_trace: seq %10.1f %8.1f %9.1f  %s %llu B\n", at, gap, t, x.name,
                    (unsigned long long)x.bytes);
        prev = std::max(prev, x.end);
    }
}

void at_exit() {
    cuptiActivityFlushAll(CUPTI_ACTIVITY_FLAG_FLUSH_FORCED);
    std::lock_guard<std::mutex> lock(g_mu);
    if (g_windows.empty()) {
        fprintf(stderr, "kernel_trace: no cudaProfilerStart/Stop window in this run: nothing reported\n");
        return;
    }
    for (size_t i = 0; i < g_windows.size(); i++)
        if (g_windows[i].end) report_window((int)i + 1, g_windows[i], g_work);
    for (size_t i = 0; i < g_windows.size(); i++)
        if (g_windows[i].end) report_sequence((int)i + 1, g_windows[i], g_work, 3000);
}

void start() {
    CUPTI_CHECK(cuptiActivityRegisterCallbacks(buffer_requested, buffer_completed));
    CUPTI_CHECK(cuptiActivityEnable(CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL));
    CUPTI_CHECK(cuptiActivityEnable(CUPTI_ACTIVITY_KIND_MEMCPY));
    CUPTI_CHECK(cuptiActivityEnable(CUPTI_ACTIVITY_KIND_MEMSET));
    CUpti_SubscriberHandle sub;
    CUPTI_CHECK(cuptiSubscribe(&sub, (CUpti_CallbackFunc)on_api, nullptr));
    const CUpti_CallbackId marks[] = {CUPTI_RUNTIME_TRACE_CBID_cudaProfilerStart_v4000,
                                      CUPTI_RUNTIME_TRACE_CBID_cudaProfilerStop_v4000};
    for (CUpti_CallbackId id : marks) CUPTI_CHECK(cuptiEnableCallback(1, sub, CUPTI_CB_DOMAIN_RUNTIME_API, id));
    for (const auto &w : kWaits) CUPTI_CHECK(cuptiEnableCallback(1, sub, CUPTI_CB_DOMAIN_RUNTIME_API, w.id));
    atexit(at_exit);
}

}  // namespace

// The entry point the CUDA driver calls once, when the program initializes CUDA.
extern "C" int InitializeInjection(void) {
    start();
    return 1;
}
