// The subcommands of the `moelab` program. Each is a thin front end over a library API: it parses
// its own flags, prints --help, and returns the process exit code (0 ok, 1 failure, 2 bad input).
#ifndef MOELAB_TOOLS_COMMANDS_H
#define MOELAB_TOOLS_COMMANDS_H

int cmd_train(int argc, char **argv);
int cmd_bench(int argc, char **argv);
int cmd_data(int argc, char **argv);
int cmd_sample(int argc, char **argv);
int cmd_eplb(int argc, char **argv);
int cmd_plot(int argc, char **argv);
int cmd_schedule(int argc, char **argv);
int cmd_ckpt(int argc, char **argv);
int cmd_export(int argc, char **argv);

#endif
