"""The paper's six models as random-weight transformers models at reduced depth, for CPU tests.

Each model's published ``config.json`` (``tests/fixtures/configs/<name>.json``, written by hand from
the hub files) is read through transformers' config class, so fields the hub file leaves at the
class default (Gemma-3's ``head_dim`` 256 and ``vocab_size`` 262208) are filled as transformers fills
them. Then only the depth, the vocabulary (to the offline test tokenizer's 384 tokens: the real
tokenizers are not available offline, and no neuron site depends on the vocabulary), the token ids
that must fit it, and the Gemma-3 vision tower's depth are reduced; widths, head counts, head_dim,
norms, activations, fused projections, tied embeddings and attention kinds stay the published ones.
:func:`reduced_config` returns what it changed, so every test can say it.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch

from culnig.testing.tiny_models import (BOS, EOS, IMAGE_TOKENS, PAD, _hub_name, _read_weights,
                                        _special_ids, _write_weights, tiny_tokenizer)

CONFIG_DIR = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "configs"
HUB_IDS = {
    "gemma-3-12b-it": "google/gemma-3-12b-it",
    "gemma-3-27b-it": "google/gemma-3-27b-it",
    "phi-4": "microsoft/phi-4",
    "Falcon3-10B-Instruct": "tiiuae/Falcon3-10B-Instruct",
    "Qwen3-14B": "Qwen/Qwen3-14B",
    "Llama-3.1-8B-Instruct": "meta-llama/Llama-3.1-8B-Instruct",
}
PAPER_MODELS: tuple[str, ...] = tuple(HUB_IDS)


def published_config(name: str) -> dict[str, Any]:
    """The published config.json of ``name`` as a dict (exactly the fixture file)."""
    if name not in HUB_IDS:
        raise ValueError(f"unknown paper model {name!r}; choose one of {', '.join(PAPER_MODELS)}")
    return json.loads((CONFIG_DIR / f"{name}.json").read_text())


def config_object(cfg: dict[str, Any]):
    """A config dict as its transformers config object (class defaults filled in)."""
    from transformers import AutoConfig

    return AutoConfig.for_model(cfg["model_type"], **{k: v for k, v in cfg.items() if k != "model_type"})


def _text(cfg: dict[str, Any]) -> dict[str, Any]:
    return cfg["text_config"] if "text_config" in cfg else cfg


def reduced_config(name: str, *, layers: int, layer_types: list[str] | None = None,
                   vision_layers: int = 1) -> tuple[Any, dict[str, tuple]]:
    """``(transformers config, reductions)``: ``name``'s published config at ``layers`` layers.

    ``layer_types`` (Gemma-3) picks the attention kinds of the kept layers (default: the first
    ``layers`` of the published pattern). ``reductions`` maps each changed field to
    ``(published, used)``.
    """
    raw = published_config(name)
    full = config_object(raw)
    full_text = getattr(full, "text_config", full)
    cfg = json.loads(json.dumps(raw))
    text = _text(cfg)
    ids = _special_ids()
    tok_vocab = len(tiny_tokenizer())
    red: dict[str, tuple] = {"num_hidden_layers": (full_text.num_hidden_layers, layers),
                             "vocab_size": (full_text.vocab_size, tok_vocab)}
    text["num_hidden_layers"] = layers
    text["vocab_size"] = tok_vocab
    pattern = getattr(full_text, "layer_types", None)
    if pattern is not None and "sliding_attention" in pattern:
        kinds = list(layer_types) if layer_types else list(pattern[:layers])
        text["layer_types"] = kinds
        published = (f"{pattern.count('sliding_attention')} sliding + "
                     f"{pattern.count('full_attention')} full")
        red["layer_types"] = (published, kinds)
    token_ids = {"bos_token_id": ids[BOS], "eos_token_id": ids[EOS], "pad_token_id": ids[PAD]}
    for key, value in token_ids.items():
        red[key] = (getattr(full_text, key, None), value)
        text[key] = value
        if text is not cfg:
            cfg[key] = value
    if "vision_config" in cfg:
        red["vision_config.num_hidden_layers"] = (full.vision_config.num_hidden_layers, vision_layers)
        cfg["vision_config"]["num_hidden_layers"] = vision_layers
        for key, tok in zip(("boi_token_index", "image_token_index", "eoi_token_index"), IMAGE_TOKENS):
            red[key] = (getattr(full, key), ids[tok])
            cfg[key] = ids[tok]
    return config_object(cfg), red


def _model_class(config):
    import transformers as tf

    if getattr(config, "model_type", None) == "gemma3":
        return tf.AutoModelForImageTextToText
    return tf.AutoModelForCausalLM


def paper_model(name: str, *, layers: int, dtype: torch.dtype = torch.float32, seed: int = 0,
                layer_types: list[str] | None = None):
    """``(model, tokenizer, reductions)``: ``name`` at ``layers`` layers, random weights, eval mode.

    Weights: matrices N(0, initializer_range) (tied embeddings N(0, 1 / hidden)), norm weights at
    their default plus N(0, initializer_range / 2) (so a dropped norm shows), drawn from ``seed``
    in float32 and cast to
    ``dtype`` (bit-identical in every process; a bf16 model is the rounded float32 one). The
    tokenizer is the offline test tokenizer.
    """
    config, red = reduced_config(name, layers=layers, layer_types=layer_types)
    from transformers.initialization import no_init_weights

    std = float(getattr(config, "initializer_range", None) or 0.02)
    with no_init_weights():  # every parameter is drawn below; transformers' own init is skipped
        model = _model_class(config).from_config(config, dtype=dtype)
    model.tie_weights()
    _draw(model, seed, std)
    emb, head = model.get_input_embeddings(), model.get_output_embeddings()
    if head is not None and head.weight is emb.weight:
        # Tied random embeddings make the last input token's own logit about std * hidden (Gemma:
        # ~100), and P(answer) ~ e^-100 underflows the float32 score file; at std 1 / hidden it
        # is about 1, as in a trained model, and every other logit is close to 0.
        with torch.no_grad():
            emb.weight.normal_(0.0, 1.0 / emb.weight.shape[1],
                               generator=torch.Generator().manual_seed(seed + 1))
    model.eval()
    return model, tiny_tokenizer(), red


def _draw(model: torch.nn.Module, seed: int, std: float) -> None:
    """Matrices N(0, std), other non-norm parameters N(0, std / 2), norm parameters their default
    (weight 1, Gemma's ``1 + w`` weight 0, bias 0) plus N(0, std / 2); in place, one float32
    buffer at a time."""
    gen = torch.Generator().manual_seed(seed)
    seen: set[int] = set()
    with torch.no_grad():
        for module in model.modules():
            is_norm = "norm" in type(module).__name__.lower()
            for pname, param in module.named_parameters(recurse=False):
                if id(param) in seen:  # tied weights: drawn once
                    continue
                seen.add(id(param))
                noise = torch.randn(param.shape, generator=gen, dtype=torch.float32)
                if is_norm:
                    gemma = "Gemma" in type(module).__name__
                    default = 0.0 if gemma or pname == "bias" else 1.0
                    param.copy_(noise.mul_(std / 2).add_(default))
                else:
                    param.copy_(noise.mul_(std if param.ndim >= 2 else std / 2))


def save_checkpoint(model, tokenizer, out_dir: str | Path) -> Path:
    """Write ``model`` (in its dtype) and ``tokenizer`` as a checkpoint folder; Gemma-3 multimodal
    tensors get the hub's names (``language_model.model.layers.N...``)."""
    from transformers import GenerationConfig

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    if not (out / "generation_config.json").exists():
        GenerationConfig(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id).save_pretrained(out)
    if model.config.model_type == "gemma3":
        tensors = _read_weights(out)
        _write_weights({_hub_name("gemma3", k): v for k, v in tensors.items()}, out, 1)
    return out


def save_paper_checkpoint(name: str, out_dir: str | Path, *, layers: int, seed: int = 0,
                          dtype: torch.dtype = torch.bfloat16,
                          layer_types: list[str] | None = None) -> Path:
    """Write :func:`paper_model` as a checkpoint folder in ``dtype`` (the hub's bf16 by default)."""
    model, tok, _ = paper_model(name, layers=layers, dtype=dtype, seed=seed, layer_types=layer_types)
    return save_checkpoint(model, tok, out_dir)


@lru_cache(maxsize=None)
def parameter_count(name: str) -> int:
    """Parameters of the full published model (built on the meta device: no memory, no weights)."""
    config = config_object(published_config(name))
    with torch.device("meta"):
        model = _model_class(config).from_config(config)
    return sum(p.numel() for p in model.parameters())


def cpu_peak_bytes(fn, *args, **kwargs):
    """``(result, peak)``: ``fn(*args, **kwargs)`` and the peak of the CPU tensor bytes it held
    beyond those live when it started.

    The torch profiler's memory events record every allocation and free of torch's CPU allocator;
    their running sum in time order is the live-tensor total that the GPU's
    ``torch.cuda.max_memory_allocated`` measures there (RSS would add the allocator's and glibc's
    retained free pages and everything else in the process).
    """
    import numpy as np
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        result = fn(*args, **kwargs)
    events = [(e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
              if e.name() == "[memory]" and e.device_type() == DeviceType.CPU]
    if not events:
        return result, 0
    events.sort()
    running = np.cumsum(np.array([n for _, n in events], dtype=np.int64))
    return result, int(max(running.max(), 0))
