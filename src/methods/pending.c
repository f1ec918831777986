/* Baselines listed by `nufilt methods` whose implementation has not landed yet: they are
 * refused with a clear message (tensor == NULL) instead of producing anything. */
#include "../merge/run.h"

#define PENDING(id, nm, summary, opts, paper)                                                  \
    const nf_method_ops nf_method_##id = {                                                     \
        .info = {nm, summary, opts, paper, 0},                                                 \
    };

PENDING(wa, "wa", "weight averaging: running mean of the fine-tuned models", "(none)",
        "Wortsman et al., Model soups, ICML 2022")
PENDING(ta, "ta", "task arithmetic: adds lambda times each task vector", "--scale 0.3",
        "Ilharco et al., Editing models with task arithmetic, ICLR 2023")
PENDING(ties, "ties", "TIES-merging: trim, elect sign, disjoint sum, globally",
        "--scale 0.3, --keep 0.2", "Yadav et al., TIES-Merging, NeurIPS 2023")
PENDING(magmax, "magmax", "MagMax: keeps the larger-magnitude update per parameter",
        "--scale 0.5", "Marczak et al., MagMax, ECCV 2024")
PENDING(opcm, "opcm", "orthogonal projection of each task vector, norm-preserving rescale",
        "--alpha 0.5, --opcm-zero-diag off", "Tang et al., Merging models on the fly (OPCM), 2025")
PENDING(wudi, "wudi", "data-free interference minimisation with Adam on task-vector subspaces",
        "--iters 50, --lr 1e-5", "Cheng et al., Whoever started the interference should end it (WUDI), ICML 2025")
PENDING(isoc, "isoc", "Iso-C: flattens the spectrum of the summed task vectors", "--scale 1",
        "Marczak et al., No task left behind: isotropic model merging, ICML 2025")
PENDING(tsvm, "tsvm", "TSV-M: decorrelated task singular vectors", "--scale 1",
        "Gargiulo et al., Task singular vectors, CVPR 2025")
