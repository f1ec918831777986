"""Per-layer stability / plasticity surrogates (paper eqs. 3-4) and subspace affinity (eq. 5).

Layer inputs. For task i, X_i (per treated linear layer, rows = non-padding tokens) are the
inputs that layer receives when the first N test examples of task i run through task i's own
fine-tuned encoder theta_i (collected with forward pre-hooks). Only the Gram matrices
C_i = X_i^T X_i and the row counts n_i are kept: ||D X^T||_F^2 = tr(D C D^T).

Surrogates, for a merge stream M(1..T) over the order (tasks o_1..o_T), per layer W:
  stability  S(t) = mean_{i<t} ||(M(t) - M(t-1)) X_{o_i}^T||_F^2 / n_{o_i}       t >= 2
              (how far the new step moves the outputs of earlier tasks; smaller = more stable)
  plasticity P(t) = ||(M(t) - theta_{o_t}) X_{o_t}^T||_F^2 / n_{o_t}             t >= 1
              (how far the merged layer is from the new task's expert on the new task's
               inputs; smaller = more plastic)
Reported per layer as the mean over steps (S over t = 2..T, P over t = 1..T), and summed
over layers per step.

Subspace affinity, per task i and layer: V_d = top r_d eigenvectors of C_i (the data's
principal input directions), V = top k right singular vectors of the task vector
tau_i = theta_i - theta_0; A = ||V^T V_d||_F^2 / r_d in [0, 1]. A random k-dimensional
subspace scores k / d_in on average. The cross-task matrix A[i][j] pairs task i's data with
task j's task vector (averaged over layers).
"""
import torch

N_EXAMPLES = 128
R_DATA = 8
K_TASK = 8


def quad(D, C, n):
    """||D X^T||_F^2 / n with C = X^T X."""
    return float(((D @ C) * D).sum()) / max(n, 1)


def treated_names(grams):
    return sorted(grams, key=layer_sort_key)


def layer_sort_key(name):
    parts = name.split(".")
    idx = int(parts[2]) if len(parts) > 2 and parts[2].isdigit() else -1
    kinds = ["attention.self.query", "attention.self.key", "attention.self.value",
             "attention.output.dense", "intermediate.dense", "output.dense"]
    rest = ".".join(parts[3:-1])
    return (idx, kinds.index(rest) if rest in kinds else len(kinds), name)


def short_layer(name):
    parts = name.split(".")
    rest = ".".join(parts[3:-1])
    short = {"attention.self.query": "q", "attention.self.key": "k", "attention.self.value": "v",
             "attention.output.dense": "o", "intermediate.dense": "fc1",
             "output.dense": "fc2"}.get(rest, rest)
    return f"L{parts[2]}.{short}" if len(parts) > 2 else name


def surrogates(step_states, task_states, order, grams):
    """step_states: list of state dicts M(1..T) (only treated tensors needed);
    task_states: {task: theta_task}; grams: {task: {layer: (C, n)}}.
    Returns {"layers": [...], "stability": {layer: [S(2..T)]}, "plasticity": {layer: [P(1..T)]}}.

    The mean over earlier tasks is linear in the Gram matrices, so S(t) is one quadratic
    form with the running mean of C_i / n_i."""
    layers = treated_names(grams[order[0]])
    T = len(order)
    stab = {l: [] for l in layers}
    plas = {l: [] for l in layers}
    for l in layers:
        run = None
        for t in range(1, T + 1):
            W = step_states[t - 1][l].float()
            C, n = grams[order[t - 1]][l]
            plas[l].append(quad(W - task_states[order[t - 1]][l].float(), C, n))
            if t >= 2:
                stab[l].append(quad(W - step_states[t - 2][l].float(), run / (t - 1), 1))
            run = C / n if run is None else run + C / n
    return {"layers": layers, "stability": stab, "plasticity": plas}


def top_eigvecs(C, r):
    """Top r eigenvectors of a symmetric PSD matrix (exact, float32 LAPACK)."""
    _, evecs = torch.linalg.eigh(C.float())
    return evecs[:, -r:].flip(1)


def top_right_singular(D, k):
    _, _, Vh = torch.linalg.svd(D.float(), full_matrices=False)
    return Vh[:k].T


def affinity(grams, task_vectors, names, r_data=R_DATA, k=K_TASK):
    """Returns {"per_layer": {task: {layer: A}}, "cross": [[A_ij]], "random": {layer: k/d_in}}."""
    layers = treated_names(grams[names[0]])
    Vd = {i: {l: top_eigvecs(grams[i][l][0], r_data) for l in layers} for i in names}
    Vt = {j: {l: top_right_singular(task_vectors[j][l], k) for l in layers} for j in names}
    per_layer = {}
    cross = []
    for i in names:
        row = []
        for j in names:
            vals = {}
            for l in layers:
                vals[l] = float((Vt[j][l].T @ Vd[i][l]).pow(2).sum()) / r_data
            if i == j:
                per_layer[i] = vals
            row.append(sum(vals.values()) / len(vals))
        cross.append(row)
    rand = {l: min(k, task_vectors[names[0]][l].shape[1]) / task_vectors[names[0]][l].shape[1]
            for l in layers}
    return {"layers": layers, "per_layer": per_layer, "cross": cross, "names": list(names),
            "random": rand, "r_data": r_data, "k": k, "n_examples": N_EXAMPLES}
