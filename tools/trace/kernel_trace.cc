// A kernel trace of any CUDA program, loaded by the CUDA driver through CUDA_INJECTION64_PATH:
// CUPTI records every kernel, copy and memset the GPU runs; the program's cudaProfilerStart /
// cudaProfilerStop calls mark measurement windows (`moelab bench` marks its timed steps); at exit
// it prints, per window, how much of the window the GPU was busy, the idle gaps between its work
// (what a CUDA graph of the step could remove), the host waits (synchronizing calls) and the
// kernels by total time. It answers "where does the step go, and how often does the GPU wait for
// the host" with a measurement instead of an estimate (docs/gpu.md, "Kernel trace").
//   usage: CUDA_INJECTION64_PATH=/path/libkernel_trace.so PROGRAM ARGS...   (report on stderr)
#include <cupti.h>

#include <cxxabi.h>

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

// One piece of GPU work: [start, end) in CUPTI's nanoseconds; a kernel's mangled name, or for a
// copy or memset its kind ("memset", "copy HtoD", ...) and its bytes.
struct Work {
    uint64_t start, end;
    const char *name;
    uint64_t bytes;
    bool kernel;
};
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

// A kernel's name as a reader knows it: demangled, without its template arguments and parameters
// (CUTLASS's run to thousands of characters), cut to 90 characters.
std::string short_name(const char *mangled) {
    int status = 0;
    char *d = abi::__cxa_demangle(mangled, nullptr, nullptr, &status);
    std::string s = status == 0 && d ? d : mangled;
    free(d);
    std::string out;
    int depth = 0;
    for (char ch : s) {
        if (ch == '<' || ch == '(') {
            if (depth++ == 0) out += ch == '<' ? "<…>" : "";
        } else if (ch == '>' || ch == ')') {
            depth--;
        } else if (depth == 0) {
            out += ch;
        }
    }
    if (out.empty()) out = s;
    return out.size() > 90 ? out.substr(0, 90) : out;
}

void report_window(int wi, const Window &w, std::vector<Work> work) {
    // The window's work, clipped to it, in start order.
    std::vector<Work> in;
    for (const Work &x : work)
        if (x.end > w.start && x.start < w.end)
            in.push_back({std::max(x.start, w.start), std::min(x.end, w.end), x.name, x.bytes, x.kernel});
    std::sort(in.begin(), in.end(), [](const Work &a, const Work &b) { return a.start < b.start; });
    // Busy time is the union of the intervals (two streams can overlap); an idle gap is a stretch
    // between them, bucketed by length: short gaps are the GPU waiting for a launch.
    const double span = (w.end - w.start) * 1e-6;  // ms
    const double edges[] = {0.005, 0.020, 0.100, 1.0, 1e30};  // ms
    const char *labels[] = {"< 5 µs", "5–20 µs", "20–100 µs", "0.1–1 ms", "≥ 1 ms"};
    double gap_ms[5] = {0}, busy = 0;
    int gap_n[5] = {0};
    auto gap = [&](uint64_t from, uint64_t to) {
        if (to <= from) return;
        const double g = (to - from) * 1e-6;
        int b = 0;
        while (g >= edges[b]) b++;
        gap_ms[b] += g, gap_n[b]++;
    };
    uint64_t cover = w.start;
    for (const Work &x : in) {
        gap(cover, x.start);
        if (x.end > cover) {
            busy += (x.end - std::max(cover, x.start)) * 1e-6;
            cover = x.end;
        }
    }
    gap(cover, w.end);
    fprintf(stderr, "kernel_trace: window %d: %.1f ms, GPU busy %.1f ms (%.2f %%), idle %.2f ms (%.2f %%)\n", wi,
            span, busy, 100 * busy / span, span - busy, 100 * (span - busy) / span);
    for (int b = 0; b < 5; b++)
        fprintf(stderr, "kernel_trace:   idle gaps %-10s %6d  %9.3f ms  (%.2f %% of the window)\n", labels[b],
                gap_n[b], gap_ms[b], 100 * gap_ms[b] / span);
    for (const auto &kv : w.waits)
        fprintf(stderr, "kernel_trace:   host waits: %s × %d\n", kv.first.c_str(), kv.second);
    // Kernels by total time (copies and memsets one line per kind).
    std::map<std::string, std::pair<double, int>> by;
    for (const Work &x : in) {
        auto &e = by[x.kernel ? short_name(x.name) : std::string(x.name)];
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

// The window's first n pieces of work in order (more than a step of moelab bench): the gap before
// each, its time and what it was. Where a profile's table says how much, this says in what order,
// which is what tells the call sites apart.
void report_sequence(int wi, const Window &w, const std::vector<Work> &work, size_t n) {
    std::vector<Work> in;
    for (const Work &x : work)
        if (x.start >= w.start && x.start < w.end) in.push_back(x);
    std::sort(in.begin(), in.end(), [](const Work &a, const Work &b) { return a.start < b.start; });
    fprintf(stderr, "kernel_trace: window %d, its first %zu pieces of work: gap before (µs), time (µs), what\n", wi,
            std::min(n, in.size()));
    uint64_t prev = w.start;
    for (size_t i = 0; i < in.size() && i < n; i++) {
        const Work &x = in[i];
        const double gap = x.start > prev ? (x.start - prev) * 1e-3 : 0.0;
        if (x.kernel)
            fprintf(stderr, "kernel_trace: seq %8.1f %9.1f  %s\n", gap, (x.end - x.start) * 1e-3, short_name(x.name).c_str());
        else
            fprintf(stderr, "kernel_trace: seq %8.1f %9.1f  %s %llu B\n", gap, (x.end - x.start) * 1e-3, x.name,
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
