// Hopper grouped GEMMs for the experts (see gemm_sm90_cuda.h) through CUTLASS 3.x: one persistent,
// warp-specialized kernel per product (a TMA producer warp, two wgmma consumer warpgroups that take
// turns on 128 × 128 tiles of their own: ping-pong), every expert of a MoE layer in one launch. A small setup kernel writes the
// groups' problem sizes, operand pointers and strides on the device from the row counts, which
// come as a kernel argument from the host or are read where a kernel before wrote them on the
// device (the dispatcher's plan): no host buffer, no copy, nothing to wait for. The CUTLASS
// operator is initialized once per stream, β, grid, tile order and group count, so a call costs
// the host two launches.
// The tile scheduler walks the groups' tiles in a fixed order with no split-K, so every output
// element is summed by one thread in one order: reruns are bit-identical and dW needs no atomics,
// whatever the grid (a weight gradient's is chosen from the counts: grid_factor).
#include "layers/gemm_sm90_cuda.h"

#include "framework/core/cuda.h"

#include <algorithm>
#include <cstring>
#include <mutex>
#include <queue>
#include <vector>

#include "cute/tensor.hpp"
#include "cutlass/cutlass.h"
#include "cutlass/epilogue/collective/collective_builder.hpp"
#include "cutlass/epilogue/thread/linear_combination.h"
#include "cutlass/gemm/collective/collective_builder.hpp"
#include "cutlass/gemm/device/gemm_universal_adapter.h"
#include "cutlass/gemm/dispatch_policy.hpp"
#include "cutlass/gemm/group_array_problem_shape.hpp"
#include "cutlass/gemm/kernel/gemm_universal.hpp"
#include "cutlass/util/packed_stride.hpp"

using namespace cute;

