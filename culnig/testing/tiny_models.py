"""Tiny random-weight models of every registry architecture, built offline and deterministically.

Tests of attribution and masking need real transformers modules of each supported family (fused
projections, q/k/v biases, q/k norms, the Gemma-3 multimodal wrapper) without downloading anything.
This module builds them from scratch:

* :func:`tiny_tokenizer` trains a ~384-token byte-level BPE on a built-in English text, so that every
  byte is representable and single characters such as ``"A"``, ``"7"`` or ``"{"`` are one token each.
  It prepends ``<bos>`` when ``add_special_tokens=True`` and has a small chat template.
* :func:`tiny_config` gives a small config per architecture (2-3 layers, hidden 48, GQA 4/2 heads,
  intermediate size different from hidden, explicit ``head_dim`` != hidden/heads where the family
  allows it, embeddings tied as the real family ties them).
* :func:`tiny_model` builds the model and re-draws every parameter from the seed.
* :func:`save_tiny_checkpoint` writes a Hugging Face checkpoint directory (optionally sharded); the
  Gemma-3 multimodal checkpoint uses the hub's original tensor names (``language_model.model.*``).

Nothing touches the network; everything together takes a few seconds on two CPU cores.
"""

from __future__ import annotations

import json
import re
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch

ARCH_NAMES: tuple[str, ...] = ("llama", "mistral", "qwen2", "qwen3", "gemma3_text", "gemma3", "phi3")

# --- tokenizer ---------------------------------------------------------------------------------

PAD, EOS, BOS, UNK = "<pad>", "<eos>", "<bos>", "<unk>"
CHAT_MARKERS = ("<|system|>", "<|user|>", "<|assistant|>")
IMAGE_TOKENS = ("<start_of_image>", "<image_soft_token>", "<end_of_image>")
# Ids 0..3 follow Gemma's order (pad, eos, bos, unk); the markers and image tokens follow.
SPECIAL_TOKENS = (PAD, EOS, BOS, UNK) + CHAT_MARKERS + IMAGE_TOKENS
TOKENIZER_VOCAB_SIZE = 384

_CORPUS = """\
Culture shapes how people greet each other, share food, and celebrate the seasons. In one country a
guest removes their shoes at the door; in another the host insists that the guest keeps them on. The
question is not which custom is right, but which custom belongs to which place and people.

Question: Which dish is traditionally eaten at the new year festival?
A. Rice cakes
B. Fried fish
C. Sweet bread
D. Noodle soup
E. None of the above
Answer: A

Question 2: How many days does the spring holiday last? Choose 0, 1, 2, 3, 4, 5, 6, 7, 8 or 9.
Answer: 3. The correct option is (B); options (A), (C), (D) and (E) are wrong!

Return your answer as JSON: {"answer": "C", "confidence": 0.9, "options": ["A", "B", "C", "D", "E"]}
{"id": 17, "country": "Japan", "label": "B", "scores": [0.25, 0.5, 0.75], "ok": true}
{"id": 42, "country": "Kenya", "label": "E", "scores": [1, 2, 3], "ok": false}

The model reads the prompt, thinks about the context, and writes a short answer. It should say "yes"
or "no", give a number such as 12, 345 or 6789, or pick a letter like A, B, C, D or E. Punctuation
matters too: commas, periods. Colons: semicolons; question marks? Exclamation marks! Dashes - and
slashes / and brackets [ ] ( ) { } and quotes ' " are all part of ordinary written English text.
Every family eats together on Sunday; the grandmother cooks, the children set the table, and the
father tells stories about the old village where the river meets the sea.
"""

CHAT_TEMPLATE = (
    "{{- bos_token -}}"
    "{%- for message in messages -%}"
    "{%- if message['role'] not in ['system', 'user', 'assistant'] -%}"
    "{{- raise_exception('tiny chat template: unknown role ' ~ message['role']) -}}"
    "{%- endif -%}"
    "{{- '<|' ~ message['role'] ~ '|>\\n' -}}"
    "{%- if message['content'] is string -%}"
    "{{- message['content'] -}}"
    "{%- else -%}"
    "{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'text' -%}{{- part['text'] -}}{%- endif -%}"
    "{%- endfor -%}"
    "{%- endif -%}"
    "{{- eos_token ~ '\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|assistant|>\\n' -}}{%- endif -%}"
)


