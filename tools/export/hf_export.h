// `moelab export`: a checkpoint and its tokenizer as a Hugging Face model folder — model.safetensors,
// config.json, generation_config.json, modeling_moelab.py (our model as a transformers
// PreTrainedModel, loaded with trust_remote_code=True), tokenizer.json and tokenizer_config.json
// (the `tokenizers` library's format, encoding exactly as data/tokenizer.c). docs/export.md has the
// folder layout and the tensor name map.
#ifndef MOELAB_TOOLS_EXPORT_HF_EXPORT_H
#define MOELAB_TOOLS_EXPORT_HF_EXPORT_H

#include <stddef.h>
#include <stdio.h>

#include "data/tokenizer.h"
#include "framework/core/params.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
    const char *ckpt;      // checkpoint: a single file or an index with its parts, any EP/EPLB layout
    const char *out_dir;   // the folder to create
    const char *data_dir;  // holds tokenizer.bin; NULL: the data directory the checkpoint trained on
    int bf16;              // weights as bf16 (rounded to nearest even) instead of fp32
    int force;             // replace an existing non-empty out_dir (only one holding export files)
} HfExportOptions;

// Checks everything (options, checkpoint, tokenizer, out_dir) before writing anything, writes the
// folder under a temporary name next to out_dir and renames it into place at the end. Bad input
// exits 2 with one message and leaves no files; a failed write exits 1 where the system failed (a
// full disk, an I/O error), 2 where the path is refused (permissions), and removes the temporary folder.
void hf_export(const HfExportOptions *o);


// 0 if the tokenizer can be written as tokenizer.json; else 1 with a message in err (TOK_ERR_LEN):
// the BPE model of `tokenizers` names tokens by their bytes, so two tokens with the same bytes
// (possible in a moelab tokenizer) cannot both be represented.
int hf_tokenizer_check(const Tokenizer *t, char *err);
// Writes tokenizer.json: byte-level alphabet, a Split pre-tokenizer whose regex cuts exactly
// tok_chunk_len's chunks, the vocabulary by id and the merges in rank order.
void hf_tokenizer_write(const Tokenizer *t, FILE *f);

#ifdef __cplusplus
}
#endif
#endif
