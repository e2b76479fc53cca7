// Dataset preparation (see prepare.h): find and read the documents (plain files, JSON Lines, gzip
// through zlib), split each into train and validation parts, train the tokenizer on the train parts,
// encode both into token shards.
#include "data/prepare.h"

#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include "data/jsonl.h"
#include "data/shard.h"
#include "data/tokenizer.h"
#include "framework/core/check.h"
#include "framework/core/file.h"
#include "framework/core/log.h"
#include "framework/core/mem.h"
#include "framework/core/rng.h"
#include "framework/core/timer.h"

// Philox stream of the document-order shuffle (the loader uses streams 0, 1, ... for epochs).
#define PREPARE_STREAM 0x70726570u

typedef struct {
    char **paths;
    unsigned char *named;  // paths[i] was named by an --input (not found in a folder)
    int n, cap;
    int index_files;       // *.dat and *.u8 files a walk passed over
} PathList;

static char *dup_str(const char *s) {
    char *d = core_alloc(strlen(s) + 1);
    strcpy(d, s);
    return d;
}

static void path_push(PathList *l, const char *p, int named) {
    if (l->n == l->cap) {
        l->cap = l->cap ? 2 * l->cap : 64;
        char **grown = realloc(l->paths, sizeof(char *) * (size_t)l->cap);
        unsigned char *flags = realloc(l->named, (size_t)l->cap);
        CHECK(grown != NULL && flags != NULL, "out of memory listing %d input files", l->cap);
        l->paths = grown, l->named = flags;
    }
    l->named[l->n] = (unsigned char)named;
    l->paths[l->n++] = dup_str(p);
}

// A file's identity, and where it stands in the list.
typedef struct {
    dev_t dev;
    ino_t ino;
    int at;
} FileId;

static int cmp_file_id(const void *a, const void *b) {
    const FileId *x = a, *y = b;
    if (x->dev != y->dev) return x->dev < y->dev ? -1 : 1;
    if (x->ino != y->ino) return x->ino < y->ino ? -1 : 1;
    return (x->at > y->at) - (x->at < y->at);
}

// Every file is read once, however it was reached: a file named twice (under any names) is a
// usage error; one reached again through a folder or a link (a folder and a file in it both named,
// two links to one file) is skipped with a line. It was read twice, its text counted double (sweep,
// 2026-12-05 and 2026-12-06). By (device, inode), sorted: a comparison of every pair took minutes
// for the 20 000 files a shell glob names.
static void drop_repeated_files(PathList *l) {
    FileId *id = core_alloc(sizeof *id * (size_t)l->n);
    for (int i = 0; i < l->n; i++) {
        struct stat st;
        if (stat(l->paths[i], &st) != 0)
            core_path_error(errno, "cannot read input %s: %s", l->paths[i], strerror(errno));
        id[i] = (FileId){st.st_dev, st.st_ino, i};
    }
    qsort(id, (size_t)l->n, sizeof *id, cmp_file_id);
    unsigned char *drop = core_alloc((size_t)l->n);
    memset(drop, 0, (size_t)l->n);
    // Within a run of one file: the first entry is read, the others skipped; the first named one
    // (-1: none yet) meets every later named one.
    for (int k = 1, first = 0, named = l->named[id[0].at] ? 0 : -1; k < l->n; k++) {
        if (id[k].dev != id[first].dev || id[k].ino != id[first].ino) {
            first = k;
            named = l->named[id[k].at] ? k : -1;
            continue;
        }
        const int a = id[first].at, b = id[k].at;
        if (l->named[b] && named >= 0)
            core_usage_error("--input names one file twice: %s and %s", l->paths[id[named].at], l->paths[b]);
        if (l->named[b]) named = k;
        core_info("prepare: skipped %s: the same file as %s, read once", l->paths[b], l->paths[a]);
        drop[b] = 1;
    }
    int n = 0;
    for (int i = 0; i < l->n; i++) {
        if (drop[i]) {
            core_free(l->paths[i]);
            continue;
        }
        l->named[n] = l->named[i];
        l->paths[n++] = l->paths[i];
    }
    l->n = n;
    core_free(drop);
    core_free(id);
}

// Whether s ends with suffix, in any case (a.JSONL.GZ is a .jsonl.gz file).
static int ends_with(const char *s, const char *suffix) {
    const size_t n = strlen(s), m = strlen(suffix);
    return n >= m && strcasecmp(s + n - m, suffix) == 0;
}

