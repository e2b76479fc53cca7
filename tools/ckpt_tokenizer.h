// The tokenizer of a checkpoint's model, for the commands that turn its token ids into text (sample,
// export): the tokenizer.bin of the data directory the run read, or of the one the user names.
#ifndef MOELAB_TOOLS_CKPT_TOKENIZER_H
#define MOELAB_TOOLS_CKPT_TOKENIZER_H

#include <stddef.h>

#include "data/tokenizer.h"
#include "framework/core/config.h"

// DIR/tokenizer.bin of checkpoint `ckpt`, whose config c (ckpt_read_config_whole) names its run's
// data directory: DIR is `data` when not NULL, else that one. None, a file that cannot be read, or
// a tokenizer that is not the run's (another vocabulary size, or another fingerprint than the one
// the checkpoint recorded) is a usage error, its message prefixed by `cmd`. path (n bytes) gets the
// file's path for the caller's messages.
Tokenizer *ckpt_tokenizer_load(const char *cmd, const char *ckpt, const MoeConfig *c, const char *data, char *path,
                               size_t n);

#endif