namespace gemm_sm90 {

using Problem = cutlass::gemm::GroupProblemShape<Shape<int, int, int>>;  // (M, N, K) per group
using ProblemMNK = Problem::UnderlyingProblemShape;
using Bf16 = cutlass::bfloat16_t;
using RowMajor = cutlass::layout::RowMajor;
using ColMajor = cutlass::layout::ColumnMajor;

// The tiles (CTA tile M × N × K, cluster, kernel and epilogue schedules), measured on an H200 at
// the bench and wide shapes, uniform and skewed counts (docs/BENCHMARKS.md). Ping-pong 128 × 128:
// each of the two consumer warpgroups owns a whole tile and they take turns, so one's epilogue (the
// bf16 store, the β = 1 read of dX, dW's fp32 read-modify-write) runs under the other's mainloop;
// it is the fastest product of every kind everywhere measured. Cooperative 128 × 256 (both
// warpgroups on one tile, half its rows each) had won the weight gradient of long groups (wide
// shapes, K ≈ 3072: 529 against 518 TFLOP/s) while both paired their tiles along M; paired along N
// where that pads fewer (cluster_along_n: OC 1408 is an odd 11 tile rows), ping-pong won there too
// (2026-12-04: 674.8 / 653.1 / 630.4 against 622.2 / 619.2 / 607.0 at uniform, jittered and skewed
// counts), as it always had with short groups (K ≤ 2048: 494 against 462 at the bench shapes, 394
// against 298 skewed), and cooperative tiles were dropped; a cooperative 256 × 128 had lost
// everywhere once the ping-pong kernel was in.
struct Tiles {  // 128 × 128 tiles, clusters of 2 along M (B tiles multicast to both CTAs)
    using Tile = Shape<_128, _128, _64>;
    using Cluster = Shape<_2, _1, _1>;
    using Kernel = cutlass::gemm::KernelPtrArrayTmaWarpSpecializedPingpong;
    using Epi = cutlass::epilogue::PtrArrayTmaWarpSpecializedPingpong;
};
// The same tiles in clusters of 2 along N instead (A tiles multicast to the pair), where that pads
// fewer tiles (cluster_along_n).
struct TilesAlongN : Tiles {
    using Cluster = Shape<_1, _2, _1>;
};
// One grouped GEMM type: D (M, N, ElementC, row-major) = A (M, K) · B (K, N) + beta · C, bf16
// operands in the given layouts, fp32 accumulation, tiles of configuration Cfg. In CUTLASS's
// convention B is given as (N, K): ColumnMajor B is K-contiguous, RowMajor B is N-contiguous.
template <class LayoutA, class LayoutB, class ElementC, class Cfg>
struct GroupedGemm {
    using Tile = typename Cfg::Tile;
    using Cluster = typename Cfg::Cluster;
    static constexpr int kAlignAB = 8;                                   // 16 bytes of bf16
    static constexpr int kAlignC = 16 / (int)sizeof(ElementC);
    using Epilogue = typename cutlass::epilogue::collective::CollectiveBuilder<
        cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, Tile, Cluster,
        cutlass::epilogue::collective::EpilogueTileAuto, float, float, ElementC, RowMajor *, kAlignC,
        ElementC, RowMajor *, kAlignC, typename Cfg::Epi,
        cutlass::epilogue::fusion::LinearCombination<ElementC, float>>::CollectiveOp;
    using Mainloop = typename cutlass::gemm::collective::CollectiveBuilder<
        cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, Bf16, LayoutA *, kAlignAB, Bf16,
        LayoutB *, kAlignAB, float, Tile, Cluster,
        cutlass::gemm::collective::StageCountAutoCarveout<
            static_cast<int>(sizeof(typename Epilogue::SharedStorage))>,
        typename Cfg::Kernel>::CollectiveOp;
    using Kernel = cutlass::gemm::kernel::GemmUniversal<Problem, Mainloop, Epilogue>;
    using Gemm = cutlass::gemm::device::GemmUniversalAdapter<Kernel>;
    using StrideA = typename Kernel::InternalStrideA;
    using StrideB = typename Kernel::InternalStrideB;
    using StrideC = typename Kernel::InternalStrideC;
};

// forward: A = inp (n, IC) row-major, B = W (OC, IC) K-contiguous, D = out (n, OC) bf16
template <class Cfg> using ForwardGemm = GroupedGemm<RowMajor, ColMajor, Bf16, Cfg>;
// backward_input: A = dout (n, OC) row-major, B = W (OC, IC) N-contiguous, D = dinp (n, IC) bf16
template <class Cfg> using BackwardInputGemm = GroupedGemm<RowMajor, RowMajor, Bf16, Cfg>;
// backward_weight: A = doutᵀ (OC, n) from row-major dout, B = inp (n, IC) N-contiguous,
// D = dW (OC, IC) fp32
template <class Cfg> using BackwardWeightGemm = GroupedGemm<ColMajor, RowMajor, float, Cfg>;

int g_pairs = GEMM_SM90_PAIRS_BEST;    // the clusters' direction (gemm_sm90_set_pairs)
int g_grid_factor = 0;                 // CTAs per multiprocessor; 0: chosen per launch
                                       // (gemm_sm90_set_grid_factor)
int g_raster = GEMM_SM90_RASTER_BEST;  // the tile order (gemm_sm90_set_raster)

// The groups of one launch: experts e0 .. e0 + n − 1, whose rows start at row0. Passed by value.
// Their counts are in `rows` where the host has them (host), else the setup kernel reads them from
// the device.
struct Groups {
    int rows[GEMM_SM90_MAX_GROUPS];
    int n, e0;
    long row0;
    int IC, OC;
    bool host;
};

// The device arrays CUTLASS reads per group (one allocation, freed in stream order after the launch).
template <class G>
struct GroupArrays {
    ProblemMNK problem[GEMM_SM90_MAX_GROUPS];
    const Bf16 *a[GEMM_SM90_MAX_GROUPS];
    const Bf16 *b[GEMM_SM90_MAX_GROUPS];
    typename G::Gemm::ElementC *c[GEMM_SM90_MAX_GROUPS];
    typename G::StrideA sa[GEMM_SM90_MAX_GROUPS];
    typename G::StrideB sb[GEMM_SM90_MAX_GROUPS];
    typename G::StrideC sc[GEMM_SM90_MAX_GROUPS];
};

// The setup kernel's threads: one per group of a launch.
enum { SETUP_THREADS = GEMM_SM90_MAX_GROUPS };

// Slot i of the arrays: problem (M, N, K), operand pointers and their packed strides.
template <class G>
__device__ void fill_slot(GroupArrays<G> *arr, int i, int M, int N, int K, const Bf16 *a, const Bf16 *b,
                          typename G::Gemm::ElementC *c) {
    arr->problem[i] = ProblemMNK(M, N, K);
    arr->a[i] = a, arr->b[i] = b, arr->c[i] = c;
    arr->sa[i] = cutlass::make_cute_packed_stride(typename G::StrideA{}, make_shape(M, K, 1));
    arr->sb[i] = cutlass::make_cute_packed_stride(typename G::StrideB{}, make_shape(N, K, 1));
    arr->sc[i] = cutlass::make_cute_packed_stride(typename G::StrideC{}, make_shape(M, N, 1));
}

// Thread i reads group i's row count (from g, or dcounts on the device) and the block finds each
// group's first row and its place among the groups with rows (a Hillis-Steele scan of both in
// shared memory). Those fill the first slots of the arrays in group order (see the header for the
// products); the slots after them get problems of no tiles (M = 0), which CUTLASS's scheduler
// passes over: the same tiles in the same order as a launch over the groups with rows alone.
template <class G>
__global__ void __launch_bounds__(SETUP_THREADS)
    setup_kernel(GroupArrays<G> *arr, const __grid_constant__ Groups g, const int *dcounts, GemmSm90Kind kind,
                 const Bf16 *a, const Bf16 *b, void *y) {
    using C = typename G::Gemm::ElementC;
    __shared__ int rows[SETUP_THREADS], used[SETUP_THREADS];  // inclusive sums, in place
    const int i = threadIdx.x;
    const int n = i < g.n ? (g.host ? g.rows[i] : dcounts[i]) : 0;
    rows[i] = n, used[i] = n > 0;
    __syncthreads();
    for (int d = 1; d < SETUP_THREADS; d *= 2) {
        const int r = i >= d ? rows[i - d] : 0, u = i >= d ? used[i - d] : 0;
        __syncthreads();
        rows[i] += r, used[i] += u;
        __syncthreads();
    }
    const int first = rows[i] - n, slot = used[i] - (n > 0), filled = used[SETUP_THREADS - 1];
    const long e = g.e0 + i, r0 = g.row0 + first, IC = g.IC, OC = g.OC;
    if (n > 0 && kind == GEMM_SM90_FORWARD)
        fill_slot<G>(arr, slot, n, OC, IC, a + r0 * IC, b + e * OC * IC, (C *)y + r0 * OC);
    else if (n > 0 && kind == GEMM_SM90_BACKWARD_INPUT)
        fill_slot<G>(arr, slot, n, IC, OC, a + r0 * OC, b + e * OC * IC, (C *)y + r0 * IC);
    else if (n > 0)
        fill_slot<G>(arr, slot, OC, IC, n, a + r0 * OC, b + r0 * IC, (C *)y + e * OC * IC);
    if (i >= filled && i < g.n) fill_slot<G>(arr, i, 0, IC, OC, a, b, (C *)y);
}

#define CUTLASS_CHECK(call)                                                                         \
    do {                                                                                            \
        cutlass::Status s_ = (call);                                                                \
        CHECK(s_ == cutlass::Status::kSuccess, "%s failed: %s", #call, cutlassGetStatusString(s_)); \
    } while (0)

// The multiprocessor count, read once.
cutlass::KernelHardwareInfo hardware_info() {
    static cutlass::KernelHardwareInfo hw;
    if (hw.sm_count == 0) {
        CUDA_CHECK(cudaGetDevice(&hw.device_id));
        hw.sm_count = cutlass::KernelHardwareInfo::query_device_multiprocessor_count(hw.device_id);
    }
    return hw;
}

// What one GEMM type keeps per stream (and β and grid factor) between calls: the device arrays the
// setup kernel fills, the workspace, and the CUTLASS operator initialized for `groups` groups. Initializing costs the
// host tens of microseconds (TMA descriptors, kernel attributes, argument checks), so it runs only
// when the group count changes, which in training is almost never; each call is then the setup
// kernel and the GEMM's launch. Per stream, because the pipeline's F&B overlap runs kernels on a
// worker thread's stream while the main one runs others: two streams never share arrays.
// Kept for the process, like linear.cu's side streams.
template <class G>
struct Prepared {
    cudaStream_t stream = nullptr;
    float beta = 0.0f;              // the epilogue's β, part of the initialized parameters
    GroupArrays<G> *arr = nullptr;  // device
    void *ws = nullptr;             // device, ws_bytes
    size_t ws_bytes = 0;
    int factor = 0;                 // CTAs per multiprocessor of its grid
    bool along_n = false;           // the scheduler's tile order (raster_along_n)
    int groups = 0;                 // what gemm is initialized for (0: not yet)
    typename G::Gemm gemm;
};

// (stream, β, grid factor, tile order) keys per GEMM type: the main stream's and a few workers' in
// practice.
enum { MAX_SLOTS = 32 };

// The arguments of a launch over g.n groups whose arrays are arr: sizes and pointers are read on
// the device, and with no host copy of the sizes CUTLASS launches as many CTAs as hw_info.sm_count
// says: factor per multiprocessor.
template <class G>
typename G::Gemm::Arguments arguments(GroupArrays<G> *arr, int groups, float beta, int factor, bool along_n) {
    using C = typename G::Gemm::ElementC;
    typename G::Gemm::Arguments args;
    args.mode = cutlass::gemm::GemmUniversalMode::kGrouped;
    args.problem_shape = {groups, arr->problem, nullptr};
    args.mainloop = {arr->a, arr->sa, arr->b, arr->sb};
    args.epilogue.thread.alpha = 1.0f;
    args.epilogue.thread.beta = beta;
    args.epilogue.ptr_C = (const C **)arr->c;
    args.epilogue.dC = arr->sc;
    args.epilogue.ptr_D = arr->c;
    args.epilogue.dD = arr->sc;
    args.hw_info = hardware_info();
    args.hw_info.sm_count *= factor;
    using Raster = decltype(args.scheduler.raster_order);
    args.scheduler.raster_order = along_n ? Raster::AlongN : Raster::AlongM;
    return args;
}

// The calling thread's stream's state for GEMM type G, epilogue β, grid factor and tile order, made
// at its first use. A weight gradient's factor changes with the counts, so each keeps its own
// operator instead of initializing one again at every change.
template <class G>
Prepared<G> &prepared(cudaStream_t st, float beta, int factor, bool along_n) {
    static Prepared<G> slots[MAX_SLOTS];
    static std::mutex mu;
    std::lock_guard<std::mutex> lock(mu);
    for (int i = 0; i < MAX_SLOTS; i++) {
        Prepared<G> &p = slots[i];
        if (p.arr && p.stream == st && p.beta == beta && p.factor == factor && p.along_n == along_n) return p;
        if (!p.arr) {
            p.stream = st;
            p.beta = beta;
            p.factor = factor;
            p.along_n = along_n;
            CUDA_CHECK(cudaMalloc((void **)&p.arr, sizeof(GroupArrays<G>)));
            p.ws_bytes =
                G::Gemm::get_workspace_size(arguments<G>(p.arr, GEMM_SM90_MAX_GROUPS, 0.0f, factor, along_n));
            // Zeroed once, on st before the GEMM: CUTLASS's kernel reads workspace words that no
            // write compute-sanitizer's initcheck sees has set (its per-multiprocessor TMA
            // descriptors, rewritten in place), and with the fill the grouped-GEMM tests run clean
            // under it (2026-12-06). A slot first made during a capture zeroes at every replay.
            if (p.ws_bytes) CUDA_CHECK(cudaMalloc(&p.ws, p.ws_bytes));
            if (p.ws_bytes) CUDA_CHECK(cudaMemsetAsync(p.ws, 0, p.ws_bytes, st));
            return p;
        }
    }
    CHECK(0, "gemm_sm90: more than %d (stream, beta, grid factor, tile order) keys", (int)MAX_SLOTS);
    return slots[0];
}

// CTAs per multiprocessor for a launch over the groups g with tiles Tile in clusters Cluster.
// CUTLASS's persistent scheduler hands out tiles statically, group after group: CTA i of n takes
// tiles i, i + n, i + 2n, ... A forward or backward_input tile costs the same in every group (K is
// the layer's width), so one CTA per multiprocessor balances. A weight gradient's tile costs its
// group's rows (K = rows), and with skewed counts one CTA's share can be far above the mean (at the
// bench shapes with Zipf counts the kernel ran at 416 TFLOP/s against 570 uniform). A grid of f CTAs
// per multiprocessor lets the hardware start the next CTA wherever one finishes, at a cost per CTA
// (its pipeline fill and last epilogue, measured as about 5 % for four CTAs per multiprocessor with
// uniform counts): the factor is the one of 1..4 whose predicted time, from the counts, is least.
// A weight gradient whose counts are on the device only (a step in a CUDA graph) takes
// kDeviceCountsFactor, a middle ground between uniform counts (best at 1) and skewed ones.
constexpr int kDeviceCountsFactor = 2;
template <class Tile, class Cluster>
int grid_factor(GemmSm90Kind kind, const Groups &g, Tile, Cluster) {
    if (kind != GEMM_SM90_BACKWARD_WEIGHT) return 1;
    if (!g.host) return kDeviceCountsFactor;
    constexpr long kTileCost = 64, kCtaCost = 400;  // in rows of K, from the measurements above
    const int P = hardware_info().sm_count, tm = size<0>(Tile{}), tn = size<1>(Tile{});
    const int cm = size<0>(Cluster{}), cn = size<1>(Cluster{});
    const int tiles_m = (g.OC + tm - 1) / tm, tiles_n = (g.IC + tn - 1) / tn;
    const int tiles = ((tiles_m + cm - 1) / cm * cm) * ((tiles_n + cn - 1) / cn * cn);
    // The prediction depends on the tiles per group and the rows only, which a layer's three weight
    // gradients (W1, W3, W2) share: the last one serves again (tens of microseconds of host time).
    thread_local int last_tiles = 0, last_n = 0, last_best = 1, last_rows[GEMM_SM90_MAX_GROUPS];
    if (tiles == last_tiles && g.n == last_n && !memcmp(g.rows, last_rows, (size_t)g.n * sizeof(int)))
        return last_best;
    std::vector<long> cta;
    int best = 1;
    long best_time = 0;
    for (int f = 1; f <= 4; f++) {
        const int n = f * P;
        cta.assign(n, kCtaCost);
        long t = 0;
        for (int i = 0; i < g.n; i++)
            for (int j = 0; g.rows[i] > 0 && j < tiles; j++, t++) cta[t % n] += g.rows[i] + kTileCost;
        // The CTAs start in order, each on the multiprocessor that frees first.
        std::priority_queue<long, std::vector<long>, std::greater<long>> sm;
        for (int i = 0; i < P; i++) sm.push(0);
        long end = 0;
        for (int i = 0; i < n; i++) {
            const long done = sm.top() + cta[i];
            sm.pop();
            sm.push(done);
            end = std::max(end, done);
        }
        if (f == 1 || end < best_time) best = f, best_time = end;
    }
    last_tiles = tiles, last_n = g.n, last_best = best;
    memcpy(last_rows, g.rows, (size_t)g.n * sizeof(int));
    return best;
}

// The order of a group's output tiles. CUTLASS's grouped scheduler walks them along M by default:
// down one column of tiles (one block of the weight's columns, every row block of the group), then
// the next column. The forward and backward_input read a group's rows (A) once per column, and a
// group larger than what the concurrent CTAs cover (about 132 row blocks: with skewed counts, an
// expert of 25 000 rows at the wide shapes, 100 MB of A) brings A from memory again for every one of
// its 11 to 16 columns, while its weight block (B) sits in L2 unused. Along N the CTAs sweep a few
// row blocks across all columns at once: A is read once and the expert's weights (6 to 8 MB) stay in
// L2. Measured (kernel_bench, H200, Zipf-skewed counts): wide shapes forward 612 → 694 TFLOP/s,
// backward_input 636 → 688, bench shapes forward 546 → 563; uniform and jittered counts the same
// within 1 %. A weight gradient's tiles each stream the whole group along K, and its concurrent
// tiles share their K windows in either order (the same time measured both ways); it keeps CUTLASS's.
bool raster_along_n(GemmSm90Kind kind) {
    if (g_raster != GEMM_SM90_RASTER_BEST) return g_raster == GEMM_SM90_RASTER_N;
    return kind != GEMM_SM90_BACKWARD_WEIGHT;
}

// One launch over the groups g (g.n ≥ 1; counts from dcounts where g.host is false) on the calling
// thread's stream: the setup kernel writes the arrays, then the GEMM reads them (stream order).
// beta: 0 overwrites D without reading it, 1 adds to it; each (stream, beta) keeps its own
// initialized operator.
template <class G>
void launch(const Groups &g, const int *dcounts, GemmSm90Kind kind, void *y, const void *a, const void *b,
            float beta) {
    cudaStream_t st = core_stream();
    const int factor =
        g_grid_factor ? g_grid_factor : grid_factor(kind, g, typename G::Tile{}, typename G::Cluster{});
    const bool along_n = raster_along_n(kind);
    Prepared<G> &p = prepared<G>(st, beta, factor, along_n);
    if (p.groups != g.n) {
        typename G::Gemm::Arguments args = arguments<G>(p.arr, g.n, beta, factor, along_n);
        CUTLASS_CHECK(p.gemm.can_implement(args));
        CHECK(G::Gemm::get_workspace_size(args) <= p.ws_bytes, "gemm_sm90: workspace of %zu bytes too small",
              p.ws_bytes);
        CUTLASS_CHECK(p.gemm.initialize(args, p.ws, st));
        p.groups = g.n;
    }
    setup_kernel<G><<<1, SETUP_THREADS, 0, st>>>(p.arr, g, dcounts, kind, (const Bf16 *)a, (const Bf16 *)b, y);
    CUDA_CHECK_LAUNCH();
    CUTLASS_CHECK(p.gemm.run(st));
    CUDA_CHECK_LAUNCH();
}

// Whether the launch over groups g of configuration Cfg pairs its tiles along N. The scheduler rounds
// each group's tile rows (along M) or tile columns (along N) up to the cluster's 2, and a padding
// tile costs a whole tile's main loop. A forward's or backward_input's M is a group's rows, so with
// counts that are not whole pairs of 128-row tiles (every routing but a uniform one) about half the
// groups pad a tile row along M (an expert of 1 600 rows: 13 tile rows run as 14, 7 % idle), while
// their N is a layer width: an even number of tile columns pads nothing along N. A weight
// gradient's M is OC, which for an odd count of tile rows (an OC of 1408: 11 rows of 128) and 16
// tile columns makes clusters along M run 12 × 16 tiles for 11 × 16. The pairs go along N where
// that pads fewer tiles; on a tie (uniform counts of whole pairs) they stay along M, as measured.
// Counts the host does not have (sized on the device) pad about half the groups along M in a
// forward or backward_input: the pairs go along N where that pads nothing, an even count of tile
// columns. A weight gradient pads the same tiles in every group with rows, whatever their count:
// the comparison is the same as for one group.
template <class Cfg>
bool cluster_along_n(GemmSm90Kind kind, const Groups &g) {
    constexpr long TM = size<0>(typename Cfg::Tile{}), TN = size<1>(typename Cfg::Tile{});
    const long n = kind == GEMM_SM90_FORWARD ? g.OC : g.IC;  // N: OC, or IC for both backward products
    const long tn = (n + TN - 1) / TN;
    if (!g.host && kind != GEMM_SM90_BACKWARD_WEIGHT) return tn % 2 == 0;
    long pad_m = 0, pad_n = 0;
    for (int i = 0; i < (g.host ? g.n : 1); i++) {
        if (g.host && g.rows[i] == 0) continue;  // no tiles
        const long tm = ((kind == GEMM_SM90_BACKWARD_WEIGHT ? g.OC : g.rows[i]) + TM - 1) / TM;
        pad_m += (tm % 2) * tn;
        pad_n += tm * (tn % 2);
    }
    return pad_n < pad_m;
}

// The product kind, its tiles in the clusters that pad fewer (or along M where gemm_sm90_set_pairs
// forces it: kernel_bench's measure of what pairing along N gains).
void launch_kind(const Groups &g, const int *dcounts, GemmSm90Kind kind, void *y, const void *a, const void *b,
                 float beta) {
    const bool along_n = g_pairs == GEMM_SM90_PAIRS_BEST && cluster_along_n<Tiles>(kind, g);
    if (kind == GEMM_SM90_FORWARD && along_n) launch<ForwardGemm<TilesAlongN>>(g, dcounts, kind, y, a, b, 0.0f);
    else if (kind == GEMM_SM90_FORWARD) launch<ForwardGemm<Tiles>>(g, dcounts, kind, y, a, b, 0.0f);
    else if (kind == GEMM_SM90_BACKWARD_INPUT && along_n)
        launch<BackwardInputGemm<TilesAlongN>>(g, dcounts, kind, y, a, b, beta);
    else if (kind == GEMM_SM90_BACKWARD_INPUT) launch<BackwardInputGemm<Tiles>>(g, dcounts, kind, y, a, b, beta);
    else if (along_n) launch<BackwardWeightGemm<TilesAlongN>>(g, dcounts, kind, y, a, b, beta);
    else launch<BackwardWeightGemm<Tiles>>(g, dcounts, kind, y, a, b, beta);
}

}  // namespace gemm_sm90

using namespace gemm_sm90;

extern "C" void gemm_sm90_set_grid_factor(int factor) {
    CHECK(factor >= 0 && factor <= GEMM_SM90_MAX_GRID_FACTOR, "gemm_sm90: grid factor %d outside [0, %d]", factor,
          (int)GEMM_SM90_MAX_GRID_FACTOR);
    g_grid_factor = factor;
}

extern "C" void gemm_sm90_set_raster(int raster) {
    CHECK(raster >= GEMM_SM90_RASTER_BEST && raster <= GEMM_SM90_RASTER_N, "gemm_sm90: unknown tile order %d", raster);
    g_raster = raster;
}

extern "C" int gemm_sm90_available(void) {
    static int avail = -1;
    if (avail < 0) {
        int dev = 0, major = 0, minor = 0;
        CUDA_CHECK(cudaGetDevice(&dev));
        CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev));
        CUDA_CHECK(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev));
        avail = major == 9 && minor == 0;
    }
    return avail;
}

