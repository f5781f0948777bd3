"""LAPE selection (Tang et al. 2024) and the set algebra of CAPE (Namazifard & Galke 2025).

Pure functions on tensors and :class:`~culnig.neuron_sets.NeuronSet` objects; the command line
is :mod:`culnig.cli.lape`.

LAPE, given activation probabilities ``P[c, l, n]`` (corpus c, layer l, neuron n):

1. ``p[c] = P[c] / sum_c P[c]`` per neuron (a neuron that never fires has no distribution and is
   never selected), entropy ``H = -sum_c p log p``;
2. ``filter`` = the k-th smallest of all ``C*L*N`` probabilities with
   ``k = round(C*L*N * filter_percentile / 100)``; a neuron whose highest probability is not
   above it is excluded;
3. of the rest, the ``round(L*N * top / 100)`` neurons of lowest entropy are kept (ties: lower
   layer, then lower index, first);
4. ``bar`` = the same order statistic at ``bar_percentile``; a kept neuron belongs to every corpus
   whose probability is above the bar (it may belong to several, or to none and be dropped).

Set algebra acts on the (module, layer, index) triples of sets made for the same model; the
complement is taken within all gate/up/q/k/v neurons of that model, so ``A and not B`` equals
``A minus B``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from culnig.errors import CulnigError
from culnig.neuron_sets import ModelShape, NeuronSet
from culnig.registry import MODULES

# Params flag of sets whose neurons are defined by act(gate(x)) > 0: masking them by zeroing the
# gate row needs an activation that is 0 at 0 (checked by `culnig bake`).
ACTIVATION_DEFINED = "activation_defined"


def kth_smallest(values: torch.Tensor, percentile: float) -> float:
    """The k-th smallest value, ``k = round(n * percentile / 100)`` clamped to ``1..n``."""
    flat = values.flatten()
    n = flat.numel()
    if n == 0:
        raise CulnigError("no probabilities to take a percentile of")
    k = min(max(int(round(n * percentile / 100.0)), 1), n)
    return float(torch.kthvalue(flat.cpu().double(), k).values.item())


@dataclass
class LapeResult:
    member: torch.Tensor      # [C, L, N] bool: neuron (l, n) belongs to corpus c
    selected: torch.Tensor    # [L, N] bool: among the lowest-entropy neurons
    entropy: torch.Tensor     # [L, N] float64 (inf where a neuron never fires)
    filter_value: float
    bar_value: float
    n_eligible: int
    n_target: int

    def info(self) -> dict[str, Any]:
        return {"filter_value": self.filter_value, "bar_value": self.bar_value,
                "eligible": self.n_eligible, "target": self.n_target,
                "selected": int(self.selected.sum()),
                "assigned": int(self.member.any(0).sum())}


def entropy_of(probs: torch.Tensor) -> torch.Tensor:
    """Entropy over corpora (dim 0) of the normalised probabilities; ``inf`` for all-zero rows."""
    probs = probs.double()
    total = probs.sum(0)
    norm = torch.where(total > 0, probs / torch.where(total > 0, total, 1.0), 0.0)
    logs = torch.where(norm > 0, torch.log(torch.where(norm > 0, norm, 1.0)), 0.0)
    ent = -(norm * logs).sum(0)
    return torch.where(total > 0, ent, torch.full_like(ent, float("inf")))


def lape_select(probs: torch.Tensor, *, top: float = 1.0, filter_percentile: float = 95.0,
                bar_percentile: float = 95.0) -> LapeResult:
    """LAPE on ``probs`` ``[C, L, N]`` (see the module docstring)."""
    if probs.ndim != 3:
        raise ValueError(f"probs must be [corpora, layers, neurons], got {tuple(probs.shape)}")
    C, L, N = probs.shape
    if C < 2:
        raise CulnigError(f"LAPE compares corpora: give at least two, got {C}")
    for name, v, lo in (("--top", top, 0.0), ("--filter-percentile", filter_percentile, 0.0),
                        ("--bar-percentile", bar_percentile, 0.0)):
        if not lo < v <= 100:
            raise CulnigError(f"{name} must be in (0, 100], got {v}")
    probs = probs.double()
    if torch.isnan(probs).any() or (probs < 0).any() or (probs > 1).any():
        raise CulnigError("activation probabilities must lie in [0, 1]")
    ent = entropy_of(probs)
    filter_value = kth_smallest(probs, filter_percentile)
    bar_value = kth_smallest(probs, bar_percentile)
    eligible = (probs.max(0).values > filter_value) & torch.isfinite(ent)
    n_target = int(round(L * N * top / 100.0))
    flat_ent = ent.flatten()
    idx = torch.nonzero(eligible.flatten(), as_tuple=True)[0]
    order = torch.sort(flat_ent[idx], stable=True).indices  # idx ascending: ties by flat index
    chosen = idx[order[:n_target]]
    selected = torch.zeros(L * N, dtype=torch.bool)
    selected[chosen] = True
    selected = selected.view(L, N)
    member = (probs > bar_value) & selected.unsqueeze(0)
    return LapeResult(member=member, selected=selected, entropy=ent, filter_value=filter_value,
                      bar_value=bar_value, n_eligible=int(eligible.sum()), n_target=n_target)


def member_to_neurons(mask: torch.Tensor) -> dict[str, dict[int, np.ndarray]]:
    """``[L, N]`` bool -> neuron-set ``neurons`` for module ``gate``."""
    out: dict[int, np.ndarray] = {}
    for layer in range(mask.shape[0]):
        idx = torch.nonzero(mask[layer], as_tuple=True)[0].numpy().astype(np.int64)
        if idx.size:
            out[layer] = idx
    return {"gate": out} if out else {}


# --- set algebra -------------------------------------------------------------------------------

def _check_same_model(sets: list[NeuronSet], names: list[str]) -> None:
    fp = sets[0].model.get("fingerprint")
    for s, n in zip(sets[1:], names[1:]):
        if s.model.get("fingerprint") != fp:
            raise CulnigError(f"{n} was made for another model (fingerprint "
                              f"{s.model.get('fingerprint')}) than {names[0]} ({fp}); set algebra "
                              "needs sets of one model")


def _combine(a: NeuronSet, b: NeuronSet, op) -> dict[str, dict[int, np.ndarray]]:
    out: dict[str, dict[int, np.ndarray]] = {}
    for m in MODULES:
        da, db = a.neurons.get(m, {}), b.neurons.get(m, {})
        per: dict[int, np.ndarray] = {}
        for layer in sorted(set(da) | set(db)):
            empty = np.empty(0, dtype=np.int64)
            r = op(da.get(layer, empty), db.get(layer, empty))
            if r.size:
                per[layer] = np.asarray(r, dtype=np.int64)
        if per:
            out[m] = per
    return out


def _result(a: NeuronSet, neurons: dict, method: str, params: dict | None = None) -> NeuronSet:
    return NeuronSet(model=dict(a.model), method=method, neurons=neurons, params=dict(params or {}))


def union(a: NeuronSet, b: NeuronSet, method: str = "combined") -> NeuronSet:
    _check_same_model([a, b], ["A", "B"])
    return _result(a, _combine(a, b, np.union1d), method)


def intersect(a: NeuronSet, b: NeuronSet, method: str = "combined") -> NeuronSet:
    _check_same_model([a, b], ["A", "B"])
    return _result(a, _combine(a, b, np.intersect1d), method)


def minus(a: NeuronSet, b: NeuronSet, method: str = "combined") -> NeuronSet:
    _check_same_model([a, b], ["A", "B"])
    return _result(a, _combine(a, b, lambda x, y: np.setdiff1d(x, y, assume_unique=True)), method)


def complement(a: NeuronSet, method: str = "combined") -> NeuronSet:
    """Every gate/up/q/k/v neuron of the set's model that is not in ``a``."""
    shape = ModelShape.from_meta(a.model, "neuron set")
    out: dict[str, dict[int, np.ndarray]] = {}
    for m in MODULES:
        n = shape.n_neurons(m)
        per = {}
        for layer in range(shape.n_layers):
            keep = np.ones(n, dtype=bool)
            keep[a.neurons.get(m, {}).get(layer, np.empty(0, dtype=np.int64))] = False
            per[layer] = np.nonzero(keep)[0].astype(np.int64)
        out[m] = {l: v for l, v in per.items() if v.size}
    return _result(a, {m: v for m, v in out.items() if v}, method)


