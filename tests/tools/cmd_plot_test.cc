// `moelab plot` (tools/cmd_plot.c): the SVG of a small hand-written metrics file (one heatmap cell per
// logged step, layer and expert, colored by share; a rebalance marked and its per-rank bars drawn),
// --help, and every bad input: exit code 2 and one message naming the file, line and problem.
#include <gtest/gtest.h>

#include <cstdio>
#include <cstdlib>
#include <string>
#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include <vector>

extern "C" {
#include "framework/core/config.h"
#include "tools/commands.h"
#include "tests/util/tmp.h"
}

namespace {

using namespace std::string_literals;  // "...\0..."s keeps its NUL bytes

std::string tmp_path(const char *name) {
    return test_tmp_root() + "/" + name;
}

// The whole of text, NUL bytes included.
std::string write_file(const char *name, const std::string &text) {
    std::string path = tmp_path(name);
    FILE *f = fopen(path.c_str(), "w");
    fwrite(text.data(), 1, text.size(), f);
    fclose(f);
    return path;
}

std::string read_file(const std::string &path) {
    std::string s;
    FILE *f = fopen(path.c_str(), "r");
    if (!f) return s;
    for (int c; (c = fgetc(f)) != EOF;) s += (char)c;
    fclose(f);
    return s;
}

size_t count(const std::string &s, const std::string &what) {
    size_t n = 0;
    for (size_t p = s.find(what); p != std::string::npos; p = s.find(what, p + 1)) n++;
    return n;
}

struct Result {
    int rc;
    std::string out, err;
};

Result plot(std::vector<std::string> args) {
    args.insert(args.begin(), "plot");
    std::vector<char *> argv;
    for (std::string &a : args) argv.push_back(&a[0]);
    testing::internal::CaptureStdout();
    testing::internal::CaptureStderr();
    Result r;
    r.rc = cmd_plot((int)argv.size(), argv.data());
    r.out = testing::internal::GetCapturedStdout();
    r.err = testing::internal::GetCapturedStderr();
    return r;
}

// Two MoE layers of 4 experts over three logged steps; a rebalance after step 2 on 2 EP ranks.
const char *METRICS =
    "{\"step\": 1, \"loss\": 4.1, \"load_imbalance\": [2.0, 1.0], "
    "\"expert_load\": [[8, 0, 4, 4], [4, 4, 4, 4]]}\n"
    "{\"step\": 2, \"loss\": 4.0, \"expert_load\": [[10, 2, 2, 2], [4, 4, 4, 4]], "
    "\"rank_imbalance\": [1.5, 1.0], "
    "\"eplb\": {\"before\": [1.5, 1.0], \"after\": [1.0, 1.0], \"slots_changed\": 2, \"slots_sent\": 2, "
    "\"rank_load_before\": [[12.0, 4.0], [8.0, 8.0]], \"rank_load_after\": [[8.0, 8.0], [8.0, 8.0]]}}\n"
    "\n"
    "{\"step\": 3, \"loss\": 3.9, \"expert_load\": [[4, 4, 4, 4], [0, 0, 0, 16]]}\n";

// Past 360 logged steps several share a column, their tokens summed: 1000 steps make 334 columns of 3
// (the last of 1), not a cell per step (5 000 steps of 4 x 256 experts were 750 MB of SVG).
TEST(CmdPlot, ManyStepsShareColumns) {
    std::string text;
    for (int s = 1; s <= 1000; s++)
        text += "{\"step\": " + std::to_string(s) + ", \"expert_load\": [[3, 1]]}\n";
    std::string m = write_file("many.jsonl", text), svg = tmp_path("many.svg");
    Result r = plot({"--metrics", m, "--out", svg});
    ASSERT_EQ(r.rc, 0) << r.err;
    std::string s = read_file(svg);
    EXPECT_EQ(count(s, "<title>step"), 334u * 2);
    EXPECT_EQ(count(s, "<title>steps 1-3, expert 0: 9 tokens (1.50 x fair share)"), 1u);
    EXPECT_EQ(count(s, "<title>steps 997-999, expert 1: 3 tokens (0.50 x fair share)"), 1u);
    EXPECT_EQ(count(s, "<title>step 1000, expert 0: 3 tokens (1.50 x fair share)"), 1u);
}

// 400 logged steps make 200 columns of 2 steps each (named "steps a-b"), and about six step labels
// under the columns, not one per column: every (200 + 5) / 6 = 34th column, from the first.
TEST(CmdPlot, TwoStepColumnsAndSixStepLabels) {
    std::string text;
    for (int s = 1; s <= 400; s++)
        text += "{\"step\": " + std::to_string(s) + ", \"expert_load\": [[3, 1]]}\n";
    std::string m = write_file("two.jsonl", text), svg = tmp_path("two.svg");
    Result r = plot({"--metrics", m, "--out", svg});
    ASSERT_EQ(r.rc, 0) << r.err;
    std::string s = read_file(svg);
    EXPECT_EQ(count(s, "<title>steps "), 200u * 2);
    EXPECT_EQ(count(s, "<title>steps 1-2, expert 0: 6 tokens (1.50 x fair share)"), 1u);
    EXPECT_EQ(count(s, "<title>steps 399-400, expert 1: 2 tokens (0.50 x fair share)"), 1u);
    EXPECT_EQ(count(s, "text-anchor=\"middle\" font-size=\"11\">"), 6u);
    for (int step : {1, 69, 137, 205, 273, 341})
        EXPECT_EQ(count(s, "text-anchor=\"middle\" font-size=\"11\">" + std::to_string(step) + "</text>"), 1u) << step;
}

TEST(CmdPlot, DrawsHeatmapsAndRankLoads) {
    std::string m = write_file("m.jsonl", METRICS), svg = tmp_path("m.svg");
    Result r = plot({"--metrics", m, "--out=" + svg});
    ASSERT_EQ(r.rc, 0) << r.err;
    EXPECT_EQ(r.out, "plot: 3 logged steps x 2 MoE layers x 4 experts, 1 rebalances -> " + svg + "\n");
    std::string s = read_file(svg);
    ASSERT_EQ(s.rfind("<svg ", 0), 0u);
    EXPECT_EQ(s.substr(s.size() - 7), "</svg>\n");
    EXPECT_EQ(count(s, "<title>step "), 3u * 2 * 4);  // one cell per step, layer and expert
    // Colors by share of the layer's tokens: a fair share is white, none is full blue, 3x is red.
    EXPECT_EQ(count(s, "fill=\"#f7f7f7\"><title>step 3, expert 2: 4 tokens (1.00 x fair share)"), 1u);
    EXPECT_EQ(count(s, "fill=\"#2166ac\"><title>step 1, expert 1: 0 tokens (0.00 x fair share)"), 1u);
    EXPECT_EQ(count(s, "fill=\"#b2182b\"><title>step 3, expert 3: 16 tokens (4.00 x fair share)"), 1u);
    // The rebalance: a dashed line in each heatmap, and before/after bars of both ranks per layer.
    EXPECT_EQ(count(s, "stroke-dasharray"), 2u + 2u);  // 2 heatmaps + 2 mean lines
    EXPECT_NE(s.find("step 2, MoE layer 0: max/mean 1.50 -&gt; 1.00"), std::string::npos);
    EXPECT_NE(s.find("<title>rank 0 before: 12.0 tokens</title>"), std::string::npos);
    EXPECT_NE(s.find("<title>rank 1 after: 8.0 tokens</title>"), std::string::npos);
}

// Where METRICS' rebalance and bars are drawn. 3 columns of cw = 24: the rebalance after step 2
// (column 1) is a line at the column's right edge, x = 70 + 2 x 24 in both heatmaps. Layer 0's bars:
// before 12 and 4, after 8 and 8; full height is the largest bar or 1.5 x the mean (8) = 12, so
// heights 120 x load / 12.
TEST(CmdPlot, RebalanceLineAndBarHeights) {
    std::string m = write_file("pos.jsonl", METRICS), svg = tmp_path("pos.svg");
    ASSERT_EQ(plot({"--metrics", m, "--out", svg}).rc, 0);
    std::string s = read_file(svg);
    EXPECT_EQ(count(s, "<line x1=\"118.00\" "), 2u);
    EXPECT_EQ(count(s, "height=\"120.00\" fill=\"#969696\"><title>rank 0 before: 12.0 tokens"), 1u);
    EXPECT_EQ(count(s, "height=\"40.00\" fill=\"#969696\"><title>rank 1 before: 4.0 tokens"), 1u);
    EXPECT_EQ(count(s, "height=\"80.00\" fill=\"#2166ac\"><title>rank 0 after: 8.0 tokens"), 2u);  // both layers
    EXPECT_EQ(count(s, "height=\"80.00\" fill=\"#969696\"><title>rank 0 before: 8.0 tokens"), 1u);  // layer 1
}

// The legend's seven swatches, shares 0 to 3 in steps of 0.5: blue → white (share 1) → red (3 and
// more), each channel interpolated linearly and rounded.
TEST(CmdPlot, LegendColors) {
    std::string m = write_file("legend.jsonl", METRICS), svg = tmp_path("legend.svg");
    ASSERT_EQ(plot({"--metrics", m, "--out", svg}).rc, 0);
    std::string s = read_file(svg), got;
    const std::string key = "width=\"28\" height=\"14\" fill=\"";
    for (size_t at = s.find(key); at != std::string::npos; at = s.find(key, at + 1))
        got += s.substr(at + key.size(), 7) + " ";
    EXPECT_EQ(got, "#2166ac #8cafd2 #f7f7f7 #e6bfc4 #d58891 #c3505e #b2182b ");
}

// Of several rebalances, the charts show the first and the last, not one of the middle.
TEST(CmdPlot, ChartsOfTheFirstAndTheLastRebalance) {
    std::string text;
    for (int s = 1; s <= 3; s++)
        text += "{\"step\": " + std::to_string(s) + ", \"expert_load\": [[3, 1]], \"eplb\": {\"before\": [" +
                std::to_string(s) + "], \"after\": [1], \"rank_load_before\": [[3, 1]], \"rank_load_after\": [[2, 2]]}}\n";
    std::string m = write_file("three.jsonl", text), svg = tmp_path("three.svg");
    Result r = plot({"--metrics", m, "--out", svg});
    ASSERT_EQ(r.rc, 0) << r.err;
    std::string s = read_file(svg);
    EXPECT_EQ(count(s, "step 1, MoE layer 0: max/mean 1.00 -&gt; 1.00"), 1u);
    EXPECT_EQ(count(s, "step 2, MoE layer 0: max/mean"), 0u);
    EXPECT_EQ(count(s, "step 3, MoE layer 0: max/mean 3.00 -&gt; 1.00"), 1u);
}

// A file saved with CRLF line ends, a blank line among them: the blank line ("\r") is skipped like
// any other, and the picture is the one of the LF file.
TEST(CmdPlot, CrlfLinesAndBlankLines) {
    std::string crlf;
    for (char c : std::string(METRICS)) crlf += c == '\n' ? std::string("\r\n") : std::string(1, c);
    std::string m = write_file("crlf.jsonl", crlf), svg = tmp_path("crlf.svg");
    std::string lf = write_file("lf.jsonl", METRICS), lf_svg = tmp_path("lf.svg");
    Result r = plot({"--metrics", m, "--out", svg});
    ASSERT_EQ(r.rc, 0) << r.err;
    ASSERT_EQ(plot({"--metrics", lf, "--out", lf_svg}).rc, 0);
    EXPECT_EQ(read_file(svg), read_file(lf_svg));
}

// The bounds the rest of the file is held to: a step past 1e9 (an int overflowed) and an "after"
// ratio beyond 1e15 (its 300 digits went into a chart title) are bad input, exit 2.
TEST(CmdPlot, StepAndAfterRatioOutOfRange) {
    const std::string svg = tmp_path("range.svg");
    const std::pair<std::string, std::string> cases[] = {
        {"{\"step\": 3000000000, \"expert_load\": [[1, 2]]}\n",
         "line 1: \"step\" is missing or not a whole number in [0, 1e9]"},
        // Each edge of that range, and a step between two whole numbers (mutation, 2026-12-07).
        {"{\"step\": 1000000001, \"expert_load\": [[1, 2]]}\n",
         "line 1: \"step\" is missing or not a whole number in [0, 1e9]"},
        {"{\"step\": -1, \"expert_load\": [[1, 2]]}\n",
         "line 1: \"step\" is missing or not a whole number in [0, 1e9]"},
        {"{\"step\": 1.5, \"expert_load\": [[1, 2]]}\n",
         "line 1: \"step\" is missing or not a whole number in [0, 1e9]"},
        {"{\"step\": 1, \"expert_load\": [[1, 2]], \"eplb\": {\"before\": [1], \"after\": [1e300], "
         "\"rank_load_before\": [[1, 1]], \"rank_load_after\": [[1, 1]]}}\n",
         "line 1: \"after\" value 1 is not a number in [0, 1e+15]"},
    };
    for (const auto &[text, message] : cases) {
        std::string m = write_file("range.jsonl", text);
        Result r = plot({"--metrics", m, "--out", svg});
        EXPECT_EQ(r.rc, 2) << message;
        EXPECT_EQ(r.err, "moelab: error: plot: " + m + ", " + message + "\n");
    }
}

// moelab train's first metrics line holds the run's config and no step: plot draws the same picture
// as from the step lines alone, with each MoE layer's place in the model (after the dense layers).
TEST(CmdPlot, TakesTheLayersPlaceFromTheConfigLine) {
    MoeConfig c;
    config_defaults(&c);
    c.n_dense_layers = 3;
    c.L = 5;  // the metrics' two MoE layers after the three dense ones
    char *line = nullptr;
    size_t len = 0;
    FILE *f = open_memstream(&line, &len);
    ASSERT_NE(f, nullptr);
    fputs("{\"config\": ", f);
    config_write_json(&c, f);
    fputs("}\n", f);
    fclose(f);
    std::string m = write_file("cfg.jsonl", line + std::string(METRICS)), svg = tmp_path("cfg.svg");
    free(line);
    std::string plain = write_file("nocfg.jsonl", METRICS), plain_svg = tmp_path("nocfg.svg");
    Result r = plot({"--metrics", m, "--out", svg});
    ASSERT_EQ(r.rc, 0) << r.err;
    EXPECT_EQ(r.out, "plot: 3 logged steps x 2 MoE layers x 4 experts, 1 rebalances -> " + svg + "\n");
    ASSERT_EQ(plot({"--metrics", plain, "--out", plain_svg}).rc, 0);
    std::string s = read_file(svg);
    EXPECT_EQ(count(s, "MoE layer 0 (model layer 3): tokens per expert"), 1u);  // the heatmaps' titles
    EXPECT_EQ(count(s, "MoE layer 1 (model layer 4): tokens per expert"), 1u);
    for (const char *place : {" (model layer 3)", " (model layer 4)"})
        for (size_t at; (at = s.find(place)) != std::string::npos;) s.erase(at, strlen(place));
    EXPECT_EQ(s, read_file(plain_svg));
}

TEST(CmdPlot, WithoutRebalancesSaysSo) {
    std::string m = write_file("plain.jsonl", "{\"step\": 5, \"expert_load\": [[1, 2]]}\n");
    std::string svg = tmp_path("p.svg");
    Result r = plot({"--metrics", m, "--out", svg});
    ASSERT_EQ(r.rc, 0) << r.err;
    EXPECT_NE(read_file(svg).find("no EPLB rebalance in this run"), std::string::npos);
}

// A UTF-8 byte order mark before the first line is no part of it (it was "line 1: not JSON" of an
// invisible character: sweep, 2026-12-06).
TEST(CmdPlot, SkipsAByteOrderMark) {
    std::string m = write_file("bom.jsonl", "\xEF\xBB\xBF{\"step\": 5, \"expert_load\": [[1, 2]]}\n");
    std::string svg = tmp_path("bom.svg");
    Result r = plot({"--metrics", m, "--out", svg});
    EXPECT_EQ(r.rc, 0) << r.err;
}

// A config line that does not place the drawn layers (not a whole number, or n_layers other than the
// dense layers plus the MoE layers drawn) leaves the titles short rather than wrong.
TEST(CmdPlot, KeepsShortTitlesForAConfigThatDoesNotFit) {
    for (const char *cfg : {"{\"config\": {\"n_layers\": 4, \"n_dense_layers\": 2.5}}\n",
                            "{\"config\": {\"n_layers\": 2, \"n_dense_layers\": 2}}\n",
                            "{\"config\": {\"n_dense_layers\": 1}}\n",
                            "{\"config\": {\"n_layers\": 3, \"n_dense_layers\": -1}}\n"}) {
        std::string m = write_file("odd.jsonl", cfg + std::string(METRICS)), svg = tmp_path("odd.svg");
        Result r = plot({"--metrics", m, "--out", svg});
        ASSERT_EQ(r.rc, 0) << cfg << r.err;
        EXPECT_EQ(read_file(svg).find("model layer"), std::string::npos) << cfg;
    }
    std::string m = write_file("fits.jsonl", "{\"config\": {\"n_layers\": 3, \"n_dense_layers\": 1}}\n" +
                                                 std::string(METRICS)), svg = tmp_path("fits.svg");
    ASSERT_EQ(plot({"--metrics", m, "--out", svg}).rc, 0);
    EXPECT_NE(read_file(svg).find("MoE layer 1 (model layer 2): "), std::string::npos);
}

TEST(CmdPlot, Help) {
    Result r = plot({"--help"});
    EXPECT_EQ(r.rc, 0);
    EXPECT_EQ(r.out.rfind("usage: moelab plot --metrics FILE --out FILE.svg", 0), 0u);
}

TEST(CmdPlot, BadInput) {
    const std::string svg = tmp_path("bad.svg");
    struct Case {
        const char *name;
        std::string text;
        const char *message;
    } cases[] = {
        {"json.jsonl", "{\"step\": 1, \"expert_load\": [[1, 2]]}\n{\"step\": 2, \"expert_load\": [[1, 2]\n",
         "json.jsonl, line 2: not JSON: expected ',' or ']' at column 35"},
        {"trailing.jsonl", "{\"step\": 1} x\n", "line 1: not JSON: unexpected text after the JSON value at column 13"},
        {"array.jsonl", "[1, 2]\n", "line 1: not a JSON object"},
        {"inf.jsonl", "{\"step\": 1, \"expert_load\": [[1, 1e999]]}\n",
         "line 1: not JSON: number out of the range of a double at column 33"},
        {"ragged.jsonl", "{\"step\": 1, \"expert_load\": [[1, 2], [3]]}\n",
         "line 1: \"expert_load\" row 2 has 1 values where the rows before it have 2"},
        {"wider.jsonl", "{\"step\": 1, \"expert_load\": [[1, 2], [3, 4, 5]]}\n",
         "line 1: \"expert_load\" row 2 has 3 values where the rows before it have 2"},
        // The rank loads after a rebalance are as wide as those before it; the message named the
        // well-formed key ("expected 3", sweep 2026-12-07).
        {"ranks.jsonl",
         "{\"step\": 1, \"expert_load\": [[1, 2]], \"eplb\": {\"before\": [1], \"after\": [1], "
         "\"rank_load_before\": [[1, 2, 3]], \"rank_load_after\": [[1]]}}\n",
         "line 1: \"rank_load_after\" row 1 has 1 values where the rows before it have 3"},
        {"layers.jsonl",
         "{\"step\": 1, \"expert_load\": [[1, 2]]}\n{\"step\": 2, \"expert_load\": [[1, 2], [3, 4]]}\n",
         "line 2: \"expert_load\" has 2 rows, earlier lines had 1"},
        {"fewer.jsonl",
         "{\"step\": 1, \"expert_load\": [[1, 2], [3, 4]]}\n{\"step\": 2, \"expert_load\": [[1, 2]]}\n",
         "line 2: \"expert_load\" has 1 rows, earlier lines had 2"},
        {"negative.jsonl", "{\"step\": 1, \"expert_load\": [[1, -2]]}\n",
         "line 1: \"expert_load\" row 1, value 2 is not a number in \\[0, 1e\\+15\\]"},
        // Each finite, but the layer's sum was inf and every cell "-nan x fair share".
        {"overflow.jsonl", "{\"step\": 1, \"expert_load\": [[1e308, 1e308]]}\n",
         "line 1: \"expert_load\" row 1, value 1 is not a number in \\[0, 1e\\+15\\]"},
        {"rankload.jsonl",
         "{\"step\": 1, \"expert_load\": [[1, 2]], \"eplb\": {\"before\": [1], \"after\": [1], "
         "\"rank_load_before\": [[1e308, 1e308]], \"rank_load_after\": [[1, 1]]}}\n",
         "line 1: \"rank_load_before\" row 1, value 1 is not a number in \\[0, 1e\\+15\\]"},
        // A ratio out of range went into the SVG's title as a 300-digit number (review, 2026-12-05).
        {"ratio.jsonl",
         "{\"step\": 1, \"expert_load\": [[1, 2]], \"eplb\": {\"before\": [-5], \"after\": [1e300], "
         "\"rank_load_before\": [[1, 1]], \"rank_load_after\": [[1, 1]]}}\n",
         "line 1: \"before\" value 1 is not a number in \\[0, 1e\\+15\\]"},
        // A NUL byte ended the text there: the lines after it went unread, and the run exited 0.
        {"nul.jsonl", "{\"step\":1,\"expert_load\":[[1,2]]}\0\n{\"step\":2,\"expert_load\":[[1,2,3]]}\nnot json\n"s,
         "nul.jsonl, line 1: a NUL byte \\(the file is not text\\)"},
        {"nul3.jsonl", "{\"step\":1,\"expert_load\":[[1,2]]}\n\n{\"step\":2,\0\"expert_load\":[[1,2]]}\n"s,
         "nul3.jsonl, line 3: a NUL byte"},
        {"nostep.jsonl", "{\"expert_load\": [[1, 2]]}\n",
         "line 1: \"step\" is missing or not a whole number in \\[0, 1e9\\]"},
        // A model of dense layers only (review, 2026-12-05: "is not a non-empty array of arrays").
        {"dense.jsonl", "{\"step\": 1, \"expert_load\": []}\n",
         "line 1: the run has no MoE layers \\(\"expert_load\" is empty\\): there is no expert load to draw"},
        {"early.jsonl", "{\"step\": 1, \"eplb\": {}}\n",
         "line 1: \"eplb\" comes before any \"expert_load\""},
        {"short.jsonl", "{\"step\": 1, \"expert_load\": [[1, 2]], \"eplb\": {\"before\": [1, 2]}}\n",
         "line 1: \"before\" is not an array of 1 numbers \\(one per MoE layer\\)"},
        {"none.jsonl", "{\"step\": 1, \"loss\": 2}\n", "has no line with \"expert_load\""},
        {"empty.jsonl", "", "is empty"},
    };
    for (const Case &c : cases) {
        std::string m = write_file(c.name, c.text);
        Result r = plot({"--metrics", m, "--out", svg});
        EXPECT_EQ(r.rc, 2) << c.name;
        EXPECT_TRUE(testing::internal::RE::PartialMatch(r.err, testing::internal::RE(c.message)))
            << c.name << ": " << r.err;
        EXPECT_EQ(r.err.rfind("moelab: error: plot: ", 0), 0u) << r.err;
        EXPECT_EQ(count(r.err, "\n"), 1u) << r.err;
    }
    std::string ok = write_file("ok.jsonl", "{\"step\": 1, \"expert_load\": [[1, 2]]}\n");
    const std::vector<std::pair<std::vector<std::string>, const char *>> flags = {
        {{"--out", svg}, "missing --metrics FILE"},
        {{"--metrics", ok}, "missing --out FILE.svg"},
        {{"--metrics", ok, "--out"}, "--out needs a value"},
        {{"--metrics", ok, "--out", svg, "--bins", "3"}, "unknown option '--bins'"},
        {{"--metrics", tmp_path("missing.jsonl"), "--out", svg},
         "cannot read --metrics '.*missing.jsonl': No such file or directory"},
        // A directory was "empty".
        {{"--metrics", "/tmp", "--out", svg}, "cannot read --metrics '/tmp': not a regular file"},
        {{"--metrics", ok, "--out", "/nonexistent-dir/x.svg"},
         "cannot write --out '/nonexistent-dir/x.svg': No such file or directory"},
    };
    for (const auto &f : flags) {
        Result r = plot(f.first);
        EXPECT_EQ(r.rc, 2) << f.second;
        EXPECT_TRUE(testing::internal::RE::PartialMatch(r.err, testing::internal::RE(f.second))) << r.err;
    }
}

// A FIFO as --metrics blocked in open for ever: it is no regular file.
TEST(CmdPlot, FifoIsBadInput) {
    const std::string fifo = tmp_path("metrics.fifo"), svg = tmp_path("fifo.svg");
    remove(fifo.c_str());
    remove(svg.c_str());
    ASSERT_EQ(mkfifo(fifo.c_str(), 0600), 0);
    Result r = plot({"--metrics", fifo, "--out", svg});
    EXPECT_EQ(r.rc, 2);
    EXPECT_EQ(r.err, "moelab: error: plot: cannot read --metrics '" + fifo + "': not a regular file\n");
    EXPECT_EQ(access(svg.c_str(), F_OK), -1);
    remove(fifo.c_str());
}

// Rank loads whose mean is tiny next to a bar: the bar over the mean overflowed to inf and its
// height was NaN. Heights are loads over the largest one now: numbers within the chart.
// An --out that is the --metrics file, a directory or a FIFO (second fuzzing pass, 2026-12-04: the
// SVG replaced the metrics file, the FIFO and a device node with exit 0; a directory failed after
// the work with exit 1): refused, nothing written, the file read left whole.
TEST(CmdPlot, OutputThatIsNoPlaceForTheSvg) {
    const std::string m = write_file("self.jsonl", METRICS), fifo = tmp_path("out.fifo"), dir = tmp_path("outdir");
    remove(fifo.c_str());
    ASSERT_EQ(mkfifo(fifo.c_str(), 0600), 0);
    mkdir(dir.c_str(), 0700);
    Result r = plot({"--metrics", m, "--out", m});
    EXPECT_EQ(r.rc, 2);
    EXPECT_NE(r.err.find("--out " + m + " is the --metrics file"), std::string::npos) << r.err;
    EXPECT_EQ(read_file(m), METRICS);
    for (const std::string &out : {fifo, dir}) {
        r = plot({"--metrics", m, "--out", out});
        EXPECT_EQ(r.rc, 2) << out;
        EXPECT_NE(r.err.find("cannot write --out '" + out + "': not a regular file"), std::string::npos) << r.err;
    }
    struct stat st;
    ASSERT_EQ(stat(fifo.c_str(), &st), 0);
    EXPECT_TRUE(S_ISFIFO(st.st_mode)) << "the FIFO was replaced";
    remove(fifo.c_str());
    rmdir(dir.c_str());
}

// moelab's own data files are never replaced by a chart (fuzzing, 2026-12-05: `--out data/train.bin`
// destroyed the shard with exit 0).
TEST(CmdPlot, OutputThatIsADataFile) {
    const std::string m = write_file("kind.jsonl", METRICS);
    const std::pair<std::string, std::string> kinds[] = {
        {std::string("\x89HDF\r\n\x1a\n", 8) + "rest", "an HDF5 file (a checkpoint)"},
        {"MOELTOK1 and tokens", "a token shard"},
        {"MOELBPE1 and merges", "a tokenizer"},
    };
    for (const auto &[bytes, what] : kinds) {
        const std::string out = write_file("kind.out", bytes);
        Result r = plot({"--metrics", m, "--out", out});
        EXPECT_EQ(r.rc, 2) << what;
        EXPECT_NE(r.err.find("plot: --out " + out + " is " + what + ": writing it would destroy it"), std::string::npos)
            << r.err;
        EXPECT_EQ(read_file(out), bytes);
    }
}

TEST(CmdPlot, TinyMeanRankDrawsFiniteBars) {
    std::string m = write_file("tiny.jsonl",
                               "{\"step\": 1, \"expert_load\": [[1, 2]], \"eplb\": {\"before\": [2], \"after\": [1], "
                               "\"rank_load_before\": [[1e-320, 0]], \"rank_load_after\": [[1e15, 0]]}}\n");
    std::string svg = tmp_path("tiny.svg");
    Result r = plot({"--metrics", m, "--out", svg});
    ASSERT_EQ(r.rc, 0) << r.err;
    const std::string s = read_file(svg);
    EXPECT_EQ(s.find("nan"), std::string::npos);
    EXPECT_EQ(s.find("inf"), std::string::npos);
    EXPECT_NE(s.find("height=\"120.00\" fill=\"#2166ac\"><title>rank 0 after"), std::string::npos);
}

// A write that fails (a full disk; here the file-size limit of a child) exits 1, not 2, and leaves
// the older file at --out as it was; it left a truncated SVG.
TEST(CmdPlot, FailedWriteExitsOneAndKeepsTheOldFile) {
    const std::string m = write_file("full.jsonl", METRICS), svg = tmp_path("full.svg"),
                      err = tmp_path("full.stderr");
    FILE *f = fopen(svg.c_str(), "w");
    fputs("old", f);
    fclose(f);
    pid_t pid = fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
        // The SVG outgrows 4 KiB; the message and stdout stay below it.
        if (!freopen("/dev/null", "w", stdout) || !freopen(err.c_str(), "w", stderr)) _exit(10);
        signal(SIGXFSZ, SIG_IGN);  // the write fails with EFBIG instead of the signal
        struct rlimit lim = {4096, 4096};
        setrlimit(RLIMIT_FSIZE, &lim);
        std::string a[] = {"plot", "--metrics", m, "--out", svg};
        char *argv[] = {&a[0][0], &a[1][0], &a[2][0], &a[3][0], &a[4][0]};
        _exit(cmd_plot(5, argv));
    }
    int status = 0;
    waitpid(pid, &status, 0);
    ASSERT_TRUE(WIFEXITED(status));
    EXPECT_EQ(WEXITSTATUS(status), 1);
    EXPECT_EQ(read_file(err), "moelab: error: plot: cannot write --out '" + svg + "': File too large\n");
    EXPECT_EQ(read_file(svg), "old");
    EXPECT_EQ(access((svg + ".tmp-" + std::to_string(pid)).c_str(), F_OK), -1);  // no temporary left
}

}  // namespace
