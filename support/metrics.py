"""metrics.py: the geometry metrics of representations, and the keys under which runs log them.

The paper's central claim is geometric: under NTP the last hidden states collapse into a low-rank,
anisotropic cone, NITP keeps them higher-rank and more isotropic (docs/method.md, 'Geometry metrics').
Two numbers measure it on a matrix X (N, d) of representations, one row per token:

    effective rank       exp(H(p)), p = the eigenvalues of the covariance of X normalised to a distribution:
                         1 (all variance along one direction) .. min(N - 1, d) (perfectly isotropic)
    average cosine       mean cosine over random pairs of distinct rows: ~0 isotropic, near 1 a narrow cone

plus the full singular-value spectrum of the mean-centred X that both come from. train.py logs them during
training and eval.py computes them on held-out tokens after it, from this one definition.

The keys below are the names these numbers travel under between files: train.py writes them to log.jsonl,
eval.py reads them back and writes its per-run results (metrics.json) under the same names, compare.py
aggregates those. A key is spelled once, here, so a rename cannot silently split writer from reader.

Imports only torch and the standard library. Nothing runs at import.
"""

import math

import torch
import torch.nn.functional as F

# ---------------------------------------------------------------------------- log keys
# Keys of log.jsonl's eval lines and of eval.py's per-run results: train.py writes them, eval.py and
# compare.py read them.
VAL_LOSS = "val_loss"
EFFECTIVE_RANK = "effective_rank"
AVG_COSINE = "avg_cosine"
TARGET_EFFECTIVE_RANK = "target_effective_rank"
TARGET_AVG_COSINE = "target_avg_cosine"
FINAL_AUX_LOSS = "final_val_aux_loss"  # eval.py's: val_loss_<objective> of the run's last eval line
LOG_SPLITS = ("train", "val")
GEOMETRY_TOKENS = 16384  # train.py's evaluation measures the geometry on at most this many states of val batch 0


def aux_loss_key(objective: str, split: str = "train") -> str:
    """The log key of the auxiliary objective's loss: "loss_nitp" in train lines, "val_loss_nitp" in eval lines."""
    if split not in LOG_SPLITS:
        raise ValueError(f"split={split!r} is not a log split; use one of {LOG_SPLITS}")
    if objective == "ntp":
        raise ValueError("ntp has no auxiliary loss (its loss is logged as loss_ntp)")
    return f"loss_{objective}" if split == "train" else f"{VAL_LOSS}_{objective}"


# ---------------------------------------------------------------------------- metrics
def _as_float64_matrix(X) -> torch.Tensor:
    X = torch.as_tensor(X)
    if X.dim() != 2:
        raise ValueError(f"expected a 2-D (N, d) matrix of representations, got shape {tuple(X.shape)}; "
                         "flatten batch and time first, e.g. X = h[valid] or h.reshape(-1, d)")
    return X.detach().to(torch.float64)


def singular_values(X) -> torch.Tensor:
    """Full singular-value spectrum of the MEAN-CENTRED rows of X (N, d), descending, float64, on CPU.

    Centring removes the common offset (the 'cone' direction) so the spectrum shows how the variance
    spreads over directions; s_i^2 / (N - 1) are the eigenvalues of the empirical covariance.
    Length min(N, d).
    """
    X = _as_float64_matrix(X)
    centred = X - X.mean(dim=0, keepdim=True)  # (N, d)
    return torch.linalg.svdvals(centred).cpu()


def effective_rank(X) -> float:
    """Effective rank of representations X (N, d), as the paper measures it (docs/method.md, 'Geometry metrics').

    Mean-centre, take the eigenvalues of the empirical covariance (= squared singular values of the
    centred data, up to the 1/(N-1) factor that the normalisation cancels), normalise them to a
    distribution p and return exp(H(p)), H in nats, 0 log 0 = 0. Computed in float64. Note: the
    paper uses covariance eigenvalues, not Roy & Vetterli's singular values; the two differ.
    Ranges from 1 (all variance along one direction) to min(N - 1, d) (perfectly isotropic).
    Returns 0.0 for data with no variance at all (all rows equal), where the entropy is undefined.
    """
    eigenvalues = singular_values(X) ** 2
    total = eigenvalues.sum()
    if total <= 0:
        return 0.0
    p = eigenvalues / total
    p = p[p > 0]  # 0 log 0 = 0
    entropy = -(p * p.log()).sum()
    return math.exp(entropy.item())


def avg_pairwise_cosine(X, num_pairs: int, generator: torch.Generator | None = None) -> float:
    """Mean cosine similarity over `num_pairs` random pairs of DISTINCT rows of X (N, d).

    Pairs are drawn uniformly with replacement among ordered pairs (i, j), i != j (a row is never
    paired with itself, which would bias the mean towards 1). Each row is L2-normalised (float64).
    Pass a CPU `generator` for reproducible pairs. A proxy for anisotropy: ~0 for an isotropic
    cloud, near 1 when all representations point into a narrow cone.
    """
    X = _as_float64_matrix(X)
    n = X.shape[0]
    if n < 2:
        raise ValueError(f"avg_pairwise_cosine needs at least 2 rows, got {n}; collect more tokens")
    if num_pairs < 1:
        raise ValueError(f"num_pairs must be >= 1, got {num_pairs}")
    first = torch.randint(0, n, (num_pairs,), generator=generator)
    # draw the partner among the other n-1 rows, then skip over `first`: exactly uniform over j != i
    second = torch.randint(0, n - 1, (num_pairs,), generator=generator)
    second = second + (second >= first).long()
    unit = F.normalize(X, dim=1)  # (N, d)
    first, second = first.to(unit.device), second.to(unit.device)
    cosines = (unit[first] * unit[second]).sum(dim=1)  # (num_pairs,)
    return cosines.mean().item()


def training_geometry(hidden, target, num_pairs: int = 4096) -> dict:
    """What train.py's evaluation logs of the last hidden states and the target layer's, (N, d) each: effective
    rank and average cosine over `num_pairs` random pairs, the same pairs at every evaluation (seed 0)."""
    return {EFFECTIVE_RANK: effective_rank(hidden),
            AVG_COSINE: avg_pairwise_cosine(hidden, num_pairs, torch.Generator().manual_seed(0)),
            TARGET_EFFECTIVE_RANK: effective_rank(target),
            TARGET_AVG_COSINE: avg_pairwise_cosine(target, num_pairs, torch.Generator().manual_seed(0))}
