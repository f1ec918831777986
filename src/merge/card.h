/* What a merged Hugging Face directory says about itself beside its weights: the model card
 * (README.md) and config.json's dtype. Internal. */
#ifndef NF_CARD_H
#define NF_CARD_H

#include <stddef.h>

#include "nufilt.h"

typedef struct nf_card_in {
    const char *method;        /* "nufilt", "ta", ... */
    const char *params_json;   /* nufilt.params */
    const char *tasks_json;    /* nufilt.tasks: [{"name","path","fingerprint"}...] */
    const char *base_model;    /* a hub id ("org/name") or the base path as given */
    const char *base_card;     /* the base's README.md text, or NULL */
    size_t base_card_len;
    const char *base_fp;       /* hex fingerprint of the base */
    const char *command_line;  /* as the program got it, or NULL */
    int step;                  /* tasks merged so far */
} nf_card_in;

/* The card: YAML front matter (base_model, library_name when the base card has one, tags),
 * then the method, its hyper-parameters, the tasks in merge order with their fingerprints,
 * nufilt's version and the command line. malloc'd, NULL when out of memory. */
char *nf_card_text(const nf_card_in *in);

/* The library_name of a card's front matter (letters, digits, '-', '_', '.'), or 0. */
int nf_card_library_name(const char *card, size_t len, char *out, size_t n);

/* config.json text with its top-level "torch_dtype" and "dtype" set to dtype_name (the keys
 * present are replaced in place; with neither, "torch_dtype" is added first); everything else
 * byte for byte as it was. NF_E_FORMAT when the text is not one strict JSON object (the caller
 * keeps the file as it is and says so). */
int nf_config_set_dtype(const char *text, size_t len, const char *dtype_name, char **out,
                        size_t *outlen);

/* transformers' name of a float dtype ("float32", "float16", "bfloat16"), or NULL. */
const char *nf_torch_dtype_name(nf_dtype dt);

#endif
