// cuDNN's fused flash attention behind attention_cuda.h (see attention_cudnn_cuda.h): one cuDNN
// SDPA graph for the forward and one for the backward per shape, built with cuDNN's C++ frontend
// (header-only, pinned by tools/install_deps.sh) and kept for the process.
//
// Loading. The frontend is compiled with NV_CUDNN_FRONTEND_USE_DYNAMIC_LOADING: it resolves
// every cuDNN function with dlsym on cudnn_frontend::cudnn_dlhandle, which this file sets after
// dlopen("libcudnn.so.9") on the first call. Nothing links libcudnn, so a machine without it runs
// the tensor-core kernels, and the log says so once.
//
// Layouts. cuDNN's SDPA takes logical (b, h, s, d) tensors with any strides: q, dq (B, H, T, hd)
// and k, v, dk, dv (B, Hkv, T, hd) are head-major, strides (H·T·hd, T·hd, hd, 1) (cuDNN's
// grouped-query attention: query head j reads kv head j / (H / Hkv), as ours); out and dout
// (B, T, H, hd) are token-major, strides (T·H·hd, hd, H·hd, 1). Head-major q, k, v and their
// gradients make the deterministic backward 1.1–1.4 % faster than token-major ones
// (docs/BENCHMARKS.md, 2026-12-05). The softmax statistics ("Stats", (b, h, s, 1) fp32) are
// max + log Σ exp of the scaled scores of a query row in natural log (the frontend builds them as
// reduction max, then add(max, log(sum exp))), which is our lse (B, H, T): the forward writes
// them straight into lse and the backward reads them from there. Scale 1/sqrt(hd); the causal
// mask is top-left aligned (key ≤ query).
//
// Determinism. By default cuDNN's SDPA backward adds the dQ of each key block into an fp32
// buffer with atomics, whose order varies run to run. The backward graph asks for the
// deterministic algorithm (set_deterministic_algorithm), which cuDNN supports on Hopper: it keeps
// the suite's "reruns bit-identical" and the trainer's reproducible steps, for a larger workspace
// and some speed (hd 64: 255 against 296 TFLOP/s on an H200, docs/BENCHMARKS.md). Where a cuDNN
// cannot build it, the backward runs our (deterministic) kernels. The config key
// deterministic = 0 chooses the default algorithm (attention_cudnn_set_deterministic).
//
// Two streams for the backward. The deterministic backward is two kernels in turn: the main one
// (dK, dV, and the score gradient dS written to the workspace) is bound by the tensor cores, the
// dQ product that reads dS back by memory. The backward of a batch of B ≥ 2 sequences therefore
// runs as two calls, the first B/2 sequences on a side stream of the calling stream (forked and
// joined with events, so a CUDA graph captures both) and the rest on the calling stream, and the
// GPU overlaps one half's kernels with the other's: 253.8 → 266.5 TFLOP/s at hd 64, 429.7 →
// 453.6 at hd 128 on an H200 (docs/BENCHMARKS.md, 2026-12-04 17:45–18:10). The halves' workspaces
// add up to the whole batch's. Where cuDNN cannot build a half's graph, the batch runs as one
// call. attention_cudnn_set_streams(1) runs one call (kernel_bench's baseline rows).
//
// Handles and streams. A cuDNN handle carries the stream it launches on, and the graphs' plans
// are made with a handle, so each stream attention runs on (the main one, a side stream of
// core_cuda_use_stream, or a backward's own side stream) gets its own handle and graphs. One mutex
// covers the whole of a call (lookup, first-time build, enqueue): two threads never share a
// handle or build at once. The workspace comes from the stream-ordered pool (cudaMallocAsync on
// the stream of the call).
#include "layers/attention_cudnn_cuda.h"

#include <dlfcn.h>
#include <math.h>
#include <stdint.h>

#include <cstring>  // before the frontend, whose shim uses std::strlen without it
#include <exception>
#include <initializer_list>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <tuple>
#include <unordered_map>
#include <vector>

#include <cudnn_frontend.h>

#include "framework/core/cuda.h"
#include "framework/core/log.h"

