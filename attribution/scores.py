"""Attribution scores: one safetensors file with per-country and total sums.

Tensors ``<agg>.<module>`` have shape ``[n_countries + 1, n_layers, n_neurons]`` (float32; the
last row is the total over all items). ``count`` and ``sum_p`` (``[n_countries + 1]``, float64)
hold the item counts and the sums of P(y|x). The file's metadata key ``culnig`` holds a JSON
object: model path, config fingerprint, weights stamp (:func:`culnig.loading.weights_stamp`),
data file hash, countries in order, modules, aggregations, dtype, options, context length and
truncation, and package version. :meth:`Scores.load` checks that the metadata and the tensors agree.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from culnig.atomic import atomic_file
from culnig.errors import CulnigError

META_KEY = "culnig"
FORMAT = "culnig-scores/1"


@dataclass
class Scores:
    tensors: dict[str, torch.Tensor]
    countries: list[str]
    count: torch.Tensor
    sum_p: torch.Tensor
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def modules(self) -> list[str]:
        return list(self.meta["modules"])

    @property
    def aggregations(self) -> list[str]:
        return list(self.meta["aggregations"])

    def get(self, agg: str, module: str, country: str | None = None) -> torch.Tensor:
        """``[n_layers, n_neurons]`` scores of one country (``None``: the total)."""
        key = f"{agg}.{module}"
        if key not in self.tensors:
            raise CulnigError(f"scores have no {key!r}; available: {', '.join(sorted(self.tensors))}")
        if country is None:
            return self.tensors[key][-1]
        try:
            row = self.countries.index(country)
        except ValueError:
            raise CulnigError(f"scores have no country {country!r}; available: "
                              f"{', '.join(self.countries)}") from None
        return self.tensors[key][row]

    def save(self, path: str | Path) -> Path:
        """Write atomically (temporary file in the same folder, then rename)."""
        from safetensors.torch import save_file

        path = Path(path)
        payload = {k: v.detach().to(torch.float32).contiguous().cpu() for k, v in self.tensors.items()}
        payload["count"] = self.count.to(torch.float64).cpu()
        payload["sum_p"] = self.sum_p.to(torch.float64).cpu()
        meta = {**self.meta, "format": FORMAT, "countries": self.countries}
        with atomic_file(path) as tmp:
            save_file(payload, str(tmp), metadata={META_KEY: json.dumps(meta)})
        return path

    @classmethod
    def load(cls, path: str | Path) -> "Scores":
        from safetensors import safe_open

        path = Path(path)
        if not path.is_file():
            raise CulnigError(f"{path}: no such score file")
        try:
            with safe_open(str(path), framework="pt") as fh:
                raw = (fh.metadata() or {}).get(META_KEY)
                tensors = {k: fh.get_tensor(k) for k in fh.keys()}
        except Exception as exc:  # safetensors raises its own error types
            raise CulnigError(f"{path}: not a safetensors score file ({exc})") from None
        if raw is None:
            raise CulnigError(f"{path}: not a culnig score file (no '{META_KEY}' metadata)")
        try:
            meta = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise CulnigError(f"{path}: the '{META_KEY}' metadata is not JSON ({exc.msg}); the file "
                              "is damaged: compute it again with `culnig attribute`") from None
        _check(path, meta, tensors)
        countries = meta.pop("countries")
        meta.pop("format", None)
        return cls(tensors={k: v for k, v in tensors.items() if k not in ("count", "sum_p")},
                   countries=countries, count=tensors["count"], sum_p=tensors["sum_p"], meta=meta)


def _check(path: Path, meta: Any, tensors: dict[str, torch.Tensor]) -> None:
    """The metadata must describe the tensors: one line naming what disagrees."""
    if not isinstance(meta, dict):
        raise CulnigError(f"{path}: the '{META_KEY}' metadata must be a JSON object")
    if meta.get("format", FORMAT) != FORMAT:
        raise CulnigError(f"{path}: format {meta.get('format')!r} is not {FORMAT!r}")
    for key, kind in (("countries", list), ("modules", list), ("aggregations", list),
                      ("n_layers", int), ("n_neurons", dict)):
        if key not in meta:
            raise CulnigError(f"{path}: the metadata lacks {key!r}; not a complete culnig score "
                              "file (compute it again with `culnig attribute`)")
        if not isinstance(meta[key], kind) or isinstance(meta[key], bool):
            raise CulnigError(f"{path}: metadata {key!r} must be a {kind.__name__}, got "
                              f"{type(meta[key]).__name__}")
    countries = meta["countries"]
    if not all(isinstance(c, str) for c in countries) or len(set(countries)) != len(countries):
        raise CulnigError(f"{path}: metadata 'countries' must be distinct names")
    rows = len(countries) + 1
    for key in ("count", "sum_p"):
        if key not in tensors:
            raise CulnigError(f"{path}: has no {key!r} tensor; not a culnig score file")
        if tuple(tensors[key].shape) != (rows,):
            raise CulnigError(f"{path}: tensor {key!r} has shape {list(tensors[key].shape)}, but "
                              f"{len(countries)} countries (+ total) need [{rows}]")
    for agg in meta["aggregations"]:
        for m in meta["modules"]:
            key = f"{agg}.{m}"
            if key not in tensors:
                raise CulnigError(f"{path}: the metadata lists {key!r} but the file has no such "
                                  "tensor")
            n = meta["n_neurons"].get(m)
            want = (rows, meta["n_layers"], n)
            if tuple(tensors[key].shape) != want:
                raise CulnigError(f"{path}: tensor {key!r} has shape {list(tensors[key].shape)}, "
                                  f"but the metadata implies {list(want)} ({len(countries)} "
                                  f"countries + total, {meta['n_layers']} layers, {n} neurons)")
