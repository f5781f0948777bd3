"""Load a checkpoint (local folder or hub id) as a transformers model + tokenizer, with clear errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from culnig.errors import CulnigError
from culnig.registry import ModelLayout, layout_for

DTYPES = {"fp32": "float32", "float32": "float32", "bf16": "bfloat16", "bfloat16": "bfloat16",
          "fp16": "float16", "float16": "float16"}


def torch_dtype(name: str):
    import torch

    try:
        return getattr(torch, DTYPES[name])
    except KeyError:
        raise CulnigError(f"unknown dtype {name!r}; use one of: fp32, bf16, fp16") from None


def _looks_like_hub_id(ref: str) -> bool:
    return ref.count("/") == 1 and not ref.startswith((".", "/", "~"))


def read_config(ref: str) -> dict[str, Any]:
    """The checkpoint's config.json as a dict (local folder, or hub id through transformers)."""
    path = Path(ref).expanduser()
    if path.is_dir():
        cfg = path / "config.json"
        if not cfg.is_file():
            raise CulnigError(f"{ref}: folder has no config.json; pass a Hugging Face checkpoint folder")
        return json.loads(cfg.read_text())
    if path.exists():
        raise CulnigError(f"{ref}: is a file; pass the checkpoint folder (with config.json)")
    if not _looks_like_hub_id(ref):
        raise CulnigError(
            f"{ref}: no such model folder; pass a checkpoint folder with config.json "
            "(e.g. from `culnig models demo`) or a hub id like org/name"
        )
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(ref).to_dict()
    except Exception as exc:  # network, auth, missing repo: one line for the user
        raise CulnigError(
            f"{ref}: not a local folder and the hub could not provide it ({type(exc).__name__}); "
            "download it first or pass a local checkpoint folder"
        ) from exc


def resolve_layout(ref: str) -> ModelLayout:
    return layout_for(read_config(ref))


def load_model(ref: str, dtype: str = "fp32", device_map: Any = None):
    """Return ``(model, tokenizer, layout)`` for a supported checkpoint, in eval mode."""
    cfg = read_config(ref)
    layout = layout_for(cfg)  # refuses unsupported architectures before loading weights
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs: dict[str, Any] = {"dtype": torch_dtype(dtype)}
    if device_map is not None:
        kwargs["device_map"] = device_map
    if layout.arch.text_config_attr:  # multimodal wrapper: keep its own class and weight names
        from transformers import AutoModelForImageTextToText as auto_cls
    else:
        auto_cls = AutoModelForCausalLM
    try:
        model = auto_cls.from_pretrained(ref, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(ref)
    except OSError as exc:
        raise CulnigError(f"{ref}: could not load the checkpoint: {exc}".splitlines()[0]) from exc
    model.eval()
    return model, tokenizer, layout
