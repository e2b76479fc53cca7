// Pipeline timelines: the cost simulator (per-op costs F, B, W, F&B → each rank's op start/end and
// idle time, docs/architecture.md §5) and a reader that builds the same timeline from a measured Chrome
// trace, so that planned and measured schedules are drawn and compared the same way.
#ifndef MOELAB_PARALLEL_SIMULATOR_H
#define MOELAB_PARALLEL_SIMULATOR_H

#include "parallel/schedule.h"

#ifdef __cplusplus
extern "C" {
#endif

// Costs in the notation of the DeepSeek-V3 report (Table 2): b is a FULL backward (input and
// weight gradients); a backward whose W is deferred costs b − w and the W op costs w. An F&B op
// costs fb (fb − w if its backward defers W). p2p is the latency of one message between ranks.
typedef struct {
    double f, b, w, fb, p2p;
} SimCosts;

typedef struct {
    SchedOp op;            // what ran
    double start, end;     // cost units (simulator) or µs from the trace's first event
} SimEvent;

typedef struct {
    int R;                 // ranks
    int *n;                // (R) events per rank
    SimEvent **ev;         // (R) arrays of n[r] events in start order
    double t0, t1;         // earliest start, latest end over all ranks
    double *busy;          // (R) time rank r spends in ops
    double *bubble;        // (R) (t1 − t0) − busy[r]: rank r's idle time within the step
} SimTimeline;

// Checks costs (finite, ≥ 0, w ≤ b, and w ≤ fb): 0, or 1 with a message in err.
int sim_costs_check(const SimCosts *c, char *err);
double sim_op_cost(const SimCosts *c, const SchedOp *op);

// Times every op of a valid schedule (sched_play). NULL with err (SCHED_ERR_LEN bytes) if the
// schedule is invalid or the costs are bad.
SimTimeline *sim_run(const Schedule *s, const SimCosts *c, char *err);

// The bubble formula of §5 for a schedule kind, given costs: 1F1B (N−1)(F+B); DualPipe
// (N/2−1)(F&B + B − 3W); DualPipeV, whose N ranks hold 2N stages, (N−1)(F&B + B − 3W) (the DualPipe
// formula with PP counted in stages). docs/pipeline.md says when the simulator reproduces them.
double sim_bubble_formula(SchedKind kind, int N, const SimCosts *c);

// Reads a Chrome trace: a JSON array of events or {"traceEvents": [...]}. Complete events
// ("ph": "X") whose "name" is an op token (sched_op_label: F3d, B0u*, W0u, FB(4d,1u)) become
// timeline events of rank "pid" (or "tid" when there is no pid) at "ts" for "dur" µs; other events
// (sends, optimizer, metadata) are skipped. A rank's op events are taken not to overlap (an F&B is
// one event), so busy is their summed duration. NULL with err (SCHED_ERR_LEN bytes) when path is
// not a regular file (a FIFO is refused without blocking) or not such a trace, or its op events span
// more than 1e15 µs; a read error of the file ends the process (exit 1).
SimTimeline *sim_read_trace(const char *path, char *err);
// Writes a timeline to f as a Chrome trace that sim_read_trace reads back (times taken as µs); the
// caller checks the stream.
void sim_write_trace_to(const SimTimeline *tl, FILE *f);
// The same into the file path, whole or not at all (core_out_open): 0, or 1 with a message in err.
int sim_write_trace(const SimTimeline *tl, const char *path, char *err);

void sim_free(SimTimeline *tl);

#ifdef __cplusplus
}
#endif
#endif
