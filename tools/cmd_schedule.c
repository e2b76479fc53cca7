// `moelab schedule`: prints a pipeline schedule (text or JSON), simulates it with per-op costs and
// reports each rank's idle time, draws it as SVG or writes it as a Chrome trace; or draws a measured
// timeline from a Chrome trace. A thin front end over parallel/schedule, simulator and schedule_svg.
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "framework/core/check.h"
#include "framework/core/file.h"
#include "framework/core/num.h"
#include "parallel/schedule.h"
#include "parallel/schedule_svg.h"
#include "parallel/simulator.h"
#include "tools/commands.h"

static const char *HELP =
    "usage: moelab schedule --kind 1f1b|dualpipe|dualpipev --pp N --chunks C [options]\n"
    "       moelab schedule --from-trace FILE --svg OUT [--kind K]\n"
    "\n"
    "Prints the per-rank op list of a pipeline schedule (docs/architecture.md §5, docs/pipeline.md),\n"
    "checks it by playing all ranks against each other, and simulates it with per-op costs.\n"
    "\n"
    "  --kind K          1f1b, dualpipe (N even, C even, C >= 2N) or dualpipev (C >= 2N)\n"
    "  --pp N            pipeline ranks, 1 to 256\n"
    "  --chunks C        micro-batches per step, 1 to 512\n"
    "  --format F        text (default: ops per rank, then simulated idle time per rank) or json\n"
    "  --svg FILE        draw the simulated (or, with --from-trace, the measured) timeline\n"
    "  --trace FILE      write the simulated timeline as a Chrome trace (opens in Perfetto)\n"
    "  --cost-f X        cost of a forward chunk (default 1)\n"
    "  --cost-b X        cost of a FULL backward chunk, input and weights (default 2)\n"
    "  --cost-w X        cost of the weight-gradient part of a backward (default 1)\n"
    "  --cost-fb X       cost of an overlapped forward & backward (default 3)\n"
    "  --cost-p2p X      latency of one message between ranks (default 0); every cost in [0, 1e12]\n"
    "  --from-trace FILE read a measured Chrome trace (moelab train --trace) instead: takes only --svg\n"
    "                    and --kind; with --kind, which must be the schedule the trace ran, also the\n"
    "                    measured mean op costs and the bubble formula they give\n"
    "\n"
    "Text tokens: F3d forward of micro-batch 3 in the down pipe, B0u backward (u = up pipe),\n"
    "B0u* backward with W deferred, W0u the deferred W of B0u, FB(4d,1u) F4d and B1u overlapped.\n";

