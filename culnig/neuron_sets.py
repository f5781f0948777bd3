"""Neuron set files: which neurons a method selected, in a human-readable JSON file.

Format (``format: culnig-neuron-set/1``)::

    {
      "format": "culnig-neuron-set/1",
      "model": {"fingerprint": "<registry fingerprint>", "arch": "gemma3_text", "n_layers": 18,
                "name_or_path": "..."},
      "method": "culnig-general",          # or culnig-specific, random, lape, hand, ...
      "params": {...},                     # thresholds, seeds, country, ... (method-specific)
      "sources": {...},                    # hashes of the score files it was selected from
      "neurons": {"gate": {"0": [3, 17], "5": [2]}, "q": {"1": [0, 4]}},  # module -> layer -> sorted indices
      "counts": {"gate": 3, "up": 0, "q": 2, "k": 0, "v": 0, "total": 5}
    }

Module names are the registry's (``gate``, ``up``, ``q``, ``k``, ``v``); indices are neuron
indices within that module's output (for fused Phi-3 projections: within the module's own slice,
not the fused row). Layers are decimal strings because JSON keys are strings. ``counts`` is
derived and rewritten on save.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np

from culnig.atomic import atomic_write_text
from culnig.errors import CulnigError
from culnig.hashing import sha256_file as file_sha256  # noqa: F401  (re-exported)
from culnig.registry import MODULES, ModelLayout

FORMAT = "culnig-neuron-set/1"


@dataclass
class NeuronSet:
    model: dict[str, Any]
    method: str
    neurons: dict[str, dict[int, np.ndarray]]
    params: dict[str, Any] = field(default_factory=dict)
    sources: dict[str, Any] = field(default_factory=dict)

    # --- construction ------------------------------------------------------------------------
    @classmethod
    def from_indices(cls, layout: ModelLayout, method: str,
                     neurons: Mapping[str, Mapping[int, Iterable[int]]], *,
                     name_or_path: str = "", params: dict | None = None,
                     sources: dict | None = None) -> "NeuronSet":
        clean: dict[str, dict[int, np.ndarray]] = {}
        for m, per_layer in neurons.items():
            arrays = {int(layer): np.unique(np.asarray(list(idx), dtype=np.int64))
                      for layer, idx in per_layer.items()}
            clean[m] = {layer: a for layer, a in arrays.items() if a.size}
        ns = cls(model=model_block(layout, name_or_path), method=method, neurons=clean,
                 params=dict(params or {}), sources=dict(sources or {}))
        ns.validate(layout)
        return ns

    # --- derived -----------------------------------------------------------------------------
    def counts(self) -> dict[str, int]:
        out = {m: int(sum(a.size for a in self.neurons.get(m, {}).values())) for m in MODULES}
        out["total"] = sum(out.values())
        return out

    def per_layer_counts(self, n_layers: int) -> dict[str, list[int]]:
        return {m: [int(self.neurons.get(m, {}).get(l, np.empty(0)).size) for l in range(n_layers)]
                for m in MODULES}

    def items(self):
        """``(module, layer, indices)`` for every non-empty entry, in a fixed order."""
        for m in MODULES:
            for layer in sorted(self.neurons.get(m, {})):
                idx = self.neurons[m][layer]
                if idx.size:
                    yield m, layer, idx

    # --- checks ------------------------------------------------------------------------------
    def validate(self, layout: ModelLayout, *, source: str = "neuron set") -> None:
        """Refuse a set made for another model, or with an index out of range."""
        fp = self.model.get("fingerprint")
        if fp != layout.fingerprint:
            raise CulnigError(
                f"{source} was made for model {self.model.get('name_or_path') or '?'} "
                f"(fingerprint {fp}, {self.model.get('arch')}), not this {layout.name} model "
                f"(fingerprint {layout.fingerprint}); select neurons from this model's scores"
            )
        for m, per_layer in self.neurons.items():
            if m not in MODULES:
                raise CulnigError(f"{source}: unknown module {m!r}; known: {', '.join(MODULES)}")
            n = layout.n_neurons(m)
            for layer, idx in per_layer.items():
                if not 0 <= layer < layout.n_layers:
                    raise CulnigError(f"{source}: module {m} layer {layer} is out of range "
                                      f"(the model has {layout.n_layers} layers)")
                bad = idx[(idx < 0) | (idx >= n)]
                if bad.size:
                    raise CulnigError(f"{source}: module {m} layer {layer} index {int(bad[0])} is "
                                      f"out of range (0..{n - 1})")

    # --- files -------------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "model": self.model,
            "method": self.method,
            "params": self.params,
            "sources": self.sources,
            "neurons": {m: {str(l): self.neurons[m][l].tolist() for l in sorted(self.neurons[m])}
                        for m in MODULES if self.neurons.get(m)},
            "counts": self.counts(),
        }

    def save(self, path: str | Path, *, force: bool = False) -> Path:
        path = Path(path)
        if path.exists() and not force:
            raise CulnigError(f"{path} already exists; pass --force to replace it")
        atomic_write_text(path, json.dumps(self.to_json(), indent=1) + "\n")
        return path

    @classmethod
    def load(cls, path: str | Path) -> "NeuronSet":
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise CulnigError(f"{path}: no such neuron set file") from None
        except json.JSONDecodeError as exc:
            raise CulnigError(f"{path}: not a JSON neuron set file ({exc.msg}, line {exc.lineno})") from None
        if data.get("format") != FORMAT:
            raise CulnigError(f"{path}: format {data.get('format')!r} is not {FORMAT!r}")
        for key in ("model", "method", "neurons"):
            if key not in data:
                raise CulnigError(f"{path}: missing field {key!r}")
        try:
            neurons = {m: {int(l): np.asarray(v, dtype=np.int64) for l, v in per.items()}
                       for m, per in data["neurons"].items()}
        except (TypeError, ValueError, AttributeError) as exc:
            raise CulnigError(f"{path}: malformed 'neurons' ({exc})") from None
        return cls(model=data["model"], method=data["method"], neurons=neurons,
                   params=data.get("params", {}), sources=data.get("sources", {}))


def model_block(layout: "ModelLayout | ModelShape", name_or_path: str = "") -> dict[str, Any]:
    return {"fingerprint": layout.fingerprint, "arch": layout.name, "n_layers": layout.n_layers,
            "n_neurons": {m: layout.n_neurons(m) for m in MODULES}, "name_or_path": name_or_path}


@dataclass(frozen=True)
class ModelShape:
    """The part of a :class:`ModelLayout` that selection needs, read from a score file's or a set
    file's metadata, so that selecting neurons never loads the model."""

    name: str
    fingerprint: str
    n_layers: int
    sizes: dict

    def n_neurons(self, module: str) -> int:
        if module not in self.sizes:
            raise CulnigError(f"unknown module {module!r}; known: {', '.join(self.sizes)}")
        return int(self.sizes[module])

    @classmethod
    def from_meta(cls, meta: Mapping[str, Any], source: str) -> "ModelShape":
        try:
            return cls(name=meta["arch"], fingerprint=meta["fingerprint"],
                       n_layers=int(meta["n_layers"]), sizes=dict(meta["n_neurons"]))
        except KeyError as exc:
            raise CulnigError(f"{source}: metadata lacks {exc.args[0]!r}; recreate it with this "
                              "version of culnig") from None


