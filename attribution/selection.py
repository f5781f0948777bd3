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
from culnig.registry import ATTN_MODULES, MODULES, ModelLayout


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
    stamps = {k: s.meta.get("weights_stamp") for k, s in items if s.meta.get("weights_stamp")}
    if len(set(stamps.values())) > 1:
        raise CulnigError("score files come from models of the same shape but other weights: "
                          + ", ".join(f"{k} {v[:12]}" for k, v in stamps.items())
                          + "; score every file with the same checkpoint")
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



def random_set_like(reference: NeuronSet, reference_path, seed: int) -> NeuronSet:
    """The count-matched random set for ``seed`` drawn like ``reference`` (read from
    ``reference_path``): what `culnig select random` and a sweep's ``random: {like: general}``
    both write."""
    from culnig.neuron_sets import ModelShape, file_sha256

    shape = ModelShape.from_meta(reference.model, str(reference_path))
    return NeuronSet(model=reference.model, method="random",
                     neurons=random_like(shape, reference, seed),
                     params={"seed": seed, "like": reference.method,
                             "sampling": "uniform per module, all layers"},
                     sources={"like": file_sha256(reference_path)})


def parse_seeds(text: str, what: str = "--seeds") -> list[int]:
    """Seeds from ``0-9``, ``0,3,7`` or a mix (``0-2,5``); an empty or reversed range is an error."""
    seeds: list[int] = []
    try:
        for part in str(text).split(","):
            if "-" in part.strip()[1:]:
                lo, hi = part.strip().split("-", 1)
                lo_i, hi_i = int(lo), int(hi)
                if hi_i < lo_i:
                    raise CulnigError(f"{what} {text!r}: the range {part.strip()} is empty; "
                                      f"write {hi_i}-{lo_i}")
                seeds.extend(range(lo_i, hi_i + 1))
            else:
                seeds.append(int(part))
    except ValueError:
        raise CulnigError(f"{what} {text!r}: use a list like 0-9 or 0,3,7") from None
    if any(s < 0 for s in seeds):
        raise CulnigError(f"{what} {text!r}: seeds are non-negative integers")
    return list(dict.fromkeys(seeds))


def _flat(ns: NeuronSet, module: str | None) -> set:
    return {(m, layer, int(i)) for m, layer, idx in ns.items() if module in (None, m) for i in idx}


def jaccard_table(a: NeuronSet, b: NeuronSet):
    rows = []
    for m in (*MODULES, None):
        sa, sb = _flat(a, m), _flat(b, m)
        if m is not None and not sa and not sb:
            continue
        union = len(sa | sb)
        rows.append((m or "all", len(sa), len(sb), len(sa & sb), len(sa & sb) / union if union else 0.0))
    return rows


def parse_modules(text: str) -> tuple[str, ...]:
    """``gate,q`` -> ``("gate", "q")``; an unknown module is an error listing the known ones."""
    mods = tuple(m.strip() for m in str(text).split(",") if m.strip())
    bad = [m for m in mods if m not in MODULES]
    if bad:
        raise CulnigError(f"unknown module {bad[0]!r}; choose from {', '.join(MODULES)}")
    return mods


def select_to_file(method: str, out, *, neur, ctrl=None, crc=None, agg: str = "max",
                   r: float = 1.0, force: bool = False, t_mlp: float = 1.0, t_attn: float = 0.2,
                   mlp_modules: Sequence[str] = ("gate",), country: str | None = None,
                   t: float = 0.3, z_min: float = 0.5,
                   modules: Sequence[str] = ("gate", "q", "k", "v")) -> NeuronSet:
    """Select ``general`` or ``specific`` neurons from score files and write the set file
    (``ctrl``/``crc`` None: the ablations without control subtraction / CountryRC filter)."""
    from culnig.neuron_sets import ModelShape, file_sha256, model_block

    neur_s = Scores.load(neur)
    ctrl_s = Scores.load(ctrl) if ctrl else None
    crc_s = Scores.load(crc) if crc else None
    shape = ModelShape.from_meta(neur_s.meta, str(neur))
    sources = {k: file_sha256(v) for k, v in (("neur", neur), ("ctrl", ctrl), ("crc", crc)) if v}
    params = {"agg": agg, "control": ctrl_s is not None, "crc": crc_s is not None, "r": r}
    if method == "general":
        neurons = select_general(shape, neur_s, ctrl_s, crc_s, agg=agg, t_mlp=t_mlp, t_attn=t_attn,
                                 r=r, mlp_modules=tuple(mlp_modules), attn_modules=ATTN_MODULES)
        params.update(t_mlp=t_mlp, t_attn=t_attn, mlp_modules=list(mlp_modules))
    elif method == "specific":
        neurons = select_specific(shape, neur_s, ctrl_s, crc_s, country, agg=agg, t=t, r=r,
                                  z_min=z_min, modules=tuple(modules))
        params.update(country=country, t=t, z_min=z_min, modules=list(modules))
    else:
        raise CulnigError(f"unknown selection method {method!r}; use general or specific")
    ns = NeuronSet(model=model_block(shape, neur_s.meta.get("model", "")), method=f"culnig-{method}",
                   neurons=neurons, params=params, sources=sources)
    ns.validate(shape, source=str(out))
    ns.save(out, force=force)
    return ns
