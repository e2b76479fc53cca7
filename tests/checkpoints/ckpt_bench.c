// Checkpoint throughput benchmark (manual; see docs/checkpoint-format.md, "Benchmark"): saves and
// loads the full training state of a ~95M-parameter model (weights and both AdamW moments, 1.1 GB)
// as one file and as two EP parts joined by an index, against a raw sequential write (with fsync)
// and read of the same bytes in the same directory. The page cache is dropped for every file
// before it is read back (posix_fadvise DONTNEED after fsync), so reads come from the disk.
//
//   bazel run //tests/checkpoints:ckpt_bench -- DIR [REPS]   (DIR on the disk to measure)
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "checkpoints/ckpt.h"
#include "framework/core/check.h"
#include "framework/core/log.h"
#include "framework/core/mem.h"
#include "framework/core/timer.h"
#include "framework/model.h"
#include "framework/optimizer.h"

#define BLOCK ((size_t)16 << 20)

static void drop_cache(const char *path) {
    int fd = open(path, O_RDONLY);
    CHECK(fd >= 0, "open %s", path);
    CHECK(fsync(fd) == 0 && posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED) == 0, "drop cache of %s", path);
    close(fd);
}

// Writes the n buffers back to back in BLOCK pieces, fsyncs; returns seconds.
static double raw_write(const char *path, float *const *buf, int n, size_t bytes) {
    double t0 = core_now();
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    CHECK(fd >= 0, "create %s", path);
    for (int i = 0; i < n; i++)
        for (size_t off = 0; off < bytes; off += BLOCK) {
            size_t len = bytes - off < BLOCK ? bytes - off : BLOCK;
            CHECK(write(fd, (const char *)buf[i] + off, len) == (ssize_t)len, "write %s", path);
        }
    CHECK(fsync(fd) == 0, "fsync %s", path);
    close(fd);
    return core_now() - t0;
}

static double raw_read(const char *path, float *const *buf, int n, size_t bytes) {
    double t0 = core_now();
    int fd = open(path, O_RDONLY);
    CHECK(fd >= 0, "open %s", path);
    for (int i = 0; i < n; i++)
        for (size_t off = 0; off < bytes; off += BLOCK) {
            size_t len = bytes - off < BLOCK ? bytes - off : BLOCK;
            CHECK(read(fd, (char *)buf[i] + off, len) == (ssize_t)len, "read %s", path);
        }
    close(fd);
    return core_now() - t0;
}

static void drop_ckpt(const char *path, int parts) {
    drop_cache(path);
    for (int r = 0; r < parts; r++) {
        char p[4300];
        snprintf(p, sizeof p, "%s.part-%d-of-%d", path, r, parts);
        drop_cache(p);
    }
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(double *v, int n) {
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    return v[n / 2];
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: ckpt_bench DIR [REPS]\n");
        return 2;
    }
    const char *dir = argv[1];
    const int reps = argc > 2 ? atoi(argv[2]) : 3;
    CHECK(reps >= 1 && reps <= 100, "REPS must be in [1, 100]");
    core_set_quiet(1);
    MoeConfig c;
    config_defaults(&c);
    c.V = 32000; c.D = 512; c.L = 6; c.H = 8; c.Hkv = 8; c.T = 256; c.n_dense_layers = 1; c.F = 2048;
    c.E = 8; c.K = 2; c.S = 1; c.Fe = 768;
    Model *full = model_create(&c, 0, 1), *half[2] = {model_create(&c, 0, 2), model_create(&c, 1, 2)};
    AdamW of, oh[2];
    Model *all[3] = {full, half[0], half[1]};
    AdamW *opt[3] = {&of, &oh[0], &oh[1]};
    for (int k = 0; k < 3; k++) {
        model_init_weights(all[k]);
        adamw_init(opt[k], &all[k]->reg);
        // Moments with the weights' statistics: incompressible, like real ones.
        for (size_t i = 0; i < all[k]->reg.total; i++) {
            opt[k]->m[i] = 0.1f * all[k]->reg.data[i];
            opt[k]->v[i] = all[k]->reg.data[i] * all[k]->reg.data[i];
        }
    }
    const size_t bytes = full->reg.total * sizeof(float);
    float *bufs[3] = {full->reg.data, of.m, of.v};
    char raw[4200], single[4200], index[4200];
    snprintf(raw, sizeof raw, "%s/raw.bin", dir);
    snprintf(single, sizeof single, "%s/single.h5", dir);
    snprintf(index, sizeof index, "%s/index.h5", dir);
    CkptState st;
    memset(&st, 0, sizeof st);
    CkptShard sh = ckpt_shard_identity(0, 1, c.E);
    CkptView views[3];
    for (int k = 0; k < 3; k++)
        views[k] = (CkptView){&all[k]->cfg, &all[k]->reg, all[k]->reg.data, opt[k]->m, opt[k]->v, &opt[k]->t};
    double t[6][100];
    for (int r = 0; r < reps; r++) {
        t[0][r] = raw_write(raw, bufs, 3, bytes);
        drop_cache(raw);
        t[1][r] = raw_read(raw, bufs, 3, bytes);
        double t0 = core_now();
        ckpt_save(single, &sh, &views[0], &st, NULL);
        t[2][r] = core_now() - t0;
        drop_ckpt(single, 0);
        t0 = core_now();
        ckpt_load(single, &sh, &views[0], NULL);
        t[3][r] = core_now() - t0;
        // Two EP parts, written one after the other here (a real run writes them in parallel).
        t0 = core_now();
        for (int k = 0; k < 2; k++) {
            CkptShard hs = ckpt_shard_identity(k, 2, c.E);
            ckpt_save_part(index, &hs, &views[1 + k]);
        }
        ckpt_save_index(index, 2, &c, oh[0].t, &st, NULL);
        t[4][r] = core_now() - t0;
        drop_ckpt(index, 2);
        t0 = core_now();
        ckpt_load(index, &sh, &views[0], NULL);
        t[5][r] = core_now() - t0;
    }
    const double gb = 3.0 * (double)bytes / 1e9;
    double med[6];
    for (int k = 0; k < 6; k++) med[k] = median(t[k], reps);
    printf("state: %.1fM parameters x (weights, m, v) = %.3f GB; median of %d runs\n",
           (double)full->reg.total / 1e6, gb, reps);
    printf("%-34s %9s %9s %12s\n", "", "seconds", "GB/s", "vs raw");
    printf("%-34s %9.3f %9.3f %12s\n", "raw write + fsync", med[0], gb / med[0], "1.00");
    printf("%-34s %9.3f %9.3f %12.2f\n", "ckpt_save, one file", med[2], gb / med[2], med[0] / med[2]);
    printf("%-34s %9.3f %9.3f %12.2f\n", "ckpt_save_part x2 + index", med[4], gb / med[4], med[0] / med[4]);
    printf("%-34s %9.3f %9.3f %12s\n", "raw read (cold cache)", med[1], gb / med[1], "1.00");
    printf("%-34s %9.3f %9.3f %12.2f\n", "ckpt_load, one file", med[3], gb / med[3], med[1] / med[3]);
    printf("%-34s %9.3f %9.3f %12.2f\n", "ckpt_load, index of 2 parts", med[5], gb / med[5], med[1] / med[5]);
    unlink(raw);
    unlink(single);
    unlink(index);
    for (int k = 0; k < 2; k++) {
        char p[4300];
        snprintf(p, sizeof p, "%s.part-%d-of-2", index, k);
        unlink(p);
    }
    for (int k = 0; k < 3; k++) {
        adamw_free(opt[k]);
        model_free(all[k]);
    }
    return 0;
}
