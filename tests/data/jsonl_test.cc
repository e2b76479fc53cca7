// JSON Lines corpora: data/jsonl (documents and counted bad lines) and `moelab data prepare` on .jsonl
// and .jsonl.gz files: what becomes a document, the split and determinism rules, the reports of bad
// lines, --strict, --text-field, and damaged gzip files.
#include <gtest/gtest.h>
#include <unistd.h>
#include <zlib.h>

#include <string>
#include <vector>

#include "tests/data/cmd_data_util.h"
#include "tests/data/test_util.h"

extern "C" {
#include "data/jsonl.h"
#include "data/prepare.h"
#include "data/shard.h"
#include "data/tokenizer.h"
}

using data_test::read_file;
using data_test::write_file;

namespace {

std::vector<std::string> docs_of(const JsonlDocs &d) {
    std::vector<std::string> out;
    for (size_t i = 0; i < d.n; i++) out.emplace_back((const char *)d.text + d.off[i], d.off[i + 1] - d.off[i]);
    return out;
}

// A UTF-8 byte order mark before the first line is no part of it (it was "not JSON: at byte 0").
TEST(Jsonl, SkipsAByteOrderMark) {
    const std::string text = "\xEF\xBB\xBF{\"text\": \"a\"}\n{\"text\": \"b\"}\n";
    JsonlDocs d;
    jsonl_parse((const uint8_t *)text.data(), text.size(), "text", 0, &d);
    EXPECT_EQ(d.bad, 0u);
    EXPECT_EQ(docs_of(d), (std::vector<std::string>{"a", "b"}));
    jsonl_free(&d);
}

TEST(Jsonl, DocumentsAndBadLines) {
    const std::string text =
        "{\"text\": \"first\\ndoc\", \"id\": 1}\n"
        "\n"                                   // 2: empty
        "{\"text\": \"caf\\u00e9\"}\r\n"       // CRLF is fine
        "{\"text\": 3}\n"                      // 4: not a string
        "[\"text\"]\n"                         // 5: not an object
        "{\"body\": \"x\"}\n"                  // 6: no member
        "{\"text\": \"unterminated}\n"         // 7: not JSON
        "  \t \n"                              // 8: blank
        "{\"text\": \"\"}\n"                   // an empty document is a document
        "{\"text\": \"last, no newline\"}";
    JsonlDocs d;
    jsonl_parse((const uint8_t *)text.data(), text.size(), "text", 0, &d);
    EXPECT_EQ(d.lines, 10u);
    EXPECT_EQ(d.bad, 6u);
    EXPECT_EQ(docs_of(d), (std::vector<std::string>{"first\ndoc", "caf\xc3\xa9", "", "last, no newline"}));
    const uint64_t lines[] = {2, 4, 5, 6, 7};
    const char *reasons[] = {"empty line", "member \"text\" is a number, not a string",
                             "not a JSON object but an array", "no member \"text\"",
                             "not JSON: at byte 9: unterminated string"};
    for (int k = 0; k < JSONL_REPORT; k++) {
        EXPECT_EQ(d.first_bad[k].line, lines[k]);
        EXPECT_STREQ(d.first_bad[k].reason, reasons[k]);
    }
    jsonl_free(&d);

    jsonl_parse((const uint8_t *)text.data(), text.size(), "body", 0, &d);  // another field
    EXPECT_EQ(docs_of(d), std::vector<std::string>{"x"});
    jsonl_free(&d);
    const std::string crlf_blank = "\r\n{\"text\": \"a\"}\r\n";  // a blank line of a CRLF file is empty too
    jsonl_parse((const uint8_t *)crlf_blank.data(), crlf_blank.size(), "text", 0, &d);
    EXPECT_EQ(d.bad, 1u);
    EXPECT_STREQ(d.first_bad[0].reason, "empty line");
    jsonl_free(&d);
    jsonl_parse((const uint8_t *)text.data(), text.size(), "text", 1, &d);  // strict: stops at line 2
    EXPECT_EQ(d.bad, 1u);
    EXPECT_EQ(d.lines, 2u);
    jsonl_free(&d);
    jsonl_parse((const uint8_t *)"", 0, "text", 0, &d);
    EXPECT_EQ(d.lines, 0u);
    EXPECT_EQ(d.n, 0u);
    jsonl_free(&d);
}

void write_gzip(const std::string &path, const std::string &bytes) {
    gzFile g = gzopen(path.c_str(), "wb");
    ASSERT_NE(g, nullptr);
    ASSERT_EQ(gzwrite(g, bytes.data(), (unsigned)bytes.size()), (int)bytes.size());
    ASSERT_EQ(gzclose(g), Z_OK);
}

std::string decode_shard(const Tokenizer *t, const std::string &path) {
    Shard s;
    shard_open(path.c_str(), &s);
    std::vector<uint32_t> ids(s.n);
    for (uint64_t i = 0; i < s.n; i++) ids[i] = shard_token(&s, i);
    shard_close(&s);
    std::string out(tok_decode(t, ids.data(), ids.size(), NULL, 0), '\0');
    tok_decode(t, ids.data(), ids.size(), (uint8_t *)&out[0], out.size());
    return out;
}

const std::vector<std::string> kDocs = {
    "the first json document.\nwith a second line here.\n", "another one, without a newline at all",
    "third: the words repeat, the the the.\nand end.\n", "fourth \xe2\x80\x94 with a dash.\nok\n"};

std::string jsonl_of(const std::vector<std::string> &docs, size_t from, size_t to) {
    std::string s;
    for (size_t i = from; i < to; i++) {
        std::string esc;
        for (char c : docs[i]) esc += c == '\n' ? std::string("\\n") : std::string(1, c);
        s += "{\"meta\": {\"n\": " + std::to_string(i) + "}, \"text\": \"" + esc + "\"}\n";
    }
    return s;
}

TEST(PrepareJsonl, EveryLineIsADocument) {
    const std::string in = test_tmp_dir("data"), out = test_tmp_dir("data"), out2 = test_tmp_dir("data");
    write_file(in + "/a.jsonl", jsonl_of(kDocs, 0, 2) + "oops\n");
    write_gzip(in + "/b.jsonl.gz", jsonl_of(kDocs, 2, 4));
    write_file(in + "/c.txt", "a plain text file is still one document.\nsecond line.\n");
    const char *inputs[] = {in.c_str()};
    PrepareStats st;
    testing::internal::CaptureStderr();
    prepare_dataset(inputs, 1, 300, out.c_str(), 0.3, 5, nullptr, &st);
    const std::string err = testing::internal::GetCapturedStderr();
    EXPECT_NE(err.find("a.jsonl:3: not JSON: at byte 0: expected a JSON value; line skipped"), std::string::npos) << err;
    EXPECT_EQ(st.docs, 5);
    EXPECT_EQ(st.bad_lines, 1u);
    size_t bytes = 0;
    for (const std::string &d : kDocs) bytes += d.size();
    EXPECT_EQ(st.bytes, bytes + 54);  // the documents' own bytes, not the JSON around them
    Tokenizer *t = tok_load((out + "/tokenizer.bin").c_str());
    const std::string train = decode_shard(t, out + "/train.bin"), val = decode_shard(t, out + "/val.bin");
    tok_free(t);
    // Each document split as a file would be: its head in train, its tail in val.
    for (const std::string &d : kDocs) {
        size_t c = (size_t)(d.size() * 0.7);
        const size_t nl = d.find('\n', c);
        c = nl == std::string::npos || nl + 1 == d.size() ? c : nl + 1;  // not past the last byte
        EXPECT_NE(train.find(d.substr(0, c)), std::string::npos) << d;
        EXPECT_NE(val.find(d.substr(c)), std::string::npos) << d;
    }
    EXPECT_EQ(train.find("{\"meta\""), std::string::npos);
    // Deterministic: the same inputs and seed give the same files.
    testing::internal::CaptureStderr();
    prepare_dataset(inputs, 1, 300, out2.c_str(), 0.3, 5, nullptr, &st);
    testing::internal::GetCapturedStderr();
    EXPECT_EQ(read_file(out + "/train.bin"), read_file(out2 + "/train.bin"));
    EXPECT_EQ(read_file(out + "/val.bin"), read_file(out2 + "/val.bin"));
}

// Compressed files are read by their bytes or a .gz name in any case, text and JSON Lines alike (a
// .txt.gz and a .JSONL.GZ went in as raw gzip bytes), and the shards follow the paths, not the order
// --input names them in (review, 2026-12-06): the same files and seed give the same dataset.
TEST(PrepareJsonl, CompressedFilesAndAnyInputOrder) {
    const std::string in = test_tmp_dir("data"), gzd = test_tmp_dir("data"), out = test_tmp_dir("data"), out2 = test_tmp_dir("data"), out3 = test_tmp_dir("data");
    const std::string a = in + "/a.txt", b = in + "/b.jsonl", c = in + "/c.txt";
    write_file(a, kDocs[0]);
    write_file(b, jsonl_of(kDocs, 1, 3));
    write_file(c, kDocs[3]);
    write_gzip(gzd + "/a.txt.gz", kDocs[0]);
    write_gzip(gzd + "/b.JSONL.GZ", jsonl_of(kDocs, 1, 3));
    write_gzip(gzd + "/c.txt", kDocs[3]);  // gzip by its bytes alone
    PrepareStats st;
    const char *abc[] = {a.c_str(), b.c_str(), c.c_str()}, *cba[] = {c.c_str(), b.c_str(), a.c_str()};
    const char *gz[] = {gzd.c_str()};
    prepare_dataset(abc, 3, 256, out.c_str(), 0.2, 1, nullptr, &st);
    prepare_dataset(cba, 3, 256, out2.c_str(), 0.2, 1, nullptr, &st);
    prepare_dataset(gz, 1, 256, out3.c_str(), 0.2, 1, nullptr, &st);
    EXPECT_EQ(st.docs, 4);
    for (const char *f : {"/train.bin", "/val.bin"}) {
        EXPECT_EQ(read_file(out + f), read_file(out2 + f)) << f;
        EXPECT_EQ(read_file(out + f), read_file(out3 + f)) << f;
    }
    // A file reached twice (here through a link in another folder) is read under its first path in
    // path order: which --input came first decided it, and the dataset with it.
    const std::string A = test_tmp_dir("data"), B = test_tmp_dir("data"), o1 = test_tmp_dir("data"), o2 = test_tmp_dir("data");
    write_file(A + "/a.txt", kDocs[0]);
    write_file(A + "/m.txt", kDocs[1]);
    write_file(B + "/q.txt", kDocs[2]);
    ASSERT_EQ(symlink((A + "/a.txt").c_str(), (B + "/z.txt").c_str()), 0);
    const char *ab[] = {A.c_str(), B.c_str()}, *ba[] = {B.c_str(), A.c_str()};
    testing::internal::CaptureStdout();
    prepare_dataset(ab, 2, 256, o1.c_str(), 0.2, 1, nullptr, &st);
    prepare_dataset(ba, 2, 256, o2.c_str(), 0.2, 1, nullptr, &st);
    testing::internal::GetCapturedStdout();
    EXPECT_EQ(st.docs, 3);
    for (const char *f : {"/train.bin", "/val.bin"}) EXPECT_EQ(read_file(o1 + f), read_file(o2 + f)) << f;
    write_file(gzd + "/e.txt.gz", "");
    EXPECT_EXIT(prepare_dataset(gz, 1, 256, out3.c_str(), 0.2, 1, nullptr, &st), ::testing::ExitedWithCode(2),
                "e.txt.gz: an empty file, not gzip");
    remove((gzd + "/e.txt.gz").c_str());
    write_file(gzd + "/d.txt.gz", "plain text named as gzip");
    EXPECT_EXIT(prepare_dataset(gz, 1, 256, out3.c_str(), 0.2, 1, nullptr, &st), ::testing::ExitedWithCode(2),
                "d.txt.gz: not a gzip file");
}

TEST(PrepareJsonl, ReportsTheFirstFiveBadLinesAndCountsAll) {
    const std::string in = test_tmp_dir("data"), out = test_tmp_dir("data");
    std::string text = jsonl_of(kDocs, 0, 4);
    for (int i = 0; i < 7; i++) text += "{\"txt\": \"wrong field\"}\n";
    write_file(in + "/x.jsonl", text);
    const std::string path = in + "/x.jsonl";
    const char *inputs[] = {path.c_str()};
    PrepareStats st;
    testing::internal::CaptureStderr();
    testing::internal::CaptureStdout();
    prepare_dataset(inputs, 1, 280, out.c_str(), 0.1, 1, nullptr, &st);
    const std::string summary = testing::internal::GetCapturedStdout();
    const std::string err = testing::internal::GetCapturedStderr();
    EXPECT_EQ(st.bad_lines, 7u);
    EXPECT_NE(err.find("x.jsonl:9: no member \"text\""), std::string::npos) << err;
    EXPECT_EQ(err.find("x.jsonl:10:"), std::string::npos) << err;  // only the first five in detail
    EXPECT_NE(summary.find("7 JSON line(s) gave no document and were skipped (the first 5 listed above)"),
              std::string::npos) << summary;
    const PrepareJsonl field = {"txt", 0};
    testing::internal::CaptureStderr();
    prepare_dataset(inputs, 1, 256, out.c_str(), 0.1, 1, &field, &st);
    testing::internal::GetCapturedStderr();
    EXPECT_EQ(st.docs, 7);
    EXPECT_EQ(st.bad_lines, 4u);
}

TEST(PrepareJsonl, BadInputIsUsageError) {
    const std::string in = test_tmp_dir("data"), out = test_tmp_dir("data");
    PrepareStats st;
    write_file(in + "/s.jsonl", jsonl_of(kDocs, 0, 2) + "{\"text\": null}\n");
    const std::string s = in + "/s.jsonl";
    const char *strict_in[] = {s.c_str()};
    const PrepareJsonl strict = {nullptr, 1};
    EXPECT_EXIT(prepare_dataset(strict_in, 1, 300, out.c_str(), 0.1, 1, &strict, &st), ::testing::ExitedWithCode(2),
                "s.jsonl:3: member \"text\" is null, not a string \\(--strict");
    std::string gz = in + "/d.jsonl.gz";
    write_gzip(gz, jsonl_of(kDocs, 0, 4));
    const std::string whole = read_file(gz);
    const char *gz_in[] = {gz.c_str()};
    write_file(gz, whole.substr(0, whole.size() - 12));  // truncated
    EXPECT_EXIT(prepare_dataset(gz_in, 1, 300, out.c_str(), 0.1, 1, nullptr, &st), ::testing::ExitedWithCode(2),
                "d.jsonl.gz: damaged gzip file: truncated");
    std::string flipped = whole;
    flipped[whole.size() - 5] ^= 0x55;  // the CRC-32 in the trailer no longer matches
    write_file(gz, flipped);
    EXPECT_EXIT(prepare_dataset(gz_in, 1, 300, out.c_str(), 0.1, 1, nullptr, &st), ::testing::ExitedWithCode(2),
                "d.jsonl.gz: damaged gzip file: incorrect data check");
    write_file(gz, jsonl_of(kDocs, 0, 1));  // not compressed at all
    EXPECT_EXIT(prepare_dataset(gz_in, 1, 300, out.c_str(), 0.1, 1, nullptr, &st), ::testing::ExitedWithCode(2),
                "d.jsonl.gz: not a gzip file");
    write_file(s, "{\"a\": 1}\n\n");
    EXPECT_EXIT(prepare_dataset(strict_in, 1, 300, out.c_str(), 0.1, 1, nullptr, &st), ::testing::ExitedWithCode(2),
                "hold no documents");
}

TEST(PrepareJsonl, CommandLineFlags) {
    const std::string in = test_tmp_dir("data"), out = test_tmp_dir("data");
    write_file(in + "/a.jsonl", "{\"body\": \"one document of text.\\nline two.\"}\n{\"text\": \"x\"}\n");
    const std::string a = in + "/a.jsonl";
    EXPECT_EQ(run_cmd_data({"data", "prepare", "--input", a, "--vocab", "260", "--out", out, "--text-field", ""}), 2);
    EXPECT_EXIT(run_cmd_data({"data", "prepare", "--input", a, "--vocab", "260", "--out", out, "--text-field=body", "--strict"}),
                ::testing::ExitedWithCode(2), "a.jsonl:2: no member \"body\"");
    testing::internal::CaptureStderr();
    EXPECT_EQ(run_cmd_data({"data", "prepare", "--input", a, "--vocab", "260", "--out", out, "--text-field", "body"}), 0);
    testing::internal::GetCapturedStderr();
    Tokenizer *t = tok_load((out + "/tokenizer.bin").c_str());
    EXPECT_EQ(decode_shard(t, out + "/train.bin") + decode_shard(t, out + "/val.bin"), "one document of text.\nline two.");
    tok_free(t);
    testing::internal::CaptureStdout();
    EXPECT_EQ(run_cmd_data({"data", "prepare", "--help"}), 0);
    const std::string help = testing::internal::GetCapturedStdout();
    EXPECT_NE(help.find("--text-field NAME"), std::string::npos);
    EXPECT_NE(help.find("--strict"), std::string::npos);
}

}  // namespace
