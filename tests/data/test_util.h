// Helpers shared by the data tests: whole-file reads and writes (their folders: tests/util/tmp.h).
#ifndef MOELAB_TESTS_DATA_TEST_UTIL_H
#define MOELAB_TESTS_DATA_TEST_UTIL_H

#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include <string>

#include "tests/util/tmp.h"

namespace data_test {

inline void write_file(const std::string &path, const std::string &bytes) {
    FILE *f = fopen(path.c_str(), "wb");
    if (!f) abort();
    fwrite(bytes.data(), 1, bytes.size(), f);
    fclose(f);
}

inline std::string read_file(const std::string &path) {
    std::string s;
    FILE *f = fopen(path.c_str(), "rb");
    if (!f) return s;
    char buf[1 << 16];
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, f)) > 0) s.append(buf, n);
    fclose(f);
    return s;
}

inline void put_u32(std::string &s, uint32_t v) {
    for (int i = 0; i < 4; i++) s.push_back((char)(v >> (8 * i)));
}

}  // namespace data_test

#endif
