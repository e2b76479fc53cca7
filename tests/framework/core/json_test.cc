// framework/core/json: the reader on the whole grammar, its error messages and limits, and the string
// escaper (what it writes reads back the same).
#include <gtest/gtest.h>

#include <string>

#include <sys/resource.h>
#include <unistd.h>

extern "C" {
#include "framework/core/json.h"
}

namespace {

JsonValue *parse(const std::string &s, std::string *err = nullptr) {
    char e[JSON_ERR_LEN] = "";
    JsonValue *v = json_parse(s.data(), s.size(), e);
    if (err) *err = e;
    return v;
}

std::string error_of(const std::string &s) {
    std::string err;
    JsonValue *v = parse(s, &err);
    EXPECT_EQ(v, nullptr) << s;
    json_free(v);
    return err;
}

TEST(Json, ParsesEveryKindOfValue) {
    JsonValue *v = parse(" {\"a\": [1, -2.5e3, 0.125, true, false, null], \"b\": {\"c\": \"d\"}, \"a\": 7}\r\n");
    ASSERT_NE(v, nullptr);
    ASSERT_EQ(v->type, JSON_OBJECT);
    ASSERT_EQ(v->len, 3u);
    const JsonValue *a = json_get(v, "a");  // the first of two members with one name
    ASSERT_EQ(a->type, JSON_ARRAY);
    ASSERT_EQ(a->len, 6u);
    EXPECT_EQ(a->items[0].number, 1.0);
    EXPECT_EQ(a->items[1].number, -2500.0);
    EXPECT_EQ(a->items[2].number, 0.125);
    EXPECT_EQ(a->items[3].type, JSON_BOOL);
    EXPECT_EQ(a->items[3].boolean, 1);
    EXPECT_EQ(a->items[4].boolean, 0);
    EXPECT_EQ(a->items[5].type, JSON_NULL);
    EXPECT_STREQ(json_get(json_get(v, "b"), "c")->str, "d");
    EXPECT_EQ(json_get(v, "zz"), nullptr);
    EXPECT_EQ(json_get(a, "a"), nullptr);  // not an object
    json_free(v);
    for (const char *scalar : {"0", "-0.5E-2", "\"\"", "[]", "{}", "[[[]]]"}) {
        JsonValue *s = parse(scalar);
        EXPECT_NE(s, nullptr) << scalar;
        json_free(s);
    }
}

TEST(Json, DecodesEscapesToUtf8) {
    JsonValue *v = parse("\"a\\\"\\\\\\/\\b\\f\\n\\r\\t\\u00e9\\u4e2d\\ud83d\\ude00\\u0000z\"");
    ASSERT_NE(v, nullptr);
    const std::string want = "a\"\\/\b\f\n\r\t\xc3\xa9\xe4\xb8\xad\xf0\x9f\x98\x80" + std::string(1, '\0') + "z";
    EXPECT_EQ(std::string(v->str, v->len), want);
    json_free(v);
    // Unpaired surrogates become U+FFFD; raw bytes >= 0x80 pass through unchanged.
    v = parse("\"\\ud800x\\udc00\\ud800\\u0041\xff\"");
    ASSERT_NE(v, nullptr);
    EXPECT_EQ(std::string(v->str, v->len), "\xef\xbf\xbdx\xef\xbf\xbd\xef\xbf\xbd" "A\xff");
    json_free(v);
    // A high surrogate before an escape past the low ones (U+E000) stands alone too.
    v = parse("\"\\ud800\\ue000\"");
    ASSERT_NE(v, nullptr);
    EXPECT_EQ(std::string(v->str, v->len), "\xef\xbf\xbd\xee\x80\x80");
    json_free(v);
}

TEST(Json, RejectsMalformedTextSayingWhere) {
    EXPECT_EQ(error_of(""), "at byte 0: expected a JSON value, found the end of the text");
    EXPECT_EQ(error_of("{\"a\" 1}"), "at byte 5: expected ':' after a member name");
    EXPECT_EQ(error_of("[1 2]"), "at byte 3: expected ',' or ']'");
    EXPECT_EQ(error_of("{\"a\": 1,}"), "at byte 8: expected a member name in quotes");
    EXPECT_EQ(error_of("{} x"), "at byte 3: unexpected text after the JSON value");
    EXPECT_EQ(error_of("\"abc"), "at byte 0: unterminated string");
    EXPECT_EQ(error_of("oops"), "at byte 0: expected a JSON value");
    EXPECT_EQ(error_of("\"a\nb\""), "at byte 2: control byte 0x0a inside a string");
    EXPECT_EQ(error_of("\"\\x\""), "at byte 1: bad escape in a string");
    EXPECT_EQ(error_of("\"\\u12g4\""), "at byte 3: bad hex digit in \\u escape");
    EXPECT_EQ(error_of("\"\\u12\""), "at byte 3: truncated \\u escape");
    EXPECT_EQ(error_of("01"), "at byte 1: unexpected text after the JSON value");
    EXPECT_EQ(error_of("1."), "at byte 2: expected a digit after '.'");
    EXPECT_EQ(error_of("-"), "at byte 1: expected a digit");
    EXPECT_EQ(error_of("1e+"), "at byte 3: expected a digit in the exponent");
    EXPECT_EQ(error_of("tru"), "at byte 0: expected a JSON value");
    EXPECT_EQ(error_of("[1, {\"a\": [nul]}]"), "at byte 11: expected a JSON value");
    // A number a double cannot hold would read as infinity.
    EXPECT_EQ(error_of("[1, -1e999]"), "at byte 4: number out of the range of a double");
    EXPECT_EQ(error_of("1" + std::string(400, '0')), "at byte 0: number out of the range of a double");
    JsonValue *tiny = parse("1e-999");  // underflow to 0 loses nothing a caller could check
    ASSERT_NE(tiny, nullptr);
    EXPECT_EQ(tiny->number, 0.0);
    json_free(tiny);
}

TEST(Json, ParseAtGivesTheOffsetApart) {
    char what[JSON_ERR_LEN] = "";
    size_t at = 0;
    EXPECT_EQ(json_parse_at("{\"a\": 1\n \"b\": 2}", 16, what, &at), nullptr);
    EXPECT_STREQ(what, "expected ',' or '}'");
    EXPECT_EQ(at, 9u);
    JsonValue *v = json_parse_at("[1]", 3, what, &at);
    ASSERT_NE(v, nullptr);
    json_free(v);
}

TEST(Json, RefusesNestingPastTheLimit) {
    const std::string ok = std::string(JSON_MAX_DEPTH, '[') + std::string(JSON_MAX_DEPTH, ']');
    JsonValue *v = parse(ok);
    EXPECT_NE(v, nullptr);
    json_free(v);
    const std::string deep = std::string(JSON_MAX_DEPTH + 1, '[') + std::string(JSON_MAX_DEPTH + 1, ']');
    EXPECT_NE(error_of(deep).find("nested deeper than 256 levels"), std::string::npos);
    EXPECT_NE(error_of(std::string(100000, '[')).find("nested deeper"), std::string::npos);
}

static std::string written(const std::string &s) {
    char *buf = nullptr;
    size_t n = 0;
    FILE *f = open_memstream(&buf, &n);
    json_write_string(f, s.data(), s.size());
    fclose(f);
    std::string out(buf, n);
    free(buf);
    return out;
}

TEST(Json, WrittenStringsReadBack) {
    std::string all;
    for (int c = 0; c < 128; c++) all.push_back((char)c);
    all += "\xc3\xa9\xe2\x82\xac\xef\xbf\xbf\xf0\x9f\x98\x80\xf4\x8f\xbf\xbf";  // é € U+FFFF 😀 U+10FFFF
    const std::string text = written(all);
    JsonValue *v = parse(text);
    ASSERT_NE(v, nullptr) << text;
    EXPECT_EQ(std::string(v->str, v->len), all);
    EXPECT_EQ(text.substr(0, 7), "\"\\u0000");  // control bytes as \u escapes
    json_free(v);
}

// Bytes that are no UTF-8 are written as U+FFFD, one for each byte, so that the line stays JSON
// (review, 2026-12-06: a --out path holding byte 0xff made the metrics file's first line text that
// Python's json refused).
TEST(Json, WrittenStringsAreUtf8) {
    const struct { const char *in, *out; } cases[] = {
        {"o\xffx", "\"o\\ufffdx\""},                     // a byte no UTF-8 sequence starts with
        {"\x80", "\"\\ufffd\""},                           // a stray continuation byte
        {"a\xc3", "\"a\\ufffd\""},                         // a sequence cut short by the end
        {"\xe2\x82z", "\"\\ufffd\\ufffdz\""},               // ... and by another character
        {"\xc0\xaf", "\"\\ufffd\\ufffd\""},                 // an overlong '/'
        {"\xed\xa0\x80", "\"\\ufffd\\ufffd\\ufffd\""},       // a surrogate
        {"\xf4\x90\x80\x80", "\"\\ufffd\\ufffd\\ufffd\\ufffd\""},  // beyond U+10FFFF
        {"\xc3\xa9", "\"\xc3\xa9\""},                       // é, kept
        {"\x7f", "\"\\u007f\""},                            // DEL, escaped as the control bytes are
    };
    for (const auto &c : cases) EXPECT_EQ(written(c.in), c.out) << c.in;
}

// A text too large for the memory left (RLIMIT_AS here) is the machine's limit: exit 1 with the
// one-line message, not a source location as for a bug of ours (it printed json.c's line).
TEST(Json, OutOfMemoryIsAnEnvironmentFailure) {
#if defined(__SANITIZE_ADDRESS__)
    GTEST_SKIP() << "AddressSanitizer reserves the address space a limit would cut";
#else
    const std::string text = "\"" + std::string((size_t)256 << 20, 'a') + "\"";  // a 256 MiB string
    auto parse_limited = [&] {
        long pages = 0;
        FILE *f = fopen("/proc/self/statm", "r");
        if (!f || fscanf(f, "%ld", &pages) != 1) _exit(99);
        fclose(f);
        const rlim_t now = (rlim_t)pages * (rlim_t)sysconf(_SC_PAGESIZE);
        struct rlimit lim = {now + ((rlim_t)64 << 20), now + ((rlim_t)64 << 20)};  // 64 MiB more
        if (setrlimit(RLIMIT_AS, &lim) != 0) _exit(99);
        parse(text);
        _exit(0);
    };
    EXPECT_EXIT(parse_limited(), ::testing::ExitedWithCode(1),
                "^moelab: error: out of memory parsing JSON \\(268435457 bytes\\)");
#endif
}

}  // namespace
