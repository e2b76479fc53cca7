// `moelab ckpt`: looks into checkpoints (checkpoints/ckpt.h). `inspect` prints the state, the config
// and every tensor with its shape, dtype and norms; `verify` reads every dataset, checking each
// chunk's Fletcher-32 checksum, and the file's completeness and shapes against its stored config;
// `clean` removes what crashed saves left in a checkpoint directory.
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "checkpoints/ckpt.h"
#include "framework/core/check.h"
#include "framework/core/file.h"
#include "framework/model.h"
#include "framework/optimizer.h"
#include "tools/commands.h"

static const char USAGE[] =
    "usage: moelab ckpt inspect PATH\n"
    "       moelab ckpt verify PATH\n"
    "       moelab ckpt clean DIR\n"
    "\n"
    "PATH is a checkpoint from `moelab train --out DIR` (DIR/step_<n>.h5): one file, or an index\n"
    "whose part files (PATH.part-<r>-of-<n>) lie next to it. The format is docs/checkpoint-format.md.\n"
    "  inspect   step, AdamW t, learning rate, data position, RNG, EPLB group, then every tensor\n"
    "            (kind, dtype, logical shape, L2 norms of the weights and both AdamW moments) and the\n"
    "            stored config\n"
    "  verify    reads every dataset (each chunk's Fletcher-32 checksum), checks that every tensor of\n"
    "            the stored config's model is there with its shape and nothing else, and that every\n"
    "            part file is present and belongs to this index, that no value is NaN or infinite, no\n"
    "            second moment negative, AdamW's t within the steps, and the EPLB group: the checks\n"
    "            `moelab train --resume` runs, and stricter. Exit 0 only if all of it holds,\n"
    "            exit 2 with a message naming the first problem otherwise\n"
    "  clean     removes from DIR what saves that crashed left behind: temporary files\n"
    "            (NAME.tmp-<pid>) of processes no longer running on this machine, and part files\n"
    "            (NAME.part-<r>-of-<n>) whose index NAME is missing, where NAME is a checkpoint's\n"
    "            (step_<s>.h5) and the file empty or HDF5 (never another program's); prints each\n"
    "            file it removes.\n"
    "            `moelab train --out DIR` reports such files when it starts. Refused while a\n"
    "            `moelab train` on this machine writes to DIR\n";

// Removes one leftover; one that cannot be removed is reported and counted in *ctx (failures),
// and the others are still removed. One we may not remove (a folder or file system we may not
// write) is one message and exit 2 ("not permitted" is bad input), not an exit 1 with a line per
// leftover (sweep, 2026-12-05).
static void remove_stale(const char *path, const char *why, void *ctx) {
    if (unlink(path) != 0) {
        if (errno == EACCES || errno == EPERM || errno == EROFS)
            core_usage_error("ckpt clean: may not remove %s: %s", path, strerror(errno));
        fprintf(stderr, "moelab: error: ckpt clean: cannot remove %s: %s\n", path, strerror(errno));
        ++*(int *)ctx;
        return;
    }
    printf("removed %s (%s)\n", path, why);
}

// inspect and verify compare the file with the model its stored config builds; one expert slot per
// rank (ep_size = E) is the smallest layout that has every tensor with its logical shape.
static void look_into(const char *sub, const char *path) {
    MoeConfig c;
    ckpt_read_config_whole(path, &c);
    Model *ref = model_create_stored(&c, c.E, path);
    if (!strcmp(sub, "inspect")) ckpt_inspect(path, &ref->reg, optim_lr, stdout);
    else ckpt_verify(path, &ref->reg, stdout);
    model_free(ref);
}

int cmd_ckpt(int argc, char **argv) {
    for (int i = 1; i < argc; i++)
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            fputs(USAGE, stdout);
            return 0;
        }
    if (argc != 3)
        core_usage_error("ckpt: expected `inspect PATH`, `verify PATH` or `clean DIR` (see moelab ckpt --help)");
    const int known = !strcmp(argv[1], "inspect") || !strcmp(argv[1], "verify") || !strcmp(argv[1], "clean");
    // The commands take no options: `verify --bogus` was "checkpoint --bogus: No such file" (review,
    // 2026-12-06). A path that starts with "--" is given as ./--name.
    if (known && !strncmp(argv[2], "--", 2))
        core_usage_error("ckpt %s: unknown option '%s' (see moelab ckpt --help)", argv[1], argv[2]);
    if (!strcmp(argv[1], "inspect") || !strcmp(argv[1], "verify")) look_into(argv[1], argv[2]);
    else if (!strcmp(argv[1], "clean")) {
        // A save under way has a temporary and part files without their index for a moment.
        if (core_dir_lock(argv[2]) == CORE_DIR_BUSY)
            core_usage_error("ckpt clean: %s is in use by another moelab command running now (train, data "
                             "prepare or ckpt clean): clean it when that has ended", argv[2]);
        int failed = 0;
        const int n = ckpt_stale_files(argv[2], remove_stale, &failed) - failed;
        printf("%s: %d file%s removed\n", argv[2], n, n == 1 ? "" : "s");
        if (failed) return CORE_EXIT_FAILURE;  // each one named above
    } else core_usage_error("ckpt: unknown subcommand '%s' (inspect, verify or clean; see moelab ckpt --help)",
                            argv[1]);
    return 0;
}