static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

// Puts the list in path order (paths and their flags together).
typedef struct {
    char *path;
    unsigned char named;
} PathEntry;
static int cmp_entry(const void *a, const void *b) {
    return strcmp(((const PathEntry *)a)->path, ((const PathEntry *)b)->path);
}
static void sort_paths(PathList *l) {
    PathEntry *e = core_alloc(sizeof *e * (size_t)l->n);
    for (int i = 0; i < l->n; i++) e[i] = (PathEntry){l->paths[i], l->named[i]};
    qsort(e, (size_t)l->n, sizeof *e, cmp_entry);
    for (int i = 0; i < l->n; i++) {
        l->paths[i] = e[i].path;
        l->named[i] = e[i].named;
    }
    core_free(e);
}

// Adds the regular files under dir, in name order so that the result does not depend on readdir.
// moelab's own data files among them (an earlier prepare's tokenizer and shards, checkpoints:
// core_data_file_kind) are no documents: skipped, each with a line saying so. Read as text they put
// their bytes into the corpus without a word (sweep, 2026-12-05: an --input folder that an earlier
// prepare had written into).
static void walk(PathList *out, const char *dir) {
    DIR *d = opendir(dir);
    if (!d) core_path_error(errno, "cannot read input directory %s: %s", dir, strerror(errno));
    PathList names = {0};
    for (struct dirent *e; (e = readdir(d)) != NULL;) {
        if (e->d_name[0] == '.') continue;
        // The fortunes package's index files: counted, and said once at the end, so that a corpus of
        // .dat files is not dropped without a word (review, 2026-12-06).
        if (ends_with(e->d_name, ".dat") || ends_with(e->d_name, ".u8")) {
            out->index_files++;
            continue;
        }
        path_push(&names, e->d_name, 0);
    }
    closedir(d);
    if (names.n > 0) qsort(names.paths, (size_t)names.n, sizeof(char *), cmp_str);
    for (int i = 0; i < names.n; i++) {
        char *p = core_alloc(strlen(dir) + strlen(names.paths[i]) + 2);
        sprintf(p, "%s/%s", dir, names.paths[i]);
        struct stat ls, st;
        // Symbolic links to files count; links to directories are skipped (they can form loops), and
        // so are links to nothing (no file to read). Any other entry that cannot be examined (a folder
        // that can be listed but not entered, a path longer than PATH_MAX) is an error: skipping it
        // would drop its text without a word. The reason comes before the path, which may be longer
        // than a message holds.
        int e = 0;
        if (lstat(p, &ls) != 0) e = errno;
        else if (stat(p, &st) != 0) {
            if (errno != ENOENT || !S_ISLNK(ls.st_mode)) e = errno;
        } else if (S_ISDIR(st.st_mode) && !S_ISLNK(ls.st_mode)) walk(out, p);
        else if (S_ISREG(st.st_mode)) {
            const char *kind = core_data_file_kind(p);
            if (kind) core_info("prepare: skipped %s: %s, not text", p, kind);
            else path_push(out, p, 0);
        }
        if (e) core_path_error(e, "cannot read input (%s): %s", strerror(e), p);
        core_free(p);
        core_free(names.paths[i]);
    }
    free(names.paths);
    free(names.named);
}

// Progress on stderr. On a terminal, one line updated at most five times a second: core_progress's,
// so that a warning or error printed while it is open starts a line of its own. Elsewhere (a log
// file, a batch job) a line of its own every 30 seconds, so that a preparation of minutes shows it
// is alive (it printed nothing at all: review, 2026-12-06).
typedef struct {
    int tty;
    double last;  // the time of the last update (elsewhere, the start for the first one)
} Progress;

static void progress_fn(void *ctx, const char *stage, double frac) {
    Progress *p = ctx;
    const double now = core_now();
    if (p->tty ? now - p->last < 0.2 && frac < 1.0 : now - p->last < 30.0) return;
    p->last = now;
    if (p->tty) core_progress("prepare: %s %5.1f%%", stage, 100.0 * frac);
    else fprintf(stderr, "prepare: %s %5.1f%%\n", stage, 100.0 * frac);
}

