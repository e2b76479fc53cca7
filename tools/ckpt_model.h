// A checkpoint's trained model and its tokenizer, for the commands that take them out of moelab
// (sample, export): the model verified and whole in one process, and the tokenizer.bin of the data
// directory the run read, or of the one the user names.
#ifndef MOELAB_TOOLS_CKPT_MODEL_H
#define MOELAB_TOOLS_CKPT_MODEL_H

#include <stddef.h>

#include "checkpoints/ckpt.h"
#include "data/tokenizer.h"
#include "framework/core/config.h"
#include "framework/model.h"

// The model of checkpoint `ckpt` (config c from ckpt_read_config_whole) on the host, every expert in
// this process, whatever layout saved it. The file is checked first as `moelab ckpt verify` checks
// it (every checksum, the part files, no tensor the config's model lacks): a damaged checkpoint is
// exit 2 here as in every other command, never text or an export made of it. st, when not NULL,
// gets its training state.
Model *ckpt_model_load(const char *ckpt, const MoeConfig *c, CkptState *st);

// DIR/tokenizer.bin of checkpoint `ckpt`, whose config c (ckpt_read_config_whole) names its run's
// data directory: DIR is `data` when not NULL, else that one. None, a file that cannot be read, or
// a tokenizer that is not the run's (another vocabulary size, or another fingerprint than the one
// the checkpoint recorded) is a usage error, its message prefixed by `cmd`. path (n bytes) gets the
// file's path for the caller's messages.
Tokenizer *ckpt_tokenizer_load(const char *cmd, const char *ckpt, const MoeConfig *c, const char *data, char *path,
                               size_t n);

#endif
