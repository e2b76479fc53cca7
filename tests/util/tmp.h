// Fresh paths for the files a GoogleTest suite writes: under Bazel's TEST_TMPDIR, which Bazel gives
// each test and removes with it, or under /tmp when a test binary runs by hand. Suites used to write
// straight into /tmp and leave their files there: about 80 folders and files a suite run
// (2026-12-07).
#ifndef MOELAB_TESTS_UTIL_TMP_H
#define MOELAB_TESTS_UTIL_TMP_H

#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include <string>

// The folder this test's files go in.
inline std::string test_tmp_root() {
    const char *dir = getenv("TEST_TMPDIR");
    return dir && *dir ? dir : "/tmp";
}

// The template of a new name that starts with tag: mkdtemp and mkstemp require it to end in six
// capital X, which they replace with a unique suffix.
inline std::string test_tmp_template(const std::string &tag) {
    return test_tmp_root() + "/" + tag + "_" + std::string(6, 'X');
}

// A new empty folder whose name starts with tag.
inline std::string test_tmp_dir(const std::string &tag) {
    std::string t = test_tmp_template(tag);
    if (!mkdtemp(&t[0])) {
        perror(t.c_str());
        abort();
    }
    return t;
}

// A new empty file whose name starts with tag.
inline std::string test_tmp_file(const std::string &tag) {
    std::string t = test_tmp_template(tag);
    const int fd = mkstemp(&t[0]);
    if (fd < 0) {
        perror(t.c_str());
        abort();
    }
    close(fd);
    return t;
}

#endif
