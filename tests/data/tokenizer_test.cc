// data/tokenizer: the chunker, hand-checked merges and tie-breaking, round trips on random bytes
// (invalid UTF-8 and NUL included) and on text, the tokenizer file and every malformed-file case.
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <random>
#include <string>
#include <vector>

#include "tests/data/test_util.h"

extern "C" {
#include "data/tokenizer.h"
}

using data_test::put_u32;
using data_test::read_file;
using data_test::write_file;

namespace {

// Text of our own, embedded so the test needs no corpus.
const char kText[] =
    "The quick brown fox jumps over the lazy dog. The dog, who was not quick at all, slept on.\n"
    "In the morning the fox came back; the dog was still asleep, and the fox was still quick.\n"
    "Numbers too: 12 foxes, 345 dogs, 6789 mornings -- and a few words in other scripts:\n"
    "caf\xc3\xa9, na\xc3\xafve, \xce\xb1\xce\xbb\xcf\x86\xce\xb1, \xe6\x97\xa5\xe6\x9c\xac.\n\n"
    "    Indented lines, tabs\tand\ttabs, and \"quotes\" (parentheses) [brackets] {braces}!\n"
    "The end of the text is near; the fox, the dog and the morning are all that remain.\n";

Tokenizer *train_on(const std::string &text, int V) {
    const uint8_t *doc = (const uint8_t *)text.data();
    size_t len = text.size();
    return tok_train(&doc, &len, 1, V, NULL);
}

std::vector<uint32_t> encode(const Tokenizer *t, const std::string &s) {
    std::vector<uint32_t> ids(s.size() + 1);
    ids.resize(tok_encode(t, (const uint8_t *)s.data(), s.size(), ids.data()));
    return ids;
}

std::string decode(const Tokenizer *t, const std::vector<uint32_t> &ids) {
    size_t n = tok_decode(t, ids.data(), ids.size(), NULL, 0);
    std::string s(n, '\0');
    EXPECT_EQ(tok_decode(t, ids.data(), ids.size(), (uint8_t *)&s[0], n), n);
    return s;
}

std::vector<std::string> chunks(const std::string &s) {
    std::vector<std::string> out;
    for (size_t i = 0; i < s.size();) {
        size_t n = tok_chunk_len((const uint8_t *)s.data() + i, s.size() - i);
        out.push_back(s.substr(i, n));
        i += n;
    }
    return out;
}

TEST(Tokenizer, Chunks) {
    std::vector<std::string> want = {"Hello", ",", " ", " world", "!", " 123", "abc", "\n\n ", " x", "\t"};
    EXPECT_EQ(chunks("Hello,  world! 123abc\n\n  x\t"), want);
    // Non-ASCII bytes count as letters; a long run is cut at TOK_CHUNK_MAX.
    EXPECT_EQ(chunks("caf\xc3\xa9 ok"), (std::vector<std::string>{"caf\xc3\xa9", " ok"}));
    std::string longrun(150, 'z');
    EXPECT_EQ(chunks(longrun), (std::vector<std::string>{longrun.substr(0, 64), longrun.substr(0, 64),
                                                          longrun.substr(0, 22)}));
    EXPECT_EQ(chunks(std::string("a\0b", 3)), (std::vector<std::string>{"a", std::string(1, '\0'), "b"}));
    // A space leads a punctuation run as it leads a word.
    EXPECT_EQ(chunks("a .,; b"), (std::vector<std::string>{"a", " .,;", " b"}));
}

// "aaabdaaabac" by hand (one chunk): (a,a) occurs 4 times (overlaps counted) -> 256, giving
// 256 a b d 256 a b a c; then (a,b) and (256,a) tie at 2 and the lower pair (97,98) wins -> 257;
// then (256,257) -> 258: 258 d 258 a c; then four pairs at 1, the lowest (97,99) -> 259: 258 d 258 259;
// then (100,258) is the lowest of three -> 260.
TEST(Tokenizer, HandCheckedMerges) {
    Tokenizer *t = train_on("aaabdaaabac", 261);
    ASSERT_EQ(t->V, 261);
    const uint32_t want[] = {97, 97, 97, 98, 256, 257, 97, 99, 100, 258};
    for (int i = 0; i < 10; i++) EXPECT_EQ(t->merges[i], want[i]) << "merge " << i / 2;
    EXPECT_EQ(encode(t, "aaabdaaabac"), (std::vector<uint32_t>{258, 260, 259}));
    EXPECT_EQ(decode(t, {258}), "aaab");
    tok_free(t);
}

// Counts add up over repeated chunks, and no merge crosses a chunk boundary.
TEST(Tokenizer, MergesCountChunksAndStayInside) {
    // Chunks "ab", " ab", " ab", " cd": (a,b) 3 times, (' ',a) twice, then (' ',ab) twice.
    Tokenizer *t = train_on("ab ab ab cd", 259);
    ASSERT_EQ(t->V, 259);
    const uint32_t want[] = {97, 98, 32, 256, 32, 99};
    for (int i = 0; i < 6; i++) EXPECT_EQ(t->merges[i], want[i]);
    tok_free(t);
    // Every chunk is one byte: there is no pair to merge, so training stops at 256.
    t = train_on("a.a.a.a.a.", 300);
    EXPECT_EQ(t->V, 256);
    tok_free(t);
}

TEST(Tokenizer, TrainingIsDeterministicAndCompresses) {
    Tokenizer *a = train_on(kText, 400), *b = train_on(kText, 400);
    ASSERT_EQ(a->V, 400);
    ASSERT_EQ(b->V, 400);
    EXPECT_EQ(memcmp(a->merges, b->merges, sizeof(uint32_t) * 2 * 144), 0);
    std::vector<uint32_t> ids = encode(a, kText);
    EXPECT_LT(ids.size(), strlen(kText) / 2);  // 144 merges on its own text halve it at least
    for (uint32_t id : ids) EXPECT_LT(id, 400u);
    tok_free(a);
    tok_free(b);
}

TEST(Tokenizer, RoundTripRandomBytes) {
    Tokenizer *t = train_on(kText, 512);
    std::mt19937 rng(1234);
    for (int len = 0; len < 600; len += 1 + len / 8) {
        for (int rep = 0; rep < 4; rep++) {
            std::string s(len, '\0');
            // Uniform bytes (mostly invalid UTF-8, NULs), then text-like bytes biased to the
            // training alphabet so that many merges apply.
            for (int i = 0; i < len; i++)
                s[i] = rep % 2 ? kText[rng() % (sizeof kText - 1)] : (char)(rng() & 0xff);
            if (rep == 3 && len > 2) s[len / 2] = '\0', s[len / 3] = '\xff';
            ASSERT_EQ(decode(t, encode(t, s)), s) << "len " << len << " rep " << rep;
        }
    }
    std::string all(256, '\0');
    for (int i = 0; i < 256; i++) all[i] = (char)i;
    EXPECT_EQ(decode(t, encode(t, all + all + kText + all)), all + all + kText + all);
    tok_free(t);
}

TEST(Tokenizer, RoundTripText) {
    Tokenizer *t = train_on(kText, 600);
    std::string text = std::string(kText) + "Unseen words: quixotic zephyrs, 2024-06-01, \xf0\x9f\xa6\x8a\n";
    EXPECT_EQ(decode(t, encode(t, text)), text);
    // Raw bytes tokenizer: identity.
    Tokenizer *raw = tok_from_merges(NULL, 0);
    std::vector<uint32_t> ids = encode(raw, text);
    ASSERT_EQ(ids.size(), text.size());
    for (size_t i = 0; i < ids.size(); i++) EXPECT_EQ(ids[i], (uint8_t)text[i]);
    tok_free(raw);
    tok_free(t);
}

// The fortunes corpus (the quickstart's default) when installed.
TEST(Tokenizer, RoundTripFortunesCorpus) {
    std::string text = read_file("/usr/share/games/fortunes/fortunes") + read_file("/usr/share/games/fortunes/science");
    if (text.size() < 10000) GTEST_SKIP() << "fortunes package not installed";
    Tokenizer *t = train_on(text.substr(0, text.size() / 2), 1024);
    ASSERT_EQ(t->V, 1024);
    std::vector<uint32_t> ids = encode(t, text);
    EXPECT_EQ(decode(t, ids), text);
    EXPECT_GT((double)text.size() / ids.size(), 2.0);  // bytes per token
    tok_free(t);
}

TEST(Tokenizer, DecodeTruncatesToCapacity) {
    Tokenizer *t = train_on("aaabdaaabac", 261);
    uint8_t out[5] = {0, 0, 0, 0, 0};
    const uint32_t ids[] = {258, 258};
    EXPECT_EQ(tok_decode(t, ids, 2, out, 5), 8u);
    EXPECT_EQ(std::string((char *)out, 5), "aaaba");
    tok_free(t);
}

TEST(TokenizerFile, WriteLoadRoundTrip) {
    std::string dir = test_tmp_dir("data"), path = dir + "/tok.bin";
    Tokenizer *t = train_on(kText, 420);
    ASSERT_EQ(t->V, 420);
    FILE *f = fopen(path.c_str(), "wb");
    ASSERT_NE(f, nullptr);
    tok_write(t, f);
    ASSERT_EQ(fclose(f), 0);
    EXPECT_EQ(read_file(path).size(), (size_t)(TOK_HEADER_BYTES + 8 * (420 - 256)));
    Tokenizer *u = tok_load(path.c_str());
    ASSERT_EQ(u->V, t->V);
    EXPECT_EQ(memcmp(u->merges, t->merges, sizeof(uint32_t) * 2 * (t->V - 256)), 0);
    EXPECT_EQ(encode(u, kText), encode(t, kText));
    tok_free(u);
    tok_free(t);
}

// The fingerprint that shards and checkpoints record: FNV-1a of the file's V and merge words (pinned
// here: a change would call every shard and checkpoint written before another tokenizer's), the
// same after a round trip through the file, and another for other merges of the same size.
TEST(TokenizerFile, FingerprintIsTheMerges) {
    Tokenizer *bytes = tok_from_merges(nullptr, 0);
    EXPECT_EQ(tok_fingerprint(bytes), 0x0caf41cau);  // FNV-1a of 00 01 00 00 (V = 256)
    const uint32_t ab[] = {97, 98}, ba[] = {98, 97};
    Tokenizer *t_ab = tok_from_merges(ab, 1), *t_ba = tok_from_merges(ba, 1);
    EXPECT_EQ(tok_fingerprint(t_ab), 0x5c12c92cu);  // of 01 01 00 00, 61 00 00 00, 62 00 00 00
    EXPECT_NE(tok_fingerprint(t_ab), tok_fingerprint(t_ba));
    tok_free(bytes);
    tok_free(t_ab);
    tok_free(t_ba);

    std::string path = test_tmp_dir("data") + "/tok.bin";
    Tokenizer *t = train_on(kText, 420);
    FILE *f = fopen(path.c_str(), "wb");
    ASSERT_NE(f, nullptr);
    tok_write(t, f);
    ASSERT_EQ(fclose(f), 0);
    Tokenizer *u = tok_load(path.c_str());
    EXPECT_EQ(tok_fingerprint(u), tok_fingerprint(t));
    EXPECT_NE(tok_fingerprint(u), 0u);
    tok_free(u);
    tok_free(t);
}

std::string tok_file(uint32_t V, const std::vector<uint32_t> &merges, const char *magic = TOK_MAGIC,
                     uint32_t version = TOK_VERSION) {
    std::string s(magic, 8);
    put_u32(s, version);
    put_u32(s, V);
    for (uint32_t m : merges) put_u32(s, m);
    return s;
}

struct BadFile {
    const char *what;
    std::string bytes;
    const char *message;
};

TEST(TokenizerFile, MalformedFilesAreUsageErrors) {
    std::string dir = test_tmp_dir("data");
    std::string good = tok_file(258, {97, 98, 256, 99});
    std::vector<BadFile> cases = {
        {"empty", "", "shorter than the 16-byte header"},
        {"short", good.substr(0, 10), "shorter than the 16-byte header"},
        {"magic", tok_file(258, {97, 98, 256, 99}, "MOELBPE2"), "bad magic"},
        {"version", tok_file(258, {97, 98, 256, 99}, TOK_MAGIC, 9), "unknown tokenizer file version 9"},
        {"vocab_small", tok_file(255, {}), "vocabulary size 255 is outside"},
        {"vocab_huge", tok_file(0x7fffffff, {}), "vocabulary size 2147483647 is outside"},
        {"truncated", good.substr(0, good.size() - 3), "truncated: a vocabulary of 258 needs 32 bytes, the file has 29"},
        {"trailing", good + "x", "trailing bytes"},
        {"forward_ref", tok_file(258, {97, 257, 97, 98}), "merge 0 \\(token 256\\) uses token 257, which is not defined"},
        {"self_ref", tok_file(257, {256, 97}), "uses token 256, which is not defined"},
        {"duplicate", tok_file(259, {97, 98, 99, 100, 97, 98}), "merge 2 repeats merge 0 \\(97, 98\\)"},
        // Doubling a token seven times makes 128 bytes, beyond the 64-byte chunk limit.
        {"too_long", tok_file(263, {97, 97, 256, 256, 257, 257, 258, 258, 259, 259, 260, 260, 261, 261}),
         "merge 6 makes a token of 128 bytes, longer than the 64-byte chunk limit"},
    };
    for (const BadFile &c : cases) {
        std::string path = dir + "/" + c.what + ".bin";
        write_file(path, c.bytes);
        char err[TOK_ERR_LEN] = "";
        EXPECT_EQ(tok_parse_try((const uint8_t *)c.bytes.data(), c.bytes.size(), path.c_str(), err), nullptr) << c.what;
        EXPECT_NE(strstr(err, path.c_str()), nullptr) << c.what << ": " << err;
        EXPECT_EXIT(tok_load(path.c_str()), ::testing::ExitedWithCode(2), path + ": .*" + c.message) << c.what;
    }
    EXPECT_EXIT(tok_load((dir + "/missing.bin").c_str()), ::testing::ExitedWithCode(2),
                "cannot open tokenizer file .*missing.bin: No such file");
    // A directory once read as a file of 2^63 - 1 bytes ("larger than any tokenizer"); a FIFO
    // blocked the open for ever (alarm: a regression ends the child instead of hanging the test).
    EXPECT_EXIT(tok_load(dir.c_str()), ::testing::ExitedWithCode(2),
                "cannot open tokenizer file .*: not a regular file");
    const std::string fifo = dir + "/fifo.bin";
    ASSERT_EQ(mkfifo(fifo.c_str(), 0600), 0);
    EXPECT_EXIT((alarm(10), tok_load(fifo.c_str())), ::testing::ExitedWithCode(2),
                "cannot open tokenizer file .*fifo.bin: not a regular file");
    // The good file itself loads.
    write_file(dir + "/good.bin", good);
    Tokenizer *t = tok_load((dir + "/good.bin").c_str());
    EXPECT_EQ(decode(t, {257}), "abc");
    tok_free(t);
}

}  // namespace
