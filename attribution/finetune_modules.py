"""Culture-aware module selection for fine-tuning (paper Sec. 4.5, Table 17).

A *unit* is one layer's MLP block (a selected gate neuron brings gate, up and down) or one layer's
attention block (a selected q/k/v neuron brings q, k, v and o, and any q/k norm). Units are ranked
by how many neurons of the set they hold (``top``: most first; ``bottom``: fewest first; ties by
layer, MLP before attention) and taken in that order while the parameters they hold stay within
``budget`` x all parameters of the checkpoint. Parameter counts come from the safetensors headers,
so no weights are loaded.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from culnig.errors import CulnigError
from culnig.neuron_sets import NeuronSet
from culnig.registry import ATTN_MODULES, MLP_MODULES, ModelLayout

WHICH = ("top", "bottom")  # rank the blocks by most or fewest neurons of the set


@dataclass(frozen=True)
class Unit:
    layer: int
    kind: str  # "mlp" or "attn"
    prefix: str  # checkpoint tensor-name prefix, e.g. "model.layers.3.mlp."
    n_selected: int
    n_params: int


@dataclass
class ModuleChoice:
    units: list[Unit]
    total_params: int
    budget: float
    which: str

    @property
    def n_params(self) -> int:
        return sum(u.n_params for u in self.units)

    @property
    def fraction(self) -> float:
        return self.n_params / self.total_params


def tensor_shapes(model_dir: str | Path) -> dict[str, int]:
    """Parameter count of every tensor in a local checkpoint, from the safetensors headers."""
    from safetensors import safe_open

    files = sorted(Path(model_dir).glob("*.safetensors"))
    if not files:
        raise CulnigError(f"{model_dir}: no *.safetensors files")
    sizes = {}
    for f in files:
        with safe_open(str(f), framework="pt") as fh:
            for k in fh.keys():
                n = 1
                for d in fh.get_slice(k).get_shape():
                    n *= d
                sizes[k] = n
    return sizes


def units_of(layout: ModelLayout, ns: NeuronSet, sizes: dict[str, int]) -> list[Unit]:
    counts = ns.per_layer_counts(layout.n_layers)
    units = []
    for layer in range(layout.n_layers):
        for kind, mods, module_path in (("mlp", MLP_MODULES, "gate"), ("attn", ATTN_MODULES, "q")):
            name = next((n for n in layout.tensor_names(layer, module_path) if n in sizes), None)
            if name is None:
                raise CulnigError(f"checkpoint has no tensor for layer {layer} {module_path}; "
                                  f"tried {', '.join(layout.tensor_names(layer, module_path))}")
            # "model.layers.3.mlp.gate_proj.weight" -> "model.layers.3.mlp."
            block = layout.site(module_path).path.split(".")[0]
            prefix = name[: name.index(f".{block}.") + len(block) + 2]
            n_params = sum(v for k, v in sizes.items() if k.startswith(prefix))
            units.append(Unit(layer, kind, prefix, sum(counts[m][layer] for m in mods), n_params))
    return units


def choose_modules(layout: ModelLayout, ns: NeuronSet, sizes: dict[str, int], *, budget: float,
                   which: str) -> ModuleChoice:
    if not 0 < budget <= 1:
        raise CulnigError(f"budget must be a fraction in (0, 1], got {budget:g}")
    if which not in WHICH:
        raise CulnigError("which must be top or bottom")
    ns.validate(layout)
    total = sum(sizes.values())
    units = units_of(layout, ns, sizes)
    sign = -1 if which == "top" else 1
    ranked = sorted(units, key=lambda u: (sign * u.n_selected, u.layer, u.kind != "mlp"))
    chosen, used = [], 0
    for u in ranked:
        if used + u.n_params <= budget * total:
            chosen.append(u)
            used += u.n_params
    if not chosen:
        smallest = min(u.n_params for u in units)
        raise CulnigError(f"budget {budget:g} ({int(budget * total):,} parameters) is smaller than "
                          f"any module block (smallest: {smallest:,} = {smallest / total:.3%} of the model)")
    return ModuleChoice(units=chosen, total_params=total, budget=budget, which=which)
