// The kernel trace's arithmetic (see timeline.h).
#include "tools/trace/timeline.h"

#include <cxxabi.h>

#include <algorithm>
#include <cstdlib>

namespace trace {

const char *const kGapLabels[kGapBuckets] = {"< 5 µs", "5–20 µs", "20–100 µs", "0.1–1 ms", "≥ 1 ms"};

std::vector<Work> clip(const std::vector<Work> &all, uint64_t start, uint64_t end) {
    std::vector<Work> in;
    for (const Work &x : all)
        if (x.end > start && x.start < end)
            in.push_back({std::max(x.start, start), std::min(x.end, end), x.name, x.bytes, x.kernel});
    std::stable_sort(in.begin(), in.end(), [](const Work &a, const Work &b) { return a.start < b.start; });
    return in;
}

Idle idle_of(const std::vector<Work> &in, uint64_t start, uint64_t end) {
    static const double upper_ms[kGapBuckets] = {0.005, 0.020, 0.100, 1.0, 1e300};
    Idle r;
    r.span_ms = (end - start) * 1e-6;
    auto gap = [&](uint64_t from, uint64_t to) {
        if (to <= from) return;
        const double g = (to - from) * 1e-6;
        int b = 0;
        while (g >= upper_ms[b]) b++;
        r.gap_ms[b] += g, r.gap_n[b]++;
    };
    // cover: the end of the busy time so far; work that ends before it adds nothing.
    uint64_t cover = start;
    for (const Work &x : in) {
        gap(cover, x.start);
        if (x.end > cover) {
            r.busy_ms += (x.end - std::max(cover, x.start)) * 1e-6;
            cover = x.end;
        }
    }
    gap(cover, end);
    return r;
}

std::string short_name(const char *mangled) {
    int status = 0;
    char *d = abi::__cxa_demangle(mangled, nullptr, nullptr, &status);
    std::string s = status == 0 && d ? d : mangled;
    free(d);
    std::string out;
    int depth = 0;
    for (char ch : s) {
        if (ch == '<' || ch == '(') {
            if (depth++ == 0 && ch == '<') out += "<…>";
        } else if (ch == '>' || ch == ')') {
            depth--;
        } else if (depth == 0) {
            out += ch;
        }
    }
    if (out.empty()) out = s;
    return out.size() > 90 ? out.substr(0, 90) : out;
}

}  // namespace trace
