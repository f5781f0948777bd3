"""Which rows of which checkpoint tensors a neuron set edits.

For every ``(module, layer, indices)`` of a set, the registry names the projection whose output rows
hold the neurons (``site.path``, rows ``site.offset + index`` in a fused Phi-3 projection) and the
checkpoint spellings of its tensor name (several for Gemma-3 multimodal checkpoints). The weight's
rows are edited, and the bias entries where the projection has a bias (Qwen2 q/k/v). Modules that
share a fused tensor (gate and up in ``gate_up_proj``) are merged into one row list per tensor.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from culnig.errors import CulnigError
from culnig.neuron_sets import NeuronSet
from culnig.registry import ModelLayout


@dataclass(frozen=True)
class EditPlan:
    rows: dict[str, np.ndarray]  # tensor name -> sorted unique rows to scale
    files: dict[str, str]  # tensor name -> file holding it
    n_bias_tensors: int
    expected_rows: dict[str, int]  # tensor name -> its first dimension according to config.json

    def by_file(self) -> dict[str, dict[str, np.ndarray]]:
        out: dict[str, dict[str, np.ndarray]] = {}
        for name, rows in self.rows.items():
            out.setdefault(self.files[name], {})[name] = rows
        return {f: out[f] for f in sorted(out)}

    @property
    def edited_files(self) -> list[str]:
        return sorted(set(self.files.values()))


def _find(weight_map: dict[str, str], candidates: list[str]) -> str | None:
    for name in candidates:
        if name in weight_map:
            return name
    return None


def plan_edits(neuron_set: NeuronSet, layout: ModelLayout, weight_map: dict[str, str]) -> EditPlan:
    """Resolve a validated set to checkpoint tensors and rows (no Python loop over neurons)."""
    parts: dict[str, list[np.ndarray]] = {}
    expected: dict[str, int] = {}
    n_bias = 0
    # Rows of each projection: the end of the last site it holds (fused: gate+up, q+k+v).
    path_rows: dict[str, int] = {}
    for site in layout.sites.values():
        path_rows[site.path] = max(path_rows.get(site.path, 0), site.offset + site.size)
    for module, layer, idx in neuron_set.items():
        site = layout.site(module)
        rows = np.asarray(idx, dtype=np.int64) + site.offset
        weight = _find(weight_map, layout.tensor_names(layer, module, "weight"))
        if weight is None:
            tried = ", ".join(layout.tensor_names(layer, module, "weight"))
            raise CulnigError(f"module {module} layer {layer}: the checkpoint has no tensor {tried}; "
                              "it does not match its config.json")
        parts.setdefault(weight, []).append(rows)
        expected[weight] = path_rows[site.path]
        bias = _find(weight_map, layout.tensor_names(layer, module, "bias"))
        if bias is not None:
            if bias not in parts:
                n_bias += 1
            parts.setdefault(bias, []).append(rows)
            expected[bias] = path_rows[site.path]
    merged = {name: np.unique(np.concatenate(chunks)) for name, chunks in parts.items()}
    return EditPlan(rows=merged, files={name: weight_map[name] for name in merged},
                    n_bias_tensors=n_bias, expected_rows=expected)