static uint8_t *read_file(const char *path, size_t *len) {
    // An input named on the command line may be anything: a FIFO would block the open for ever.
    const char *why;
    FILE *f = core_open_regular(path, &why);
    if (!f) core_path_error(errno, "cannot open input file %s: %s", path, why);  // EMFILE, EIO: exit 1
    char *buf;  // a file of /proc (a stated size of 0 bytes) is read to its end, one of /sys to what it holds
    // Read whole: one file larger than the machine's memory is named as such (it was "out of host
    // memory allocating N bytes", no file named).
    const double have = core_host_memory_bytes();
    const int err = core_read_all(f, (size_t)have, &buf, len);
    if (err == EFBIG)
        core_usage_error("input file %s holds %zu bytes, more than this machine's memory (%.1f GiB): split it into "
                         "files of its documents", path, *len, have / (1 << 30));
    if (err == CORE_READ_CHANGED) core_usage_error("input file %s changed while it was read", path);
    if (err) core_path_error(err, "cannot read input file %s: %s", path, strerror(err));
    fclose(f);
    return (uint8_t *)buf;
}

// Inflates the n bytes raw of the gzip file `path` through zlib (and frees them). Anything but a
// complete gzip stream (another format, a truncated or corrupt file) is a usage error naming the
// file: zlib alone would pass plain bytes through as if uncompressed and stop quietly at a truncation.
static uint8_t *gunzip(const char *path, uint8_t *raw, size_t n, size_t *len) {
    if (n == 0) core_usage_error("%s: an empty file, not gzip (a gzip file holds at least its header)", path);
    if (n < 2 || raw[0] != 0x1f || raw[1] != 0x8b) core_usage_error("%s: not a gzip file (bad magic)", path);
    z_stream z;
    memset(&z, 0, sizeof z);
    CHECK(inflateInit2(&z, 15 + 32) == Z_OK, "zlib: inflateInit2 failed");  // 32: gzip header
    size_t cap = n < 4096 ? 16384 : 4 * n, used = 0;
    uint8_t *out = malloc(cap);
    CHECK(out != NULL, "out of memory for %zu bytes of %s", cap, path);
    z.next_in = raw;
    z.avail_in = (uInt)(n < UINT_MAX ? n : UINT_MAX);
    size_t fed = z.avail_in;
    int rc = Z_OK;
    for (;;) {
        if (used == cap) {
            cap *= 2;
            uint8_t *grown = realloc(out, cap);
            CHECK(grown != NULL, "out of memory for %zu bytes of %s", cap, path);
            out = grown;
        }
        if (z.avail_in == 0 && fed < n) {
            z.avail_in = (uInt)(n - fed < UINT_MAX ? n - fed : UINT_MAX);
            fed += z.avail_in;
        }
        const size_t room = cap - used < UINT_MAX ? cap - used : UINT_MAX;
        z.next_out = out + used;
        z.avail_out = (uInt)room;
        rc = inflate(&z, Z_NO_FLUSH);
        used += room - z.avail_out;
        if (rc == Z_STREAM_END) {
            // Concatenated gzip members (as `cat a.gz b.gz` makes) are one file: go on with the next.
            if (z.avail_in == 0 && fed == n) break;
            CHECK(inflateReset(&z) == Z_OK, "zlib: inflateReset failed");
            continue;
        }
        if (rc == Z_BUF_ERROR && z.avail_in == 0 && fed == n) rc = Z_DATA_ERROR;  // input ran out
        if (rc != Z_OK) {
            core_usage_error("%s: damaged gzip file: %s (at compressed byte %zu of %zu)", path,
                             z.msg ? z.msg : "truncated", fed - z.avail_in, n);
        }
    }
    inflateEnd(&z);
    core_free(raw);
    *len = used;
    uint8_t *text = core_alloc(used ? used : 1);
    memcpy(text, out, used);
    free(out);
    return text;
}

// Where a document of n bytes splits: after the first (1 - f) of it, moved to just after the next
// newline so that validation starts at a line. Only to a newline inside the tail, not its last byte:
// moving past a final newline would give the whole document to train, and a corpus of one-line
// documents (or documents ending in '\n' with no other newline in their tail) held out nothing.
static size_t split_point(const uint8_t *x, size_t n, double val_fraction) {
    size_t c = (size_t)((double)n * (1.0 - val_fraction));
    if (c >= n) return n;
    const uint8_t *nl = memchr(x + c, '\n', n - c - 1);
    return nl ? (size_t)(nl - x) + 1 : c;
}

