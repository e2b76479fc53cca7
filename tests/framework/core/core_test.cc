// framework/core: config files and overrides (including every error path, which must exit 2 with
// a message naming the key), the checked number parser, and the Philox-4x32-10 generator against
// its published test vectors; the parameter registry's layout (aligned and packed tensors).
#include <gtest/gtest.h>

#include <cerrno>
#include <climits>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

extern "C" {
#include "framework/core/check.h"
#include "framework/core/config.h"
#include "framework/core/json.h"
#include "framework/core/mem.h"
#include "framework/core/log.h"
#include "framework/core/num.h"
#include "framework/core/params.h"
#include "framework/core/rng.h"
#include "tests/util/tmp.h"
}

namespace {

// text's bytes (NULs included) in a new temporary file; its path.
std::string write_tmp(const std::string &text) {
    const std::string path = test_tmp_file("cfg");
    FILE *f = fopen(path.c_str(), "wb");
    fwrite(text.data(), 1, text.size(), f);
    fclose(f);
    return path;
}

// Loading a config file of text ends the process with exit 2 and a message matching regex.
void expect_file_usage_error(const std::string &text, const char *regex) {
    std::string p = write_tmp(text);
    MoeConfig c;
    config_defaults(&c);
    EXPECT_EXIT(config_load_file(&c, p.c_str()), ::testing::ExitedWithCode(2), regex);
    remove(p.c_str());
}

TEST(Config, FileAndOverrides) {
    MoeConfig c;
    config_defaults(&c);
    std::string p = write_tmp("# comment\nd_model = 32  # trailing\n\nscore=softmax\nnorm_topk = false\n");
    config_load_file(&c, p.c_str());
    EXPECT_EQ(c.D, 32);
    EXPECT_STREQ(c.score, "softmax");
    EXPECT_EQ(c.norm_topk, 0);
    const char *args[] = {"--steps", "7", "--eplb-interval=3", "--other", "x", "--lr", "0.5"};
    char *argv[7];
    for (int i = 0; i < 7; i++) argv[i] = const_cast<char *>(args[i]);
    int rest = config_apply_args(&c, 7, argv);
    EXPECT_EQ(c.steps, 7);
    EXPECT_EQ(c.eplb_interval, 3);
    EXPECT_FLOAT_EQ(c.lr, 0.5f);
    ASSERT_EQ(rest, 2);
    EXPECT_STREQ(argv[0], "--other");
    EXPECT_STREQ(argv[1], "x");
    remove(p.c_str());
}

// chunks and grad_accum both count a step's micro-batches: a flag for one outranks a file's value of
// either (a checkpoint's stored config holds both, and `--config stored.cfg --chunks 2` was refused as
// setting both); the two as flags must agree (review, 2026-12-06).
TEST(Config, MicroBatchFlagOutranksTheFilesAlias) {
    std::string p = write_tmp("chunks = 4\ngrad_accum = 4\n");
    auto apply = [&](std::vector<std::string> args, MoeConfig *c) {
        config_defaults(c);
        args.insert(args.begin(), {"--config", p});
        std::vector<char *> argv;
        for (std::string &a : args) argv.push_back(&a[0]);
        return config_apply_args(c, (int)argv.size(), argv.data());
    };
    MoeConfig c;
    EXPECT_EQ(apply({"--chunks", "2"}, &c), 0);
    EXPECT_EQ(c.chunks, 2);
    EXPECT_EQ(c.grad_accum, 1);
    EXPECT_EQ(apply({"--grad-accum", "2"}, &c), 0);
    EXPECT_EQ(c.chunks, 0);
    EXPECT_EQ(c.grad_accum, 2);
    EXPECT_EQ(apply({"--chunks", "0"}, &c), 0);  // no chunks: the file's grad_accum stands
    EXPECT_EQ(c.grad_accum, 4);
    EXPECT_EQ(apply({"--chunks", "8", "--grad-accum", "8"}, &c), 0);
    EXPECT_EXIT(apply({"--chunks", "4", "--grad-accum", "1"}, &c), ::testing::ExitedWithCode(2),
                "--chunks 4 and --grad-accum 1 both set the micro-batches per step: pass one");
    remove(p.c_str());
}

TEST(Config, WriteReadRoundTrip) {
    MoeConfig a, b;
    config_defaults(&a);
    a.D = 48; a.lr = 1.25e-3f; a.seed = 12345678901ull; strcpy(a.score, "softmax");
    const std::string path = test_tmp_file("cfg_rt");
    FILE *f = fopen(path.c_str(), "w");
    config_write(&a, f);
    fclose(f);
    config_defaults(&b);
    config_load_file(&b, path.c_str());
    EXPECT_EQ(memcmp(&a, &b, sizeof a), 0);
    remove(path.c_str());
}

// The JSON form (the metrics file's first line) holds every key config_write writes, in its order,
// as numbers, booleans and strings, with a string that needs escapes still valid JSON.
TEST(Config, WriteJsonHoldsEveryKey) {
    MoeConfig c;
    config_defaults(&c);
    c.lr = 1.25e-3f; c.seed = 12345678901ull; c.dp_overlap = 0; c.gemm_streams = 3;
    strcpy(c.expert_gemm, "loop");
    strcpy(c.data, "dir \"q\"\\x");
    char *text = nullptr, *json = nullptr;
    size_t text_len = 0, json_len = 0;
    FILE *f = open_memstream(&text, &text_len);
    config_write(&c, f);
    fclose(f);
    f = open_memstream(&json, &json_len);
    config_write_json(&c, f);
    fclose(f);
    char err[JSON_ERR_LEN];
    JsonValue *v = json_parse(json, json_len, err);
    ASSERT_NE(v, nullptr) << err << ": " << json;
    ASSERT_EQ(v->type, JSON_OBJECT);
    size_t line = 0;
    for (const char *p = text; *p; p = strchr(p, '\n') + 1, line++) {
        ASSERT_LT(line, v->len);
        EXPECT_EQ(std::string(p, strstr(p, " = ") - p), v->keys[line].str);
    }
    EXPECT_EQ(line, v->len);
    EXPECT_EQ((float)json_get(v, "lr")->number, 1.25e-3f);  // 9 digits: the float exactly
    EXPECT_EQ(json_get(v, "seed")->number, 12345678901.0);
    EXPECT_EQ(json_get(v, "dp_overlap")->type, JSON_BOOL);
    EXPECT_EQ(json_get(v, "dp_overlap")->boolean, 0);
    EXPECT_EQ(json_get(v, "ep_overlap")->boolean, 1);
    EXPECT_EQ(json_get(v, "gemm_streams")->number, 3);
    EXPECT_EQ(json_get(v, "deterministic")->boolean, 1);
    EXPECT_STREQ(json_get(v, "expert_gemm")->str, "loop");
    EXPECT_STREQ(json_get(v, "data")->str, "dir \"q\"\\x");
    EXPECT_STREQ(json_get(v, "trace")->str, "");
    json_free(v);
    free(text);
    free(json);
}

void set_key(const char *k, const char *v) {
    MoeConfig c;
    config_defaults(&c);
    config_set(&c, k, v, "test");
}

// The keys that choose how the work runs (formerly environment variables): defaults, the command
// line's dashed spelling, and every kind of bad value.
TEST(Config, RunKeys) {
    MoeConfig c;
    config_defaults(&c);
    EXPECT_EQ(c.dp_overlap, 1);
    EXPECT_EQ(c.ep_overlap, 1);
    EXPECT_STREQ(c.expert_gemm, "cutlass");
    EXPECT_EQ(c.gemm_streams, 4);
    EXPECT_EQ(c.deterministic, 1);
    const char *args[] = {"--dp-overlap", "0", "--ep-overlap=false", "--expert-gemm", "streams",
                          "--gemm-streams", "8", "--deterministic", "false"};
    char *argv[9];
    for (int i = 0; i < 9; i++) argv[i] = const_cast<char *>(args[i]);
    EXPECT_EQ(config_apply_args(&c, 9, argv), 0);
    EXPECT_EQ(c.dp_overlap, 0);
    EXPECT_EQ(c.ep_overlap, 0);
    EXPECT_STREQ(c.expert_gemm, "streams");
    EXPECT_EQ(c.gemm_streams, 8);
    EXPECT_EQ(c.deterministic, 0);
    for (const char *mode : {"cutlass", "grouped", "loop"}) {
        config_set(&c, "expert_gemm", mode, "test");
        EXPECT_STREQ(c.expert_gemm, mode);
    }
}
// config_reset_key puts one key of each type back to its default and leaves the others;
// config_names_key reads flags in either spelling.
TEST(Config, ResetKeyAndNamesKey) {
    MoeConfig c, d;
    config_defaults(&c);
    config_defaults(&d);
    config_set(&c, "ep", "4", "test");
    config_set(&c, "comm_timeout", "7", "test");
    config_set(&c, "data", "/some/dir", "test");
    config_set(&c, "fb_overlap", "true", "test");
    config_set(&c, "seed", "99", "test");
    config_set(&c, "lr", "0.5", "test");
    for (const char *k : {"ep", "comm_timeout", "data", "fb_overlap", "seed"}) config_reset_key(&c, k);
    EXPECT_EQ(c.ep, d.ep);
    EXPECT_EQ(c.comm_timeout, d.comm_timeout);
    EXPECT_STREQ(c.data, d.data);
    EXPECT_EQ(c.fb_overlap, d.fb_overlap);
    EXPECT_EQ(c.seed, d.seed);
    EXPECT_EQ(c.lr, 0.5f);  // untouched
    EXPECT_TRUE(config_names_key("--eplb-redundant", "eplb_redundant"));
    EXPECT_TRUE(config_names_key("--eplb_redundant", "eplb_redundant"));
    EXPECT_TRUE(config_names_key("ep", "ep"));
    EXPECT_FALSE(config_names_key("--ep", "eplb_interval"));
    EXPECT_FALSE(config_names_key("--eplb", "ep"));
}

TEST(ConfigDeath, RunKeysRejectBadValues) {
    EXPECT_EXIT(set_key("dp_overlap", "2"), ::testing::ExitedWithCode(2), "test: dp_overlap = '2'.*true\\|false");
    EXPECT_EXIT(set_key("ep_overlap", "on"), ::testing::ExitedWithCode(2), "test: ep_overlap = 'on'.*true\\|false");
    EXPECT_EXIT(set_key("expert_gemm", "fast"), ::testing::ExitedWithCode(2),
                "test: expert_gemm = 'fast' is not valid: expected cutlass\\|grouped\\|streams\\|loop");
    EXPECT_EXIT(set_key("gemm_streams", "0"), ::testing::ExitedWithCode(2), "test: gemm_streams = 0 is too small: at least 1");
    EXPECT_EXIT(set_key("gemm_streams", "9"), ::testing::ExitedWithCode(2), "test: gemm_streams = 9 is too large: at most 8");
    EXPECT_EXIT(set_key("gemm_streams", "4x"), ::testing::ExitedWithCode(2), "test: gemm_streams = '4x'.*expected an integer");
    EXPECT_EXIT(set_key("deterministic", "mostly"), ::testing::ExitedWithCode(2), "test: deterministic = 'mostly'.*true\\|false");
}

// Test seams read the environment only under the MOELAB_TEST_ prefix, and announce themselves once.
TEST(TestSeam, PrefixedAndAnnounced) {
    unsetenv("MOELAB_TEST_CORE_SEAM");
    EXPECT_EQ(core_test_seam("MOELAB_TEST_CORE_SEAM"), nullptr);
    setenv("MOELAB_TEST_CORE_SEAM", "7", 1);
    testing::internal::CaptureStderr();
    EXPECT_STREQ(core_test_seam("MOELAB_TEST_CORE_SEAM"), "7");
    EXPECT_STREQ(core_test_seam("MOELAB_TEST_CORE_SEAM"), "7");
    const std::string err = testing::internal::GetCapturedStderr();
    EXPECT_NE(err.find("test seam MOELAB_TEST_CORE_SEAM=7 is set"), std::string::npos) << err;
    EXPECT_EQ(err.find("test seam", err.find("test seam") + 1), std::string::npos) << "announced twice: " << err;
    unsetenv("MOELAB_TEST_CORE_SEAM");
    EXPECT_DEATH(core_test_seam("MOELAB_DP_OVERLAP"), "lacks the MOELAB_TEST_ prefix");
}

// A message printed while a progress line is open (data prepare's, on a terminal) continued it:
// "prepare: reading  50.0%moelab: error: ...". Every message of log.c now erases the line first;
// without one open nothing extra is written.
TEST(Progress, MessagesEraseAnOpenProgressLine) {
    testing::internal::CaptureStderr();
    core_progress("reading %d%%", 50);
    core_warn("w");
    core_warn("x");
    core_progress("merging");
    core_progress("merging %d%%", 100);
    core_progress_end();
    core_progress_end();
    EXPECT_EQ(testing::internal::GetCapturedStderr(),
              "\rreading 50%\033[K\r\033[Kmoelab: warning w\nmoelab: warning x\n"
              "\rmerging\033[K\rmerging 100%\033[K\r\033[K");
    EXPECT_EXIT({ core_progress("reading"); core_usage_error("bad input"); }, ::testing::ExitedWithCode(2),
                "\rreading\033\\[K\r\033\\[Kmoelab: error: bad input\n");
    EXPECT_DEATH({ core_progress("reading"); CHECK(0, "broken"); }, "\rreading\033\\[K\r\033\\[Kmoelab: error ");
}

// A key that no longer does anything names what replaced it, in either spelling, from a file too.
TEST(ConfigDeath, RetiredKey) {
    const char *msg = "test: config key 'val_fraction' no longer exists: the validation split is made once, by "
                      "`moelab data prepare --val-fraction F` \\(remove it\\)";
    EXPECT_EXIT(set_key("val_fraction", "0.1"), ::testing::ExitedWithCode(2), msg);
    EXPECT_EXIT(set_key("val-fraction", "0.1"), ::testing::ExitedWithCode(2), msg);
    EXPECT_TRUE(config_is_retired("val-fraction"));
    EXPECT_FALSE(config_is_key("val_fraction"));
    MoeConfig c;
    config_defaults(&c);
    FILE *f = fmemopen((void *)"d_model = 32\nval_fraction = 0.05\n", 33, "r");
    EXPECT_EXIT(config_load_stream(&c, f, "old.cfg"), ::testing::ExitedWithCode(2),
                "old.cfg:2: config key 'val_fraction' no longer exists");
    fclose(f);
    for (const char *arg : {"--val-fraction", "--val_fraction=0.1"}) {
        char a0[32], a1[] = "0.1";
        snprintf(a0, sizeof a0, "%s", arg);
        char *argv[] = {a0, a1};
        EXPECT_EXIT(config_apply_args(&c, 2, argv), ::testing::ExitedWithCode(2),
                    "command line: config key 'val_fraction' no longer exists")
            << arg;
    }
}

TEST(ConfigDeath, UnknownKey) {
    EXPECT_EXIT(set_key("d_modle", "3"), ::testing::ExitedWithCode(2), "unknown config key 'd_modle'");
}
TEST(ConfigDeath, MalformedInt) {
    EXPECT_EXIT(set_key("d_model", "3x"), ::testing::ExitedWithCode(2), "d_model = '3x'.*expected an integer");
}
// A number past a bound is a number: the message says which bound, not "expected an integer".
TEST(ConfigDeath, OutOfRange) {
    EXPECT_EXIT(set_key("d_model", "0"), ::testing::ExitedWithCode(2), "test: d_model = 0 is too small: at least 1");
    EXPECT_EXIT(set_key("steps", "99999999999999999999"), ::testing::ExitedWithCode(2),
                "steps = 99999999999999999999 is too large: at most 2147483647");
    EXPECT_EXIT(set_key("lr", "1e999"), ::testing::ExitedWithCode(2), "lr = 1e999 is too large: at most 10");
}
TEST(ConfigDeath, AdamBetaBelowOne) {
    for (const char *key : {"beta1", "beta2"}) {
        MoeConfig c;
        config_defaults(&c);
        config_set(&c, key, "1", "test");  // in the key's range; the rule is AdamW's
        EXPECT_EXIT(config_validate(&c), ::testing::ExitedWithCode(2), std::string(key) + " must be below 1");
        // Below 1 as typed, 1 as a float: the message must not say "(1) must be below 1" alone.
        config_set(&c, key, "0.99999999", "test");
        EXPECT_EXIT(config_validate(&c), ::testing::ExitedWithCode(2), "1 as a 32-bit float");
    }
}
TEST(CoreDeath, PathErrorsExitByCause) {
    // A full disk, quota or I/O error is the environment's failure (1); a wrong path is bad input (2).
    for (int err : {ENOSPC, EDQUOT, EIO, ENOMEM, EMFILE}) EXPECT_EQ(core_errno_exit_code(err), 1) << err;
    for (int err : {ENOENT, ENOTDIR, EACCES, EISDIR, ENAMETOOLONG}) EXPECT_EQ(core_errno_exit_code(err), 2) << err;
    EXPECT_EXIT(core_path_error(ENOSPC, "cannot write %s", "x"), ::testing::ExitedWithCode(1), "error: cannot write x");
    EXPECT_EXIT(core_path_error(ENOENT, "cannot write %s", "y"), ::testing::ExitedWithCode(2), "error: cannot write y");
}
// An allocation beyond the machine's memory is the environment's failure, one line without a source
// location (it named mem.c:30); near SIZE_MAX the 64-byte rounding wrapped to a 0-byte buffer.
TEST(CoreDeath, AllocationBeyondTheMachine) {
    const double have = core_host_memory_bytes();
    EXPECT_EXIT(core_alloc((size_t)(have * 2)), ::testing::ExitedWithCode(1),
                "^moelab: error: out of host memory allocating [0-9]+ bytes \\([0-9.]+ GiB; the machine has");
    EXPECT_EXIT(core_alloc_uninit(SIZE_MAX - 1), ::testing::ExitedWithCode(1), "out of host memory allocating");
}
// core_grow keeps the first n elements and zeroes the rest of the new room (prof.c's marks read a
// zero event as "none yet").
TEST(Core, GrowKeepsElementsAndZeroesTheRest) {
    int *a = (int *)core_grow(NULL, 0, 4, sizeof(int));
    for (int i = 0; i < 4; i++) EXPECT_EQ(a[i], 0);
    for (int i = 0; i < 4; i++) a[i] = i + 1;
    a = (int *)core_grow(a, 3, 8, sizeof(int));
    for (int i = 0; i < 8; i++) EXPECT_EQ(a[i], i < 3 ? i + 1 : 0) << i;
    core_free(a);
}
// The host-memory check's "held": anonymous memory counts, a mapped file read to its end (the token
// shards) does not (the page cache may drop it; counting it refused a small model over a large dataset).
TEST(Core, ResidentBytesCountHeldMemoryNotMappedFiles) {
    const size_t MB64 = (size_t)64 << 20;
    std::string path = testing::TempDir() + "/resident.bin";
    FILE *f = fopen(path.c_str(), "wb");
    ASSERT_NE(f, nullptr);
    std::vector<char> chunk(1 << 20, 7);
    for (int i = 0; i < 64; i++) ASSERT_EQ(fwrite(chunk.data(), 1, chunk.size(), f), chunk.size());
    fclose(f);
    const int fd = open(path.c_str(), O_RDONLY);
    ASSERT_GE(fd, 0);
    const double before = core_host_resident_bytes();
    ASSERT_GT(before, 0);
    const char *map = (const char *)mmap(NULL, MB64, PROT_READ, MAP_SHARED, fd, 0);
    ASSERT_NE(map, MAP_FAILED);
    long sum = 0;
    for (size_t i = 0; i < MB64; i += 4096) sum += map[i];
    EXPECT_EQ(sum, 7L * (long)(MB64 / 4096));
    EXPECT_LT(core_host_resident_bytes() - before, 16.0 * (1 << 20)) << "a mapped file counted as held";
    // Fresh pages (the heap may hold freed ones that are resident already), every one touched.
    char *held = (char *)mmap(NULL, MB64, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    ASSERT_NE(held, MAP_FAILED);
    memset(held, 1, MB64);
    EXPECT_GT(core_host_resident_bytes() - before, 48.0 * (1 << 20)) << "anonymous memory not counted";
    munmap(held, MB64);
    munmap((void *)map, MB64);
    close(fd);
    remove(path.c_str());
}

// B·T is an int everywhere (N): 2^16 × 2^15 overflowed it in the host-memory estimate (UB).
TEST(ConfigDeath, TokensOfAMicroBatchFitAnInt) {
    MoeConfig c;
    config_defaults(&c);
    c.batch_size = 1 << 16;
    c.T = 1 << 15;
    EXPECT_EXIT(config_validate(&c), ::testing::ExitedWithCode(2), "batch_size \\* seq_len \\(2147483648\\) must not exceed");
}
TEST(ConfigDeath, EpsilonsPositive) {
    EXPECT_EXIT(set_key("norm_eps", "0"), ::testing::ExitedWithCode(2), "norm_eps = 0 is too small");
    EXPECT_EXIT(set_key("norm_eps", "1e-50"), ::testing::ExitedWithCode(2), "norm_eps = 1e-50 is too small");
    EXPECT_EXIT(set_key("adam_eps", "0"), ::testing::ExitedWithCode(2), "adam_eps = 0 is too small");
}
TEST(ConfigDeath, DuplicateKeyInFile) {
    expect_file_usage_error("lr = 0.1\nsteps = 3\n# again\nlr = 0.2\n", ":4: lr is set twice, on lines 1 and 4");
}
// The command line overrides the file, however often the file is named.
TEST(Config, CommandLineOverridesFile) {
    std::string p = write_tmp("lr = 0.1\n");
    MoeConfig c;
    config_defaults(&c);
    const char *args[] = {"--lr", "0.2", "--config", p.c_str(), "--config", p.c_str()};
    char *argv[6];
    for (int i = 0; i < 6; i++) argv[i] = const_cast<char *>(args[i]);
    EXPECT_EQ(config_apply_args(&c, 6, argv), 0);
    EXPECT_FLOAT_EQ(c.lr, 0.2f);
    remove(p.c_str());
}
TEST(ConfigDeath, DirectoryAsFile) {
    const std::string dir = test_tmp_dir("cfgdir");
    MoeConfig c;
    config_defaults(&c);
    EXPECT_EXIT(config_load_file(&c, dir.c_str()), ::testing::ExitedWithCode(2),
                "cannot open config file '.*': not a regular file");
    rmdir(dir.c_str());
}
// `moelab train --config FIFO` blocked in the open for ever: refused at once, like a directory.
// (alarm: a regression ends the child instead of hanging the test.)
TEST(ConfigDeath, FifoAsFile) {
    const std::string dir = test_tmp_dir("cfgfifo");
    const std::string fifo = dir + "/tiny.cfg";
    ASSERT_EQ(mkfifo(fifo.c_str(), 0600), 0);
    MoeConfig c;
    config_defaults(&c);
    EXPECT_EXIT((alarm(10), config_load_file(&c, fifo.c_str())), ::testing::ExitedWithCode(2),
                "cannot open config file '.*tiny.cfg': not a regular file");
    unlink(fifo.c_str());
    rmdir(dir.c_str());
}
TEST(ConfigDeath, BadChoice) {
    EXPECT_EXIT(set_key("score", "relu"), ::testing::ExitedWithCode(2), "expected sigmoid\\|softmax");
}
TEST(ConfigDeath, BadBool) {
    EXPECT_EXIT(set_key("norm_topk", "yes"), ::testing::ExitedWithCode(2), "norm_topk.*true\\|false");
}
TEST(ConfigDeath, BadFloat) {
    EXPECT_EXIT(set_key("lr", "nan"), ::testing::ExitedWithCode(2), "lr = 'nan'.*expected a number");
}
TEST(ConfigDeath, FileWithoutEquals) {
    expect_file_usage_error("d_model 32\n", ":1: expected 'key = value'");
}
TEST(ConfigDeath, FileWithoutKey) {
    expect_file_usage_error("lr = 0.1\n = 32\n", ":2: missing key before '='");
}
// A config file with a NUL byte once read as empty lines: a binary file trained on the defaults.
// Control bytes are named with their line and column (a stray one used to hide inside the quoted
// value of the message).
TEST(ConfigDeath, BinaryFile) {
    expect_file_usage_error(std::string("\x00\x01\x02 garbage\n", 12), ":1: byte 0x00 at column 1: not a text config file");
}
TEST(ConfigDeath, ControlByteInValue) {
    expect_file_usage_error("lr = 0.1\nd_model = 64\x01\n", ":2: byte 0x01 at column 13: not a text config file");
}
// Text values come back from a checkpoint's stored `key = value` lines: a line break, a '#' that
// starts a comment there (at the value's start or after a blank) or blanks at the ends would come
// back as another value (review, 2026-12-05: `--metrics $'m\nx'` made a checkpoint every reader
// refused). A '#' glued to other characters is part of the value, in a file too: a folder named
// run#2 was refused everywhere, and a path of 300 bytes (sweep, 2026-12-05).
TEST(ConfigDeath, TextValuesSurviveTheStoredConfig) {
    EXPECT_EXIT(set_key("metrics", "m\nx.jsonl"), ::testing::ExitedWithCode(2),
                "test: metrics holds a control character \\(byte 0x0a at position 2\\)");
    EXPECT_EXIT(set_key("out", "run #2"), ::testing::ExitedWithCode(2),
                "test: out = 'run #2': a value cannot hold '#' at its start or after a blank");
    EXPECT_EXIT(set_key("out", "#2"), ::testing::ExitedWithCode(2), "a value cannot hold '#' at its start");
    EXPECT_EXIT(set_key("data", " d"), ::testing::ExitedWithCode(2), "test: data = ' d' begins or ends with a blank");
    EXPECT_EXIT(set_key("data", std::string(CONFIG_STR, 'd').c_str()), ::testing::ExitedWithCode(2),
                "test: data is longer than 1023 characters");
    MoeConfig c;
    config_defaults(&c);
    config_set(&c, "out", "/tmp/run 2", "test");  // a blank inside is kept
    EXPECT_STREQ(c.out, "/tmp/run 2");
    const std::string deep = "/" + std::string(1000, 'p');
    config_set(&c, "data", deep.c_str(), "test");
    EXPECT_EQ(c.data, deep);
    // Written as a checkpoint stores it and read back: the same values.
    const std::string text = "steps = 3 # a comment\nout = /tmp/run#2 # and one after it\nmetrics = m#x\t# after a tab\ndata = " + deep + "\n";
    MoeConfig d;
    config_defaults(&d);
    config_load_stored(&d, text.c_str(), "stored config");
    EXPECT_EQ(d.steps, 3);
    EXPECT_STREQ(d.out, "/tmp/run#2");
    EXPECT_STREQ(d.metrics, "m#x");
    EXPECT_EQ(d.data, deep);
}
// Bare carriage returns (old Mac line ends) made the whole file one line, all comment after its
// first '#': the run took the defaults with exit 0 (fuzzing, 2026-12-05). A CR before the newline,
// or ending the file, is a line end.
TEST(ConfigDeath, BareCarriageReturn) {
    expect_file_usage_error("# my config\rlr = 0.25\r", ":1: byte 0x0d at column 12: not a text config file");
    expect_file_usage_error("lr = 0.25\rsteps = 7\n", ":1: byte 0x0d at column 10");
    std::string p = write_tmp("lr = 0.25\r");
    MoeConfig c;
    config_defaults(&c);
    config_load_file(&c, p.c_str());
    EXPECT_FLOAT_EQ(c.lr, 0.25f);
}
TEST(ConfigDeath, LineTooLong) {
    expect_file_usage_error("lr = 0.1" + std::string(CONFIG_STR + 200, ' ') + "\n", ":1: line too long");
    // At the limit, with and without a newline: a line of CONFIG_STR + 127 bytes (its newline
    // counted) is read, one byte more is not (a last line of exactly the buffer's size must not
    // lose its last byte and read as steps = 12).
    const size_t most = CONFIG_STR + 127;
    for (std::string end : {"", "\n"}) {
        const size_t blanks = most - end.size() - std::string("steps = 123").size();
        std::string p = write_tmp("steps = " + std::string(blanks, ' ') + "123" + end);
        MoeConfig c;
        config_defaults(&c);
        config_load_file(&c, p.c_str());
        EXPECT_EQ(c.steps, 123) << "newline: " << end.size();
        remove(p.c_str());
        expect_file_usage_error("steps = " + std::string(blanks + 1, ' ') + "123" + end, ":1: line too long");
    }
}
// Tabs, Windows line ends and a UTF-8 byte order mark before the first key (Windows editors write
// one: "unknown config key 'ï»¿steps'", review 2026-12-05) are text.
TEST(Config, TabsCarriageReturnsAndByteOrderMark) {
    for (const char *text : {"lr\t=\t0.25\r\nsteps = 7\r\n", "\xEF\xBB\xBFlr = 0.25\nsteps = 7\n"}) {
        std::string p = write_tmp(text);
        MoeConfig c;
        config_defaults(&c);
        config_load_file(&c, p.c_str());
        EXPECT_FLOAT_EQ(c.lr, 0.25f) << text;
        EXPECT_EQ(c.steps, 7) << text;
        remove(p.c_str());
    }
}
TEST(ConfigDeath, MissingFile) {
    MoeConfig c;
    config_defaults(&c);
    EXPECT_EXIT(config_load_file(&c, "/nonexistent/x.cfg"), ::testing::ExitedWithCode(2), "cannot open config file");
}
TEST(ConfigDeath, CrossFieldRule) {
    MoeConfig c;
    config_defaults(&c);
    c.Hkv = 3;
    EXPECT_EXIT(config_validate(&c), ::testing::ExitedWithCode(2), "n_heads \\(4\\) must be divisible by n_kv_heads \\(3\\)");
}
// Every other rule between keys, each named with the values that break it (on the defaults, with
// n_heads = n_kv_heads = 4 and n_experts = 8).
TEST(ConfigDeath, EveryCrossFieldRule) {
    const struct { const char *key, *value, *msg; } bad[] = {
        {"d_model", "30", "config: d_model \\(30\\) must be divisible by n_heads \\(4\\)"},
        {"d_model", "36", "config: head size d_model/n_heads \\(9\\) must be even for RoPE"},
        {"top_k", "9", "config: top_k \\(9\\) must not exceed n_experts \\(8\\)"},
        {"n_dense_layers", "9", "config: n_dense_layers \\(9\\) must not exceed n_layers \\([0-9]+\\)"},
        {"min_lr", "10", "config: min_lr \\(10\\) must not exceed lr \\("},
    };
    for (const auto &b : bad) {
        MoeConfig c;
        config_defaults(&c);
        config_set(&c, "n_heads", "4", "test");
        config_set(&c, "n_kv_heads", "4", "test");
        config_set(&c, "n_experts", "8", "test");
        config_set(&c, b.key, b.value, "test");
        EXPECT_EXIT(config_validate(&c), ::testing::ExitedWithCode(2), b.msg) << b.key << " = " << b.value;
    }
}

TEST(Num, Int) {
    char err[NUM_ERR_LEN];
    long long v = -7;
    EXPECT_EQ(num_parse_int("--n", "42", 1, 100, &v, err), NUM_OK);
    EXPECT_EQ(v, 42);
    EXPECT_EQ(num_parse_int("--n", "-3", -5, 5, &v, err), NUM_OK);
    EXPECT_EQ(v, -3);
    struct { const char *s; NumStatus st; const char *msg; } bad[] = {
        {"", NUM_SYNTAX, "--n '' is not an integer"},
        {"x", NUM_SYNTAX, "--n 'x' is not an integer"},
        {"3x", NUM_SYNTAX, "--n '3x' is not an integer"},
        {" 3", NUM_SYNTAX, "--n ' 3' is not an integer"},
        {"0x10", NUM_SYNTAX, "--n '0x10' is not an integer"},
        {"1.5", NUM_SYNTAX, "--n '1.5' is not an integer"},
        {"0", NUM_TOO_SMALL, "--n 0 is too small: at least 1"},
        {"101", NUM_TOO_LARGE, "--n 101 is too large: at most 100"},
        {"99999999999999999999", NUM_TOO_LARGE, "--n 99999999999999999999 is too large: at most 100"},
        {"-99999999999999999999", NUM_TOO_SMALL, "--n -99999999999999999999 is too small: at least 1"},
    };
    for (const auto &b : bad) {
        v = -7;
        EXPECT_EQ(num_parse_int("--n", b.s, 1, 100, &v, err), b.st) << b.s;
        EXPECT_STREQ(err, b.msg);
        EXPECT_EQ(v, -7) << "a failed parse leaves the value alone";
    }
    // Past long long's range at its own bounds: strtoll saturates there, and the sign says which end.
    EXPECT_EQ(num_parse_int("--n", "-99999999999999999999", LLONG_MIN, LLONG_MAX, &v, err), NUM_TOO_SMALL);
    EXPECT_EQ(num_parse_int("--n", "99999999999999999999", LLONG_MIN, LLONG_MAX, &v, err), NUM_TOO_LARGE);
}
TEST(Num, U64) {
    char err[NUM_ERR_LEN];
    unsigned long long v = 0;
    EXPECT_EQ(num_parse_u64("--seed", "18446744073709551615", UINT64_MAX, &v, err), NUM_OK);
    EXPECT_EQ(v, UINT64_MAX);
    EXPECT_EQ(num_parse_u64("--seed", "18446744073709551616", UINT64_MAX, &v, err), NUM_TOO_LARGE);
    EXPECT_STREQ(err, "--seed 18446744073709551616 is too large: at most 18446744073709551615");
    EXPECT_EQ(num_parse_u64("--seed", "-1", UINT64_MAX, &v, err), NUM_SYNTAX);
    EXPECT_STREQ(err, "--seed '-1' is not a non-negative integer");
    EXPECT_EQ(num_parse_u64("--seed", "+5", UINT64_MAX, &v, err), NUM_SYNTAX);
    EXPECT_STREQ(err, "--seed '+5' is not a non-negative integer");
}
TEST(Num, Real) {
    char err[NUM_ERR_LEN];
    double v = 0;
    EXPECT_EQ(num_parse_real("--x", "2.5e-3", 0, 1, &v, err), NUM_OK);
    EXPECT_EQ(v, 2.5e-3);
    for (const char *zero : {"-0", "-0.0", "-0e5", "-1e-999"}) {  // read as +0, never printed as "-0"
        v = 1;
        EXPECT_EQ(num_parse_real("--x", zero, 0, 1, &v, err), NUM_OK) << zero;
        EXPECT_EQ(v, 0.0) << zero;
        EXPECT_FALSE(std::signbit(v)) << zero;
    }
    struct { const char *s; NumStatus st; const char *msg; } bad[] = {
        {"nan", NUM_SYNTAX, "--x 'nan' is not a finite number"},
        {"0x1p3", NUM_SYNTAX, "--x '0x1p3' is not a finite number"},
        {"0X1P3", NUM_SYNTAX, "--x '0X1P3' is not a finite number"},
        {"1,5", NUM_SYNTAX, "--x '1,5' is not a finite number"},
        {"inf", NUM_TOO_LARGE, "--x inf is too large: at most 1"},
        {"1e308", NUM_TOO_LARGE, "--x 1e308 is too large: at most 1"},
        {"1e999", NUM_TOO_LARGE, "--x 1e999 is too large: at most 1"},
        {"-1e999", NUM_TOO_SMALL, "--x -1e999 is too small: at least 0"},
    };
    for (const auto &b : bad) {
        EXPECT_EQ(num_parse_real("--x", b.s, 0, 1, &v, err), b.st) << b.s;
        EXPECT_STREQ(err, b.msg);
    }
}

// Known-answer tests from the Random123 distribution (philox4x32_10).
TEST(Rng, PhiloxKnownAnswers) {
    uint32_t out[4];
    const uint32_t c0[4] = {0, 0, 0, 0}, k0[2] = {0, 0};
    rng_philox4x32_10(c0, k0, out);
    EXPECT_EQ(out[0], 0x6627e8d5u); EXPECT_EQ(out[1], 0xe169c58du);
    EXPECT_EQ(out[2], 0xbc57ac4cu); EXPECT_EQ(out[3], 0x9b00dbd8u);
    const uint32_t c1[4] = {0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu};
    const uint32_t k1[2] = {0xffffffffu, 0xffffffffu};
    rng_philox4x32_10(c1, k1, out);
    EXPECT_EQ(out[0], 0x408f276du); EXPECT_EQ(out[1], 0x41c83b0eu);
    EXPECT_EQ(out[2], 0xa20bc7c6u); EXPECT_EQ(out[3], 0x6d5451fdu);
    const uint32_t c2[4] = {0x243f6a88u, 0x85a308d3u, 0x13198a2eu, 0x03707344u};
    const uint32_t k2[2] = {0xa4093822u, 0x299f31d0u};
    rng_philox4x32_10(c2, k2, out);
    EXPECT_EQ(out[0], 0xd16cfe09u); EXPECT_EQ(out[1], 0x94fdccebu);
    EXPECT_EQ(out[2], 0x5001e420u); EXPECT_EQ(out[3], 0x24126ea1u);
}

TEST(Rng, NormalFillIsKeyedAndSliceStable) {
    float a[1001], b[10], c[1001];
    rng_normal_fill(a, 1001, 0.02f, 7, 3, "wq", -1);
    rng_normal_fill(b, 10, 0.02f, 7, 3, "wq", -1);
    for (int i = 0; i < 10; i++) EXPECT_EQ(a[i], b[i]);
    rng_normal_fill(c, 1001, 0.02f, 7, 3, "wk", -1);
    EXPECT_NE(a[0], c[0]);
    double m = 0, v = 0;
    for (int i = 0; i < 1001; i++) { m += a[i]; v += (double)a[i] * a[i]; }
    m /= 1001; v = v / 1001 - m * m;
    EXPECT_NEAR(std::sqrt(v), 0.02, 0.002);
    EXPECT_NEAR(m, 0.0, 0.003);
}

TEST(Params, AlignedAndPackedOffsets) {
    // params_add rounds a tensor's offset up to 16 floats; params_add_packed puts it right after
    // the one before (the attention's wq, wk, wv: one stacked matrix, framework/model.c).
    ParamRegistry r = {};
    const int64_t a[1] = {5}, q[2] = {3, 7}, k[2] = {1, 7};
    params_add(&r, "a", -1, PARAM_DENSE, 1, a, 5, 0.0f, 1.0f);
    params_add(&r, "q", 0, PARAM_DENSE, 2, q, 3, 0.02f, 0.0f);
    params_add_packed(&r, "k", 0, PARAM_DENSE, 2, k, 1, 0.02f, 0.0f);
    params_add_packed(&r, "v", 0, PARAM_DENSE, 2, k, 1, 0.02f, 0.0f);
    params_add(&r, "o", 0, PARAM_DENSE, 2, q, 3, 0.02f, 0.0f);
    EXPECT_EQ(r.p[0].offset, 0u);
    EXPECT_EQ(r.p[1].offset, 16u);       // 5 rounded up
    EXPECT_EQ(r.p[2].offset, 16u + 21);  // no gap after q's 21 floats
    EXPECT_EQ(r.p[3].offset, 16u + 28);
    EXPECT_EQ(r.p[4].offset, 64u);       // 16 + 35 rounded up
    EXPECT_EQ(r.total, 64u + 21);
    params_allocate(&r);
    EXPECT_EQ(params_ptr(&r, "k"), params_ptr(&r, "q") + 21);
    EXPECT_EQ(params_grad(&r, "v"), params_grad(&r, "k") + 7);
    params_free(&r);
}

TEST(ParamsDeath, PackedNeedsATensorBefore) {
    GTEST_FLAG_SET(death_test_style, "threadsafe");
    ParamRegistry r = {};
    const int64_t k[2] = {1, 7};
    EXPECT_EXIT(params_add_packed(&r, "k", 0, PARAM_DENSE, 2, k, 1, 0.02f, 0.0f),
                ::testing::ExitedWithCode(1),
                "params_add_packed\\('k'\\): no tensor declared before it");
}

}  // namespace
