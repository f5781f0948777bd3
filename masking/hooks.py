"""Runtime masking: the same neuron set as forward hooks on a loaded transformers model.

``with masked(model, neuron_set, layout, scale=0.0): model(...)`` multiplies the selected output
dimensions of the registry's projections (gate/up/q/k/v; in a fused Phi-3 projection at the module's
row offset) by ``scale``. That is what a baked checkpoint computes: scaling weight row k (and bias
entry k) scales output dimension k, before any activation, q/k norm or RoPE. The hooks are removed on
exit, also when the body raises.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

import numpy as np
import torch

from culnig.neuron_sets import NeuronSet
from culnig.registry import ModelLayout


def output_multipliers(neuron_set: NeuronSet, layout: ModelLayout,
                       scale: float) -> dict[tuple[int, str], torch.Tensor]:
    """``(layer, projection path) -> float32 vector`` of per-output-dim factors (1, or ``scale``)."""
    rows: dict[tuple[int, str], list[np.ndarray]] = {}
    width: dict[str, int] = {}
    for site in layout.sites.values():
        width[site.path] = max(width.get(site.path, 0), site.offset + site.size)
    for module, layer, idx in neuron_set.items():
        site = layout.site(module)
        rows.setdefault((layer, site.path), []).append(np.asarray(idx, dtype=np.int64) + site.offset)
    out = {}
    for (layer, path), chunks in rows.items():
        mult = torch.ones(width[path], dtype=torch.float32)
        mult[torch.from_numpy(np.concatenate(chunks))] = float(scale)
        out[(layer, path)] = mult
    return out


def _hook(mult: torch.Tensor):
    cache: dict[tuple[torch.dtype, torch.device], torch.Tensor] = {}

    def fn(module: torch.nn.Module, args: Any, output: torch.Tensor) -> torch.Tensor:
        if output.shape[-1] != mult.numel():
            raise RuntimeError(f"masking hook on {type(module).__name__}: output has "
                               f"{output.shape[-1]} dims, the layout expects {mult.numel()}")
        key = (output.dtype, output.device)
        if key not in cache:
            cache[key] = mult.to(dtype=output.dtype, device=output.device)
        return output * cache[key]

    return fn


@contextlib.contextmanager
def masked(model: torch.nn.Module, neuron_set: NeuronSet, layout: ModelLayout,
           scale: float = 0.0) -> Iterator[torch.nn.Module]:
    """Apply ``neuron_set`` to ``model`` as forward hooks for the duration of the block."""
    neuron_set.validate(layout)
    handles = []
    try:
        for (layer, path), mult in output_multipliers(neuron_set, layout, scale).items():
            linear = layout.layers(model)[layer].get_submodule(path)
            handles.append(linear.register_forward_hook(_hook(mult)))
        yield model
    finally:
        for handle in handles:
            handle.remove()