// Encodes the parts parts[i] (lens[i] bytes) into a shard written to f; returns its token count.
// ids holds the longest part's tokens. Stops at the first failed write (a full disk): the output's
// close reports it, and encoding the rest would only take time.
static uint64_t write_shard(const Tokenizer *tok, FILE *f, const char *name, const uint8_t *const *parts,
                            const size_t *lens, int n, uint32_t *ids, Progress *pr, const char *stage) {
    size_t total = 0, done = 0;
    for (int i = 0; i < n; i++) total += lens[i];
    ShardWriter *w = shard_writer_open(f, name, (uint32_t)tok->V, tok_fingerprint(tok));
    for (int i = 0; i < n && !ferror(f); i++) {
        shard_writer_put(w, ids, tok_encode(tok, parts[i], lens[i], ids));
        done += lens[i];
        progress_fn(pr, stage, total ? (double)done / total : 1.0);
    }
    return shard_writer_close(w);
}

const char *const prepare_file_names[PREPARE_N_FILES] = {"tokenizer.bin", "train.bin", "val.bin"};

// A directory where an output file must go would make its rename fail after the files renamed
// before it were already replaced (a new tokenizer beside old shards): refused before any work.
// So is an output that is also an input (a file named by --input that this run would replace; an
// earlier dataset's files in an --input folder are skipped, core_data_file_kind).
static void check_outputs(const char *out_dir, const PathList *inputs) {
    for (int k = 0; k < PREPARE_N_FILES; k++) {
        char *p = core_alloc(strlen(out_dir) + strlen(prepare_file_names[k]) + 2);
        sprintf(p, "%s/%s", out_dir, prepare_file_names[k]);
        struct stat st;
        if (stat(p, &st) == 0 && S_ISDIR(st.st_mode))
            core_usage_error("cannot write %s: it is a directory (--out receives %s, %s and %s)", p,
                             prepare_file_names[PREPARE_TOKENIZER], prepare_file_names[PREPARE_TRAIN], prepare_file_names[PREPARE_VAL]);
        for (int i = 0; i < inputs->n; i++)
            if (core_same_file(p, inputs->paths[i]))
                core_usage_error("--input reads %s, which this run writes (--out %s): choose an --out "
                                 "outside the input folders", inputs->paths[i], out_dir);
        core_free(p);
    }
}

// Removes the temporaries an earlier prepare into out_dir left when it was killed (SIGKILL, a
// crash): "<file>.tmp-<pid>" of the three outputs, whose process no longer runs. Called with the
// folder's lock held, so no live prepare writes them.
static void remove_stale_temporaries(const char *out_dir) {
    DIR *d = opendir(out_dir);
    if (!d) return;
    for (struct dirent *e; (e = readdir(d)) != NULL;)
        for (int k = 0; k < PREPARE_N_FILES; k++) {
            const size_t n = strlen(prepare_file_names[k]);
            if (strncmp(e->d_name, prepare_file_names[k], n) || strncmp(e->d_name + n, ".tmp-", 5) ||
                core_temp_is_stale(e->d_name) != 1)
                continue;
            char *p = core_alloc(strlen(out_dir) + strlen(e->d_name) + 2);
            sprintf(p, "%s/%s", out_dir, e->d_name);
            struct stat st;
            if (lstat(p, &st) == 0 && S_ISREG(st.st_mode) && unlink(p) == 0)
                core_info("removed %s (left by a prepare that was killed)", p);
            core_free(p);
        }
    closedir(d);
}