# The GPT-2/Qwen2 pre-tokenizer split. transformers 5.19's AutoTokenizer always rebuilds a qwen2
# checkpoint's tokenizer as Qwen2Tokenizer (NFC + this split + byte-level), whatever
# tokenizer_config.json says, so the tiny tokenizer uses exactly that pipeline: then it tokenizes the
# same whether it comes from tiny_tokenizer() or from AutoTokenizer on any saved tiny checkpoint.
_SPLIT_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
    r"|\s+(?!\S)|\s+"
)


@lru_cache(maxsize=1)
def _tokenizer_json() -> str:
    """Train the byte-level BPE once per process; return its serialisation (immutable, so cacheable)."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(_SPLIT_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TOKENIZER_VOCAB_SIZE,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    # Training on the same text with the same settings is deterministic.
    tok.train_from_iterator(_CORPUS.splitlines(), trainer=trainer)
    bos_id = tok.token_to_id(BOS)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS}:0 $A:0", pair=f"{BOS}:0 $A:0 {BOS}:1 $B:1", special_tokens=[(BOS, bos_id)]
    )
    return tok.to_str()


def tiny_tokenizer():
    """A fresh ``PreTrainedTokenizerFast`` (byte-level BPE, 384 tokens); safe to mutate.

    ``<bos>`` is prepended when ``add_special_tokens=True`` (``add_bos_token=True``, which
    ``save_pretrained`` records, so a reloaded checkpoint tokenizer does the same); padding is on
    the right with ``<pad>`` (id 0). The chat template starts with ``<bos>`` itself, like Llama-3's
    and Gemma's, so render it with ``tokenize=False`` and then tokenize with
    ``add_special_tokens=False`` (or use ``apply_chat_template(tokenize=True)``).
    """
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(_tokenizer_json()),
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        add_bos_token=True,
        add_eos_token=False,
        model_max_length=2048,
    )
    tok.chat_template = CHAT_TEMPLATE
    return tok


@lru_cache(maxsize=1)
def _special_ids() -> dict[str, int]:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_str(_tokenizer_json())
    return {t: tok.token_to_id(t) for t in SPECIAL_TOKENS}


# --- configs ------------------------------------------------------------------------------------

# Shared shape: hidden 48, 4 query heads, 2 key/value heads (GQA), 2 layers (gemma3*: 3).
# Intermediate sizes differ per family and from hidden, so a swapped dimension shows up in tests.
_COMMON = dict(
    hidden_size=48,
    num_attention_heads=4,
    num_key_value_heads=2,
    num_hidden_layers=2,
    max_position_embeddings=2048,
)

_GEMMA3_TEXT = dict(
    _COMMON,
    num_hidden_layers=3,
    intermediate_size=96,
    head_dim=16,  # != 48 / 4, as in the real Gemma-3 (head_dim 256 with hidden 2304 / 8 heads)
    query_pre_attn_scalar=16,
    sliding_window=8,
    layer_types=["sliding_attention", "sliding_attention", "full_attention"],
    tie_word_embeddings=True,
)

_ARCH_KWARGS: dict[str, dict[str, Any]] = {
    # Llama-3.1 8B: head_dim = hidden / heads, untied embeddings.
    "llama": dict(_COMMON, intermediate_size=80, head_dim=12, tie_word_embeddings=False),
    # Mistral-Nemo style explicit head_dim (!= hidden / heads), no sliding window, untied.
    "mistral": dict(_COMMON, intermediate_size=96, head_dim=16, sliding_window=None,
                    tie_word_embeddings=False),
    # Qwen2.5 0.5B-3B: tied; Qwen2 has no head_dim field and q/k/v biases are hard-wired on.
    "qwen2": dict(_COMMON, intermediate_size=72, tie_word_embeddings=True),
    # Qwen3 0.6B-4B: tied, head_dim != hidden / heads (Qwen3-4B: 128 vs 2560 / 32 = 80).
    "qwen3": dict(_COMMON, intermediate_size=88, head_dim=16, tie_word_embeddings=True),
    "gemma3_text": dict(_GEMMA3_TEXT),
    "gemma3": dict(_GEMMA3_TEXT, intermediate_size=64, head_dim=20, query_pre_attn_scalar=20),
    # Phi-3/Phi-4: fused qkv_proj and gate_up_proj; head_dim is always hidden / heads; untied.
    "phi3": dict(_COMMON, intermediate_size=80, original_max_position_embeddings=2048,
                 tie_word_embeddings=False),
}

# Gemma3Config's own (non-text) fields; every other override goes to its text_config.
_GEMMA3_TOP_LEVEL = ("vision_config", "mm_tokens_per_image", "boi_token_index", "eoi_token_index",
                     "image_token_index", "initializer_range")


def _check_arch(arch: str) -> None:
    if arch not in ARCH_NAMES:
        raise ValueError(f"unknown tiny architecture {arch!r}; choose one of {', '.join(ARCH_NAMES)}")


def tiny_config(arch: str, vocab_size: int | None = None, **overrides: Any):
    """A small transformers config for ``arch``; ``overrides`` replace the (text) config fields.

    ``vocab_size`` defaults to the tiny tokenizer's size. Token ids (pad/bos/eos) are the tiny
    tokenizer's. For ``"gemma3"`` the result is a ``Gemma3Config`` with a one-layer SigLIP vision
    tower on 28x28 images (2x2 patches of 14 pixels, 4 image tokens); overrides of the text fields
    go to its ``text_config``, overrides of its own fields (``mm_tokens_per_image``, ...) to it.
    """
    import transformers as tf

    _check_arch(arch)
    ids = dict(_special_ids())
    if vocab_size is None:
        vocab_size = TOKENIZER_VOCAB_SIZE
    token_ids = dict(pad_token_id=ids[PAD], bos_token_id=ids[BOS], eos_token_id=ids[EOS])
    text_kwargs = dict(_ARCH_KWARGS[arch], vocab_size=vocab_size, **token_ids)
    top = {k: overrides.pop(k) for k in list(overrides) if arch == "gemma3" and k in _GEMMA3_TOP_LEVEL}
    text_kwargs.update(overrides)

    if arch == "llama":
        return tf.LlamaConfig(**text_kwargs)
    if arch == "mistral":
        return tf.MistralConfig(**text_kwargs)
    if arch == "qwen2":
        return tf.Qwen2Config(**text_kwargs)
    if arch == "qwen3":
        return tf.Qwen3Config(**text_kwargs)
    if arch == "phi3":
        return tf.Phi3Config(**text_kwargs)
    if arch == "gemma3_text":
        return tf.Gemma3TextConfig(**text_kwargs)
    # gemma3: the multimodal wrapper.
    vision = dict(
        hidden_size=32,
        intermediate_size=40,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_channels=3,
        image_size=28,
        patch_size=14,
        vision_use_head=False,
    )
    vision.update(top.pop("vision_config", None) or {})
    top_kwargs = dict(
        mm_tokens_per_image=4,
        boi_token_index=ids["<start_of_image>"],
        eoi_token_index=ids["<end_of_image>"],
        image_token_index=ids["<image_soft_token>"],
        tie_word_embeddings=text_kwargs["tie_word_embeddings"],
    )
    top_kwargs.update(top)
    return tf.Gemma3Config(
        text_config=tf.Gemma3TextConfig(**text_kwargs),
        vision_config=tf.SiglipVisionConfig(**vision),
        **top_kwargs,
    )


# --- models -------------------------------------------------------------------------------------


def _redraw_parameters(model: torch.nn.Module, seed: int, std: float = 0.1) -> None:
    """Re-draw every parameter from ``seed``, independent of transformers' own initialisation.

    Matrices (linears, embeddings, convolutions): N(0, std). Biases: N(0, std / 2). Norm weights
    keep their default (1 for Llama-style, 0 for Gemma's ``1 + w``) plus N(0, std / 2) noise, norm
    biases get N(0, std / 4), so code that drops or mis-applies a norm changes the outputs.
    """
    gen = torch.Generator().manual_seed(seed)
    seen: set[int] = set()
    with torch.no_grad():
        for _, module in model.named_modules():
            is_norm = "norm" in type(module).__name__.lower()
            for pname, param in module.named_parameters(recurse=False):
                if id(param) in seen:  # tied weights: draw once
                    continue
                seen.add(id(param))
                noise = torch.randn(param.shape, generator=gen, dtype=torch.float32)
                if is_norm:
                    scale = std / 2 if pname == "weight" else std / 4
                    param.add_((noise * scale).to(param.dtype))
                elif param.ndim >= 2:
                    param.copy_((noise * std).to(param.dtype))
                else:
                    param.copy_((noise * std / 2).to(param.dtype))


def _build(arch: str, config):
    import transformers as tf

    if arch == "gemma3":
        return tf.Gemma3ForConditionalGeneration(config)
    return tf.AutoModelForCausalLM.from_config(config, dtype=torch.float32)


def tiny_model(arch: str, seed: int = 0, dtype: torch.dtype = torch.float32, **overrides: Any):
    """``(model, tokenizer)``: a tiny ``arch`` model with seeded random weights, in eval mode.

    The same ``(arch, seed, overrides)`` gives bit-identical weights in every process; ``dtype`` is
    applied after drawing in float32, so a bfloat16 model is the rounded float32 one.
    """
    _check_arch(arch)
    tok = tiny_tokenizer()
    config = tiny_config(arch, len(tok), **overrides)
    torch.manual_seed(seed)
    model = _build(arch, config).float()
    _redraw_parameters(model, seed)
    model = model.to(dtype)
    model.eval()
    return model, tok


# --- checkpoints --------------------------------------------------------------------------------

# Gemma3ForConditionalGeneration tensor names -> the hub's names of gemma-3-4b/12b/27b-it. Both the
# in-memory module names (``model.language_model.*``) and what transformers 5.19's save_pretrained
# writes (``language_model.model.*``, but ``vision_tower.embeddings.*`` without the hub's
# ``vision_model.``) are accepted.
_GEMMA3_HUB_RENAMES = (
    ("model.language_model.", "language_model.model."),
    ("model.vision_tower.", "vision_tower."),
    ("model.multi_modal_projector.", "multi_modal_projector."),
    ("lm_head.", "language_model.lm_head."),
)


def _hub_name(arch: str, name: str) -> str:
    if arch != "gemma3":
        return name
    for old, new in _GEMMA3_HUB_RENAMES:
        if name.startswith(old):
            name = new + name[len(old):]
            break
    if name.startswith("vision_tower.") and not name.startswith("vision_tower.vision_model."):
        name = "vision_tower.vision_model." + name[len("vision_tower."):]
    return name


def _natural_key(name: str):
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name)]


def _read_weights(out_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors import safe_open

    files = sorted(out_dir.glob("*.safetensors"))
    tensors: dict[str, torch.Tensor] = {}
    for f in files:
        with safe_open(str(f), framework="pt") as fh:
            for k in fh.keys():
                tensors[k] = fh.get_tensor(k)
        f.unlink()
    index = out_dir / "model.safetensors.index.json"
    if index.exists():
        index.unlink()
    return tensors


def _write_weights(tensors: dict[str, torch.Tensor], out_dir: Path, shards: int) -> None:
    from safetensors.torch import save_file

    names = sorted(tensors, key=_natural_key)
    if shards == 1:
        save_file({k: tensors[k].contiguous() for k in names}, str(out_dir / "model.safetensors"),
                  metadata={"format": "pt"})
        return
    if shards > len(names):
        raise ValueError(f"cannot split {len(names)} tensors into {shards} shards")
    sizes = [tensors[k].numel() * tensors[k].element_size() for k in names]
    total = sum(sizes)
    # Contiguous groups in name order, cut where the running size passes i/shards of the total;
    # every shard gets at least one tensor.
    groups: list[list[str]] = [[] for _ in range(shards)]
    running = 0
    shard = 0
    for i, (name, size) in enumerate(zip(names, sizes)):
        remaining_names = len(names) - i
        remaining_shards = shards - shard - 1
        if groups[shard] and (running >= total * (shard + 1) / shards or remaining_names <= remaining_shards):
            shard += 1
        groups[shard].append(name)
        running += size
    weight_map = {}
    for i, group in enumerate(groups):
        fname = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        save_file({k: tensors[k].contiguous() for k in group}, str(out_dir / fname),
                  metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(group, fname))
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (out_dir / "model.safetensors.index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")


def save_tiny_checkpoint(
    arch: str,
    out_dir: str | Path,
    seed: int = 0,
    shards: int = 1,
    dtype: torch.dtype = torch.float32,
    **overrides: Any,
) -> Path:
    """Write ``tiny_model(arch, seed, dtype, **overrides)`` as a Hugging Face checkpoint directory.

    The directory holds ``config.json``, ``generation_config.json``, the tokenizer files and either
    ``model.safetensors`` (``shards=1``) or ``shards`` files ``model-0000i-of-0000N.safetensors``
    with ``model.safetensors.index.json``. Tied output embeddings are not stored (as
    ``save_pretrained`` does). ``"gemma3"`` tensors use the hub's names
    (``language_model.model.layers.N...``, ``vision_tower.vision_model...``,
    ``multi_modal_projector...``), which transformers renames back when loading.
    """
    from transformers import GenerationConfig

    if shards < 1:
        raise ValueError(f"shards must be >= 1, got {shards}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model, tok = tiny_model(arch, seed=seed, dtype=dtype, **overrides)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    if not (out / "generation_config.json").exists():
        GenerationConfig(
            bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id
        ).save_pretrained(out)
    tensors = _read_weights(out)
    tensors = {_hub_name(arch, k): v for k, v in tensors.items()}
    _write_weights(tensors, out, shards)
    return out
