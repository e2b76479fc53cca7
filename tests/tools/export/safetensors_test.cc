// tools/export/safetensors.h on its own: st_bf16's rounding (to nearest even, NaN kept NaN) bit for
// bit, and st_write's file byte for byte (the padded header, the metadata, bf16 values past one
// conversion block) and its failure where the final fsync fails. export_test.sh compares exported
// weights within bf16's tolerance, which a tie rounded the other way passes.
#include <gtest/gtest.h>

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <string>
#include <vector>

#include "tests/util/fsync_fails.h"
#include "tools/export/safetensors.h"
#include "tests/util/tmp.h"

namespace {

float from_bits(uint32_t u) {
    float x;
    memcpy(&x, &u, 4);
    return x;
}

// The file written, in a fresh folder.
std::string tmpfile_path() { return test_tmp_dir("safetensors") + "/model.safetensors"; }

std::vector<uint8_t> read_all(const std::string &p) {
    std::vector<uint8_t> b;
    FILE *f = fopen(p.c_str(), "rb");
    if (!f) return b;
    int c;
    while ((c = fgetc(f)) != EOF) b.push_back((uint8_t)c);
    fclose(f);
    return b;
}

TEST(Safetensors, Bf16RoundsToNearestEvenAndKeepsNaN) {
    const struct {
        uint32_t in;
        uint16_t out;
        const char *what;
    } cases[] = {
        {0x3F800000u, 0x3F80, "1.0 exactly"},
        {0x3F808000u, 0x3F80, "a tie below an even bf16: down"},
        {0x3F818000u, 0x3F82, "a tie below an odd bf16: up"},
        {0x3F808001u, 0x3F81, "just past a tie: up"},
        {0xBF818000u, 0xBF82, "a negative tie: away from the odd bf16"},
        {0x7F7FFFFFu, 0x7F80, "FLT_MAX: infinite"},
        {0x7F800000u, 0x7F80, "infinity"},
        {0x7F800001u, 0x7FC0, "a NaN with only low payload bits: still a NaN"},
    };
    for (const auto &c : cases) EXPECT_EQ(st_bf16(from_bits(c.in)), c.out) << c.what;
}

// The header's length is a multiple of 8 (padded with spaces), the metadata carries its keys and
// values, and bf16 data over more than one 65536-value block is every value's st_bf16, in order.
TEST(Safetensors, FileLayout) {
    const std::string path = tmpfile_path();
    const int64_t n = 65536 + 3;
    std::vector<float> big((size_t)n);
    for (int64_t i = 0; i < n; i++) big[(size_t)i] = (float)i * 0.37f - 900.0f;
    const float small[3] = {1.5f, -2.0f, 3.25f};
    StTensor t[2] = {};
    snprintf(t[0].name, sizeof t[0].name, "a");
    t[0].ndim = 1, t[0].shape[0] = 3, t[0].data = small;
    snprintf(t[1].name, sizeof t[1].name, "b");
    t[1].ndim = 2, t[1].shape[0] = 1, t[1].shape[1] = n, t[1].data = big.data();
    const char *meta[] = {"moelab_step", "42"};
    st_write(path.c_str(), t, 2, ST_BF16, meta, 1);

    const std::vector<uint8_t> f = read_all(path);
    ASSERT_GE(f.size(), 8u);
    uint64_t hlen = 0;
    for (int b = 0; b < 8; b++) hlen |= (uint64_t)f[(size_t)b] << (8 * b);
    EXPECT_EQ(hlen % 8, 0u);
    ASSERT_EQ(f.size(), 8 + hlen + 2 * (3 + (size_t)n));
    const std::string header(f.begin() + 8, f.begin() + 8 + (long)hlen);
    EXPECT_NE(header.find("\"moelab_step\":\"42\""), std::string::npos) << header;
    EXPECT_NE(header.find("\"b\":{\"dtype\":\"BF16\",\"shape\":[1,65539],\"data_offsets\":[6,131084]}"),
              std::string::npos) << header;
    const uint8_t *data = f.data() + 8 + hlen;
    for (int64_t i = 0; i < 3 + n; i++) {
        const float v = i < 3 ? small[i] : big[(size_t)(i - 3)];
        const uint16_t got = (uint16_t)(data[2 * i] | data[2 * i + 1] << 8);
        ASSERT_EQ(got, st_bf16(v)) << "value " << i;
    }
    unlink(path.c_str());
}

// A disk that reports its write error only at the sync: the export fails (exit 1) naming the file.
TEST(Safetensors, FailedFsyncIsAnError) {
    const std::string path = tmpfile_path();
    const float v[2] = {1, 2};
    StTensor t = {};
    snprintf(t.name, sizeof t.name, "w");
    t.ndim = 1, t.shape[0] = 2, t.data = v;
    EXPECT_EXIT(
        {
            fsync_fails_set(FSYNC_FAILS_FILES, EIO);
            st_write(path.c_str(), &t, 1, ST_F32, nullptr, 0);
            exit(0);
        },
        ::testing::ExitedWithCode(1), "export: cannot write .*model.safetensors: Input/output error");
    unlink(path.c_str());
}

}  // namespace