namespace fe = cudnn_frontend;

// The library handle the frontend's dynamic loading resolves every cuDNN call through; defined by
// the program that uses the frontend (here), NULL until load_cudnn succeeds.
namespace cudnn_frontend {
void *cudnn_dlhandle = nullptr;
}

namespace {

const char *const kCudnnLib = "libcudnn.so.9";

// Tensor ids of the variant packs (any distinct numbers).
enum : int64_t { UID_Q = 1, UID_K, UID_V, UID_O, UID_STATS, UID_DO, UID_DQ, UID_DK, UID_DV };

enum Dir { FORWARD = 0, BACKWARD = 1 };
const char *const kDirName[2] = {"forward", "backward"};

// (direction, B, T, H, Hkv, hd, deterministic): the key of a graph.
typedef std::tuple<int, int, int, int, int, int, int> Key;

struct Built {
    std::shared_ptr<fe::graph::Graph> graph;
    int64_t workspace;  // bytes
};

struct StreamState {
    cudnnHandle_t handle;
    std::map<Key, Built> graphs;
    cudaStream_t side = nullptr;  // the backward's second stream (made on first use)
    cudaEvent_t fork, join;       // side waits for fork (this stream), this stream for join (side)
    const char *role = "";        // in the log: which stream a graph was built for
};

std::mutex g_mu;          // guards everything below
int g_loaded = -1;        // -1: not tried yet, 0: unavailable, 1: loaded
int g_deterministic = 1;  // the backward's algorithm (attention_cudnn_set_deterministic)
int g_backward_streams = 2;  // attention_cudnn_set_streams
std::set<Key> g_failed;   // graphs that did not build or run: not tried again
// Per stream: its handle and graphs. Kept for the process and never destroyed: at exit the CUDA
// context may already be gone, and destroying cuDNN plans (which may hold loaded kernels) then is
// undefined; the driver frees everything with the process.
std::map<cudaStream_t, StreamState> &g_streams = *new std::map<cudaStream_t, StreamState>;

// A frontend call (error_t) that fails sets *why to the call's text and the frontend's message and
// makes the enclosing function return false: the caller falls back.
#define FE_TRY(call)                                                      \
    do {                                                                  \
        fe::error_t e_ = (call);                                          \
        if (!e_.is_good()) {                                              \
            *why = std::string(#call) + ": " + e_.get_message();          \
            return false;                                                 \
        }                                                                 \
    } while (0)

// Loads libcudnn.so.9 once and logs which attention path the process runs; true when loaded.
// A cuDNN other than 9.x is not used (the frontend headers are built against cuDNN 9's API).
bool load_cudnn_locked() {
    if (g_loaded >= 0) return g_loaded == 1;
    g_loaded = 0;
    void *lib = dlopen(kCudnnLib, RTLD_NOW | RTLD_LOCAL);
    if (!lib) {
        const char *e = dlerror();
        core_info("attention: cuDNN not found (%s): tensor-core kernels", e ? e : kCudnnLib);
        return false;
    }
    size_t (*get_version)(void) = (size_t (*)(void))dlsym(lib, "cudnnGetVersion");
    size_t v = get_version ? get_version() : 0;
    if (v < 90000 || v >= 100000) {
        core_info("attention: %s is cuDNN version %zu, not 9.x: tensor-core kernels", kCudnnLib, v);
        dlclose(lib);
        return false;
    }
    fe::cudnn_dlhandle = lib;
    g_loaded = 1;
    core_info("attention: cuDNN %zu.%zu.%zu fused attention (%s; tensor-core kernels where it "
              "cannot run a shape)",
              v / 10000, v / 100 % 100, v % 100, kCudnnLib);
    return true;
}

// The state of `stream`, its handle made and bound to that stream on first use; NULL when cuDNN
// is unavailable (the failure logged once, and cuDNN not tried again).
StreamState *stream_state_locked(cudaStream_t stream) {
    if (!load_cudnn_locked()) return nullptr;
    auto it = g_streams.find(stream);
    if (it != g_streams.end()) return &it->second;
    cudnnHandle_t h = nullptr;
    std::string why;
    cudnnStatus_t s = CUDNN_STATUS_SUCCESS;
    try {
        s = fe::detail::create_handle(&h);
        if (s == CUDNN_STATUS_SUCCESS) {
            s = fe::detail::set_stream(h, stream);
            if (s != CUDNN_STATUS_SUCCESS) (void)fe::detail::destroy_handle(h);
        }
        if (s != CUDNN_STATUS_SUCCESS) why = fe::detail::get_error_string(s);
    } catch (const std::exception &e) {
        why = e.what();
        s = CUDNN_STATUS_INTERNAL_ERROR;
    }
    if (s != CUDNN_STATUS_SUCCESS) {
        core_warn("attention: cuDNN handle not created (%s): tensor-core kernels", why.c_str());
        g_loaded = 0;
        return nullptr;
    }
    StreamState &st = g_streams[stream];
    st.handle = h;
    return &st;
}

// The (b, h, s, d) view of a bf16 tensor of nh heads: head-major (B, nh, T, hd) or token-major
// (B, T, nh, hd).
enum Layout { TOKENS = 0, HEADS = 1 };
std::vector<int64_t> bhsd_strides(Layout lay, int T, int nh, int hd) {
    if (lay == HEADS) return {(int64_t)nh * T * hd, (int64_t)T * hd, hd, 1};
    return {(int64_t)T * nh * hd, hd, (int64_t)nh * hd, 1};
}
fe::graph::Tensor_attributes bhsd(const char *name, int64_t uid, Layout lay, int B, int T, int nh,
                                  int hd) {
    return fe::graph::Tensor_attributes()
        .set_name(name)
        .set_uid(uid)
        .set_data_type(fe::DataType_t::BFLOAT16)
        .set_dim({B, nh, T, hd})
        .set_stride(bhsd_strides(lay, T, nh, hd));
}
void as_bhsd(const std::shared_ptr<fe::graph::Tensor_attributes> &t, int64_t uid, Layout lay, int B,
             int T, int nh, int hd) {
    t->set_output(true)
        .set_uid(uid)
        .set_data_type(fe::DataType_t::BFLOAT16)
        .set_dim({B, nh, T, hd})
        .set_stride(bhsd_strides(lay, T, nh, hd));
}
// lse (B, H, T) fp32 as cuDNN's Stats (b, h, s, 1).
void as_stats(fe::graph::Tensor_attributes &t, int B, int T, int H) {
    t.set_uid(UID_STATS)
        .set_data_type(fe::DataType_t::FLOAT)
        .set_dim({B, H, T, 1})
        .set_stride({(int64_t)H * T, T, 1, 1});
}

// Builds the graph of key k on handle h into *out; false (with *why) where cuDNN cannot.
bool build_graph(cudnnHandle_t h, const Key &k, Built *out, std::string *why) {
    const int dir = std::get<0>(k), B = std::get<1>(k), T = std::get<2>(k), H = std::get<3>(k),
              Hkv = std::get<4>(k), hd = std::get<5>(k);
    const float scale = 1.0f / sqrtf((float)hd);  // the kernels' scale, to the bit
    auto g = std::make_shared<fe::graph::Graph>();
    g->set_io_data_type(fe::DataType_t::BFLOAT16)
        .set_intermediate_data_type(fe::DataType_t::FLOAT)
        .set_compute_data_type(fe::DataType_t::FLOAT);
    auto Q = g->tensor(bhsd("Q", UID_Q, HEADS, B, T, H, hd));
    auto K = g->tensor(bhsd("K", UID_K, HEADS, B, T, Hkv, hd));
    auto V = g->tensor(bhsd("V", UID_V, HEADS, B, T, Hkv, hd));
    if (dir == FORWARD) {
        auto opts = fe::graph::SDPA_attributes()
                        .set_name("attention_forward")
                        .set_generate_stats(true)
                        .set_attn_scale(scale)
                        .set_causal_mask(true);
        auto outs = g->sdpa(Q, K, V, opts);
        as_bhsd(outs[0], UID_O, TOKENS, B, T, H, hd);
        outs[1]->set_output(true);
        as_stats(*outs[1], B, T, H);
    } else {
        auto O = g->tensor(bhsd("O", UID_O, TOKENS, B, T, H, hd));
        auto dO = g->tensor(bhsd("dO", UID_DO, TOKENS, B, T, H, hd));
        fe::graph::Tensor_attributes st;
        st.set_name("Stats");
        as_stats(st, B, T, H);
        auto Stats = g->tensor(st);
        auto opts = fe::graph::SDPA_backward_attributes()
                        .set_name("attention_backward")
                        .set_attn_scale(scale)
                        .set_causal_mask(true)
                        .set_deterministic_algorithm(std::get<6>(k));  // see the top of the file
        auto grads = g->sdpa_backward(Q, K, V, O, dO, Stats, opts);
        as_bhsd(grads[0], UID_DQ, HEADS, B, T, H, hd);
        as_bhsd(grads[1], UID_DK, HEADS, B, T, Hkv, hd);
        as_bhsd(grads[2], UID_DV, HEADS, B, T, Hkv, hd);
    }
    FE_TRY(g->validate());
    FE_TRY(g->build_operation_graph(h));
    FE_TRY(g->create_execution_plans({fe::HeurMode_t::A}));
    FE_TRY(g->check_support());
    FE_TRY(g->build_plans(fe::BuildPlanPolicy_t::HEURISTICS_CHOICE));
    int64_t ws = 0;
    FE_TRY(g->get_workspace_size(ws));
    out->graph = g;
    out->workspace = ws;
    return true;
}

// The graph of key k for st's stream (built on first use), or NULL where cuDNN
// cannot run it; a graph that fails to build is reported once, with what runs `instead`, and not
// tried again.
const Built *graph_locked(StreamState *st, const Key &k,
                          const char *instead = "tensor-core kernels for this shape") {
    if (g_failed.count(k)) return nullptr;
    auto it = st->graphs.find(k);
    if (it != st->graphs.end()) return &it->second;
    Built b;
    std::string why;
    bool ok = false;
    try {
        ok = build_graph(st->handle, k, &b, &why);
    } catch (const std::exception &e) {
        why = e.what();
    }
    if (!ok) {
        core_warn("attention: cuDNN %s graph not built for B=%d T=%d H=%d Hkv=%d hd=%d (%s): %s",
                  kDirName[std::get<0>(k)], std::get<1>(k), std::get<2>(k), std::get<3>(k),
                  std::get<4>(k), std::get<5>(k), why.c_str(), instead);
        g_failed.insert(k);
        return nullptr;
    }
    core_info("attention: cuDNN %s graph built for B=%d T=%d H=%d Hkv=%d hd=%d (workspace %.1f MiB%s)%s",
              kDirName[std::get<0>(k)], std::get<1>(k), std::get<2>(k), std::get<3>(k),
              std::get<4>(k), std::get<5>(k), b.workspace / 1048576.0,
              std::get<6>(k) ? "" : ", not deterministic", st->role);
    return &(st->graphs[k] = b);
}

// Runs graph b of key k on `stream` (st's) with the pointers of pack; false (reported once, the
// key then not tried again) where it fails.
bool execute_locked(StreamState *st, cudaStream_t stream, const Key &k, const Built &b,
                    std::unordered_map<int64_t, void *> &pack) {
    void *ws = nullptr;
    if (b.workspace > 0) {
        cudaError_t e = cudaMallocAsync(&ws, (size_t)b.workspace, stream);
        if (e != cudaSuccess) {
            (void)cudaGetLastError();  // not sticky: clear it, so no later check reports it
            static bool warned = false;
            if (!warned)
                core_warn("attention: no GPU memory for cuDNN's %.2f GiB workspace (%s): "
                          "tensor-core kernels for such calls",
                          b.workspace / 1073741824.0, cudaGetErrorString(e));
            warned = true;
            return false;
        }
    }
    std::string why;
    bool ok = false;
    try {
        cudnnStatus_t s = fe::detail::set_stream(st->handle, stream);
        if (s != CUDNN_STATUS_SUCCESS) {
            why = std::string("cudnnSetStream: ") + fe::detail::get_error_string(s);
        } else {
            fe::error_t e = b.graph->execute(st->handle, pack, ws);
            ok = e.is_good();
            if (!ok) why = "execute: " + e.get_message();
        }
    } catch (const std::exception &e) {
        why = e.what();
    }
    if (ws) CUDA_CHECK(cudaFreeAsync(ws, stream));
    if (!ok) {
        core_warn("attention: cuDNN %s failed for B=%d T=%d H=%d Hkv=%d hd=%d (%s): tensor-core "
                  "kernels for this shape",
                  kDirName[std::get<0>(k)], std::get<1>(k), std::get<2>(k), std::get<3>(k),
                  std::get<4>(k), std::get<5>(k), why.c_str());
        g_failed.insert(k);
    }
    return ok;
}

bool aligned16(std::initializer_list<const void *> ptrs) {
    for (const void *p : ptrs)
        if ((uintptr_t)p % 16 != 0) return false;
    return true;
}

// The backward of B sequences on `stream`, every pointer at its first sequence; false where
// cuDNN cannot run it.
bool backward_locked(cudaStream_t stream, void *dq, void *dk, void *dv, const void *dout,
                     const void *q, const void *k, const void *v, const void *out,
                     const float *lse, int B, int T, int H, int Hkv, int hd) {
    StreamState *st = stream_state_locked(stream);
    if (!st) return false;
    const Key key(BACKWARD, B, T, H, Hkv, hd, g_deterministic);
    const Built *b = graph_locked(st, key);
    if (!b) return false;
    std::unordered_map<int64_t, void *> pack = {
        {UID_Q, (void *)q},   {UID_K, (void *)k},     {UID_V, (void *)v},
        {UID_O, (void *)out}, {UID_DO, (void *)dout}, {UID_STATS, (void *)lse},
        {UID_DQ, dq},         {UID_DK, dk},           {UID_DV, dv}};
    return execute_locked(st, stream, key, *b, pack);
}

// Where the backward of B sequences splits (see the top of the file): the first half's batch
// B / 2, or 0 for one call (one sequence, one stream asked for, or a second half whose lse would
// not be 16-byte aligned: B / 2 · H · T not a multiple of 4).
int first_half(int B, int T, int H) {
    const int B0 = B / 2;
    return g_backward_streams == 2 && B0 >= 1 && (size_t)B0 * H * T % 4 == 0 ? B0 : 0;
}

// st's side stream and its two events, made on first use; NULL where its cuDNN handle is not made.
StreamState *side_state_locked(StreamState *st) {
    if (!st->side) {
        CUDA_CHECK(cudaStreamCreateWithFlags(&st->side, cudaStreamNonBlocking));
        CUDA_CHECK(cudaEventCreateWithFlags(&st->fork, cudaEventDisableTiming));
        CUDA_CHECK(cudaEventCreateWithFlags(&st->join, cudaEventDisableTiming));
    }
    StreamState *side = stream_state_locked(st->side);
    if (side) side->role = " on the backward's second stream";
    return side;
}

// The first half's batch where the backward of B sequences runs as two calls: first_half's, if
// cuDNN builds both halves' graphs, each for its stream; else 0, one call over the whole batch.
int split_locked(StreamState *st, int B, int T, int H, int Hkv, int hd) {
    const int B0 = first_half(B, T, H);
    if (!B0) return 0;
    const char *instead = "one call over the whole batch";
    StreamState *side = side_state_locked(st);
    const bool ok = side &&
                    graph_locked(side, Key(BACKWARD, B0, T, H, Hkv, hd, g_deterministic), instead) &&
                    graph_locked(st, Key(BACKWARD, B - B0, T, H, Hkv, hd, g_deterministic), instead);
    return ok ? B0 : 0;
}

}  // namespace

extern "C" int attention_cudnn_forward(void *out, float *lse, const void *q, const void *k,
                                       const void *v, int B, int T, int H, int Hkv, int hd) {
    if (B <= 0 || !aligned16({out, lse, q, k, v})) return 0;
    std::lock_guard<std::mutex> lock(g_mu);
    cudaStream_t stream = core_stream();
    StreamState *st = stream_state_locked(stream);
    if (!st) return 0;
    const Key key(FORWARD, B, T, H, Hkv, hd, 1);
    const Built *b = graph_locked(st, key);
    if (!b) return 0;
    std::unordered_map<int64_t, void *> pack = {
        {UID_Q, (void *)q}, {UID_K, (void *)k}, {UID_V, (void *)v},
        {UID_O, out},       {UID_STATS, (void *)lse}};
    return execute_locked(st, stream, key, *b, pack) ? 1 : 0;
}

extern "C" int attention_cudnn_backward(void *dq, void *dk, void *dv, const void *dout,
                                        const void *q, const void *k, const void *v,
                                        const void *out, const float *lse, int B, int T, int H,
                                        int Hkv, int hd) {
    if (B <= 0 || !aligned16({dq, dk, dv, dout, q, k, v, out, lse})) return 0;
    std::lock_guard<std::mutex> lock(g_mu);
    cudaStream_t stream = core_stream();
    StreamState *st = stream_state_locked(stream);
    if (!st) return 0;
    const int B0 = split_locked(st, B, T, H, Hkv, hd);
    if (!B0) return backward_locked(stream, dq, dk, dv, dout, q, k, v, out, lse, B, T, H, Hkv, hd);
    // The second half's pointers: every tensor has the sequence outermost (bf16 (B, ·, ·, hd) of H
    // or Hkv heads, lse (B, H, T) fp32).
    const size_t oq = (size_t)B0 * T * H * hd * 2, okv = (size_t)B0 * T * Hkv * hd * 2;
    char *dq1 = (char *)dq + oq, *dk1 = (char *)dk + okv, *dv1 = (char *)dv + okv;
    const char *dout1 = (const char *)dout + oq, *q1 = (const char *)q + oq,
               *k1 = (const char *)k + okv, *v1 = (const char *)v + okv,
               *out1 = (const char *)out + oq;
    const float *lse1 = lse + (size_t)B0 * H * T;
    cudaStream_t side = st->side;
    CUDA_CHECK(cudaEventRecord(st->fork, stream));
    CUDA_CHECK(cudaStreamWaitEvent(side, st->fork, 0));
    bool ok = backward_locked(side, dq, dk, dv, dout, q, k, v, out, lse, B0, T, H, Hkv, hd) &&
              backward_locked(stream, dq1, dk1, dv1, dout1, q1, k1, v1, out1, lse1, B - B0, T, H,
                              Hkv, hd);
    CUDA_CHECK(cudaEventRecord(st->join, side));  // joined whatever ran, so a capture stays whole
    CUDA_CHECK(cudaStreamWaitEvent(stream, st->join, 0));
    return ok ? 1 : 0;
}

extern "C" int attention_cudnn_supports(int B, int T, int H, int Hkv, int hd) {
    if (B <= 0) return 0;
    std::lock_guard<std::mutex> lock(g_mu);
    StreamState *st = stream_state_locked(core_stream());
    if (!st) return 0;
    if (!graph_locked(st, Key(FORWARD, B, T, H, Hkv, hd, 1))) return 0;
    return split_locked(st, B, T, H, Hkv, hd) ||
           graph_locked(st, Key(BACKWARD, B, T, H, Hkv, hd, g_deterministic)) != nullptr;
}

extern "C" void attention_cudnn_set_deterministic(int deterministic) {
    std::lock_guard<std::mutex> lock(g_mu);
    g_deterministic = deterministic != 0;
}

extern "C" void attention_cudnn_test_refuse_backward(int B, int T, int H, int Hkv, int hd) {
    std::lock_guard<std::mutex> lock(g_mu);
    g_failed.insert(Key(BACKWARD, B, T, H, Hkv, hd, g_deterministic));
}

extern "C" void attention_cudnn_set_streams(int n) {
    std::lock_guard<std::mutex> lock(g_mu);
    g_backward_streams = n == 1 ? 1 : 2;
}
