"""The vLLM engine: one ``vllm.LLM`` (inside lm-eval's vLLM model) whose weights are swapped in.

A swap reloads, inside the worker, each q/k/v/gate/up tensor that differs from the base
checkpoint or that the previous swap changed, completed to whole fused layers
(:func:`culnig.engine.swap.fused_complete`), through vLLM's own ``reload_weights``; empties the
prefix cache (and culnig-vllm's score cache); then reads each of those tensors back through the
worker's layers (:mod:`culnig.engine.vllm_worker`): every sha256 must equal the checkpoint's.
"""

from __future__ import annotations

from pathlib import Path

from culnig.engine.swap import (SwapError, Weights, check_digests, expected_digests,
                                fused_complete, tensor_sites)
from culnig.loading import layout_of

EXTENSION = "culnig.engine.vllm_worker.EngineWorkerExtension"


class VLLMEngine:
    """lm-eval's vLLM model (``model_name``) on ``base``, built from the CLI's ``model_args``."""

    def __init__(self, base: Path, cfg, model_name: str):
        from lm_eval.api.registry import get_model

        self.base = Weights.of(base)
        self.layout = layout_of(str(base))
        args = dict(cfg.model_args, worker_extension_cls=EXTENSION)
        if int(args.get("tensor_parallel_size", 1)) != 1 or int(args.get("data_parallel_size", 1)) != 1:
            raise SwapError("isolation engine with vLLM needs tensor_parallel_size=1 and "
                            "data_parallel_size=1; use isolation: subprocess")
        self.lm = get_model(model_name).create_from_arg_obj(
            args, {"batch_size": cfg.batch_size, "max_batch_size": cfg.max_batch_size,
                   "device": cfg.device})
        self.llm = self.lm.model
        self.dtype = self.llm.llm_engine.model_config.dtype
        self.sites = tensor_sites(self.layout, self.base.files)
        self.current: set[str] = set()

    def _reset_caches(self, checkpoint: str) -> None:
        if hasattr(self.lm, "reset_after_weight_swap"):  # culnig-vllm: its cache and vLLM's
            self.lm.reset_after_weight_swap(checkpoint)
        elif not self.llm.reset_prefix_cache():
            raise SwapError("vLLM did not reset its prefix cache (requests still running)")

    def swap(self, folder: Weights, changed: set[str]) -> dict:
        """Reload ``changed`` (and restore the previous swap's) from ``folder``; prove it."""
        names = sorted(fused_complete(changed | self.current, self.layout, self.sites))
        self.current = set(names)  # from here on a failure leaves an unknown state
        if names:
            self.llm.collective_rpc("culnig_load", args=(str(folder.folder), names))
        self._reset_caches(str(folder.folder))
        specs = [[n, *self.sites[n]] for n in names]
        got = self.llm.collective_rpc("culnig_digests", args=(specs, self.layout.n_layers))[0] \
            if names else {}
        check_digests(got, expected_digests(folder, names, self.dtype) if names else {},
                      folder.folder)
        self.current = set(changed)
        return {"loaded": len(names), "verified": len(got),
                "method": "weights read back through the worker's layers"}
