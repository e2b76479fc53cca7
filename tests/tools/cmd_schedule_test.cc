// `moelab schedule`: text and JSON output, SVG and trace files, --from-trace, and exit code 2 with
// a message for every kind of bad argument.
#include <gtest/gtest.h>

#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

extern "C" {
#include "parallel/schedule.h"
#include "tools/commands.h"
#include "tests/util/tmp.h"
}

namespace {

struct Result {
    int rc;
    std::string out, err;
};

Result run(std::vector<std::string> args) {
    args.insert(args.begin(), "schedule");
    std::vector<char *> argv;
    for (auto &a : args) argv.push_back(&a[0]);
    testing::internal::CaptureStdout();
    testing::internal::CaptureStderr();
    int rc = cmd_schedule((int)argv.size(), argv.data());
    fflush(stdout);
    Result r{rc, testing::internal::GetCapturedStdout(), testing::internal::GetCapturedStderr()};
    return r;
}

std::string slurp(const std::string &path) {
    std::ifstream in(path);
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
}

// Writes text to path (a trace, an old output); false where it could not.
bool spit(const std::string &path, const std::string &text) {
    std::ofstream out(path, std::ios::binary);
    out << text;
    return bool(out.flush());
}

TEST(CmdSchedule, Help) {
    Result r = run({"--help"});
    EXPECT_EQ(r.rc, 0);
    EXPECT_NE(r.out.find("usage: moelab schedule --kind"), std::string::npos);
}

TEST(CmdSchedule, TextOneFOneB) {
    Result r = run({"--kind", "1f1b", "--pp", "2", "--chunks=2"});
    EXPECT_EQ(r.rc, 0) << r.err;
    EXPECT_EQ(r.out,
              "1F1B: 2 ranks, 2 micro-batches\n"
              "rank 0: F0d F1d B0d B1d\n"
              "rank 1: F0d B0d F1d B1d\n"
              "simulated with F 1, B 2, W 1, F&B 3, p2p 0:\n"
              "step time 9\n"
              "rank 0: busy 6, idle 3 (33.3%)\n"
              "rank 1: busy 6, idle 3 (33.3%)\n"
              "bubble formula (N-1)(F+B) = 3 (docs/pipeline.md says when it is exact)\n");
}

// In text mode the files written are named last (JSON mode keeps stdout to the JSON, above).
TEST(CmdSchedule, TextNamesTheFilesWritten) {
    const std::string svg = test_tmp_file("named_svg"), trace = test_tmp_file("named_trace");
    Result r = run({"--kind", "1f1b", "--pp", "2", "--chunks", "2", "--svg", svg, "--trace", trace});
    EXPECT_EQ(r.rc, 0) << r.err;
    const std::string tail = "wrote " + svg + "\nwrote " + trace + "\n";
    ASSERT_GE(r.out.size(), tail.size()) << r.out;
    EXPECT_EQ(r.out.substr(r.out.size() - tail.size()), tail) << r.out;
    remove(svg.c_str());
    remove(trace.c_str());
}

TEST(CmdSchedule, TextDualPipeCosts) {
    Result r = run({"--kind", "dualpipe", "--pp", "4", "--chunks", "8", "--cost-f", "2", "--cost-b", "3",
                    "--cost-w", "1", "--cost-fb", "5"});
    EXPECT_EQ(r.rc, 0) << r.err;
    // F = B − W and F&B = F + B: every rank idles (N/2 − 1)(F&B + B − 3W) = 5.
    for (int k = 0; k < 4; k++)
        EXPECT_NE(r.out.find("rank " + std::to_string(k) + ": busy"), std::string::npos);
    EXPECT_NE(r.out.find("idle 5 ("), std::string::npos);
    EXPECT_NE(r.out.find("rank 0: F0d F1d F2d F4u B4u* W4u F5u FB(3d,5u)"), std::string::npos) << r.out;
    EXPECT_NE(r.out.find("bubble formula (N/2-1)(F&B+B-3W) = 5"), std::string::npos);
}

TEST(CmdSchedule, JsonAndFiles) {
    std::string svg = test_tmp_file("svg"), trace = test_tmp_file("trace"), svg2 = test_tmp_file("svg2");
    Result r = run({"--kind", "dualpipev", "--pp", "3", "--chunks", "7", "--format", "json", "--svg", svg,
                    "--trace", trace});
    EXPECT_EQ(r.rc, 0) << r.err;
    EXPECT_EQ(r.out.rfind("{\"ranks\": [\n  [{\"op\": \"F\", \"mb\": 0, \"pipe\": \"down\"}", 0), 0u) << r.out;
    EXPECT_EQ(r.out.substr(r.out.size() - 3), "]}\n");
    EXPECT_NE(r.out.find("\"defer_w\": true"), std::string::npos);
    EXPECT_EQ(r.out.find("step time"), std::string::npos);  // JSON mode prints JSON only
    std::string s = slurp(svg);
    EXPECT_NE(s.find("DualPipeV, PP 3, 7 micro-batches"), std::string::npos);
    EXPECT_NE(s.find("<rect class=\"op\""), std::string::npos);

    Result m = run({"--from-trace", trace, "--svg", svg2});
    EXPECT_EQ(m.rc, 0) << m.err;
    EXPECT_NE(m.out.find("rank 2: busy"), std::string::npos);
    EXPECT_EQ(m.out.rfind("wrote " + svg2 + "\n", 0), 0u) << m.out;  // the file first, then its figures
    // A measured trace's figures are microseconds, and say so (a new user saw bare numbers).
    EXPECT_NE(m.out.find(" µs\nrank 0: busy "), std::string::npos) << m.out;
    EXPECT_NE(m.out.find(" µs, idle "), std::string::npos) << m.out;
    std::string s2 = slurp(svg2);
    // The title names the file, not the folder it sits in (often a temporary one).
    const std::string base = trace.substr(trace.rfind('/') + 1);
    EXPECT_NE(s2.find("Measured timeline: PP 3 (" + base + ")"), std::string::npos) << s2.substr(0, 400);
    EXPECT_EQ(s2.find(trace), std::string::npos);
    EXPECT_NE(s2.find("time (µs)"), std::string::npos);
    // With --kind: the simulated costs come back from the timeline, and the formula with them.
    Result k = run({"--from-trace", trace, "--svg", svg2, "--kind", "dualpipev"});
    EXPECT_EQ(k.rc, 0) << k.err;
    EXPECT_NE(slurp(svg2).find("Measured timeline: DualPipeV, PP 3 (" + base + ")"), std::string::npos);
    EXPECT_NE(k.out.find("measured mean costs (µs): F 1, B 2, W 1, F&B 3\n"), std::string::npos) << k.out;
    EXPECT_NE(k.out.find("formula (N-1)(F&B+B-3W) = 4 ("), std::string::npos) << k.out;
    // A 1F1B trace has no W and no F&B: said, not printed as measured (review, 2026-12-06).
    EXPECT_EQ(run({"--kind", "1f1b", "--pp", "2", "--chunks", "4", "--trace", trace}).rc, 0);
    Result one = run({"--from-trace", trace, "--svg", svg2, "--kind", "1f1b"});
    EXPECT_EQ(one.rc, 0) << one.err;
    EXPECT_NE(one.out.find("measured mean costs (µs): F 1, B 2, W none ran (0), F&B none ran (F + B = 3)\n"),
              std::string::npos) << one.out;
    remove(svg.c_str());
    remove(svg2.c_str());
    remove(trace.c_str());
}

// The figures --from-trace --kind prints against the formula: the measured idle time is the mean over
// the ranks, and each figure's share of the step is its own. A 1F1B step of 2 ranks, 1 micro-batch
// and a p2p latency of 0.5: F [0,1] → F [1.5,2.5] B [2.5,4.5] → B [5,7]; each rank idles 7 − 3 = 4,
// which the formula (N−1)(F+B) = 3 leaves the latency out of.
TEST(CmdSchedule, FromTraceMeasuredIdleIsTheMeanOverRanks) {
    const std::string trace = test_tmp_file("idle_trace"), svg = test_tmp_file("idle_svg");
    ASSERT_EQ(run({"--kind", "1f1b", "--pp", "2", "--chunks", "1", "--cost-p2p", "0.5", "--trace", trace}).rc, 0);
    Result r = run({"--from-trace", trace, "--svg", svg, "--kind", "1f1b"});
    EXPECT_EQ(r.rc, 0) << r.err;
    EXPECT_NE(r.out.find("step time 7 µs\n"), std::string::npos) << r.out;
    EXPECT_NE(r.out.find("idle per rank: measured 4 (57.1% of the step), formula (N-1)(F+B) = 3 (42.9%)\n"),
              std::string::npos) << r.out;
    remove(trace.c_str());
    remove(svg.c_str());
}

// An F&B that defers its W measures F&B − W, so the mean F&B cost adds W back, as for a deferring B
// (the generators emit no such F&B, but a measured trace may hold one). Trace: F1d 1 µs, FB(2d,0u*)
// 2 µs, W0u 1 µs on one rank → F 1, W 1, F&B 2 + 1 = 3.
TEST(CmdSchedule, FromTraceDeferringFAndBCountsItsW) {
    const std::string trace = test_tmp_file("fbw_trace"), svg = test_tmp_file("fbw_svg");
    ASSERT_TRUE(spit(trace, "[{\"name\": \"F1d\", \"ph\": \"X\", \"pid\": 0, \"ts\": 0, \"dur\": 1},\n"
                            " {\"name\": \"FB(2d,0u*)\", \"ph\": \"X\", \"pid\": 0, \"ts\": 1, \"dur\": 2},\n"
                            " {\"name\": \"W0u\", \"ph\": \"X\", \"pid\": 0, \"ts\": 3, \"dur\": 1}]\n"));
    Result r = run({"--from-trace", trace, "--svg", svg, "--kind", "dualpipev"});
    EXPECT_EQ(r.rc, 0) << r.err;
    EXPECT_NE(r.out.find("measured mean costs (µs): F 1, B 0, W 1, F&B 3\n"), std::string::npos) << r.out;
    remove(trace.c_str());
    remove(svg.c_str());
}

// DualPipe gives each pipe its own micro-batches: an up pipe that starts at the down pipe's last id
// (micro-batch 1 in both) does not fit, as an up pipe that starts below it does not.
TEST(CmdSchedule, FromTraceDualPipeRefusesAMicroBatchInBothPipes) {
    const std::string trace = test_tmp_file("both_trace"), svg = test_tmp_file("both_svg");
    ASSERT_TRUE(spit(trace, "[{\"name\": \"F0d\", \"ph\": \"X\", \"pid\": 0, \"ts\": 0, \"dur\": 1},\n"
                            " {\"name\": \"F1d\", \"ph\": \"X\", \"pid\": 0, \"ts\": 1, \"dur\": 1},\n"
                            " {\"name\": \"F1u\", \"ph\": \"X\", \"pid\": 1, \"ts\": 2, \"dur\": 1}]\n"));
    remove(svg.c_str());
    Result r = run({"--from-trace", trace, "--svg", svg, "--kind", "dualpipe"});
    EXPECT_EQ(r.rc, 2);
    EXPECT_NE(r.err.find("does not fit " + trace + ": its up pipe runs micro-batch 1, not above the down pipe's "
                         "(up to 1)"), std::string::npos) << r.err;
    EXPECT_EQ(access(svg.c_str(), F_OK), -1);
    remove(trace.c_str());
}

// Of several flags --from-trace refuses, the message names the first one given.
TEST(CmdSchedule, FromTraceNamesTheFirstSimulatedOnlyFlag) {
    Result r = run({"--from-trace", "x.json", "--svg", "/tmp/x.svg", "--pp", "2", "--chunks", "4", "--cost-f", "2"});
    EXPECT_EQ(r.rc, 2);
    EXPECT_NE(r.err.find("--from-trace draws a measured run: drop --pp (only a simulated schedule takes it)"),
              std::string::npos) << r.err;
}

// Ops that overlap on one rank (two threads of a measured run): busy is the time any op ran, so
// idle stays >= 0 (the review of 2026-12-05 saw "idle -10 µs (-100.0%)").
TEST(CmdSchedule, OverlappingOpsCountOnce) {
    const std::string trace = test_tmp_file("overlap"), svg = test_tmp_file("overlap_svg");
    ASSERT_TRUE(spit(trace, "{\"traceEvents\": ["
                            "{\"name\": \"F0d\", \"ph\": \"X\", \"pid\": 0, \"tid\": 0, \"ts\": 0, \"dur\": 10},\n"
                            "{\"name\": \"B0d\", \"ph\": \"X\", \"pid\": 0, \"tid\": 1, \"ts\": 4, \"dur\": 10}]}\n"));
    Result r = run({"--from-trace", trace, "--svg", svg});
    EXPECT_EQ(r.rc, 0) << r.err;
    EXPECT_NE(r.out.find("rank 0: busy 14 µs, idle 0 µs (0.0%)"), std::string::npos) << r.out;
    remove(trace.c_str());
    remove(svg.c_str());
}

// An SVG is well-formed XML whatever the trace: no NaN or infinite coordinates for durations of
// 1e-323 (the pixels per time unit overflowed: "-nan" in every cell), and a file name with a control
// character or a UTF-8 character cut by the title's byte limit written as U+FFFD, not as the raw
// bytes (both exit 0 with an SVG no viewer opened: sweep, 2026-12-06).
TEST(CmdSchedule, SvgIsWellFormedWhateverTheTrace) {
    const std::string svg = test_tmp_file("odd_svg");
    const std::string dir = test_tmp_dir("names");
    // The title keeps a name's first 200 bytes: here the 200th is the first of é's two.
    const std::string names[] = {std::string(dir) + "/tiny.json", std::string(dir) + "/ctl\001name.json",
                                 std::string(dir) + "/" + std::string(199, 'a') + "\xc3\xa9.json"};
    for (const std::string &trace : names) {
        SCOPED_TRACE(trace);
        ASSERT_TRUE(spit(trace, "[{\"name\": \"F0d\", \"ph\": \"X\", \"pid\": 0, \"ts\": 0, \"dur\": 1e-323},\n"
                                " {\"name\": \"B0d\", \"ph\": \"X\", \"pid\": 0, \"ts\": 1e-323, \"dur\": 2e-323}]\n"));
        Result r = run({"--from-trace", trace, "--svg", svg});
        EXPECT_EQ(r.rc, 0) << r.err;
        const std::string s = slurp(svg);
        EXPECT_EQ(s.find("nan"), std::string::npos) << s;
        EXPECT_EQ(s.find("inf"), std::string::npos) << s;
        for (size_t i = 0; i < s.size(); i++) {
            const unsigned char c = (unsigned char)s[i];
            EXPECT_FALSE(c < 0x20 && c != '\n' && c != '\t') << "control byte at " << i;
            // A lead byte of two is followed by its continuation (é here, or U+FFFD's three bytes).
            if ((c & 0xE0) == 0xC0) {
                EXPECT_TRUE(i + 1 < s.size() && ((unsigned char)s[i + 1] & 0xC0) == 0x80) << i;
            }
        }
        remove(trace.c_str());
    }
    remove(svg.c_str());
    rmdir(dir.c_str());
}

// --kind with --from-trace names the schedule the trace ran: another kind's formula at its costs is
// a wrong figure (a one-rank 1F1B trace as dualpipe printed a negative bubble, a DualPipe trace as
// 1f1b a 1F1B formula, both exit 0). Every simulated trace fits its own kind only; a misfit is one
// message, exit 2, nothing on stdout and no SVG.
TEST(CmdSchedule, FromTraceKindMustFitTheTrace) {
    const char *kinds[] = {"1f1b", "dualpipe", "dualpipev"};
    struct Run { int kind, pp, chunks; } runs[] = {{0, 1, 2}, {0, 2, 4}, {1, 2, 4}, {1, 4, 8}, {2, 1, 2}, {2, 2, 4}};
    const std::string trace = test_tmp_file("kind_trace"), svg = test_tmp_file("kind_svg");
    for (const Run &ran : runs) {
        ASSERT_EQ(run({"--kind", kinds[ran.kind], "--pp", std::to_string(ran.pp), "--chunks",
                       std::to_string(ran.chunks), "--trace", trace}).rc, 0);
        for (int k = 0; k < 3; k++) {
            remove(svg.c_str());
            Result r = run({"--from-trace", trace, "--svg", svg, "--kind", kinds[k]});
            const std::string what = std::string(kinds[ran.kind]) + " PP " + std::to_string(ran.pp) + " as " + kinds[k];
            if (k == ran.kind) {
                EXPECT_EQ(r.rc, 0) << what << ": " << r.err;
                EXPECT_NE(r.out.find("formula"), std::string::npos) << what;
                continue;
            }
            EXPECT_EQ(r.rc, 2) << what;
            EXPECT_EQ(r.err.rfind(std::string("moelab: error: --kind ") + kinds[k] + " does not fit " + trace + ": ", 0), 0u)
                << what << ": " << r.err;
            EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
            EXPECT_EQ(r.out, "") << what;
            EXPECT_EQ(access(svg.c_str(), F_OK), -1) << what;
        }
    }
    // What each refusal names, on the traces of the report and on hand-written ones.
    struct Case { std::vector<std::pair<int, const char *>> ops; const char *kind, *why; } cases[] = {
        {{{0, "F0d"}, {0, "B0d"}}, "dualpipe", "it has 1 rank and DualPipe needs an even number"},
        {{{0, "F0d"}, {1, "F0d"}, {1, "B0d"}, {0, "B0d"}}, "dualpipev", "it has no up-pipe ops (a 1F1B run?)"},
        {{{0, "F0d"}, {1, "F0u"}, {1, "B0u"}, {0, "B0d"}}, "1f1b", "it has the up-pipe op F0u and 1F1B runs the down pipe only"},
        {{{0, "F0d"}, {0, "FB(1d,0d)"}, {0, "B1d"}}, "1f1b", "it has the F&B op FB(1d,0d)"},
        {{{0, "F0d"}, {0, "B0d*"}, {0, "W0d"}}, "1f1b", "it has B0d*, a deferred W, and 1F1B runs full backwards only"},
        {{{0, "F0d"}, {0, "F1d"}, {1, "F0u"}}, "dualpipe", "its up pipe runs micro-batch 0, not above the down pipe's (up to 1)"},
        {{{0, "F0d"}, {1, "F1u"}}, "dualpipev", "no micro-batch runs in both pipes (a DualPipe run?)"},
        // A rank number past those that ran (a damaged pid, 1 -> 3; fuzzing, 2026-12-07).
        {{{0, "F0d"}, {3, "F1d"}, {0, "B0d"}, {3, "B1d"}}, "1f1b",
         "its rank 1 ran no op, and the formula counts 4 ranks that each ran the schedule"},
        {{{1, "F0d"}, {1, "B0d"}}, "1f1b", "its rank 0 ran no op, and the formula counts 2 ranks that each ran the schedule"},
    };
    for (const Case &c : cases) {
        FILE *f = fopen(trace.c_str(), "w");
        ASSERT_NE(f, nullptr);
        fputs("[", f);
        for (size_t i = 0; i < c.ops.size(); i++)
            fprintf(f, "%s{\"name\": \"%s\", \"ph\": \"X\", \"pid\": %d, \"ts\": %zu, \"dur\": 1}", i ? ",\n" : "",
                    c.ops[i].second, c.ops[i].first, i);
        fputs("]\n", f);
        fclose(f);
        remove(svg.c_str());
        Result r = run({"--from-trace", trace, "--svg", svg, "--kind", c.kind});
        EXPECT_EQ(r.rc, 2) << c.why;
        EXPECT_NE(r.err.find(std::string("moelab: error: --kind ") + c.kind + " does not fit " + trace + ": " + c.why),
                  std::string::npos) << r.err;
        EXPECT_EQ(r.out, "");
        EXPECT_EQ(access(svg.c_str(), F_OK), -1);
    }
    remove(trace.c_str());
}

TEST(CmdSchedule, BadArguments) {
    struct Case { std::vector<std::string> args; const char *msg; } cases[] = {
        {{"--kind", "zb", "--pp", "2", "--chunks", "4"}, "--kind must be 1f1b, dualpipe or dualpipev, got 'zb'"},
        {{"--kind", "dualpipe", "--pp", "3", "--chunks", "6"}, "dualpipe needs an even number of ranks (pp = 3)"},
        {{"--kind", "dualpipe", "--pp", "4", "--chunks", "7"}, "dualpipe needs an even number of micro-batches"},
        {{"--kind", "dualpipev", "--pp", "4", "--chunks", "7"}, "dualpipev needs at least 2N = 8 micro-batches"},
        {{"--kind", "1f1b", "--pp", "2"}, "--kind, --pp and --chunks are required"},
        {{"--kind", "1f1b", "--pp", "two", "--chunks", "4"}, "--pp 'two' is not an integer"},
        // Past a bound: too large (never "not an integer"), and a product beyond this machine's memory.
        // --pp 65536 --chunks 1 took over a minute (time grows with N^2), --pp 4096 --chunks 4096 too.
        {{"--kind", "1f1b", "--pp", "2000000", "--chunks", "4"}, "--pp 2000000 is too large: at most 256"},
        {{"--kind", "1f1b", "--pp", "257", "--chunks", "1"}, "--pp 257 is too large: at most 256"},
        {{"--kind", "1f1b", "--pp", "0", "--chunks", "4"}, "--pp 0 is too small: at least 1"},
        {{"--kind", "1f1b", "--pp", "2", "--chunks", "99999999999"}, "--chunks 99999999999 is too large: at most 512"},
        {{"--kind", "1f1b", "--pp", "1", "--chunks", "513"}, "--chunks 513 is too large: at most 512"},
        {{"--kind", "1f1b", "--pp", "2", "--chunks", "4", "--cost-f", "1e308"}, "--cost-f 1e308 is too large: at most 1e+12"},
        {{"--kind", "1f1b", "--pp", "2", "--chunks", "4", "--cost-b", "nan"}, "--cost-b 'nan' is not a finite number"},
        {{"--kind", "1f1b", "--pp", "2", "--chunks", "4", "--cost-p2p", "-1"}, "--cost-p2p -1 is too small: at least 0"},
        {{"--kind", "1f1b", "--pp", "2", "--chunks", "4", "--format", "xml"}, "--format must be text or json"},
        {{"--kind", "1f1b", "--pp", "2", "--chunks", "4", "--cost-w", "5"}, "cost of W (5) must not exceed"},
        {{"--kind", "1f1b", "--pp", "2", "--chunks", "4", "--cost-f", "1x"}, "--cost-f '1x' is not a finite number"},
        {{"--kind", "1f1b", "--pp", "2", "--chunks"}, "--chunks needs a value"},
        {{"--kind", "1f1b", "--pp", "2", "--chunks", "2", "--svg", ""}, "--svg needs a value"},
        {{"--kind", "1f1b", "--pp", "2", "--chunks", "2", "--trace="}, "--trace needs a value, not an empty one"},
        {{"--bogus", "1"}, "unknown option '--bogus'"},
        {{"stray"}, "unexpected argument 'stray'"},
        {{"--from-trace", "x.json"}, "--from-trace needs --svg OUT"},
        // A measured run has its own ranks, micro-batches and costs and draws only the SVG: a flag of
        // the simulator is refused, not ignored (--trace, --format and --cost-* were).
        {{"--from-trace", "x.json", "--svg", "/tmp/x.svg", "--pp", "2"}, "--from-trace draws a measured run: drop --pp"},
        {{"--from-trace", "x.json", "--svg", "/tmp/x.svg", "--chunks=4"}, "--from-trace draws a measured run: drop --chunks"},
        {{"--from-trace", "x.json", "--svg", "/tmp/x.svg", "--trace", "/tmp/y.json"},
         "--from-trace draws a measured run: drop --trace (only a simulated schedule takes it)"},
        {{"--from-trace", "x.json", "--svg", "/tmp/x.svg", "--format", "text"}, "--from-trace draws a measured run: drop --format"},
        {{"--from-trace", "x.json", "--svg", "/tmp/x.svg", "--cost-f", "2"}, "--from-trace draws a measured run: drop --cost-f"},
        {{"--cost-p2p=0", "--from-trace", "x.json", "--svg", "/tmp/x.svg"}, "--from-trace draws a measured run: drop --cost-p2p"},
        {{"--from-trace", "/nonexistent.json", "--svg", "/tmp/x.svg"},
         "cannot open trace /nonexistent.json: No such file or directory"},
        // A directory (ftell said LONG_MAX: an 8 EiB allocation).
        {{"--from-trace", "/tmp", "--svg", "/tmp/x.svg"}, "cannot open trace /tmp: not a regular file"},
    };
    for (auto &c : cases) {
        Result r = run(c.args);
        EXPECT_EQ(r.rc, 2) << c.msg;
        EXPECT_NE(r.err.find(std::string("moelab: error: ") + c.msg), std::string::npos) << r.err;
        EXPECT_EQ(r.out, "");
    }
}

// The largest schedule of each kind runs (about a second with both files on a 2-core machine).
TEST(CmdSchedule, LargestSchedules) {
    for (const char *kind : {"1f1b", "dualpipe", "dualpipev"}) {
        Result r = run({"--kind", kind, "--pp", "256", "--chunks", "512", "--format", "json"});
        EXPECT_EQ(r.rc, 0) << kind << ": " << r.err;
        EXPECT_EQ(r.out.substr(r.out.size() - 3), "]}\n") << kind;
    }
}

// A FIFO as --from-trace blocked in open for ever: it is no regular file, and nothing is drawn.
TEST(CmdSchedule, FifoTraceIsBadInput) {
    std::string fifo = test_tmp_file("fifo"), svg = test_tmp_file("fifo_svg");
    remove(fifo.c_str());
    remove(svg.c_str());
    ASSERT_EQ(mkfifo(fifo.c_str(), 0600), 0);
    Result r = run({"--from-trace", fifo, "--svg", svg});
    EXPECT_EQ(r.rc, 2);
    EXPECT_EQ(r.err, "moelab: error: cannot open trace " + fifo + ": not a regular file\n");
    EXPECT_EQ(access(svg.c_str(), F_OK), -1);
    remove(fifo.c_str());
}

// A trace whose finite events span an infinite time: the SVG's time axis never ended (a file growing
// without bound); a span of 1.7e308 printed "idle 1.7e+308 (inf%)". Both are bad input, no SVG.
TEST(CmdSchedule, TraceSpanningNoStepIsBadInput) {
    const char *spans[][2] = {{"-1e308", "1e308"}, {"0", "1.7e308"}};
    for (const auto &sp : spans) {
        std::string trace = test_tmp_file("span"), svg = test_tmp_file("span_svg");
        remove(svg.c_str());
        FILE *f = fopen(trace.c_str(), "w");
        fprintf(f, "[{\"name\":\"F0d\",\"ph\":\"X\",\"pid\":0,\"ts\":%s,\"dur\":1},"
                   "{\"name\":\"B0d\",\"ph\":\"X\",\"pid\":0,\"ts\":%s,\"dur\":1}]", sp[0], sp[1]);
        fclose(f);
        Result r = run({"--from-trace", trace, "--svg", svg, "--kind", "1f1b"});
        EXPECT_EQ(r.rc, 2) << sp[1];
        EXPECT_NE(r.err.find("moelab: error: " + trace + ": the op events span from ts "), std::string::npos)
            << r.err;
        EXPECT_EQ(r.out, "");
        EXPECT_EQ(access(svg.c_str(), F_OK), -1);
        remove(trace.c_str());
    }
}

// An output path that cannot be created is bad input, as in plot and train (it said "cannot write
// SVG" with no reason, exit 1): one message with the reason, nothing on stdout, no file left.
TEST(CmdSchedule, UnwritableOutputPathIsBadInput) {
    std::string trace = test_tmp_file("ok_trace"), svg = test_tmp_file("ok_svg");
    remove(svg.c_str());
    ASSERT_EQ(run({"--kind", "1f1b", "--pp", "2", "--chunks", "2", "--trace", trace}).rc, 0);
    const std::vector<std::vector<std::string>> cases = {
        {"--kind", "1f1b", "--pp", "2", "--chunks", "2", "--svg", "/nonexistent/dir/x.svg"},
        {"--kind", "1f1b", "--pp", "2", "--chunks", "2", "--svg", svg, "--trace", "/nonexistent/dir/x.svg"},
        {"--from-trace", trace, "--svg", "/nonexistent/dir/x.svg"},
    };
    for (const auto &args : cases) {
        Result r = run(args);
        EXPECT_EQ(r.rc, 2);
        const std::string flag = args.size() == 10 ? "--trace" : "--svg";
        EXPECT_EQ(r.err, "moelab: error: cannot write " + flag + " /nonexistent/dir/x.svg: No such file or directory\n");
        EXPECT_EQ(r.out, "");
        EXPECT_EQ(access(svg.c_str(), F_OK), -1);  // the SVG opened first is removed again
    }
    remove(trace.c_str());
}

// Outputs that are no place for a file (second fuzzing pass, 2026-12-04): one path for --svg and
// --trace left a mixture of both (their temporaries had one name); --svg on the --from-trace file
// replaced the trace; a FIFO or a directory as --svg was replaced or failed after the work. All
// refused before anything is written, the files there left as they were.
TEST(CmdSchedule, OutputThatIsNoPlaceForTheFile) {
    const std::string trace = test_tmp_file("self_trace"), both = test_tmp_file("both"), fifo = test_tmp_file("svg_fifo"),
                      dir = test_tmp_file("svg_dir");
    ASSERT_EQ(run({"--kind", "1f1b", "--pp", "2", "--chunks", "2", "--trace", trace}).rc, 0);
    const std::string before = slurp(trace);
    remove(both.c_str());
    Result r = run({"--kind", "1f1b", "--pp", "2", "--chunks", "2", "--svg", both, "--trace", both});
    EXPECT_EQ(r.rc, 2);
    EXPECT_NE(r.err.find("--svg and --trace are the same file"), std::string::npos) << r.err;
    EXPECT_EQ(access(both.c_str(), F_OK), -1);
    r = run({"--from-trace", trace, "--svg", trace});
    EXPECT_EQ(r.rc, 2);
    EXPECT_NE(r.err.find("is the --from-trace file"), std::string::npos) << r.err;
    EXPECT_EQ(slurp(trace), before);
    remove(fifo.c_str());
    ASSERT_EQ(mkfifo(fifo.c_str(), 0600), 0);
    remove(dir.c_str());
    ASSERT_EQ(mkdir(dir.c_str(), 0700), 0);
    for (const std::string &out : {fifo, dir}) {
        r = run({"--kind", "1f1b", "--pp", "2", "--chunks", "2", "--svg", out});
        EXPECT_EQ(r.rc, 2) << out;
        EXPECT_EQ(r.err, "moelab: error: cannot write --svg " + out + ": not a regular file\n");
        EXPECT_EQ(r.out, "");
    }
    struct stat st;
    ASSERT_EQ(stat(fifo.c_str(), &st), 0);
    EXPECT_TRUE(S_ISFIFO(st.st_mode)) << "the FIFO was replaced";
    remove(fifo.c_str());
    rmdir(dir.c_str());
    remove(trace.c_str());
}

// moelab's own data files are never replaced by a chart or a trace (fuzzing, 2026-12-05: `--svg
// ck/step_2.h5` destroyed the checkpoint with exit 0): exit 2 naming what the file is, file unchanged.
TEST(CmdSchedule, OutputThatIsADataFile) {
    const std::pair<std::string, std::string> kinds[] = {
        {std::string("\x89HDF\r\n\x1a\n", 8) + "rest", "an HDF5 file (a checkpoint)"},
        {"MOELTOK1 and tokens", "a token shard"},
        {"MOELBPE1 and merges", "a tokenizer"},
    };
    for (const auto &[bytes, what] : kinds) {
        const std::string path = test_tmp_file("data_file");
        std::ofstream(path, std::ios::binary) << bytes;
        for (const char *flag : {"--svg", "--trace"}) {
            Result r = run({"--kind", "1f1b", "--pp", "2", "--chunks", "2", flag, path});
            EXPECT_EQ(r.rc, 2) << flag << " " << what;
            EXPECT_EQ(r.err, "moelab: error: " + std::string(flag) + " " + path + " is " + what +
                                 ": writing it would destroy it\n");
            EXPECT_EQ(slurp(path), bytes);
        }
        remove(path.c_str());
    }
}

// A write that fails (a full disk; here the file-size limit of a child process) exits 1 with the
// reason, leaves no partial file and an older file at the path as it was. It left a truncated file.
TEST(CmdSchedule, FailedWriteLeavesTheOldFile) {
    const std::string d = test_tmp_dir("full"), out = d + "/out", err = d + "/stderr", trace = d + "/t.json";
    ASSERT_EQ(run({"--kind", "dualpipe", "--pp", "4", "--chunks", "8", "--trace", trace}).rc, 0);
    const std::vector<std::vector<std::string>> cases = {
        {"--kind", "dualpipe", "--pp", "4", "--chunks", "8", "--svg", out},
        {"--kind", "dualpipe", "--pp", "4", "--chunks", "8", "--trace", out},
        {"--from-trace", trace, "--svg", out},
    };
    for (const auto &args : cases) {
        ASSERT_TRUE(spit(out, "old"));
        pid_t pid = fork();
        ASSERT_GE(pid, 0);
        if (pid == 0) {
            // Every file here outgrows 4 KiB; the messages (stderr) and stdout stay below it.
            if (!freopen("/dev/null", "w", stdout) || !freopen(err.c_str(), "w", stderr)) _exit(10);
            signal(SIGXFSZ, SIG_IGN);  // the write fails with EFBIG instead of the signal
            struct rlimit lim = {4096, 4096};
            setrlimit(RLIMIT_FSIZE, &lim);
            std::vector<std::string> a = args;
            a.insert(a.begin(), "schedule");
            std::vector<char *> argv;
            for (auto &x : a) argv.push_back(&x[0]);
            _exit(cmd_schedule((int)argv.size(), argv.data()));
        }
        int status = 0;
        waitpid(pid, &status, 0);
        ASSERT_TRUE(WIFEXITED(status));
        EXPECT_EQ(WEXITSTATUS(status), 1) << args[args.size() - 2];
        EXPECT_EQ(slurp(err), "moelab: error: cannot write " + out + ": File too large\n");
        EXPECT_EQ(slurp(out), "old");
        // out, stderr and the trace: no temporary left.
        int n = 0;
        if (FILE *p = popen(("ls -A " + d + " | wc -l").c_str(), "r")) {
            EXPECT_EQ(fscanf(p, "%d", &n), 1);
            pclose(p);
        }
        EXPECT_EQ(n, 3);
    }
    for (const std::string &p : {out, err, trace}) remove(p.c_str());
    rmdir(d.c_str());
}

}  // namespace
