"""Statistics for the sweep report: bootstrap p-values over documents, means/stds over seeds, ranks.

Everything here is plain numpy on per-document scores (one value per document: the benchmark's
per-sample metric averaged over its prompt variants), so the report and the tests share one exact
definition.

**Bootstrap procedure** (paper Sec. 4.3), for one model and one benchmark with N documents,
original scores ``o``, culture-mask scores ``c`` and S random-mask score vectors ``r_s``:

1. ``rng = np.random.default_rng(seed)``;
   ``idx = rng.integers(0, N, size=(B, N))`` (B resamples of N documents, with replacement), then
   ``pick = rng.integers(0, S, size=B)`` (one uniformly drawn random seed per resample).
2. For resample b, sums over its documents: ``O_b``, ``C_b``, ``R_{s,b}``. Reductions (drops) are
   ``D^c_b = O_b - C_b`` and ``D^s_b = O_b - R_{s,b}`` (sums instead of means: the same order,
   and exact for 0/1 metrics averaged over a few variants).
3. ``p_mean = mean_b [ mean_s D^s_b >= D^c_b ]`` (against the mean of the random seeds),
   ``p_single = mean_b [ D^{pick_b}_b >= D^c_b ]`` (against one uniformly drawn seed).

A reduction is significant when both p-values are below 0.05. Ties count as "random >= culture"
(the conservative side); comparisons allow a relative 1e-9 for rounding.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

RESAMPLES = 2000
ALPHA = 0.05
_CHUNK_ELEMENTS = 1 << 22  # resample x document cells per step (bounds memory: ~32 MB float64)


@dataclass(frozen=True)
class BootstrapResult:
    drop_culture: float      # mean(o) - mean(c)
    drop_random: float       # mean over seeds of mean(o) - mean(r_s)
    p_mean: float
    p_single: float
    resamples: int

    @property
    def significant(self) -> bool:
        return self.p_mean < ALPHA and self.p_single < ALPHA


def draw(n_docs: int, n_seeds: int, resamples: int = RESAMPLES, seed: int = 0
         ) -> tuple[np.ndarray, np.ndarray]:
    """The bootstrap draws of step 1: document indices ``(B, N)`` and one seed index per resample."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n_docs, size=(resamples, n_docs))
    pick = rng.integers(0, n_seeds, size=resamples)
    return idx, pick


def resample_sums(values: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """``values`` ``(K, N)``, ``idx`` ``(B, N)`` -> ``(B, K)`` sums of each row over each resample.

    Vectorised: each chunk of resamples becomes a count matrix (how often each document was
    drawn) multiplied with the values, so there is no Python loop over resamples or documents.
    """
    values = np.asarray(values, dtype=np.float64)
    n_res, n_docs = idx.shape
    if values.shape[1] != n_docs:
        raise ValueError(f"values have {values.shape[1]} documents, indices {n_docs}")
    out = np.empty((n_res, values.shape[0]))
    step = max(1, _CHUNK_ELEMENTS // max(n_docs, 1))
    for lo in range(0, n_res, step):
        chunk = idx[lo:lo + step]
        b = chunk.shape[0]
        flat = (np.arange(b)[:, None] * n_docs + chunk).ravel()
        counts = np.bincount(flat, minlength=b * n_docs).reshape(b, n_docs).astype(np.float64)
        out[lo:lo + b] = counts @ values.T
    return out


def bootstrap_reduction(orig, culture, randoms, *, resamples: int = RESAMPLES, seed: int = 0
                        ) -> BootstrapResult:
    """p-values that a random mask reduces the score at least as much as the culture mask.

    ``orig`` and ``culture`` are per-document scores ``(N,)``, ``randoms`` ``(S, N)`` (one row per
    random seed), all on the same documents in the same order.
    """
    o = np.asarray(orig, dtype=np.float64)
    c = np.asarray(culture, dtype=np.float64)
    r = np.atleast_2d(np.asarray(randoms, dtype=np.float64))
    n = o.shape[0]
    if n == 0 or c.shape != o.shape or r.shape[1] != n or r.shape[0] == 0:
        raise ValueError(f"need the same documents for every mask: orig {o.shape}, culture "
                         f"{c.shape}, randoms {r.shape}")
    s = r.shape[0]
    idx, pick = draw(n, s, resamples, seed)
    sums = resample_sums(np.vstack([o, c, r]), idx)
    d_c = sums[:, 0] - sums[:, 1]
    d_r = sums[:, [0]] - sums[:, 2:]                         # (B, S)
    tol = 1e-9 * max(1.0, float(np.abs(sums).max()))
    p_mean = float(np.mean(d_r.mean(axis=1) >= d_c - tol))
    p_single = float(np.mean(d_r[np.arange(resamples), pick] >= d_c - tol))
    return BootstrapResult(drop_culture=float(o.mean() - c.mean()),
                           drop_random=float(np.mean(o.mean() - r.mean(axis=1))),
                           p_mean=p_mean, p_single=p_single, resamples=resamples)


def mean_std(values) -> tuple[float, float]:
    """Mean and standard deviation over seeds (population std, ``ddof=0``, as ``np.std``)."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return float("nan"), float("nan")
    return float(v.mean()), float(v.std())


def rank_drops(drops) -> np.ndarray:
    """Rank of each value among all, 1 = the largest drop; ties get their average rank."""
    d = np.asarray(drops, dtype=np.float64)
    order = np.argsort(-d, kind="stable")
    ranks = np.empty(d.size)
    ranks[order] = np.arange(1, d.size + 1)
    # average ranks over ties
    uniq, inverse = np.unique(d, return_inverse=True)
    sums = np.bincount(inverse, weights=ranks, minlength=uniq.size)
    counts = np.bincount(inverse, minlength=uniq.size)
    return sums[inverse] / counts[inverse]