// One usage-error line that points at --help; returns exit code 2.
static int usage(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int usage(const char *fmt, ...) {
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return core_usage_report("%s (see moelab schedule --help)", msg);
}

// An output file named by flag. One that cannot be created or written is bad input (exit 2) where
// the path is wrong and the machine's failure (exit 1) where the device failed (a full disk).
// Either way nothing is left at the path, and a file already there stays as it was (core_out_open).
static int output_open(CoreOut *o, const char *flag, const char *path) {
    const char *kind = core_data_file_kind(path);
    if (kind) {
        o->tmp[0] = '\0';  // core_out_abort passes over it
        return core_usage_report("%s %s is %s: writing it would destroy it", flag, path, kind);
    }
    const int e = core_out_open(o, path);
    return e ? core_out_report(e, "cannot write %s %s", flag, path) : 0;
}

static int output_close(CoreOut *o) {
    const int e = core_out_close(o);
    return e ? core_out_report(e, "cannot write %s", o->path) : 0;
}

// Bounds of the flags: more ranks or micro-batches than any pipeline has (256 ranks of DualPipe need
// 512), and costs whose sums over every op of the largest schedule stay exact in a double. Time and
// memory grow with N x C (and with N^2): the largest schedule (DualPipeV) takes 0.3 s and 80 MB, 1.3 s
// with --svg and --trace (90 and 40 MB files) on a 2-core machine, so no schedule needs a memory
// check; the old bound, N 65536, took over a minute.
enum { MAX_PP = 256, MAX_CHUNKS = 512 };
static const double MAX_COST = 1e12;

// The flags of a simulated schedule; --from-trace refuses them (a measured run has its own ranks,
// micro-batches and op times, and draws only the SVG).
static const char *const SIMULATED_ONLY[] = {"--pp", "--chunks", "--format", "--trace", "--cost-f", "--cost-b",
                                             "--cost-w", "--cost-fb", "--cost-p2p", NULL};

static const char *DISPLAY[] = {"1F1B", "DualPipe", "DualPipeV"};

static const char *FORMULA[] = {"(N-1)(F+B)", "(N/2-1)(F&B+B-3W)", "(N-1)(F&B+B-3W)"};

// unit: " µs" for a measured trace, "" for the simulator's cost units.
static void print_idle(const SimTimeline *tl, const char *unit) {
    double span = tl->t1 - tl->t0;
    printf("step time %.6g%s\n", span, unit);
    for (int r = 0; r < tl->R; r++)
        printf("rank %d: busy %.6g%s, idle %.6g%s (%.1f%%)\n", r, tl->busy[r], unit, tl->bubble[r], unit,
               span > 0 ? 100 * tl->bubble[r] / span : 0.0);
}

// Mean op costs of a measured timeline in SimCosts' terms: f over the F ops; w over the W ops; b over
// every backward, a B that defers its W counted as its time plus w (it measures b − w); fb likewise
// over every F&B (f + b where none ran). ran[0], ran[1]: whether any W, any F&B ran. (b took the
// full backwards alone where there were any, leaving out half of DualPipe's: review, 2026-12-06.)
static SimCosts measured_costs(const SimTimeline *tl, int ran[2]) {
    double sum[6] = {0}, n[6] = {0};  // F, B, B deferring W, W, F&B, F&B deferring W
    for (int r = 0; r < tl->R; r++)
        for (int i = 0; i < tl->n[r]; i++) {
            const SchedOp *op = &tl->ev[r][i].op;
            const int k = op->kind == SCHED_F ? 0 : op->kind == SCHED_B ? 1 + op->b.defer_w
                        : op->kind == SCHED_W ? 3 : 4 + op->b.defer_w;
            sum[k] += tl->ev[r][i].end - tl->ev[r][i].start;
            n[k] += 1;
        }
    SimCosts c = {n[0] > 0 ? sum[0] / n[0] : 0, 0, n[3] > 0 ? sum[3] / n[3] : 0, 0, 0};
    c.b = n[1] + n[2] > 0 ? (sum[1] + sum[2] + n[2] * c.w) / (n[1] + n[2]) : 0;
    c.fb = n[4] + n[5] > 0 ? (sum[4] + sum[5] + n[5] * c.w) / (n[4] + n[5]) : c.f + c.b;
    ran[0] = n[3] > 0;
    ran[1] = n[4] + n[5] > 0;
    return c;
}

// Why a measured timeline cannot be a run of schedule `kind`, into why; 0 when it fits. The formula
// of one kind at another's trace is a wrong figure printed as a right one (a one-rank 1F1B trace as
// DualPipe gave a negative bubble), so the kind must match what only that schedule's op lists hold
// (parallel/schedule.c): 1F1B runs the down pipe alone, with full backwards and no F&B; DualPipe
// and DualPipeV run both pipes, DualPipe on an even number of ranks with the up pipe's micro-batches
// its own (the last C/2 ids), DualPipeV with every micro-batch going down and back up the V (the
// same ids in both pipes).
static int kind_misfit(const SimTimeline *tl, int kind, char *why, size_t len) {
    // The formula takes R ranks that each ran the schedule. The ranks are counted from the highest
    // rank number, and one damaged pid (1 -> 3, or 1E+2) gave a 2-rank run the formula of 4 or 101
    // ranks, at up to 1 689 % of the step (fuzzing, 2026-12-07).
    for (int r = 0; r < tl->R; r++)
        if (tl->n[r] == 0) {
            snprintf(why, len, "its rank %d ran no op, and the formula counts %d ranks that each ran the schedule", r,
                     tl->R);
            return 1;
        }
    char up[48] = "", fb[48] = "", defer[48] = "";  // the first op of each sort, as a token
    long max_down = -1, min_up = -1;                 // micro-batch ids; -1 when the pipe has none
    for (int r = 0; r < tl->R; r++)
        for (int i = 0; i < tl->n[r]; i++) {
            const SchedOp *op = &tl->ev[r][i].op;
            // The cells the op runs: F its forward, B and W their backward, F&B both.
            const SchedCell *cell[2] = {op->kind == SCHED_F || op->kind == SCHED_FB ? &op->f : NULL,
                                        op->kind != SCHED_F ? &op->b : NULL};
            for (int k = 0; k < 2; k++) {
                const SchedCell *c = cell[k];
                if (!c) continue;
                if (c->pipe == SCHED_UP) {
                    if (!up[0]) sched_op_label(op, up, sizeof up);
                    if (min_up < 0 || c->mb < min_up) min_up = c->mb;
                } else if (c->mb > max_down) {
                    max_down = c->mb;
                }
            }
            if (op->kind == SCHED_FB && !fb[0]) sched_op_label(op, fb, sizeof fb);
            if ((op->kind == SCHED_W || (op->kind != SCHED_F && op->b.defer_w)) && !defer[0])
                sched_op_label(op, defer, sizeof defer);
        }
    if (kind == SCHED_1F1B) {
        if (up[0]) snprintf(why, len, "it has the up-pipe op %s and 1F1B runs the down pipe only", up);
        else if (fb[0]) snprintf(why, len, "it has the F&B op %s and 1F1B overlaps no forward with a backward", fb);
        else if (defer[0]) snprintf(why, len, "it has %s, a deferred W, and 1F1B runs full backwards only", defer);
        return up[0] || fb[0] || defer[0];
    }
    const char *name = DISPLAY[kind];
    if (kind == SCHED_DUALPIPE && tl->R % 2) {
        snprintf(why, len, "it has %d rank%s and DualPipe needs an even number", tl->R, tl->R == 1 ? "" : "s");
        return 1;
    }
    if (!up[0]) {
        snprintf(why, len, "it has no up-pipe ops (a 1F1B run?) and %s runs both pipes", name);
        return 1;
    }
    if (kind == SCHED_DUALPIPE && min_up <= max_down) {
        snprintf(why, len, "its up pipe runs micro-batch %ld, not above the down pipe's (up to %ld), and "
                 "DualPipe gives each pipe its own (a DualPipeV run?)", min_up, max_down);
        return 1;
    }
    if (kind == SCHED_DUALPIPEV && min_up > max_down) {
        snprintf(why, len, "no micro-batch runs in both pipes (a DualPipe run?); DualPipeV's go down and "
                 "back up the V");
        return 1;
    }
    return 0;
}

// kind < 0: draw and report idle time only; else also the §5 formula at the measured costs.
static int from_trace(const char *trace, const char *svg, int kind) {
    char err[SCHED_ERR_LEN], title[512];
    SimTimeline *tl = sim_read_trace(trace, err);
    if (!tl) return core_usage_report("%s", err);
    // Checked before the SVG is created: a refused --kind leaves no file and prints nothing else.
    if (kind >= 0 && kind_misfit(tl, kind, err, sizeof err)) {
        const int rc = usage("--kind %s does not fit %s: %s", sched_kind_name(kind), trace, err);
        sim_free(tl);
        return rc;
    }
    CoreOut out;
    int rc = output_open(&out, "--svg", svg);
    if (!rc) {
        // The file's name without its folders (often a temporary one), and the schedule when named.
        const char *slash = strrchr(trace, '/'), *name = slash ? slash + 1 : trace;
        snprintf(title, sizeof title, "Measured timeline: %s%sPP %d (%.200s)", kind >= 0 ? DISPLAY[kind] : "",
                 kind >= 0 ? ", " : "", tl->R, name);
        sched_svg_write(tl, title, "µs", out.f);
        rc = output_close(&out);
    }
    if (!rc) printf("wrote %s\n", svg);
    if (!rc) print_idle(tl, " µs");
    if (!rc && kind >= 0) {
        int ran[2];
        const SimCosts c = measured_costs(tl, ran);
        const double span = tl->t1 - tl->t0, formula = sim_bubble_formula(kind, tl->R, &c);
        double idle = 0;
        for (int r = 0; r < tl->R; r++) idle += tl->bubble[r] / tl->R;
        // A cost no op measured is said as such (a 1F1B trace printed "W 0, F&B" as if measured).
        printf("measured mean costs (µs): F %.6g, B %.6g, ", c.f, c.b);
        if (ran[0]) printf("W %.6g, ", c.w);
        else printf("W none ran (0), ");
        if (ran[1]) printf("F&B %.6g\n", c.fb);
        else printf("F&B none ran (F + B = %.6g)\n", c.fb);
        printf("idle per rank: measured %.6g (%.1f%% of the step), formula %s = %.6g (%.1f%%)\n", idle,
               span > 0 ? 100 * idle / span : 0.0, FORMULA[kind], formula, span > 0 ? 100 * formula / span : 0.0);
    }
    sim_free(tl);
    return rc;
}

int cmd_schedule(int argc, char **argv) {
    const char *kind_name = NULL, *format = "text", *svg = NULL, *trace = NULL, *from = NULL;
    int N = 0, C = 0, have_n = 0, have_c = 0;
    const char *simulated_only = NULL;  // the first argument with a SIMULATED_ONLY flag
    SimCosts cost = {1, 2, 1, 3, 0};
    struct { const char *flag; double *v; } costs[5] = {{"--cost-f", &cost.f}, {"--cost-b", &cost.b},
        {"--cost-w", &cost.w}, {"--cost-fb", &cost.fb}, {"--cost-p2p", &cost.p2p}};

    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            fputs(HELP, stdout);
            return 0;
        }
        // Every flag takes a value, as "--flag value" or "--flag=value".
        const char *a = argv[i];
        if (strncmp(a, "--", 2) != 0) return usage("unexpected argument '%s'", a);
        const size_t nlen = cmd_flag_len(a);
        // Known before its value is asked for: `--bogus` at the end was "--bogus needs a value". FLAGS
        // is exactly the branches below (the last one is --from-trace).
        static const char *const FLAGS[] = {"--kind", "--pp", "--chunks", "--format", "--svg", "--trace",
            "--from-trace", "--cost-f", "--cost-b", "--cost-w", "--cost-fb", "--cost-p2p", NULL};
        if (!cmd_flag_in(a, nlen, FLAGS)) return usage("unknown option '%.*s'", (int)nlen, a);
        const char *val = cmd_flag_value(argc, argv, &i);
        if (!val || !*val) return usage("%.*s needs a value%s", (int)nlen, a, val ? ", not an empty one" : "");
        int cost_i = -1;
        for (int k = 0; k < 5; k++)
            if (cmd_flag_is(a, nlen, costs[k].flag)) cost_i = k;
        char err[NUM_ERR_LEN];
        long long n;
        if (!simulated_only && cmd_flag_in(a, nlen, SIMULATED_ONLY)) simulated_only = a;
        if (cost_i >= 0) {
            if (num_parse_real(costs[cost_i].flag, val, 0, MAX_COST, costs[cost_i].v, err))
                return usage("%s", err);
        } else if (cmd_flag_is(a, nlen, "--kind")) {
            kind_name = val;
        } else if (cmd_flag_is(a, nlen, "--pp")) {
            if (num_parse_int("--pp", val, 1, MAX_PP, &n, err)) return usage("%s", err);
            N = (int)n;
            have_n = 1;
        } else if (cmd_flag_is(a, nlen, "--chunks")) {
            if (num_parse_int("--chunks", val, 1, MAX_CHUNKS, &n, err)) return usage("%s", err);
            C = (int)n;
            have_c = 1;
        } else if (cmd_flag_is(a, nlen, "--format")) {
            format = val;
        } else if (cmd_flag_is(a, nlen, "--svg")) {
            svg = val;
        } else if (cmd_flag_is(a, nlen, "--trace")) {
            trace = val;
        } else {  // --from-trace
            from = val;
        }
    }

    // Each output opens its own temporary beside its path and truncates nothing until it is renamed
    // over it: one path for both outputs, or an output on the trace read, would end as whichever
    // file came last.
    if (svg && trace && core_same_file(svg, trace)) return usage("--svg and --trace are the same file, %s", svg);
    if (from && svg && core_same_file(from, svg))
        return usage("--svg %s is the --from-trace file: writing it would replace the trace", svg);
    if (from) {
        if (!svg) return usage("--from-trace needs --svg OUT");
        // Refused rather than ignored without a word (--trace, --format and --cost-* were).
        if (simulated_only)
            return usage("--from-trace draws a measured run: drop %.*s (only a simulated schedule takes it)",
                         (int)cmd_flag_len(simulated_only), simulated_only);
        const int k = kind_name ? sched_kind_parse(kind_name) : -1;
        if (kind_name && k < 0) return usage("--kind must be 1f1b, dualpipe or dualpipev, got '%s'", kind_name);
        return from_trace(from, svg, k);
    }
    if (!kind_name || !have_n || !have_c) return usage("--kind, --pp and --chunks are required");
    int kind = sched_kind_parse(kind_name);
    if (kind < 0) return usage("--kind must be 1f1b, dualpipe or dualpipev, got '%s'", kind_name);
    int json = strcmp(format, "json") == 0;
    if (!json && strcmp(format, "text") != 0) return usage("--format must be text or json, got '%s'", format);

    char err[SCHED_ERR_LEN];
    if (sim_costs_check(&cost, err)) return usage("%s", err);
    Schedule *s = sched_build(kind, N, C, err);
    if (!s) return usage("%s", err);
    // The generators are exact; a failed play would be a bug in them, reported as such.
    SimTimeline *tl = sim_run(s, &cost, err);
    if (!tl) {
        sched_free(s);
        return core_failure_report("%s schedule failed validation: %s", kind_name, err);
    }
    // Both files are created before anything is written, so that a path that cannot be is the one
    // message of the run (exit 2), with nothing on stdout.
    CoreOut svg_out = {0}, trace_out = {0};
    int rc = svg ? output_open(&svg_out, "--svg", svg) : 0;
    if (!rc && trace) rc = output_open(&trace_out, "--trace", trace);
    if (rc) {
        // (An abort of a file that was not opened does nothing.)
        core_out_abort(&svg_out);
        sim_free(tl);
        sched_free(s);
        return rc;
    }
    if (json) {
        sched_write_json(s, stdout);
    } else {
        printf("%s: %d ranks, %d micro-batches\n", DISPLAY[kind], N, C);
        sched_write_text(s, stdout);
        printf("simulated with F %.6g, B %.6g, W %.6g, F&B %.6g, p2p %.6g:\n", cost.f, cost.b, cost.w, cost.fb,
               cost.p2p);
        print_idle(tl, "");
        printf("bubble formula %s = %.6g (docs/pipeline.md says when it is exact)\n", FORMULA[kind],
               sim_bubble_formula(kind, N, &cost));
    }
    if (svg) {
        char title[256];
        snprintf(title, sizeof title, "%s, PP %d, %d micro-batches (F %.6g, B %.6g, W %.6g, F&B %.6g)",
                 DISPLAY[kind], N, C, cost.f, cost.b, cost.w, cost.fb);
        sched_svg_write(tl, title, "cost units", svg_out.f);
        rc = output_close(&svg_out);
    }
    if (trace) sim_write_trace_to(tl, trace_out.f);
    // The trace is renamed into place only when the SVG was; else it is removed.
    if (!rc && trace) rc = output_close(&trace_out);
    core_out_abort(&trace_out);
    // Said once both are in place; JSON mode keeps stdout to the JSON.
    if (!rc && !json && svg) printf("wrote %s\n", svg);
    if (!rc && !json && trace) printf("wrote %s\n", trace);
    sim_free(tl);
    sched_free(s);
    return rc;
}
