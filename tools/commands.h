// The subcommands of the `moelab` program. Each is a thin front end over a library API: it parses
// its own flags, prints --help, and returns the process exit code (0 ok, 1 failure, 2 bad input).
#ifndef MOELAB_TOOLS_COMMANDS_H
#define MOELAB_TOOLS_COMMANDS_H

#include <stddef.h>
#include <string.h>

int cmd_train(int argc, char **argv);
int cmd_bench(int argc, char **argv);
int cmd_data(int argc, char **argv);
int cmd_sample(int argc, char **argv);
int cmd_eplb(int argc, char **argv);
int cmd_plot(int argc, char **argv);
int cmd_schedule(int argc, char **argv);
int cmd_ckpt(int argc, char **argv);
int cmd_export(int argc, char **argv);

// The flag parsers that take both "--flag value" and "--flag=value" share these.
// The length of the flag name of argument a: up to its '=', else all of it.
static inline size_t cmd_flag_len(const char *a) {
    const char *eq = strchr(a, '=');
    return eq ? (size_t)(eq - a) : strlen(a);
}
// 1 when the flag name of a (its first n = cmd_flag_len(a) bytes) is `name`.
static inline int cmd_flag_is(const char *a, size_t n, const char *name) {
    return strlen(name) == n && !strncmp(a, name, n);
}
// 1 when the flag name of a is one of the NULL-terminated names.
static inline int cmd_flag_in(const char *a, size_t n, const char *const *names) {
    for (; *names; names++)
        if (cmd_flag_is(a, n, *names)) return 1;
    return 0;
}
// The value of the flag argv[*i]: what follows its '=', else the next argument (and *i then moves
// past it); NULL when there is none. A next argument that starts with "--" is the next flag, not a
// value: `--out --force` wrote its output into a folder named "--force" and exited 0 (sweep,
// 2026-12-05). A value that does start with "--" is given as --flag=--value.
static inline const char *cmd_flag_value(int argc, char **argv, int *i) {
    const char *eq = strchr(argv[*i], '=');
    if (eq) return eq + 1;
    if (*i + 1 >= argc || !strncmp(argv[*i + 1], "--", 2)) return NULL;
    return argv[++*i];
}

#endif
