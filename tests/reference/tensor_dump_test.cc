// tests/reference: the tensor-dump writer produces exactly the bytes of the format in
// tensor_dump.h (checked by hand-decoding the file), and refuses bad entries and failed writes.
#include <gtest/gtest.h>

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

extern "C" {
#include "tests/reference/tensor_dump.h"
#include "tests/util/tmp.h"
}

namespace {

std::string tmp_path(const char *tag) {
    return test_tmp_root() + "/tdump_" + tag + ".bin";
}

std::vector<uint8_t> slurp(const std::string &path) {
    FILE *f = fopen(path.c_str(), "rb");
    EXPECT_NE(f, nullptr);
    std::vector<uint8_t> b;
    for (int ch; (ch = fgetc(f)) != EOF;) b.push_back((uint8_t)ch);
    fclose(f);
    return b;
}

// Decodes the file field by field, failing the test on any mismatch with the expected layout.
struct Reader {
    std::vector<uint8_t> b;
    size_t pos = 0;
    template <typename T> T get() {
        T v;
        EXPECT_LE(pos + sizeof v, b.size());
        memcpy(&v, b.data() + pos, sizeof v);
        pos += sizeof v;
        return v;
    }
    std::string str(size_t n) {
        EXPECT_LE(pos + n, b.size());
        std::string s(b.begin() + pos, b.begin() + pos + n);
        pos += n;
        return s;
    }
    void entry(const char *name, uint32_t dtype, std::vector<int64_t> dims, const void *data,
               size_t bytes) {
        EXPECT_EQ(get<uint32_t>(), strlen(name));
        EXPECT_EQ(str(strlen(name)), name);
        EXPECT_EQ(get<uint32_t>(), dtype);
        EXPECT_EQ(get<uint32_t>(), dims.size());
        for (int64_t d : dims) EXPECT_EQ(get<int64_t>(), d);
        ASSERT_LE(pos + bytes, b.size());
        if (bytes > 0) {
            EXPECT_EQ(memcmp(b.data() + pos, data, bytes), 0) << "data of " << name;
        }
        pos += bytes;
    }
};

TEST(TensorDump, WritesTheFormat) {
    std::string path = tmp_path("format");
    const float a[6] = {-2.5f, -1.5f, -0.5f, 0.5f, 1.5f, 2.5f};  // (2, 3)
    const int32_t ids[3] = {7, -1, 2147483647};                    // (3)
    const uint8_t text[6] = {'k', ' ', '=', ' ', 'v', '\n'};      // (6)
    const float s = 3.5f;                                          // scalar
    const int64_t da[2] = {2, 3}, di[1] = {3}, dt[1] = {6}, de[2] = {0, 4};
    TensorDump *td = tdump_open(path.c_str());
    tdump_f32(td, "a", a, 2, da);
    tdump_i32(td, "ids", ids, 1, di);
    tdump_u8(td, "config_text", text, 1, dt);
    tdump_f32(td, "scalar", &s, 0, nullptr);
    tdump_f32(td, "empty", nullptr, 2, de);
    tdump_close(td);

    Reader r{slurp(path)};
    EXPECT_EQ(r.str(8), "MLTDUMP1");
    EXPECT_EQ(r.get<uint32_t>(), 5u);
    r.entry("a", TDUMP_F32, {2, 3}, a, sizeof a);
    r.entry("ids", TDUMP_I32, {3}, ids, sizeof ids);
    r.entry("config_text", TDUMP_U8, {6}, text, sizeof text);
    r.entry("scalar", TDUMP_F32, {}, &s, sizeof s);
    r.entry("empty", TDUMP_F32, {0, 4}, nullptr, 0);
    EXPECT_EQ(r.pos, r.b.size()) << "bytes after the last entry";
    remove(path.c_str());
}

TEST(TensorDump, EmptyDumpHasZeroCount) {
    std::string path = tmp_path("empty");
    tdump_close(tdump_open(path.c_str()));
    Reader r{slurp(path)};
    EXPECT_EQ(r.str(8), "MLTDUMP1");
    EXPECT_EQ(r.get<uint32_t>(), 0u);
    EXPECT_EQ(r.b.size(), 12u);
    remove(path.c_str());
}

TEST(TensorDumpDeath, UncreatablePathIsAUsageError) {
    EXPECT_EXIT(tdump_open("/nonexistent-dir/x.bin"), testing::ExitedWithCode(2),
                "cannot create tensor dump '/nonexistent-dir/x.bin'");
}

TEST(TensorDumpDeath, BadEntriesAreRefused) {
    std::string path = tmp_path("bad");
    const float x[2] = {1, 2};
    const int64_t neg[1] = {-1}, two[1] = {2};
    EXPECT_EXIT(
        {
            TensorDump *td = tdump_open(path.c_str());
            tdump_f32(td, "x", x, 1, neg);
        },
        testing::ExitedWithCode(1), "entry 'x' has dims\\[0\\] = -1");
    EXPECT_EXIT(
        {
            TensorDump *td = tdump_open(path.c_str());
            tdump_f32(td, "", x, 1, two);
        },
        testing::ExitedWithCode(1), "empty entry name");
    EXPECT_EXIT(
        {
            TensorDump *td = tdump_open(path.c_str());
            tdump_f32(td, "x", x, TDUMP_MAX_NDIM + 1, two);
        },
        testing::ExitedWithCode(1), "entry 'x' has ndim 17");
    EXPECT_EXIT(
        {
            TensorDump *td = tdump_open(path.c_str());
            tdump_f32(td, "x", nullptr, 1, two);
        },
        testing::ExitedWithCode(1), "entry 'x' has no data");
    remove(path.c_str());
}

// /dev/full accepts open() and fails every write: a large entry fails in fwrite, a small one only
// when the buffer is flushed at close. Both must be reported.
TEST(TensorDumpDeath, WriteFailuresAreReported) {
    std::vector<float> big(1 << 16, 1.0f);
    const int64_t dbig[1] = {1 << 16}, dsmall[1] = {1};
    EXPECT_EXIT(
        {
            TensorDump *td = tdump_open("/dev/full");
            tdump_f32(td, "big", big.data(), 1, dbig);
        },
        testing::ExitedWithCode(1), "tensor dump '/dev/full': write failed");
    EXPECT_EXIT(
        {
            TensorDump *td = tdump_open("/dev/full");
            tdump_f32(td, "small", big.data(), 1, dsmall);
            tdump_close(td);
        },
        testing::ExitedWithCode(1), "tensor dump '/dev/full': write failed");
}

}  // namespace