def same_neurons(a: NeuronSet, b: NeuronSet) -> bool:
    fa = {(m, l, int(i)) for m, l, idx in a.items() for i in idx}
    fb = {(m, l, int(i)) for m, l, idx in b.items() for i in idx}
    return fa == fb


OPERATORS = {"and": intersect, "or": union, "minus": minus}
N_ARY = {"intersect": intersect, "union": union}


def evaluate_expression(tokens: list[str], load) -> tuple[NeuronSet, list[str]]:
    """Evaluate ``A and B``, ``A minus B``, ``A or not B``, ... left to right (no precedence), or
    ``intersect A B C ...`` / ``union A B C ...``. ``load(token)`` gives the set of an operand;
    returns the result and the operand tokens in order."""
    if not tokens:
        raise CulnigError("empty set expression; e.g. `culnig sets combine a.json and b.json`")
    operands: list[str] = []
    loaded: list[NeuronSet] = []

    def operand(tok: str) -> NeuronSet:
        if tok in OPERATORS or tok in N_ARY or tok == "not":
            raise CulnigError(f"expected a set file, got the operator {tok!r}")
        ns = load(tok)
        operands.append(tok)
        loaded.append(ns)
        _check_same_model(loaded, operands)
        return ns

    if tokens[0] in N_ARY:
        files = tokens[1:]
        if len(files) < 2:
            raise CulnigError(f"`{tokens[0]}` needs at least two set files")
        acc = operand(files[0])
        for tok in files[1:]:
            acc = N_ARY[tokens[0]](acc, operand(tok))
        return acc, operands

    pos = 0

    def term() -> NeuronSet:
        nonlocal pos
        negate = False
        while pos < len(tokens) and tokens[pos] == "not":
            negate = not negate
            pos += 1
        if pos >= len(tokens):
            raise CulnigError("set expression ends after an operator; name a set file")
        ns = operand(tokens[pos])
        pos += 1
        return complement(ns) if negate else ns

    acc = term()
    while pos < len(tokens):
        op = tokens[pos]
        if op not in OPERATORS:
            raise CulnigError(f"expected an operator (and, or, minus) before {op!r}")
        pos += 1
        acc = OPERATORS[op](acc, term())
    return acc, operands


def check_set_activation(model_ref: str, set_path) -> None:
    """``culnig bake``: refuse to mask an activation-defined set (LAPE/CAPE) in a model whose MLP
    activation is not 0 at 0 (zeroing the gate row would not silence those neurons)."""
    from attribution.activations import check_zero_at_zero
    from culnig.loading import read_config
    from culnig.registry import layout_for

    try:
        ns = NeuronSet.load(set_path)
    except (CulnigError, OSError, ValueError):
        return  # bake reports the unreadable set itself
    if not ns.params.get(ACTIVATION_DEFINED):
        return
    layout = layout_for(read_config(model_ref))
    check_zero_at_zero(layout.hidden_act, f"{model_ref} (masking the {ns.method} set {set_path})")
