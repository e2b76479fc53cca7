// data/shard: writer/reader round trips at both token widths, the tokenizer fingerprint (and the
// version 1 files without one), and every malformed shard (bad magic, unknown version, truncated,
// token id >= vocab, ...) as a usage error naming the file.
#include <gtest/gtest.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <string>
#include <vector>

#include "tests/data/test_util.h"

extern "C" {
#include "data/shard.h"
}

using data_test::put_u32;
using data_test::read_file;
using data_test::write_file;

namespace {

void check_round_trip(uint32_t vocab, size_t n, uint32_t want_width) {
    std::string path = test_tmp_dir("data") + "/s.bin";
    std::vector<uint32_t> ids(n);
    for (size_t i = 0; i < n; i++) ids[i] = (uint32_t)((i * 2654435761u) % vocab);
    if (n > 0) ids[n - 1] = vocab - 1;
    FILE *f = fopen(path.c_str(), "wb");
    ASSERT_NE(f, nullptr);
    ShardWriter *w = shard_writer_open(f, path.c_str(), vocab, 0x5eed0000u + vocab);
    // In uneven pieces, some larger than the writer's buffer.
    for (size_t i = 0, piece = 1; i < n; i += piece, piece = piece * 7 + 3)
        shard_writer_put(w, ids.data() + i, std::min(piece, n - i));
    EXPECT_EQ(shard_writer_close(w), n);
    EXPECT_EQ(fclose(f), 0);
    EXPECT_EQ(read_file(path).size(), SHARD_HEADER_BYTES + n * want_width);
    Shard s;
    shard_open(path.c_str(), &s);
    EXPECT_EQ(s.vocab, vocab);
    EXPECT_EQ(s.width, want_width);
    EXPECT_EQ(s.tok_fp, 0x5eed0000u + vocab);
    ASSERT_EQ(s.n, n);
    for (size_t i = 0; i < n; i++) ASSERT_EQ(shard_token(&s, i), ids[i]) << i;
    shard_close(&s);
}

TEST(Shard, RoundTrip) {
    check_round_trip(300, 100000, 2);
    check_round_trip(65536, 5000, 2);
    check_round_trip(65537, 5000, 4);
    check_round_trip(1 << 20, 40000, 4);
    check_round_trip(256, 0, 2);
}

TEST(Shard, LittleEndianLayout) {
    std::string path = test_tmp_dir("data") + "/s.bin";
    FILE *f = fopen(path.c_str(), "wb");
    ASSERT_NE(f, nullptr);
    ShardWriter *w = shard_writer_open(f, path.c_str(), 70000, 0xa1b2c3d4u);
    const uint32_t ids[] = {0x010203, 7};
    shard_writer_put(w, ids, 2);
    shard_writer_close(w);
    fclose(f);
    std::string want("MOELTOK1", 8);
    for (uint32_t v : {2u, 70000u, 2u, 0u, 4u, 0xa1b2c3d4u, 0x010203u, 7u}) put_u32(want, v);
    EXPECT_EQ(read_file(path), want);
}

std::string shard_bytes(uint32_t vocab, uint64_t count, uint32_t width, const std::vector<uint32_t> &ids,
                        const char *magic = SHARD_MAGIC, uint32_t version = SHARD_VERSION,
                        uint32_t tok_fp = 77) {
    std::string s(magic, 8);
    put_u32(s, version);
    put_u32(s, vocab);
    put_u32(s, (uint32_t)count);
    put_u32(s, (uint32_t)(count >> 32));
    put_u32(s, width);
    put_u32(s, tok_fp);
    for (uint32_t id : ids)
        for (uint32_t b = 0; b < width; b++) s.push_back((char)(id >> (8 * b)));
    return s;
}

struct BadShard {
    const char *what;
    std::string bytes;
    const char *message;
};

TEST(Shard, MalformedShardsAreUsageErrors) {
    std::string dir = test_tmp_dir("data");
    std::vector<BadShard> cases = {
        {"empty", "", "not a token shard: 0 bytes, shorter than the 32-byte header"},
        {"short", shard_bytes(300, 0, 2, {}).substr(0, 20), "shorter than the 32-byte header"},
        {"magic", shard_bytes(300, 1, 2, {5}, "MOELTOK2"), "not a token shard: bad magic"},
        {"version", shard_bytes(300, 1, 2, {5}, SHARD_MAGIC, 3), "unknown token shard version 3 \\(this build reads versions 1 and 2\\)"},
        {"version0", shard_bytes(300, 1, 2, {5}, SHARD_MAGIC, 0), "unknown token shard version 0"},
        {"width", shard_bytes(300, 1, 3, {5}), "token width 3 is neither 2 nor 4"},
        {"vocab0", shard_bytes(0, 0, 2, {}), "vocabulary size 0 does not fit"},
        {"vocab_wide", shard_bytes(70000, 1, 2, {5}), "vocabulary size 70000 does not fit 2-byte tokens"},
        {"vocab_wide_by_one", shard_bytes(65537, 1, 2, {5}), "vocabulary size 65537 does not fit 2-byte tokens"},
        {"v1_fingerprint", shard_bytes(300, 1, 2, {5}, SHARD_MAGIC, 1, 1), "tokenizer fingerprint 1 in a version 1 header \\(version 1 has 0 there\\)"},
        {"v2_no_fingerprint", shard_bytes(300, 1, 2, {5}, SHARD_MAGIC, 2, 0), "tokenizer fingerprint 0 in a version 2 header \\(0 is not a fingerprint\\)"},
        {"truncated", shard_bytes(300, 3, 2, {5, 6}), "truncated: header says 3 tokens of 2 bytes, the file holds 4 bytes"},
        {"truncated_odd", shard_bytes(300, 2, 4, {5, 6}).substr(0, 39), "truncated"},
        {"huge_count", shard_bytes(300, 1ull << 62, 4, {5}), "truncated: header says 4611686018427387904 tokens"},
        {"trailing", shard_bytes(300, 1, 2, {5, 6}), "trailing bytes: header says 1 tokens"},
        {"token", shard_bytes(300, 4, 2, {1, 2, 300, 4}), "token 300 at position 2 is >= the vocabulary size 300"},
        {"token_wide", shard_bytes(70000, 2, 4, {69999, 0xffffffffu}), "token 4294967295 at position 1"},
    };
    for (const BadShard &c : cases) {
        std::string path = dir + "/" + c.what + ".bin";
        write_file(path, c.bytes);
        Shard s;
        char err[SHARD_ERR_LEN] = "";
        EXPECT_EQ(shard_open_try(path.c_str(), &s, err), -1) << c.what;
        EXPECT_NE(strstr(err, path.c_str()), nullptr) << c.what << ": " << err;
        EXPECT_EXIT(shard_open(path.c_str(), &s), ::testing::ExitedWithCode(2), path + ": .*" + c.message) << c.what;
    }
    Shard s;
    EXPECT_EXIT(shard_open((dir + "/missing.bin").c_str(), &s), ::testing::ExitedWithCode(2),
                "cannot open token shard .*missing.bin: No such file");
    EXPECT_EXIT(shard_open(dir.c_str(), &s), ::testing::ExitedWithCode(2), "not a regular file");
    // A FIFO blocked the open for ever (alarm: a regression ends the child instead of the test).
    const std::string fifo = dir + "/train.bin";
    ASSERT_EQ(mkfifo(fifo.c_str(), 0600), 0);
    EXPECT_EXIT((alarm(10), shard_open(fifo.c_str(), &s)), ::testing::ExitedWithCode(2),
                "cannot open token shard .*train.bin: not a regular file");
    // A well-formed image parses from memory too (the fuzzer's entry point).
    std::string good = shard_bytes(300, 2, 2, {299, 0});
    char err[SHARD_ERR_LEN];
    ASSERT_EQ(shard_parse_try((const uint8_t *)good.data(), good.size(), "mem", &s, err), 0);
    EXPECT_EQ(s.n, 2u);
    EXPECT_EQ(s.tok_fp, 77u);
    EXPECT_EQ(shard_token(&s, 0), 299u);
}

// Shards of an older moelab (version 1, the field 0) still load, their fingerprint unknown (0).
TEST(Shard, Version1LoadsWithoutAFingerprint) {
    std::string path = test_tmp_dir("data") + "/v1.bin";
    write_file(path, shard_bytes(300, 2, 2, {299, 4}, SHARD_MAGIC, 1, 0));
    Shard s;
    shard_open(path.c_str(), &s);
    EXPECT_EQ(s.tok_fp, 0u);
    EXPECT_EQ(s.vocab, 300u);
    EXPECT_EQ(shard_token(&s, 1), 4u);
    shard_close(&s);
}

TEST(Shard, WriterRejectsBadInput) {
    std::string path = test_tmp_dir("data") + "/x.bin";
    FILE *f = fopen(path.c_str(), "wb");
    ASSERT_NE(f, nullptr);
    EXPECT_DEATH(shard_writer_open(f, path.c_str(), 300, 0), "0 is not a tokenizer fingerprint");
    ShardWriter *w = shard_writer_open(f, path.c_str(), 300, 1);
    const uint32_t bad = 300;
    EXPECT_DEATH(shard_writer_put(w, &bad, 1), "token 300 is >= the vocabulary size 300");
    shard_writer_close(w);
    fclose(f);
}

// A write that fails (here on a full device) is left in the stream's error flag for the caller's
// checked close (CoreOut), which discards the file: neither the writer nor its close exits.
TEST(Shard, WriterLeavesAFailedWriteToTheStream) {
    FILE *f = fopen("/dev/full", "wb");
    ASSERT_NE(f, nullptr);
    ShardWriter *w = shard_writer_open(f, "/dev/full", 300, 1);
    std::vector<uint32_t> ids(100000, 7);
    shard_writer_put(w, ids.data(), ids.size());
    EXPECT_EQ(shard_writer_close(w), ids.size());
    EXPECT_TRUE(ferror(f));
    fclose(f);
}

// A shard the system cannot map (no address space left: RLIMIT_AS here) is an environment failure,
// exit 1, not the user's bad data (it was a usage error, exit 2, review 2026-12-05). The file is
// sparse: 8 GiB of token 0 that take no disk.
TEST(Shard, UnmappableShardIsAnEnvironmentFailure) {
#if defined(__SANITIZE_ADDRESS__)
    GTEST_SKIP() << "AddressSanitizer reserves the address space a limit would cut";
#else
    const std::string path = test_tmp_dir("data") + "/big.bin";
    const uint64_t count = 1ull << 32;
    write_file(path, shard_bytes(300, count, 2, {}));
    ASSERT_EQ(truncate(path.c_str(), (off_t)(SHARD_HEADER_BYTES + 2 * count)), 0);
    auto open_limited = [&] {
        struct rlimit lim = {(rlim_t)4 << 30, (rlim_t)4 << 30};  // 4 GiB: the test runs in far less
        if (setrlimit(RLIMIT_AS, &lim) != 0) _exit(99);
        Shard s;
        shard_open(path.c_str(), &s);
        _exit(0);
    };
    EXPECT_EXIT(open_limited(), ::testing::ExitedWithCode(1), "cannot map token shard .*big.bin: Cannot allocate memory");
    unlink(path.c_str());
#endif
}

}  // namespace
