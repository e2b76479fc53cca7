// The data loader: cuts a token shard into sequences of T + 1 tokens, deals them to data-parallel
// ranks without overlap, shuffles them per epoch from the seed, wraps epochs, and can save and
// restore its position so that a resumed run sees exactly the batches it would have seen.
//
// Sequence i is tokens [i*T, i*T + T] (consecutive sequences share one token, so every token but
// the first is a target once per epoch); there are S = (n - 1) / T of them. Each epoch visits them
// in a permutation of 0..S-1 (Fisher-Yates on the Philox stream (seed, epoch); the identity when
// shuffle is off). The epochs form one endless stream of sequences; step k of the run takes stream
// positions [k*B*world, (k+1)*B*world), of which rank r takes the B starting at k*B*world + r*B.
// So every rank gets full batches, no sequence is dropped, and a global batch may straddle two
// epochs. The position {epoch, index} is that of the next step's first sequence, the same on every
// rank.
#ifndef MOELAB_DATA_LOADER_H
#define MOELAB_DATA_LOADER_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
    uint64_t epoch;  // epochs completed before the next step's first sequence
    uint64_t index;  // its position in that epoch's order, < loader_num_sequences
} LoaderPos;

typedef struct Loader Loader;

// Maps the shard at path (a bad shard, or one shorter than T + 1 tokens, is a usage error naming
// it). rank in [0, world). shuffle = 0 reads sequences in order (the validation loader).
Loader *loader_open(const char *path, int T, int B, int rank, int world, uint64_t seed, int shuffle);
// Fills tokens (B, T + 1) with this rank's next B sequences: inputs are [:, :T], targets [:, 1:].
void loader_next(Loader *l, int *tokens);
LoaderPos loader_get_pos(const Loader *l);
// Restores a saved position; an index beyond this shard's sequences is a usage error (the position
// was saved on other data or another T).
void loader_set_pos(Loader *l, LoaderPos pos);
uint64_t loader_num_sequences(const Loader *l);  // S
uint32_t loader_vocab(const Loader *l);         // the shard's vocabulary size
uint32_t loader_tok_fp(const Loader *l);        // its tokenizer fingerprint (0: not recorded)
// A 64-bit fingerprint of the shard's tokens, never 0: its length and 64 runs of 64 tokens spread
// over it (not every token: a resume reads it, and shards run to gigabytes). A shard prepared again
// (another corpus, seed or split) has another one.
uint64_t loader_fingerprint(const Loader *l);
void loader_close(Loader *l);

#ifdef __cplusplus
}
#endif
#endif
