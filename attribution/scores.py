"""Attribution scores: one safetensors file with per-country and total sums.

Tensors ``<agg>.<module>`` have shape ``[n_countries + 1, n_layers, n_neurons]`` (float32; the
last row is the total over all items). ``count`` and ``sum_p`` (``[n_countries + 1]``, float64)
hold the item counts and the sums of P(y|x). The file's metadata key ``culnig`` holds a JSON
object: model path, config fingerprint, data file hash, countries in order, modules,
aggregations, dtype, options and package version.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

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
        path.parent.mkdir(parents=True, exist_ok=True)
        payload = {k: v.detach().to(torch.float32).contiguous().cpu() for k, v in self.tensors.items()}
        payload["count"] = self.count.to(torch.float64).cpu()
        payload["sum_p"] = self.sum_p.to(torch.float64).cpu()
        meta = {**self.meta, "format": FORMAT, "countries": self.countries}
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        os.close(fd)
        try:
            save_file(payload, tmp, metadata={META_KEY: json.dumps(meta)})
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
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
        meta = json.loads(raw)
        countries = meta.pop("countries")
        meta.pop("format", None)
        return cls(tensors={k: v for k, v in tensors.items() if k not in ("count", "sum_p")},
                   countries=countries, count=tensors["count"], sum_p=tensors["sum_p"], meta=meta)
