"""Neuron selection from score files (paper Sec. 3.3 and 4.2): no recomputation, tensors only.

* ``general``: d = s(BLEnD_neur) - s(BLEnD_ctrl) (totals); the top ``t_mlp`` % of MLP neurons and
  the top ``t_attn`` % of attention neurons (q/k/v pooled), each pool over all layers; then those
  among the top ``r`` % of their pool by s(CRC_neur) are dropped.
* ``specific``: d_c = s(neur_c) - s(ctrl_c); the top ``t`` % over MLP and attention together; drop
  the top ``r`` % by s(CRC_neur) (the country's own CountryRC rows where it has them, else the
  total); drop neurons whose z-score of d_c across countries is below ``z_min``.
* ``random``: for a set, the same number of neurons per module, drawn uniformly over all layers of
  that module (layer-agnostic: the random set's layer distribution is not matched to the set's,
  so it tests "these neurons" against "as many neurons of the same kind anywhere").

Ranking is by descending score; ties are broken by position in the flattened
``(module, layer, index)`` order, so a selection is deterministic. ``k = round(t/100 * pool)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from attribution.scores import Scores
from culnig.errors import CulnigError
from culnig.neuron_sets import NeuronSet
from culnig.registry import ATTN_MODULES, ModelLayout


def check_percent(name: str, value: float) -> float:
    if not 0 < value <= 100:
        raise CulnigError(f"{name} must be a percentage in (0, 100], got {value:g}")
    return value


@dataclass
class Pool:
    """Several modules' ``[layers, neurons]`` score matrices flattened into one vector."""

    modules: tuple[str, ...]
    shapes: tuple[tuple[int, int], ...]

    @classmethod
    def of(cls, modules: Sequence[str], layout: ModelLayout) -> "Pool":
        return cls(tuple(modules), tuple((layout.n_layers, layout.n_neurons(m)) for m in modules))

    @property
    def size(self) -> int:
        return sum(a * b for a, b in self.shapes)

    def flatten(self, per_module: dict[str, torch.Tensor]) -> torch.Tensor:
        return torch.cat([per_module[m].reshape(-1).double() for m in self.modules])

    def unflatten(self, flat_idx: torch.Tensor) -> dict[str, dict[int, np.ndarray]]:
        out: dict[str, dict[int, np.ndarray]] = {}
        start = 0
        idx = flat_idx.cpu().numpy()
        for m, (L, N) in zip(self.modules, self.shapes):
            sel = idx[(idx >= start) & (idx < start + L * N)] - start
            layers, neurons = np.divmod(sel, N)
            out[m] = {int(l): np.sort(neurons[layers == l]) for l in np.unique(layers)}
            start += L * N
        return out


def top_percent(values: torch.Tensor, percent: float) -> torch.Tensor:
    """Indices of the top ``percent`` % of ``values`` (descending, ties by lower index)."""
    k = int(round(percent / 100 * values.numel()))
    order = torch.sort(values, descending=True, stable=True).indices
    return order[:k]


def _mask(n: int, idx: torch.Tensor) -> torch.Tensor:
    m = torch.zeros(n, dtype=torch.bool)
    m[idx] = True
    return m


def check_compatible(named: dict[str, Scores], agg: str) -> None:
    """All score files from one model, with the aggregation asked for, and different data."""
    items = [(k, s) for k, s in named.items() if s is not None]
    fps = {k: s.meta.get("fingerprint") for k, s in items}
    if len(set(fps.values())) > 1:
        raise CulnigError("score files come from different models: "
                          + ", ".join(f"{k} {v}" for k, v in fps.items()))
    for k, s in items:
        if agg not in s.aggregations:
            raise CulnigError(f"{k} scores have no aggregation {agg!r} (have: {', '.join(s.aggregations)})")
    hashes: dict[str, str] = {}
    for k, s in items:
        h = s.meta.get("data_sha256")
        if h and h in hashes:
            raise CulnigError(f"{k} and {hashes[h]} scores were computed on the same data file; "
                              "pass the neur, ctrl and CRC score files once each")
        if h:
            hashes[h] = k


def _per_module(scores: Scores, agg: str, modules: Sequence[str], country: str | None = None):
    missing = [m for m in modules if m not in scores.modules]
    if missing:
        raise CulnigError(f"scores have no module {missing[0]!r} (have: {', '.join(scores.modules)})")
    return {m: scores.get(agg, m, country) for m in modules}


