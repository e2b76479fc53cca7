// Runs `moelab data ...` in-process from a list of arguments, for the data tests that drive the
// command line (prepare_test, jsonl_test); returns its exit code.
#ifndef MOELAB_TESTS_DATA_CMD_DATA_UTIL_H
#define MOELAB_TESTS_DATA_CMD_DATA_UTIL_H

#include <string>
#include <vector>

extern "C" {
#include "tools/commands.h"
}

inline int run_cmd_data(std::vector<std::string> args) {
    std::vector<char *> argv;
    for (std::string &a : args) argv.push_back(&a[0]);
    return cmd_data((int)argv.size(), argv.data());
}

#endif
