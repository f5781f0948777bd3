"""The HF engine: one lm-eval ``HFLM`` whose weights are swapped in place.

A swap copies each tensor that differs from the base checkpoint (and each one the previous swap
changed, now restored) from the checkpoint's safetensors into the live parameters, then reads
every such parameter back: its sha256 must equal the checkpoint tensor's, cast to the model dtype.
``HFLM`` keeps no cache of model outputs between calls, so there is nothing else to reset.
"""

from __future__ import annotations

from pathlib import Path

from culnig.engine.swap import (Unrelated, Weights, check_digests, expected_digests,
                                tensor_sites)
from culnig.engine.vllm_worker import digest
from culnig.loading import layout_of


class HFEngine:
    """lm-eval's HF model on ``base``, built from the CLI's ``model_args`` (``cfg``)."""

    def __init__(self, base: Path, cfg, model_name: str):
        from lm_eval.api.registry import get_model

        self.base = Weights.of(base)
        self.layout = layout_of(str(base))
        self.lm = get_model(model_name).create_from_arg_obj(
            cfg.model_args, {"batch_size": cfg.batch_size, "max_batch_size": cfg.max_batch_size,
                             "device": cfg.device})
        self.current: set[str] = set()  # tensors that now differ from the base

    def _params(self, names) -> dict:
        model = self.lm.model
        own = dict(model.named_parameters())
        sites = tensor_sites(self.layout, names)
        out = {}
        for n in names:
            if n in sites:
                layer, path, kind = sites[n]
                out[n] = getattr(self.layout.layers(model)[layer].get_submodule(path), kind)
            elif n in own:
                out[n] = own[n]
            else:
                raise Unrelated(f"tensor {n} has no parameter in {type(model).__name__}")
        return out

    def swap(self, folder: Weights, changed: set[str]) -> dict:
        """Load ``changed`` (and restore the previous swap's tensors) from ``folder``; prove it."""
        import torch
        from safetensors import safe_open

        names = sorted(changed | self.current)
        params = self._params(names)  # before anything is written: Unrelated leaves it intact
        self.current = set(names)  # from here on a failure leaves an unknown state
        by_file: dict[str, list[str]] = {}
        for n in names:
            by_file.setdefault(folder.files[n], []).append(n)
        with torch.no_grad():
            for f, group in sorted(by_file.items()):
                with safe_open(str(folder.folder / f), framework="pt") as fh:
                    for n in group:
                        p = params[n]
                        p.copy_(fh.get_tensor(n).to(dtype=p.dtype, device=p.device))
        got = {n: digest(p) for n, p in params.items()}
        dtype = next(iter(params.values())).dtype if params else None
        check_digests(got, expected_digests(folder, names, dtype) if names else {}, folder.folder)
        self.current = set(changed)
        return {"loaded": len(names), "verified": len(got), "method": "parameters read back"}