def _diff(neur: Scores, ctrl: Scores | None, agg: str, modules, country=None):
    a = _per_module(neur, agg, modules, country)
    if ctrl is None:
        return a
    b = _per_module(ctrl, agg, modules, country)
    return {m: a[m].double() - b[m].double() for m in modules}


def select_general(layout: ModelLayout, neur: Scores, ctrl: Scores | None, crc: Scores | None, *,
                   agg: str = "max", t_mlp: float = 1.0, t_attn: float = 0.2, r: float = 1.0,
                   mlp_modules: Sequence[str] = ("gate",),
                   attn_modules: Sequence[str] = ATTN_MODULES) -> dict[str, dict[int, np.ndarray]]:
    check_percent("t_mlp", t_mlp), check_percent("t_attn", t_attn), check_percent("r", r)
    check_compatible({"neur": neur, "ctrl": ctrl, "crc": crc}, agg)
    chosen: dict[str, dict[int, np.ndarray]] = {}
    for modules, t in ((tuple(mlp_modules), t_mlp), (tuple(attn_modules), t_attn)):
        if not modules:
            continue
        pool = Pool.of(modules, layout)
        d = pool.flatten(_diff(neur, ctrl, agg, modules))
        keep = _mask(pool.size, top_percent(d, t))
        if crc is not None:
            c = pool.flatten(_per_module(crc, agg, modules))
            keep &= ~_mask(pool.size, top_percent(c, r))
        chosen.update(pool.unflatten(keep.nonzero().flatten()))
    return chosen


def zscores(neur: Scores, ctrl: Scores | None, agg: str, modules, countries: Sequence[str]) -> torch.Tensor:
    """``[countries, pool]`` z-scores of d_c across countries (population std; 0 where it is 0)."""
    pool_rows = []
    for c in countries:
        per = _diff(neur, ctrl, agg, modules, c)
        pool_rows.append(torch.cat([per[m].reshape(-1).double() for m in modules]))
    d = torch.stack(pool_rows)
    mu, sd = d.mean(0, keepdim=True), d.std(0, unbiased=False, keepdim=True)
    return torch.where(sd > 0, (d - mu) / sd.clamp_min(1e-300), torch.zeros_like(d))


def select_specific(layout: ModelLayout, neur: Scores, ctrl: Scores | None, crc: Scores | None,
                    country: str, *, agg: str = "max", t: float = 0.3, r: float = 1.0,
                    z_min: float = 0.5, modules: Sequence[str] = ("gate",) + ATTN_MODULES
                    ) -> dict[str, dict[int, np.ndarray]]:
    check_percent("t", t), check_percent("r", r)
    check_compatible({"neur": neur, "ctrl": ctrl, "crc": crc}, agg)
    if country not in neur.countries:
        raise CulnigError(f"unknown country {country!r}; the neur scores have: {', '.join(neur.countries)}")
    if ctrl is not None and ctrl.countries != neur.countries:
        raise CulnigError("neur and ctrl scores cover different countries; compute both on the same rows")
    modules = tuple(modules)
    pool = Pool.of(modules, layout)
    d = pool.flatten(_diff(neur, ctrl, agg, modules, country))
    keep = _mask(pool.size, top_percent(d, t))
    if crc is not None:
        crc_country = country if country in crc.countries else None
        keep &= ~_mask(pool.size, top_percent(pool.flatten(_per_module(crc, agg, modules, crc_country)), r))
    if z_min is not None and len(neur.countries) > 1:
        z = zscores(neur, ctrl, agg, modules, neur.countries)[neur.countries.index(country)]
        keep &= z >= z_min
    return pool.unflatten(keep.nonzero().flatten())


def random_like(layout: ModelLayout, reference: NeuronSet, seed: int) -> dict[str, dict[int, np.ndarray]]:
    """Same count per module, drawn uniformly without replacement over all of that module's
    neurons in all layers."""
    rng = np.random.default_rng(seed)
    out: dict[str, dict[int, np.ndarray]] = {}
    for m, k in reference.counts().items():
        if m == "total" or k == 0:
            continue
        n = layout.n_neurons(m)
        flat = rng.choice(layout.n_layers * n, size=k, replace=False)
        layers, idx = np.divmod(flat, n)
        out[m] = {int(l): np.sort(idx[layers == l]) for l in np.unique(layers)}
    return out

