// `moelab eplb` (tools/cmd_eplb.c): the exact JSON of a hand-worked plan, the JSON shape of a
// multi-layer plan (parsed by a small JSON reader here), and every bad-input path: exit code 2 and one
// message naming the row and column or the broken rule.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include <utility>
#include <vector>

extern "C" {
#include "tools/commands.h"
#include "tests/util/tmp.h"
}

namespace {

using namespace std::string_literals;  // "...\0..."s keeps its NUL bytes

// The whole of text, NUL bytes included.
std::string write_csv(const std::string &text) {
    const std::string path = test_tmp_file("eplb");
    FILE *f = fopen(path.c_str(), "w");
    fwrite(text.data(), 1, text.size(), f);
    fclose(f);
    return path;
}

struct Result {
    int rc;
    std::string out, err;
};

Result eplb(std::vector<std::string> args) {
    args.insert(args.begin(), "eplb");
    std::vector<char *> argv;
    for (std::string &a : args) argv.push_back(&a[0]);
    testing::internal::CaptureStdout();
    testing::internal::CaptureStderr();
    Result r;
    r.rc = cmd_eplb((int)argv.size(), argv.data());
    r.out = testing::internal::GetCapturedStdout();
    r.err = testing::internal::GetCapturedStderr();
    return r;
}

// A minimal JSON reader: enough to check the structure of the plan.
struct Json {
    enum Kind { Null, Num, Str, Arr, Obj } kind = Null;
    double num = 0;
    std::string str;
    std::vector<Json> arr;
    std::vector<std::pair<std::string, Json>> obj;  // in file order
};

struct Reader {
    const char *p;
    void ws() {
        while (*p == ' ' || *p == '\n' || *p == '\r' || *p == '\t') p++;
    }
    bool string(std::string &s) {
        if (*p != '"') return false;
        const char *q = strchr(p + 1, '"');
        if (!q) return false;
        s.assign(p + 1, q);
        p = q + 1;
        return true;
    }
    bool value(Json &v) {
        ws();
        if (*p == '{' || *p == '[') {
            bool is_obj = *p++ == '{';
            v.kind = is_obj ? Json::Obj : Json::Arr;
            ws();
            if (*p == (is_obj ? '}' : ']')) return p++, true;
            for (;;) {
                Json item;
                std::string key;
                if (is_obj) {
                    ws();
                    if (!string(key)) return false;
                    ws();
                    if (*p++ != ':') return false;
                }
                if (!value(item)) return false;
                if (is_obj) v.obj.emplace_back(key, item);
                else v.arr.push_back(item);
                ws();
                if (*p == ',') { p++; continue; }
                return *p++ == (is_obj ? '}' : ']');
            }
        }
        if (*p == '"') return v.kind = Json::Str, string(v.str);
        if (!strncmp(p, "null", 4)) return v.kind = Json::Null, p += 4, true;
        char *end;
        v.num = strtod(p, &end);
        v.kind = Json::Num;
        if (end == p) return false;
        p = end;
        return true;
    }
};

bool parse_json(const std::string &text, Json &v) {
    Reader r{text.c_str()};
    if (!r.value(v)) return false;
    r.ws();
    return *r.p == '\0';
}

std::vector<int> ints(const Json &a) {
    std::vector<int> v;
    for (const Json &x : a.arr) v.push_back((int)x.num);
    return v;
}

TEST(CmdEplb, ExactJsonOfHandWorkedGlobalPlan) {
    // The plan of eplb_test's Plan.HandWorkedGlobal: before = 6/5, after = 5/5.
    std::string csv = write_csv("5,1,3,1\n");
    Result r = eplb({"--load", csv, "--replicas", "6", "--groups", "1", "--nodes", "2", "--ranks", "2"});
    EXPECT_EQ(r.rc, 0) << r.err;
    EXPECT_EQ(r.err, "");
    EXPECT_EQ(r.out,
              "{\"policy\": \"global\", \"layers\": [{\"phy2log\": [0, 2, 1, 0, 2, 3], "
              "\"log2phy\": [[0, 3], [2, -1], [1, 4], [5, -1]], \"logcnt\": [2, 1, 2, 1], "
              "\"rank_load_max_over_mean_before\": 1.2, \"rank_load_max_over_mean_after\": 1.0}]}\n");
    remove(csv.c_str());
}

TEST(CmdEplb, ByteOrderMarkIsNotPartOfTheFirstValue) {
    // A spreadsheet's UTF-8 CSV starts with a byte order mark: refused as "load '\xEF\xBB\xBF5' is not
    // a finite number" until 2026-12-05, while the config reader skipped it.
    std::vector<std::string> flags = {"--replicas", "6", "--groups", "1", "--nodes", "2", "--ranks", "2"};
    std::string plain = write_csv("5,1,3,1\n"), bom = write_csv("\xEF\xBB\xBF" "5,1,3,1\n");
    std::vector<std::string> a = {"--load", plain}, b = {"--load", bom};
    a.insert(a.end(), flags.begin(), flags.end());
    b.insert(b.end(), flags.begin(), flags.end());
    Result r = eplb(a), s = eplb(b);
    EXPECT_EQ(s.rc, 0) << s.err;
    EXPECT_EQ(s.out, r.out);
    remove(plain.c_str());
    remove(bom.c_str());
}

TEST(CmdEplb, JsonShapeOfHierarchicalPlan) {
    // Layer 0 is eplb_test's Plan.HandWorkedHierarchical; blanks, CRLF and a trailing blank line are fine;
    // flags as --name=value.
    std::string csv = write_csv("6, 2, 1, 1, 9, 4, 3, 3\r\n0,0,0,0,0,0,0,0\r\n1.5,2.5e1,0,7,7,7,1,100\n\n");
    Result r = eplb({"--load=" + csv, "--replicas=12", "--groups=4", "--nodes=2", "--ranks=4"});
    ASSERT_EQ(r.rc, 0) << r.err;
    Json j;
    ASSERT_TRUE(parse_json(r.out, j)) << r.out;
    ASSERT_EQ(j.kind, Json::Obj);
    ASSERT_EQ(j.obj.size(), 2u);
    EXPECT_EQ(j.obj[0].first, "policy");
    EXPECT_EQ(j.obj[0].second.str, "hierarchical");
    EXPECT_EQ(j.obj[1].first, "layers");
    const std::vector<Json> &layers = j.obj[1].second.arr;
    ASSERT_EQ(layers.size(), 3u);
    const char *keys[] = {"phy2log", "log2phy", "logcnt", "rank_load_max_over_mean_before",
                          "rank_load_max_over_mean_after"};
    size_t maxcnt = layers[0].obj[1].second.arr.at(0).arr.size();
    for (const Json &layer : layers) {
        ASSERT_EQ(layer.obj.size(), 5u);
        for (int k = 0; k < 5; k++) EXPECT_EQ(layer.obj[k].first, keys[k]);
        EXPECT_EQ(layer.obj[0].second.arr.size(), 12u);
        ASSERT_EQ(layer.obj[1].second.arr.size(), 8u);
        for (const Json &row : layer.obj[1].second.arr) EXPECT_EQ(row.arr.size(), maxcnt);
        EXPECT_EQ(layer.obj[2].second.arr.size(), 8u);
        EXPECT_EQ(layer.obj[3].second.kind, Json::Num);
        EXPECT_EQ(layer.obj[4].second.kind, Json::Num);
        EXPECT_GE(layer.obj[4].second.num, 1.0);
    }
    EXPECT_EQ(ints(layers[0].obj[0].second), (std::vector<int>{5, 4, 3, 4, 4, 2, 6, 0, 0, 7, 1, 0}));
    EXPECT_EQ(ints(layers[0].obj[1].second.arr[0]), (std::vector<int>{7, 8, 11}));
    EXPECT_EQ(ints(layers[0].obj[2].second), (std::vector<int>{3, 1, 1, 1, 3, 1, 1, 1}));
    EXPECT_DOUBLE_EQ(layers[0].obj[3].second.num, 13 / 7.25);
    EXPECT_DOUBLE_EQ(layers[0].obj[4].second.num, 8 / 7.25);
    EXPECT_EQ(layers[1].obj[3].second.num, 1.0);  // all-zero loads count as balanced
    remove(csv.c_str());
}

TEST(CmdEplb, BeforeIsNullWhenRanksDoNotDivideExperts) {
    std::string csv = write_csv("1,2,3,4,5,6\n");
    Result r = eplb({"--load", csv, "--replicas", "8", "--groups", "2", "--nodes", "1", "--ranks", "4"});
    ASSERT_EQ(r.rc, 0) << r.err;
    EXPECT_NE(r.out.find("\"rank_load_max_over_mean_before\": null, \"rank_load_max_over_mean_after\": "),
              std::string::npos)
        << r.out;
    Json j;
    EXPECT_TRUE(parse_json(r.out, j)) << r.out;
    remove(csv.c_str());
}

// Blanks and tabs around a value are no part of it, after it as before it ("5 ,1" as a spreadsheet
// may write it): the same plan as without them.
TEST(CmdEplb, BlanksAroundValuesAreNotPartOfThem) {
    std::vector<std::string> flags = {"--replicas", "6", "--groups", "1", "--nodes", "2", "--ranks", "2"};
    std::string plain = write_csv("5,1,3,1\n"), blanks = write_csv("5 ,\t1\t, 3 ,1 \n");
    std::vector<std::string> a = {"--load", plain}, b = {"--load", blanks};
    a.insert(a.end(), flags.begin(), flags.end());
    b.insert(b.end(), flags.begin(), flags.end());
    Result r = eplb(a), s = eplb(b);
    ASSERT_EQ(r.rc, 0) << r.err;
    EXPECT_EQ(s.rc, 0) << s.err;
    EXPECT_EQ(s.out, r.out);
    remove(plain.c_str());
    remove(blanks.c_str());
}

// With E == G the identity placement (one expert per rank) is measured like any other that G
// divides: a number, not null. Loads 3 1 on 2 ranks: before = after = 3 / 2.
TEST(CmdEplb, BeforeIsMeasuredWhenRanksEqualExperts) {
    std::string csv = write_csv("3,1\n");
    Result r = eplb({"--load", csv, "--replicas", "2", "--groups", "1", "--nodes", "1", "--ranks", "2"});
    ASSERT_EQ(r.rc, 0) << r.err;
    EXPECT_EQ(r.out,
              "{\"policy\": \"hierarchical\", \"layers\": [{\"phy2log\": [0, 1], \"log2phy\": [[0], [1]], "
              "\"logcnt\": [1, 1], \"rank_load_max_over_mean_before\": 1.5, "
              "\"rank_load_max_over_mean_after\": 1.5}]}\n");
    remove(csv.c_str());
}

// DEL (0x7f) is a control character like those below 0x20: named as such, not quoted raw inside a
// "not a finite number" message.
TEST(CmdEplb, DelCharacterIsNamedAsAControlCharacter) {
    std::string csv = write_csv("1,2\x7f\n");
    Result r = eplb({"--load", csv, "--replicas", "2", "--groups", "1", "--nodes", "1", "--ranks", "2"});
    EXPECT_EQ(r.rc, 2);
    EXPECT_EQ(r.err, "moelab: error: eplb: " + csv + ": row 1, column 2: control character 0x7f in the value\n");
    remove(csv.c_str());
}

TEST(CmdEplb, Help) {
    Result r = eplb({"--help"});
    EXPECT_EQ(r.rc, 0);
    EXPECT_NE(r.out.find("usage: moelab eplb --load FILE --replicas R --groups Ng --nodes Nn --ranks G"),
              std::string::npos);
    EXPECT_NE(r.out.find("R % G == 0"), std::string::npos);
}

TEST(CmdEplb, BadInputExitsTwoWithOneClearMessage) {
    struct Case {
        const char *csv;  // nullptr: no file at all
        std::vector<std::string> flags;  // "FILE" is replaced by the CSV's path
        const char *msg;
    };
    const std::vector<std::string> ok = {"--load", "FILE", "--replicas", "4", "--groups", "1", "--nodes", "1",
                                         "--ranks", "2"};
    auto with = [&](const char *flag, const char *value) {
        std::vector<std::string> f = ok;
        for (size_t i = 0; i < f.size(); i += 2)
            if (f[i] == flag) f[i + 1] = value;
        return f;
    };
    auto without = [&](const char *flag) {
        std::vector<std::string> f;
        for (size_t i = 0; i < ok.size(); i += 2)
            if (ok[i] != flag) f.insert(f.end(), {ok[i], ok[i + 1]});
        return f;
    };
    std::vector<std::string> unknown = ok;
    unknown.insert(unknown.end(), {"--foo", "1"});
    std::vector<std::string> dangling = without("--ranks");
    dangling.push_back("--ranks");
    std::string big;  // 1024 layers of 1024 experts
    for (int l = 0; l < 1024; l++)
        for (int e = 0; e < 1024; e++) big += e + 1 < 1024 ? "1," : "1\n";
    const std::vector<Case> cases = {
        {"1,2,3\n4,5\n", ok, ": row 2 has 2 values but row 1 has 3"},
        {"1,2,3,4\n4,5,6,7,8\n", ok, ": row 2 has 5 values but row 1 has 4"},
        {"1,2\n3,-4\n", ok, ": row 2, column 2: load -4 is too small: at least 0"},
        {"1,abc\n", ok, ": row 1, column 2: load 'abc' is not a finite number"},
        {"1,2 3\n", ok, ": row 1, column 2: load '2 3' is not a finite number"},
        {"1,,2\n", ok, ": row 1, column 2: empty value"},
        {"1,2,\n", ok, ": row 1, column 3: empty value"},
        {"1,2\r\r\n", ok, ": row 1, column 2: control character 0x0d in the value"},
        {"1,2\r3,4\n", ok, ": row 1, column 2: control character 0x0d in the value"},
        {"1,2\n3,nan\n", ok, ": row 2, column 2: load 'nan' is not a finite number"},
        {"1e999,1\n", ok, ": row 1, column 1: load 1e999 is too large: at most 1e+15"},
        // Loads whose sum overflowed a double ended in an internal check (exit 1).
        {"1e308,1e308\n", ok, ": row 1, column 1: load 1e308 is too large: at most 1e+15"},
        {"1,2\n\n3,4\n", ok, ": row 2 is empty (blank lines may only end the file)"},
        {"", ok, ": no rows of expert loads"},
        {"1,2,3,4,5\n", ok, "rule R >= E broken: R = 4 physical slots cannot hold E = 5 logical experts"},
        {"1,2\n", with("--ranks", "3"), "rule R % G == 0 broken: R = 4 physical slots do not split evenly over G = 3"},
        {"1,2,3\n", with("--groups", "2"), "rule E % Ng == 0 broken: E = 3 experts do not split into Ng = 2"},
        {"1,2\n", with("--nodes", "3"), "rule G % Nn == 0 broken: G = 2 ranks do not split evenly over Nn = 3"},
        {"1,2\n", without("--ranks"), "missing --ranks"},
        {"1,2\n", without("--load"), "missing --load FILE"},
        {"1,2\n", unknown, "unknown option '--foo'"},
        {"1,2\n", with("--replicas", "x"), "--replicas 'x' is not an integer"},
        {"1,2\n", with("--groups", "0"), "--groups 0 is too small: at least 1"},
        // Past a bound: too large (never "not an integer"); within the bounds, a plan beyond this
        // machine's memory (1024 layers of 1024 experts, 2^20 slots: 4 PiB of log2phy).
        {"1,2\n", with("--replicas", "2000000000"), "--replicas 2000000000 is too large: at most 1048576"},
        {"1,2\n", with("--replicas", "4000000000"), "--replicas 4000000000 is too large: at most 1048576"},
        {big.c_str(), with("--replicas", "1048576"), "--replicas 1048576 for 1024 layers of 1024 experts is too large: "
                                                 "the plan needs about"},
        {"1,2\n", dangling, "--ranks needs a value"},
        {"", with("--load", "/tmp"), "cannot read load file '/tmp': not a regular file"},
        {"", with("--load", "/nonexistent/loads.csv"), "cannot read load file '/nonexistent/loads.csv': No such file or directory"},
    };
    for (const Case &c : cases) {
        std::string path = c.csv ? write_csv(c.csv) : "/nonexistent/loads.csv";
        std::vector<std::string> flags = c.flags;
        for (std::string &f : flags)
            if (f == "FILE") f = path;
        Result r = eplb(flags);
        EXPECT_EQ(r.rc, 2) << c.msg;
        EXPECT_EQ(r.out, "") << c.msg;
        EXPECT_EQ(r.err.rfind("moelab: error: eplb: ", 0), 0u) << r.err;
        EXPECT_NE(r.err.find(c.msg), std::string::npos) << "expected '" << c.msg << "' in: " << r.err;
        EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
        if (c.csv) remove(path.c_str());
    }
}

// A NUL byte ended the text there: the rows after it (a ragged one, garbage) went unread and the
// plan of the first rows came out with exit 0. It is bad input naming the row.
TEST(CmdEplb, NulByteIsBadInput) {
    const std::vector<std::pair<std::string, const char *>> cases = {
        {"1,2\n3,4\0\n5,6,7\ngarbage\n"s, ": row 2 holds a NUL byte (a load file is text)"},
        {"\0"s, ": row 1 holds a NUL byte (a load file is text)"},
    };
    for (const auto &c : cases) {
        const std::string path = write_csv(c.first);
        Result r = eplb({"--load", path, "--replicas", "2", "--groups", "1", "--nodes", "1", "--ranks", "2"});
        EXPECT_EQ(r.rc, 2);
        EXPECT_EQ(r.out, "");
        EXPECT_EQ(r.err, "moelab: error: eplb: " + path + c.second + "\n");
        remove(path.c_str());
    }
}

// A FIFO as --load blocked in fopen for ever (the regular-file check came after it).
TEST(CmdEplb, FifoIsBadInput) {
    const std::string fifo = write_csv("");
    remove(fifo.c_str());
    ASSERT_EQ(mkfifo(fifo.c_str(), 0600), 0);
    Result r = eplb({"--load", fifo, "--replicas", "2", "--groups", "1", "--nodes", "1", "--ranks", "2"});
    EXPECT_EQ(r.rc, 2);
    EXPECT_EQ(r.err, "moelab: error: eplb: cannot read load file '" + fifo + "': not a regular file\n");
    remove(fifo.c_str());
}

// The plan's log2phy has room for the largest stride (every replica on one expert) but a plan fills
// only its own: that room was zero-filled, 1 GiB of memory touched here for a plan of about 1 MB
// (16.8 GB for one that the command accepts: review, 2026-12-05). Peak memory of a child, in KiB.
TEST(CmdEplb, LargeReplicaCountTouchesOnlyThePlan) {
    std::string row;
    for (int e = 0; e < 1024; e++) row += e + 1 < 1024 ? "1," : "1\n";
    const std::string path = write_csv(row);
    const pid_t pid = fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
        if (!freopen("/dev/null", "w", stdout)) _exit(10);
        std::vector<std::string> args = {"eplb", "--load", path, "--replicas", "262144", "--groups", "1",
                                         "--nodes", "1", "--ranks", "1024"};
        std::vector<char *> argv;
        for (std::string &a : args) argv.push_back(&a[0]);
        _exit(cmd_eplb((int)argv.size(), argv.data()));
    }
    int status = 0;
    ASSERT_EQ(waitpid(pid, &status, 0), pid);
    ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << status;
    struct rusage ru;
    ASSERT_EQ(getrusage(RUSAGE_CHILDREN, &ru), 0);
    EXPECT_LT(ru.ru_maxrss, 512L * 1024) << "KiB at the peak (the fill alone was 1 GiB)";
    remove(path.c_str());
}

}  // namespace
