/* The non-weight files of a Hugging Face model directory (config, tokenizer, model card,
 * sentence-transformers module folders), copied into a merged directory; and model ids looked
 * up in the local Hugging Face cache. Internal. */
#ifndef NF_TREE_H
#define NF_TREE_H

#include "nufilt.h"

/* Folders below the base directory that are copied (1_Pooling/ is depth 1). Deeper ones are
 * skipped with a note. Cleanup of temporaries reaches this deep plus a merge's scratch level. */
#define NF_TREE_MAX_DEPTH 6
/* Files and folders visited in one base tree; more is an error (NF_E_LIMIT). */
#define NF_TREE_MAX_ENTRIES 10000

/* A remark for --report: something was left out or taken from elsewhere, not an error. */
typedef void (*nf_note_fn)(void *user, const char *msg);

/* 1 if a file (is_dir 0) or folder (is_dir 1) of this name holds weights in some format:
 * never copied from the base. */
int nf_tree_is_weight(const char *name, int is_dir);

/* Copies base_dir's tree, less weights, dot entries and the top-level names in skip (NULL
 * terminated, may be NULL), into the existing directory dst (a temporary that becomes out,
 * named in messages). Symbolic links are followed only to targets inside base_dir or, for a
 * snapshot of the Hugging Face cache, inside its models--org--name folder; the target's
 * content is copied. Everything skipped for a reason a user may not expect goes to note. */
int nf_tree_copy(const char *base_dir, const char *dst, const char *out,
                 const char *const *skip, nf_note_fn note, void *user, nf_error *err);

/* Reads base_dir/name (at most max bytes) under the same rule for symbolic links: 1 and the
 * text (malloc'd, NUL-terminated) when present, 0 when absent, not a regular file, a link
 * not followed or larger than max; -1 on a read error (err set). */
int nf_tree_read(const char *base_dir, const char *name, size_t max, char **text, size_t *len,
                 nf_error *err);

/* For a path inside a cache snapshot (.../models--org--name/snapshots/REV[/...]): "org/name"
 * (malloc'd); NULL otherwise. */
char *nf_hf_model_id(const char *path);

/* given as a user wrote it: an existing path is returned as is (*path a copy); a missing one of
 * the form org/name is looked up in the local Hugging Face cache (HF_HUB_CACHE, HF_HOME/hub,
 * XDG_CACHE_HOME/huggingface/hub, ~/.cache/huggingface/hub) through refs/main, offline. An
 * error names where it looked. role is for messages ("--base", "task"). */
int nf_hf_resolve(const char *given, const char *role, char **path, nf_error *err);

#endif