extern "C" void gemm_sm90_set_pairs(int pairs) {
    CHECK(pairs == GEMM_SM90_PAIRS_BEST || pairs == GEMM_SM90_PAIRS_M, "gemm_sm90: unknown pairing %d", pairs);
    g_pairs = pairs;
}

extern "C" int gemm_sm90_shapes_ok(int IC, int OC) { return IC > 0 && OC > 0 && IC % 8 == 0 && OC % 8 == 0; }

extern "C" int gemm_sm90_device_counts_ok(GemmSm90Kind kind, int G) {
    return kind >= GEMM_SM90_FORWARD && kind <= GEMM_SM90_BACKWARD_WEIGHT && G >= 1 && G <= GEMM_SM90_MAX_GROUPS;
}

extern "C" void gemm_sm90_grouped(GemmSm90Kind kind, void *y, const void *a, const void *b, const int *counts,
                                  const int *dcounts, int G, int IC, int OC, int acc) {
    CHECK(gemm_sm90_available(), "gemm_sm90: needs a GPU of compute capability 9.0");
    CHECK(gemm_sm90_shapes_ok(IC, OC), "gemm_sm90: IC %d and OC %d must be positive multiples of 8", IC, OC);
    CHECK(counts || (dcounts && gemm_sm90_device_counts_ok(kind, G)),
          "gemm_sm90: product %d of %d groups needs its counts on the host", (int)kind, G);
    const float beta = acc ? 1.0f : 0.0f;
    // Launches of up to GEMM_SM90_MAX_GROUPS groups each, one after another.
    Groups g;
    g.IC = IC, g.OC = OC, g.host = counts != NULL, g.row0 = 0;
    for (g.e0 = 0; g.e0 < G; g.e0 += g.n) {
        g.n = std::min(G - g.e0, (int)GEMM_SM90_MAX_GROUPS);
        long rows = 0;
        for (int i = 0; g.host && i < g.n; i++) {
            CHECK(counts[g.e0 + i] >= 0, "gemm_sm90: group %d has %d rows", g.e0 + i, counts[g.e0 + i]);
            g.rows[i] = counts[g.e0 + i];
            rows += g.rows[i];
        }
        if (g.host && rows == 0) continue;  // no tiles: nothing to launch
        launch_kind(g, dcounts, kind, y, a, b, beta);
        g.row0 += rows;
    }
}