// Writes the tokenizer and both shards into out_dir, all three or none: each goes to a temporary
// beside its final name (CoreOut), and they replace the old files only once all three are complete.
// Returns 0, or the exit status after one message (core_out_report); nothing is left behind.
static int write_outputs(const Tokenizer *tok, const char *out_dir, const uint8_t *const *train,
                         const size_t *train_len, const uint8_t *const *val, const size_t *val_len, int D,
                         PrepareStats *stats, Progress *pr) {
    size_t max = 1;
    for (int i = 0; i < D; i++) {
        if (train_len[i] > max) max = train_len[i];
        if (val_len[i] > max) max = val_len[i];
    }
    uint32_t *ids = core_alloc(sizeof(uint32_t) * max);
    char *path = core_alloc(strlen(out_dir) + 32);
    CoreOut out[PREPARE_N_FILES];
    memset(out, 0, sizeof out);  // core_out_abort passes over the ones never opened
    int err = 0, failed = 0;
    for (int k = 0; k < PREPARE_N_FILES && !err; k++) {
        sprintf(path, "%s/%s", out_dir, prepare_file_names[k]);
        err = core_out_open(&out[k], path);
        failed = k;
    }
    if (!err) {
        tok_write(tok, out[PREPARE_TOKENIZER].f);
        stats->train_tokens = write_shard(tok, out[PREPARE_TRAIN].f, out[PREPARE_TRAIN].path, train, train_len, D, ids,
                                          pr, "encoding train");
        stats->val_tokens = write_shard(tok, out[PREPARE_VAL].f, out[PREPARE_VAL].path, val, val_len, D, ids, pr,
                                        "encoding val");
        core_progress_end();
        err = core_out_close_all(out, PREPARE_N_FILES, &failed);
    }
    int rc = 0;
    if (err) {
        for (int k = 0; k < PREPARE_N_FILES; k++) core_out_abort(&out[k]);
        sprintf(path, "%s/%s", out_dir, prepare_file_names[failed]);
        rc = core_out_report(err, "cannot write %s", path);
    }
    core_free(path);
    core_free(ids);
    return rc;
}

// Documents: where each lies in the buffers read.
typedef struct {
    const uint8_t *p;
    size_t len;
} Doc;

typedef struct {
    Doc *d;
    size_t n, cap;
} Docs;

static void docs_push(Docs *l, const uint8_t *p, size_t len) {
    if (l->n == l->cap) {
        l->cap = l->cap ? 2 * l->cap : 64;
        Doc *grown = realloc(l->d, sizeof(Doc) * l->cap);
        CHECK(grown != NULL, "out of memory listing %zu documents", l->cap);
        l->d = grown;
    }
    l->d[l->n++] = (Doc){p, len};
}

// The JSON lines of one file that gave no document: an error at the first under strict, else a
// warning for each of the first JSONL_REPORT of the whole run, all counted in stats.
static void report_bad_lines(const char *path, const char *field, const JsonlDocs *jd, int strict,
                             PrepareStats *stats) {
    if (jd->bad > 0 && strict)
        core_usage_error("%s:%llu: %s (--strict: every line must be a JSON object with a string member \"%s\")",
                         path, (unsigned long long)jd->first_bad[0].line, jd->first_bad[0].reason, field);
    for (uint64_t k = 0; k < jd->bad && k < JSONL_REPORT; k++)
        if (stats->bad_lines + k < JSONL_REPORT)
            core_warn("prepare: %s:%llu: %s; line skipped", path, (unsigned long long)jd->first_bad[k].line,
                      jd->first_bad[k].reason);
    stats->bad_lines += jd->bad;
}

