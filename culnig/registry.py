"""Architecture registry: where the neurons that CULNIG scores and masks live in each model family.

A *neuron* is one output dimension of an MLP ``gate_proj``/``up_proj`` or of an attention
``q_proj``/``k_proj``/``v_proj`` projection (before any activation, q/k norm or RoPE). Attribution
hooks those outputs, masking edits the matching weight rows. Both ask this module, and nothing else,
where the projections are, how many neurons each has, and at which row offset they start in a fused
projection (Phi-3's ``qkv_proj`` and ``gate_up_proj``).

``layout_for(config)`` resolves a transformers config (or its dict) to a :class:`ModelLayout`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Mapping

from culnig.errors import UnsupportedArchitecture

MLP_MODULES = ("gate", "up")
ATTN_MODULES = ("q", "k", "v")
MODULES = MLP_MODULES + ATTN_MODULES


@dataclass(frozen=True)
class ArchSpec:
    """Static description of one model family."""

    name: str
    model_types: tuple[str, ...]
    example: str
    # Attribute path, from the top-level model object, of the decoder layer list.
    layers_path: str
    # Prefixes of decoder-layer tensors in a checkpoint ("<prefix><layer>.<site path>.weight"),
    # in the order they are tried. Multimodal checkpoints have several spellings.
    checkpoint_prefixes: tuple[str, ...]
    # Per module: the linear layer (relative to a decoder layer) whose output rows hold it.
    paths: Mapping[str, str]
    fused: bool = False
    qk_norm: bool = False
    # Where the text model's config lives inside the top-level config (multimodal wrappers).
    text_config_attr: str | None = None
    notes: str = ""


_UNFUSED = {
    "gate": "mlp.gate_proj",
    "up": "mlp.up_proj",
    "q": "self_attn.q_proj",
    "k": "self_attn.k_proj",
    "v": "self_attn.v_proj",
}
_PHI3 = {
    "gate": "mlp.gate_up_proj",
    "up": "mlp.gate_up_proj",
    "q": "self_attn.qkv_proj",
    "k": "self_attn.qkv_proj",
    "v": "self_attn.qkv_proj",
}

ARCHITECTURES: dict[str, ArchSpec] = {
    spec.name: spec
    for spec in (
        ArchSpec("llama", ("llama",), "Llama-3.1, Falcon3, SmolLM2", "model.layers",
                 ("model.layers.",), _UNFUSED),
        ArchSpec("mistral", ("mistral",), "Mistral-7B", "model.layers", ("model.layers.",), _UNFUSED),
        ArchSpec("qwen2", ("qwen2",), "Qwen2.5 (q/k/v biases)", "model.layers", ("model.layers.",),
                 _UNFUSED, notes="q/k/v projections carry biases"),
        ArchSpec("qwen3", ("qwen3",), "Qwen3 (q/k norms)", "model.layers", ("model.layers.",),
                 _UNFUSED, qk_norm=True),
        ArchSpec("gemma3_text", ("gemma3_text",), "Gemma-3 270M/1B (text only)", "model.layers",
                 ("model.layers.",), _UNFUSED, qk_norm=True),
        ArchSpec("gemma3", ("gemma3",), "Gemma-3 4B/12B/27B (multimodal wrapper)",
                 "model.language_model.layers",
                 ("language_model.model.layers.", "model.language_model.layers."),
                 _UNFUSED, qk_norm=True, text_config_attr="text_config"),
        ArchSpec("phi3", ("phi3",), "Phi-3, Phi-4 (fused qkv_proj and gate_up_proj)", "model.layers",
                 ("model.layers.",), _PHI3, fused=True),
    )
}

_BY_MODEL_TYPE = {mt: spec for spec in ARCHITECTURES.values() for mt in spec.model_types}


def supported_model_types() -> list[str]:
    return sorted(_BY_MODEL_TYPE)


@dataclass(frozen=True)
class Site:
    """Where one module's neurons sit: rows ``offset .. offset+size`` of the linear at ``path``."""

    module: str
    path: str
    offset: int
    size: int

    @property
    def rows(self) -> slice:
        return slice(self.offset, self.offset + self.size)


