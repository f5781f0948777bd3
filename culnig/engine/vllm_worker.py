"""Inside vLLM's worker process (``LLM(worker_extension_cls=...)``): load named tensors of a
checkpoint folder into the live model, and read tensors back through the model's own layers.

The read-back is the proof that the engine holds a checkpoint. On CPU, vLLM repacks each linear
weight for oneDNN and drops ``layer.weight``, so a weight is read by running the layer's own kernel
on an identity matrix (``x = I`` gives ``x @ W.T = W.T``; exact, as every output is one product
with 1 plus zeros, but for the sign of a zero); where the layer keeps a full ``weight`` (GPU), that tensor is read.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict

PROBE_ROWS = 1024  # identity rows per kernel call


def digest(tensor) -> str:
    """sha256 of a tensor's bytes (row-major, its own dtype), with -0.0 written as 0.0: the
    identity probe returns +0.0 for a stored -0.0 (products with 0 are summed), the same number."""
    import torch

    flat = tensor.detach().to("cpu").contiguous().reshape(-1)
    if flat.is_floating_point():
        flat = torch.where(flat == 0, torch.zeros_like(flat), flat)
    return hashlib.sha256(flat.view(torch.uint8).numpy().tobytes()).hexdigest()


def _tensors(folder: str, names: list[str]):
    """(name, tensor) of ``names`` from the folder's safetensors files, file by file."""
    import json
    from pathlib import Path

    from safetensors import safe_open

    index = Path(folder) / "model.safetensors.index.json"
    if index.is_file():
        wmap = json.loads(index.read_text())["weight_map"]
    else:
        wmap = dict.fromkeys(names, "model.safetensors")
    by_file: dict[str, list[str]] = defaultdict(list)
    for name in names:
        by_file[wmap[name]].append(name)
    for file, group in sorted(by_file.items()):
        with safe_open(str(Path(folder) / file), framework="pt") as fh:
            for name in group:
                yield name, fh.get_tensor(name)


class EngineWorkerExtension:
    """Methods ``collective_rpc`` can call by name (mixed into vLLM's worker class)."""

    def culnig_model(self):
        runner = self.model_runner
        return runner.get_model() if hasattr(runner, "get_model") else runner.model

    def culnig_load(self, folder: str, names: list[str]) -> int:
        """Reload ``names`` from ``folder`` (checkpoint format) into the live model."""
        self.reload_weights(weights_iterator=_tensors(folder, names), is_checkpoint_format=True)
        return len(names)

    def _culnig_layers(self, model, n_layers: int):
        for name, module in model.named_modules():
            if name.endswith("layers") and hasattr(module, "__len__") and len(module) == n_layers:
                return module
        raise RuntimeError(f"no decoder layer list of {n_layers} layers in {type(model).__name__}")

    def _culnig_site(self, model, layer, path: str):
        """(linear module, first row, rows or None for all) of a checkpoint site ``path``."""
        try:
            return layer.get_submodule(path), 0, None
        except AttributeError:
            pass
        parent, _, leaf = path.rpartition(".")
        for packed, parts in getattr(model, "packed_modules_mapping", {}).items():
            if leaf in parts:
                module = layer.get_submodule(f"{parent}.{packed}" if parent else packed)
                sizes = list(module.output_sizes)
                i = parts.index(leaf)
                return module, sum(sizes[:i]), sizes[i]
        raise RuntimeError(f"no module for {path} in {type(layer).__name__}")

    def _culnig_weight(self, module, dtype):
        import torch

        weight = getattr(module, "weight", None)
        rows = sum(module.output_sizes) if hasattr(module, "output_sizes") else \
            module.output_size_per_partition
        cols = module.input_size_per_partition
        if weight is not None and tuple(weight.shape) == (rows, cols):
            return weight.detach()
        device = next((p.device for p in module.parameters()), torch.device("cpu"))
        parts = []
        with torch.inference_mode():
            for start in range(0, cols, PROBE_ROWS):
                n = min(PROBE_ROWS, cols - start)
                eye = torch.zeros(n, cols, dtype=dtype, device=device)
                eye[torch.arange(n), torch.arange(start, start + n)] = 1
                parts.append(module.quant_method.apply(module, eye, bias=None))
        return torch.cat(parts, 0).t()

    def culnig_digests(self, specs: list[list], n_layers: int) -> dict[str, str]:
        """sha256 of each ``[name, layer, path, kind]`` as the engine computes with it, in the
        model's dtype (``kind``: weight or bias)."""
        model = self.culnig_model()
        dtype = self.model_config.dtype
        layers = self._culnig_layers(model, n_layers)
        weights: dict[int, object] = {}
        out = {}
        for name, layer, path, kind in specs:
            module, first, rows = self._culnig_site(model, layers[int(layer)], path)
            if kind == "bias":
                full = module.bias.detach()
            else:
                if id(module) not in weights:
                    weights[id(module)] = self._culnig_weight(module, dtype)
                full = weights[id(module)]
            part = full[first:] if rows is None else full[first:first + rows]
            out[name] = digest(part.to(dtype))
        return out