int prepare_dataset(const char *const *inputs, int n_inputs, int vocab, const char *out_dir,
                    double val_fraction, uint64_t seed, const PrepareJsonl *jsonl, PrepareStats *stats) {
    const double t0 = core_now();
    if (vocab < 256 || vocab > TOK_VOCAB_MAX)
        core_usage_error("--vocab %d is outside [256, %d] (256 means raw bytes)", vocab, TOK_VOCAB_MAX);
    if (!(val_fraction >= 0.0 && val_fraction < 1.0))
        core_usage_error("--val-fraction %g is outside [0, 1)", val_fraction);
    if (n_inputs < 1) core_usage_error("no --input given");
    memset(stats, 0, sizeof *stats);
    const int tty = isatty(2);
    Progress pr = {tty, tty ? 0.0 : core_now()};

    PathList files = {0};
    FileId *dirs = core_alloc(sizeof *dirs * (size_t)n_inputs);  // the folders named so far
    int n_dirs = 0;
    for (int i = 0; i < n_inputs; i++) {
        struct stat st;
        if (stat(inputs[i], &st) != 0) core_usage_error("cannot read input %s: %s", inputs[i], strerror(errno));
        if (S_ISDIR(st.st_mode)) {
            // A folder named twice (under any names) is a usage error, as a file is: walked twice,
            // every file of it would be skipped once with a line of its own.
            for (int j = 0; j < n_dirs; j++)
                if (dirs[j].dev == st.st_dev && dirs[j].ino == st.st_ino)
                    core_usage_error("--input names one folder twice: %s and %s", inputs[dirs[j].at], inputs[i]);
            dirs[n_dirs++] = (FileId){st.st_dev, st.st_ino, i};
            walk(&files, inputs[i]);
            continue;
        }
        const char *kind = S_ISREG(st.st_mode) ? core_data_file_kind(inputs[i]) : NULL;
        if (kind) core_usage_error("--input %s is %s, not text", inputs[i], kind);
        path_push(&files, inputs[i], 1);
    }
    core_free(dirs);
    if (files.index_files)
        core_info("prepare: skipped %d .dat and .u8 file%s in the input folders (the fortune package's index "
                  "files, not text)", files.index_files, files.index_files == 1 ? "" : "s");
    if (files.n == 0) core_usage_error("no input files found in the %d given path(s)", n_inputs);
    // The documents come in path order whatever the order of --input, so that the seeded shuffle
    // below alone decides theirs (`--input $(find ...)` gave other shards on a copy of the same
    // corpus: review, 2026-12-06); sorted first, so that a file reached twice is read under its
    // first path in that order.
    sort_paths(&files);
    drop_repeated_files(&files);
    check_outputs(out_dir, &files);

    // Every document, in path order: a plain file is one, a JSON Lines file one per good line.
    const char *field = jsonl && jsonl->text_field ? jsonl->text_field : "text";
    const int strict = jsonl && jsonl->strict;
    Docs docs = {0};
    uint8_t **bufs = core_alloc(sizeof(uint8_t *) * (size_t)files.n);  // what the documents point into
    for (int i = 0; i < files.n; i++) {
        const char *path = files.paths[i];
        size_t n;
        bufs[i] = read_file(path, &n);
        // Compressed by its name (*.gz) or its bytes (gzip's magic), text or JSON Lines alike: a
        // .txt.gz went in as raw gzip bytes without a word (review, 2026-12-06).
        if (ends_with(path, ".gz") || (n >= 2 && bufs[i][0] == 0x1f && bufs[i][1] == 0x8b))
            bufs[i] = gunzip(path, bufs[i], n, &n);
        if (!ends_with(path, ".jsonl") && !ends_with(path, ".jsonl.gz")) {
            docs_push(&docs, bufs[i], n);
        } else {
            JsonlDocs jd;
            jsonl_parse(bufs[i], n, field, strict, &jd);
            report_bad_lines(path, field, &jd, strict, stats);
            core_free(bufs[i]);
            bufs[i] = jd.text;  // taken over: freed with the other buffers
            for (size_t d = 0; d < jd.n; d++) docs_push(&docs, jd.text + jd.off[d], jd.off[d + 1] - jd.off[d]);
            core_free(jd.off);
        }
        progress_fn(&pr, "reading", (double)(i + 1) / files.n);
    }
    if (docs.n == 0) core_usage_error("the %d input file(s) hold no documents", files.n);
    if (docs.n > INT_MAX) core_usage_error("%zu documents: more than this build handles (%d)", docs.n, INT_MAX);

    // Documents in a seeded order, so that both shards mix all sources (a validation run over the
    // first few batches then sees every document, not the alphabetically first ones).
    RngStream r = rng_stream(seed, PREPARE_STREAM);
    for (size_t i = docs.n - 1; i > 0; i--) {
        const size_t j = rng_next_u32(&r) % (uint32_t)(i + 1);
        const Doc t = docs.d[i];
        docs.d[i] = docs.d[j];
        docs.d[j] = t;
    }
    const int D = (int)docs.n;
    const uint8_t **train = core_alloc(sizeof(uint8_t *) * (size_t)D), **val = core_alloc(sizeof(uint8_t *) * (size_t)D);
    size_t *train_len = core_alloc(sizeof(size_t) * (size_t)D), *val_len = core_alloc(sizeof(size_t) * (size_t)D);
    for (int i = 0; i < D; i++) {
        const uint8_t *x = docs.d[i].p;
        const size_t n = docs.d[i].len, c = split_point(x, n, val_fraction);
        train[i] = x;
        train_len[i] = c;
        val[i] = x + c;
        val_len[i] = n - c;
        stats->bytes += n;
        stats->train_bytes += c;
        stats->val_bytes += n - c;
    }
    stats->docs = D;
    if (stats->train_bytes == 0) core_usage_error("the %d input file(s) hold no training text", files.n);
    // An empty val.bin is a dataset `moelab train` refuses later: refused now, before --out is made
    // or anything in it replaced. (A fraction so small that every document's split rounds to its
    // end; 0 itself is the caller's explicit "no validation", which the command line refuses.)
    if (val_fraction > 0.0 && stats->val_bytes == 0)
        core_usage_error("--val-fraction %g holds out nothing of the %d document(s) (%llu bytes): val.bin would be "
                         "empty, and `moelab train` validates on it: give a larger fraction, e.g. 0.01",
                         val_fraction, D, (unsigned long long)stats->bytes);

    core_make_dirs(out_dir, "output directory");
    // Two prepares into one folder would each replace the three files: refused while one runs.
    const int lock = core_dir_lock(out_dir);
    if (lock == CORE_DIR_BUSY)
        core_usage_error("--out %s is in use by another moelab command running now (train, data prepare "
                         "or ckpt clean): wait for it, or choose another --out", out_dir);
    // Readers of the dataset (a train opening it) see the three files of one prepare: they open them
    // under the lock file's shared lock, which this one holds alone until the files are in place.
    // Made here, it goes with a run that fails (tracked as a temporary): nothing is left of it.
    char *lock_path = core_alloc(strlen(out_dir) + sizeof PREPARE_LOCK_NAME + 1);
    sprintf(lock_path, "%s/%s", out_dir, PREPARE_LOCK_NAME);
    const int made = access(lock_path, F_OK) != 0;
    const int read_lock = core_file_lock(lock_path, 0);
    if (read_lock == CORE_DIR_BUSY)
        core_usage_error("--out %s is being read by a moelab train starting now: run the prepare again once it "
                         "has started", out_dir);
    if (made) core_temp_track(lock_path);
    remove_stale_temporaries(out_dir);
    const double t1 = core_now();
    const TokProgress tp = {progress_fn, &pr};
    Tokenizer *tok = tok_train(train, train_len, D, vocab, &tp);
    stats->tok_seconds = core_now() - t1;
    stats->vocab = tok->V;
    const double t2 = core_now();
    const int rc = write_outputs(tok, out_dir, train, train_len, val, val_len, D, stats, &pr);
    if (made && rc == 0) core_temp_untrack(lock_path);
    core_free(lock_path);
    core_dir_unlock(read_lock);
    core_dir_unlock(lock);
    stats->encode_seconds = core_now() - t2;
    stats->seconds = core_now() - t0;

    // The summary only for a dataset that is in place.
    if (rc == 0) {
        const double mb = 1e-6;
        if (stats->bad_lines > 0)
            core_info0("prepare: %llu JSON line(s) gave no document and were skipped (the first %d listed above)",
                       (unsigned long long)stats->bad_lines,
                       stats->bad_lines < JSONL_REPORT ? (int)stats->bad_lines : JSONL_REPORT);
        core_info0("prepare: %d documents, %.2f MB (train %.2f MB, val %.2f MB) in %.1f s", D,
                   stats->bytes * mb, stats->train_bytes * mb, stats->val_bytes * mb, stats->seconds);
        if (vocab > 256)
            core_info0("prepare: tokenizer of %d tokens trained in %.1f s (%.2f MB/s)", tok->V, stats->tok_seconds,
                       stats->train_bytes * mb / (stats->tok_seconds > 0 ? stats->tok_seconds : 1e-9));
        if (tok->V < vocab)
            core_warn("the text ran out of pairs to merge: vocabulary %d, not %d (train with --vocab-size %d)",
                      tok->V, vocab, tok->V);
        const uint64_t tokens = stats->train_tokens + stats->val_tokens;
        core_info0("prepare: %llu train + %llu val tokens, %.3f bytes/token, encoded in %.1f s (%.2f MB/s)",
                   (unsigned long long)stats->train_tokens, (unsigned long long)stats->val_tokens,
                   tokens ? (double)stats->bytes / tokens : 0.0, stats->encode_seconds,
                   stats->bytes * mb / (stats->encode_seconds > 0 ? stats->encode_seconds : 1e-9));
        core_info0("prepare: wrote %s/tokenizer.bin, %s/train.bin, %s/val.bin", out_dir, out_dir, out_dir);
    }

    tok_free(tok);
    for (int i = 0; i < files.n; i++) {
        core_free(bufs[i]);
        core_free(files.paths[i]);
    }
    free(files.paths);
    free(files.named);
    free(docs.d);
    core_free(bufs);
    core_free(train);
    core_free(val);
    core_free(train_len);
    core_free(val_len);
    return rc;
}