@dataclass(frozen=True)
class ModelLayout:
    """A resolved architecture: sizes, sites and names for one concrete config."""

    arch: ArchSpec
    n_layers: int
    hidden_size: int
    intermediate_size: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    vocab_size: int
    hidden_act: str
    sites: dict[str, Site] = field(repr=False)

    @property
    def name(self) -> str:
        return self.arch.name

    def n_neurons(self, module: str) -> int:
        return self.site(module).size

    def site(self, module: str) -> Site:
        if module not in self.sites:
            raise ValueError(f"unknown module {module!r}; known modules: {', '.join(MODULES)}")
        return self.sites[module]

    def neuron_counts(self) -> dict[str, int]:
        """Neurons per module summed over all layers."""
        return {m: self.n_layers * s.size for m, s in self.sites.items()}

    # --- loaded models -------------------------------------------------------------------
    def layers(self, model: Any):
        obj = model
        for part in self.arch.layers_path.split("."):
            if not hasattr(obj, part):
                raise UnsupportedArchitecture(
                    f"{type(model).__name__} has no '{self.arch.layers_path}' for architecture "
                    f"{self.name!r}; load the model with AutoModelForCausalLM (or the multimodal "
                    "class for Gemma-3 4B+)"
                )
            obj = getattr(obj, part)
        return obj

    def linear(self, model: Any, layer: int, module: str):
        """The nn.Linear whose output rows ``site(module).rows`` are the module's neurons."""
        return self.layers(model)[layer].get_submodule(self.site(module).path)

    # --- checkpoints ---------------------------------------------------------------------
    def tensor_names(self, layer: int, module: str, kind: str = "weight") -> list[str]:
        """Candidate checkpoint names of a site's tensor, one per known prefix spelling."""
        path = self.site(module).path
        return [f"{p}{layer}.{path}.{kind}" for p in self.arch.checkpoint_prefixes]

    @property
    def fingerprint(self) -> str:
        """Hash of the fields that decide neuron identity: same fingerprint, same neuron indices."""
        key = {
            "arch": self.name,
            "n_layers": self.n_layers,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "n_heads": self.n_heads,
            "n_kv_heads": self.n_kv_heads,
            "head_dim": self.head_dim,
            "vocab_size": self.vocab_size,
        }
        return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def _get(cfg: Any, name: str, default: Any = None) -> Any:
    if isinstance(cfg, Mapping):
        return cfg.get(name, default)
    return getattr(cfg, name, default)


def layout_for(config: Any) -> ModelLayout:
    """Resolve a transformers config object or config dict to its :class:`ModelLayout`."""
    model_type = _get(config, "model_type")
    spec = _BY_MODEL_TYPE.get(model_type)
    if spec is None:
        archs = _get(config, "architectures") or []
        raise UnsupportedArchitecture(
            f"architecture {model_type!r} ({', '.join(archs) or 'no architectures field'}) is not "
            f"supported; supported model types: {', '.join(supported_model_types())}"
        )
    if isinstance(config, Mapping):  # hub config.json files leave class defaults out (head_dim)
        from transformers import AutoConfig

        config = AutoConfig.for_model(model_type, **{k: v for k, v in config.items()
                                                     if k != "model_type"})
    text = _get(config, spec.text_config_attr) if spec.text_config_attr else config
    if text is None:
        raise UnsupportedArchitecture(f"{model_type!r} config has no {spec.text_config_attr!r}")
    n_heads = int(_get(text, "num_attention_heads"))
    hidden = int(_get(text, "hidden_size"))
    n_kv = int(_get(text, "num_key_value_heads") or n_heads)
    head_dim = _get(text, "head_dim") or hidden // n_heads
    head_dim = int(head_dim)
    inter = int(_get(text, "intermediate_size"))
    q, kv = n_heads * head_dim, n_kv * head_dim
    if spec.fused:
        offsets = {"gate": 0, "up": inter, "q": 0, "k": q, "v": q + kv}
    else:
        offsets = dict.fromkeys(MODULES, 0)
    sizes = {"gate": inter, "up": inter, "q": q, "k": kv, "v": kv}
    sites = {m: Site(m, spec.paths[m], offsets[m], sizes[m]) for m in MODULES}
    act = _get(text, "hidden_act") or _get(text, "hidden_activation") or "unknown"
    return ModelLayout(
        arch=spec,
        n_layers=int(_get(text, "num_hidden_layers")),
        hidden_size=hidden,
        intermediate_size=inter,
        n_heads=n_heads,
        n_kv_heads=n_kv,
        head_dim=head_dim,
        vocab_size=int(_get(text, "vocab_size")),
        hidden_act=str(act),
        sites=sites,
    )

