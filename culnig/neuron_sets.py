"""Neuron set files: which neurons a method selected, in a human-readable JSON file.

Format (``format: culnig-neuron-set/1``)::

    {
      "format": "culnig-neuron-set/1",
      "model": {"fingerprint": "<registry fingerprint>", "arch": "gemma3_text", "n_layers": 18,
                "n_neurons": {...}, "name_or_path": "...", "weights_stamp": "<16 hex>"},
      "method": "culnig-general",          # or culnig-specific, random, lape, hand, ...
      "params": {...},                     # thresholds, seeds, country, ... (method-specific)
      "sources": {...},                    # hashes of the score files it was selected from
      "neurons": {"gate": {"0": [3, 17], "5": [2]}, "q": {"1": [0, 4]}},  # module -> layer -> sorted indices
      "counts": {"gate": 3, "up": 0, "q": 2, "k": 0, "v": 0, "total": 5}
    }

Module names are the registry's (``gate``, ``up``, ``q``, ``k``, ``v``); indices are neuron
indices within that module's output (for fused Phi-3 projections: within the module's own slice,
not the fused row): non-negative JSON integers, unique and sorted per layer. Layers are decimal
strings because JSON keys are strings. ``counts`` is derived and rewritten on save.
``model.weights_stamp`` (:func:`culnig.loading.weights_stamp` of the model the scores came from)
is absent in files written before it existed; they still load.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np

from culnig.atomic import atomic_write_text
from culnig.errors import CulnigError
from culnig.hashing import sha256_file as file_sha256  # noqa: F401  (re-exported)
from culnig.registry import MODULES, ModelLayout

FORMAT = "culnig-neuron-set/1"
_LAYER_KEY = re.compile(r"0|[1-9][0-9]*")


@dataclass
class NeuronSet:
    model: dict[str, Any]
    method: str
    neurons: dict[str, dict[int, np.ndarray]]
    params: dict[str, Any] = field(default_factory=dict)
    sources: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        # Sorted, unique int64 per layer, whoever built the set: counts are never inflated.
        self.neurons = {m: {int(l): np.unique(np.asarray(a, dtype=np.int64)) for l, a in per.items()}
                        for m, per in self.neurons.items()}

    # --- construction ------------------------------------------------------------------------
    @classmethod
    def from_indices(cls, layout: ModelLayout, method: str,
                     neurons: Mapping[str, Mapping[int, Iterable[int]]], *,
                     name_or_path: str = "", params: dict | None = None,
                     sources: dict | None = None, weights_stamp: str | None = None) -> "NeuronSet":
        clean: dict[str, dict[int, np.ndarray]] = {}
        for m, per_layer in neurons.items():
            arrays = {int(layer): np.unique(np.asarray(list(idx), dtype=np.int64))
                      for layer, idx in per_layer.items()}
            clean[m] = {layer: a for layer, a in arrays.items() if a.size}
        ns = cls(model=model_block(layout, name_or_path, weights_stamp), method=method, neurons=clean,
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

    def check_weights(self, stamp: str | None, model: str, *, source: str = "neuron set",
                      allow_other: bool = False) -> bool:
        """Refuse a set selected on other weights than ``stamp`` (those of ``model``) unless
        ``allow_other``. True when both stamps are known and differ (and it was allowed)."""
        made_on = self.model.get("weights_stamp")
        if made_on is None or stamp is None or made_on == stamp:
            return False
        if not allow_other:
            raise CulnigError(
                f"{source} was selected on {self.model.get('name_or_path') or '?'} (weights "
                f"{made_on}), not on {model} (weights {stamp}): same shape, other weights; select "
                "neurons from this model's scores, or pass --allow-other-weights to apply it anyway "
                "(e.g. to a fine-tuned variant)")
        return True

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
        except IsADirectoryError:
            raise CulnigError(f"{path}: is a folder, not a neuron set file") from None
        except UnicodeDecodeError:
            raise CulnigError(f"{path}: not a JSON neuron set file (not UTF-8 text)") from None
        except json.JSONDecodeError as exc:
            raise CulnigError(f"{path}: not a JSON neuron set file ({exc.msg}, line {exc.lineno})") from None
        if not isinstance(data, dict):
            raise CulnigError(f"{path}: not a neuron set (a JSON object is expected, got "
                              f"{_json_type(data)})")
        if data.get("format") != FORMAT:
            raise CulnigError(f"{path}: format {data.get('format')!r} is not {FORMAT!r}")
        for key in ("model", "method", "neurons"):
            if key not in data:
                raise CulnigError(f"{path}: missing field {key!r}")
        model = data["model"]
        if not isinstance(model, dict):
            raise CulnigError(f"{path}: field 'model' must be an object (fingerprint, arch, "
                              f"n_layers, ...), got {_json_type(model)}")
        if not isinstance(model.get("fingerprint"), str):
            raise CulnigError(f"{path}: field 'model' has no 'fingerprint' string")
        stamp = model.get("weights_stamp")
        if stamp is not None and not isinstance(stamp, str):
            raise CulnigError(f"{path}: 'model.weights_stamp' must be a string, got {_json_type(stamp)}")
        if not isinstance(data["method"], str):
            raise CulnigError(f"{path}: field 'method' must be a string, got {_json_type(data['method'])}")
        for key in ("params", "sources"):
            if not isinstance(data.get(key, {}), dict):
                raise CulnigError(f"{path}: field {key!r} must be an object, got {_json_type(data[key])}")
        n_layers = model.get("n_layers")
        n_layers = n_layers if type(n_layers) is int else None
        return cls(model=model, method=data["method"],
                   neurons=_parse_neurons(path, data["neurons"], n_layers),
                   params=data.get("params", {}), sources=data.get("sources", {}))


def _json_type(value: Any) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean",
             int: "a number", float: "a number", type(None): "null"}
    return names.get(type(value), type(value).__name__)


def _parse_neurons(path: Path, raw: Any, n_layers: int | None) -> dict[str, dict[int, np.ndarray]]:
    """Strict ``neurons``: known modules, decimal layer keys in range, lists of non-negative JSON
    integers (no booleans, floats or strings), unique and sorted."""
    if not isinstance(raw, dict):
        raise CulnigError(f"{path}: field 'neurons' must be an object (module -> layer -> indices), "
                          f"got {_json_type(raw)}")
    out: dict[str, dict[int, np.ndarray]] = {}
    for m, per_layer in raw.items():
        if m not in MODULES:
            raise CulnigError(f"{path}: unknown module {m!r}; known: {', '.join(MODULES)}")
        if not isinstance(per_layer, dict):
            raise CulnigError(f"{path}: module {m}: must be an object (layer -> indices), got "
                              f"{_json_type(per_layer)}")
        out[m] = {}
        for key, idx in per_layer.items():
            where = f"{path}: {m} layer {key}"
            if not _LAYER_KEY.fullmatch(key):
                raise CulnigError(f"{where}: the layer must be a non-negative integer")
            layer = int(key)
            if n_layers is not None and layer >= n_layers:
                raise CulnigError(f"{where}: out of range (the model has {n_layers} layers)")
            if not isinstance(idx, list):
                raise CulnigError(f"{where}: indices must be a list of integers, got {_json_type(idx)}")
            kinds = {type(v) for v in idx}
            if not kinds <= {int}:
                bad = next(v for v in idx if type(v) is not int)
                raise CulnigError(f"{where}: index {json.dumps(bad)} is not an integer")
            if idx and min(idx) < 0:
                raise CulnigError(f"{where}: index {min(idx)} is negative")
            if idx and max(idx) >= 2 ** 62:
                raise CulnigError(f"{where}: index {max(idx)} is out of range")
            arr = np.asarray(idx, dtype=np.int64)
            steps = np.diff(arr)
            if (steps == 0).any():
                raise CulnigError(f"{where}: index {int(arr[1:][steps == 0][0])} is listed twice")
            if (steps < 0).any():
                raise CulnigError(f"{where}: indices are not sorted (index {int(arr[1:][steps < 0][0])} "
                                  "follows a larger one)")
            out[m][layer] = arr
    return out


def model_block(layout: "ModelLayout | ModelShape", name_or_path: str = "",
                weights_stamp: str | None = None) -> dict[str, Any]:
    """The ``model`` block of set and statistics files; ``weights_stamp`` defaults to the shape's
    (a :class:`ModelShape` read from a score file carries the stamp of the model scored)."""
    block = {"fingerprint": layout.fingerprint, "arch": layout.name, "n_layers": layout.n_layers,
             "n_neurons": {m: layout.n_neurons(m) for m in MODULES}, "name_or_path": name_or_path}
    stamp = weights_stamp or getattr(layout, "weights_stamp", None)
    if stamp is not None:
        block["weights_stamp"] = stamp
    return block


@dataclass(frozen=True)
class ModelShape:
    """The part of a :class:`ModelLayout` that selection needs, read from a score file's or a set
    file's metadata, so that selecting neurons never loads the model."""

    name: str
    fingerprint: str
    n_layers: int
    sizes: dict
    weights_stamp: str | None = None

    def n_neurons(self, module: str) -> int:
        if module not in self.sizes:
            raise CulnigError(f"unknown module {module!r}; known: {', '.join(self.sizes)}")
        return int(self.sizes[module])

    @classmethod
    def from_meta(cls, meta: Mapping[str, Any], source: str) -> "ModelShape":
        try:
            return cls(name=meta["arch"], fingerprint=meta["fingerprint"],
                       n_layers=int(meta["n_layers"]), sizes=dict(meta["n_neurons"]),
                       weights_stamp=meta.get("weights_stamp"))
        except KeyError as exc:
            raise CulnigError(f"{source}: metadata lacks {exc.args[0]!r}; recreate it with this "
                              "version of culnig") from None
        except (TypeError, ValueError) as exc:
            raise CulnigError(f"{source}: malformed model metadata ({exc})") from None


