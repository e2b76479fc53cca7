// Dataset preparation (`moelab data prepare`): text files in, DIR/tokenizer.bin, DIR/train.bin and
// DIR/val.bin out. Each plain-text file is a document, and so is each line of a JSON Lines file
// (*.jsonl, or *.jsonl.gz compressed with gzip): the string member `text_field` of its object; the last val_fraction of every document (moved forward
// to just after a newline where there is one before its last byte) is held out for validation, and the tokenizer is
// trained on the training parts only. Documents enter the shards in an order shuffled by the seed.
#ifndef MOELAB_DATA_PREPARE_H
#define MOELAB_DATA_PREPARE_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

// The files of a dataset directory, in the order prepare writes and renames them: what `moelab
// train --data DIR` reads, and what a run's outputs must never be.
enum { PREPARE_TOKENIZER, PREPARE_TRAIN, PREPARE_VAL, PREPARE_N_FILES };
extern const char *const prepare_file_names[PREPARE_N_FILES];
// The dataset's lock file beside them (core_file_lock): prepare holds it alone while it writes the
// dataset, a train shared while it opens the three files.
#define PREPARE_LOCK_NAME ".moelab.lock"

// JSON Lines input: which member of each line's object holds its document, and whether a line that
// gives none (empty, not JSON, not an object, member missing or not a string) is an error (exit 2,
// naming file and line) or is counted and reported (the first JSONL_REPORT with their line numbers).
typedef struct {
    const char *text_field;              // NULL means "text"
    int strict;
} PrepareJsonl;

typedef struct {
    int docs;                            // documents read (plain files and JSON lines)
    uint64_t bad_lines;                  // JSON lines that gave no document (see PrepareJsonl)
    uint64_t bytes;                      // all of them
    uint64_t train_bytes, val_bytes;
    uint64_t train_tokens, val_tokens;
    int vocab;                           // the tokenizer's size (below the request if the text ran out of pairs)
    double tok_seconds;                  // tokenizer training
    double encode_seconds;               // encoding both shards
    double seconds;                      // everything
} PrepareStats;

// inputs: files or directories (walked recursively in name order, skipping hidden entries, the
// fortunes index files *.dat and *.u8, symbolic links to directories and to nothing). vocab = 256
// gives raw bytes (no merges). val_fraction in [0, 1); 0 writes an empty val.bin. jsonl may be NULL
// (the defaults). Prints a progress line on stderr (when it is a terminal) and a summary on stdout.
// Bad input (missing path, an input that is no regular file or directory, an entry of a walked
// directory that cannot be examined, no text, a val_fraction above 0 that holds out no byte, bad
// vocab, a damaged .gz file, a bad JSON line under strict, an output path that is a directory) exits
// 2 before any output is written (an entry that cannot be examined for an I/O error or lack of
// memory exits 1).
// The three output files replace the old ones together or not at all. Returns 0, or after one
// message naming the file that could not be written: 1 when a write failed (full disk, I/O error),
// 2 when the output path cannot be created (a missing directory, no permission); then no new file
// and no temporary is left and the old files are as they were.
int prepare_dataset(const char *const *inputs, int n_inputs, int vocab, const char *out_dir,
                    double val_fraction, uint64_t seed, const PrepareJsonl *jsonl, PrepareStats *stats);

#ifdef __cplusplus
}
#endif
#endif
