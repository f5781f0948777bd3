"""Weight-baked neuron masks: masked checkpoints that transformers and vLLM serve unchanged.

* :func:`masking.bake.bake` (``culnig bake``) writes a masked copy of a safetensors checkpoint;
  :func:`masking.bake.is_baked` says whether a folder already holds a given bake.
* :func:`masking.hooks.masked` applies the same set as forward hooks on a loaded model.
* :func:`masking.verify.verify` (``culnig verify``) compares the two, and vLLM with ``--vllm``.

The names are importable from the package itself; the submodules load on first use.
"""

from __future__ import annotations

_EXPORTS = {
    "bake": "masking.bake",
    "is_baked": "masking.bake",
    "prepare_request": "masking.bake",
    "masked": "masking.hooks",
    "verify": "masking.verify",
    "manifest_matches": "masking.manifest",
    "read_manifest": "masking.manifest",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'masking' has no attribute {name!r}")
