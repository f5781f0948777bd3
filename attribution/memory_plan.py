"""``culnig attribute --plan``: the memory an attribution run needs, from the config alone.

No weights are read. The config (a checkpoint folder's ``config.json``, a ``config.json`` file, or a
hub id's config) goes through transformers' config class, so fields left at the class default are
filled as transformers fills them. From it: neurons per module, the float64 accumulators, the
weights in the chosen dtype (parameters counted on the meta device), and the peak activation memory
of the largest batch the engine forms from the items' token lengths, summed from the tensors that
autograd and the engine keep per token and layer (docs/paper-scale.md derives each term).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from attribution.engine import AttributionOptions
from culnig.errors import CulnigError
from culnig.registry import ATTN_MODULES, MODULES, ModelLayout, layout_for

GIB = 1 << 30
DTYPE_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2, "fp64": 8}
# A GPU run needs room beyond the tensors: the CUDA context and kernels (about 0.5-1 GiB) and the
# caching allocator's fragmentation; a plan fits when the tensors stay below this share of the GPU
# after that fixed reserve.
CUDA_RESERVE_BYTES = 1 * GIB
USABLE_FRACTION = 0.90
WIDTH = 100  # every output line fits this many columns
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "tokenizer_config.json")


# --- the config -------------------------------------------------------------------------------
def load_config(ref: str):
    """The transformers config object of a folder, a config.json file or a hub id (config only)."""
    from transformers import AutoConfig

    path = Path(ref).expanduser()
    if path.is_file():
        try:
            raw = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise CulnigError(f"{ref}: not JSON ({exc.msg}, line {exc.lineno})") from None
    else:
        from culnig.loading import read_config

        raw = read_config(ref)
    if not isinstance(raw, dict) or "model_type" not in raw:
        raise CulnigError(f"{ref}: config has no model_type; pass a Hugging Face config.json")
    try:
        return AutoConfig.for_model(raw["model_type"],
                                    **{k: v for k, v in raw.items() if k != "model_type"})
    except ValueError as exc:
        raise CulnigError(f"{ref}: {str(exc).splitlines()[0]}") from None


def text_config(config):
    return getattr(config, "text_config", None) or config


def count_parameters(config) -> int:
    """Parameters of the model that ``config`` describes, built on the meta device (no memory)."""
    import torch
    import transformers as tf

    cls = tf.AutoModelForImageTextToText if config.model_type == "gemma3" else tf.AutoModelForCausalLM
    with torch.device("meta"):
        model = cls.from_config(config)
    return sum(p.numel() for p in model.parameters())


# --- batches ----------------------------------------------------------------------------------
def batch_shapes(lengths: Sequence[int], batch_size: int) -> list[tuple[int, int]]:
    """``(items, padded length)`` of each batch, formed as the engine forms them (items sorted by
    token length, ties by file order, then cut every ``batch_size``)."""
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    return [(len(order[s:s + batch_size]), max(lengths[i] for i in order[s:s + batch_size]))
            for s in range(0, len(order), batch_size)]


def token_lengths(items, tokenizer, options: AttributionOptions) -> list[int]:
    """Input length of every item exactly as the engine encodes it."""
    from attribution.encode import encode_item

    return [len(encode_item(it, tokenizer, use_chat_template=options.use_chat_template,
                            max_length=options.max_length,
                            truncate=options.truncate or "left").input_ids) for it in items]


# --- the estimate -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Activations:
    """Peak activation bytes of one batch, by term (docs/paper-scale.md derives each term)."""

    projections: int  # gate/up outputs (always kept) and hooked q/k/v outputs, all layers
    mlp: int  # act_fn(gate), all layers
    attention: int  # q after RoPE, k/v as SDPA gets them, SDPA output, all layers
    attention_weights: int  # the math kernel's softmax (eager attention); 0 with SDPA's kernels
    norms: int  # float32 copies that the RMSNorms keep, all layers
    head: int  # embeddings output, final norm, LM-head logits at the answer positions
    backward: int  # gradients and reduction temporaries of one module during its backward

    @property
    def total(self) -> int:
        return (self.projections + self.mlp + self.attention + self.attention_weights + self.norms
                + self.head + self.backward)


def activation_bytes(config, layout: ModelLayout, n_items: int, length: int, dtype: str,
                     modules: Sequence[str] = MODULES, *, math_attention: bool = False,
                     answer_tokens: int = 1) -> Activations:
    """Activation memory of one batch of ``n_items`` items padded to ``length`` tokens."""
    text = text_config(config)
    s = DTYPE_BYTES[dtype]
    c = 8 if dtype == "fp64" else 4  # the engine reduces in float32 (float64 for a float64 model)
    tokens = n_items * length
    L, h, inter = layout.n_layers, layout.hidden_size, layout.intermediate_size
    q, kv = layout.n_heads * layout.head_dim, layout.n_kv_heads * layout.head_dim
    hooked_attn = [m for m in modules if m in ATTN_MODULES]
    if layout.arch.fused:  # one qkv_proj output, kept whole when any of q/k/v is hooked
        kept_attn = q + 2 * kv if hooked_attn else 0
    else:
        kept_attn = sum(layout.n_neurons(m) for m in hooked_attn)
    repeated = layout.n_heads != layout.n_kv_heads
    sdpa_kv = 2 * (q if repeated else kv)
    n_norms = 4 if layout.arch.name.startswith("gemma3") else 2
    qk_norm = (q + kv) * 4 if layout.arch.qk_norm else 0
    vocab = int(text.vocab_size)
    kept_positions = n_items * answer_tokens
    return Activations(
        projections=L * tokens * (2 * inter + kept_attn) * s,
        mlp=L * tokens * inter * s,
        attention=L * tokens * (2 * q + sdpa_kv) * s,
        attention_weights=(L * n_items * layout.n_heads * length * length * s
                           if math_attention else 0),
        norms=L * tokens * (n_norms * h * 4 + qk_norm),
        head=tokens * h * (s + 4) + kept_positions * vocab * (s + 4 + 4),
        backward=tokens * inter * 3 * c,
    )


def accumulator_bytes(layout: ModelLayout, n_countries: int, modules: Sequence[str],
                      aggregations: Sequence[str]) -> int:
    """float64 ``[layers, countries + 1, neurons]`` per (aggregation, module), on the device."""
    per_agg = sum(layout.n_layers * (n_countries + 1) * layout.n_neurons(m) for m in modules)
    return 8 * per_agg * len(aggregations)


# --- the plan ---------------------------------------------------------------------------------
@dataclass
class Plan:
    model: str
    arch: str
    layout: ModelLayout
    dtype: str
    n_parameters: int
    options: AttributionOptions
    n_items: int
    n_countries: int
    lengths_from: str
    batches: list[tuple[int, int]]
    peak_batch: tuple[int, int]
    activations: Activations
    accumulators: int
    gpu_memory_gib: float | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def weights(self) -> int:
        return self.n_parameters * DTYPE_BYTES[self.dtype]

    @property
    def peak(self) -> int:
        return self.weights + self.accumulators + self.activations.total

    @property
    def fits(self) -> bool | None:
        if self.gpu_memory_gib is None:
            return None
        return self.peak <= (self.gpu_memory_gib * GIB - CUDA_RESERVE_BYTES) * USABLE_FRACTION

    def lines(self) -> list[str]:
        lay, opts = self.layout, self.options
        out = [_fit("plan:        ", self.model),
               f"shape:       {self.arch}, {lay.n_layers} layers, hidden {lay.hidden_size}, "
               f"{lay.n_heads}/{lay.n_kv_heads} heads of {lay.head_dim}, vocabulary "
               f"{lay.vocab_size:,}",
               f"{'module':<8}{'per layer':>12}{'all layers':>14}{'accumulators':>16}"]
        for m in MODULES:
            hooked = m in opts.modules
            acc = (accumulator_bytes(lay, self.n_countries, (m,), opts.aggregations)
                   if hooked else 0)
            out.append(f"{m:<8}{lay.n_neurons(m):>12,}{lay.n_layers * lay.n_neurons(m):>14,}"
                       f"{_gib(acc) if hooked else 'not hooked':>16}")
        total = sum(lay.n_layers * lay.n_neurons(m) for m in opts.modules)
        out.append(f"{'hooked':<8}{'':>12}{total:>14,}{_gib(self.accumulators):>16}")
        b, t = self.peak_batch
        act = self.activations
        out += [
            f"weights:     {self.n_parameters / 1e9:.2f}B parameters x {DTYPE_BYTES[self.dtype]} B "
            f"({self.dtype}) = {_gib(self.weights)}",
            f"accumulators: float64 x {len(opts.aggregations)} aggregation(s) x "
            f"{self.n_countries + 1} rows (countries + total) = {_gib(self.accumulators)}",
            f"items:       {self.n_items} in {len(self.batches)} batches of {opts.batch_size} "
            "(sorted by length, as the engine forms them)",
            _fit("lengths:     ", self.lengths_from),
            f"peak batch:  {b} items x {t} tokens (the one with the largest activations)",
            f"activations: {_gib(act.total)} = projections {_gib(act.projections)} + mlp "
            f"{_gib(act.mlp)} + attention {_gib(act.attention + act.attention_weights)}",
            f"             + norms {_gib(act.norms)} + head {_gib(act.head)} + backward "
            f"{_gib(act.backward)}",
            f"peak:        {_gib(self.peak)} (weights + accumulators + activations)",
        ]
        if self.gpu_memory_gib is not None:
            room = (self.gpu_memory_gib * GIB - CUDA_RESERVE_BYTES) * USABLE_FRACTION
            verdict = "fits" if self.fits else "does NOT fit"
            out.append(f"gpu memory:  {self.gpu_memory_gib:g} GiB -> {_gib(room)} usable (1 GiB "
                       f"CUDA reserve, {USABLE_FRACTION:.0%} of the rest): {verdict}")
            if not self.fits:
                out.append("             try a smaller --batch-size, --max-length, fewer --modules,"
                           " or --device-map auto")
        out += [f"note:        {n}" for n in self.notes]
        return out


def _fit(label: str, text: str) -> str:
    """``label + text`` in WIDTH columns; a long text (a path) loses its start, not its end."""
    room = WIDTH - len(label)
    return label + (text if len(text) <= room else "..." + text[-(room - 3):])


def _gib(n: float) -> str:
    return f"{n / GIB:.2f} GiB"


def _tokenizer(ref: str | None):
    if ref is None:
        return None
    from transformers import AutoTokenizer

    folder = Path(ref).expanduser()
    if folder.is_dir() and not any((folder / f).is_file() for f in TOKENIZER_FILES):
        return None  # a bare config (transformers would build an empty tokenizer from it)
    try:
        tok = AutoTokenizer.from_pretrained(ref)
    except Exception:  # no tokenizer files on the hub either: lengths are estimated instead
        return None
    return tok if len(tok) >= 256 else None


def make_plan(model: str, items, options: AttributionOptions, *, dtype: str = "fp32",
              gpu_memory_gib: float | None = None, tokenizer: str | None = None) -> Plan:
    """The plan for attributing ``items`` with ``model`` (a ref; nothing but configs is read).

    Token lengths come from ``tokenizer`` (a ref; default: the model's own), encoded exactly as the
    engine encodes; without a tokenizer they are estimated at 4 characters per token.
    """
    if dtype not in DTYPE_BYTES:
        raise CulnigError(f"unknown dtype {dtype!r}; use one of: {', '.join(DTYPE_BYTES)}")
    config = load_config(model)
    layout = layout_for(config)
    notes = []
    tok = _tokenizer(tokenizer or (model if not Path(model).is_file() else None))
    if tok is not None:
        lengths = token_lengths(items, tok, options)
        lengths_from = f"from the tokenizer of {tokenizer or model}"
    else:
        from attribution.encode import render_prompt

        class _NoTemplate:
            chat_template = None

        lengths = [len(render_prompt(it, _NoTemplate(), False)[0]) // 4 + 16 for it in items]
        lengths_from = "estimated (no tokenizer: 4 characters per token + 16)"
        notes.append("pass --tokenizer for exact token lengths")
    if options.max_length:
        lengths = [min(n, options.max_length) for n in lengths]
    batches = batch_shapes(lengths, options.batch_size)
    n_countries = len({it.country for it in items})

    def act(shape):
        return activation_bytes(config, layout, shape[0], shape[1], dtype, options.modules)

    peak_batch = max(batches, key=lambda bt: act(bt).total)
    return Plan(model=model, arch=layout.name, layout=layout, dtype=dtype,
                n_parameters=count_parameters(config), options=options, n_items=len(items),
                n_countries=n_countries, lengths_from=lengths_from, batches=batches,
                peak_batch=peak_batch, activations=act(peak_batch),
                accumulators=accumulator_bytes(layout, n_countries, options.modules,
                                               options.aggregations),
                gpu_memory_gib=gpu_memory_gib, notes=notes)


def plan_lines(model: str, data: str | Path, options: AttributionOptions, *, dtype: str = "fp32",
               gpu_memory_gib: float | None = None, tokenizer: str | None = None) -> list[str]:
    """``culnig attribute --plan``: the plan for the items file ``data``, as printable lines."""
    from attribution.items import read_items

    if gpu_memory_gib is not None and not gpu_memory_gib > 0:
        raise CulnigError(f"--gpu-memory must be a positive number of GiB, got {gpu_memory_gib:g}")
    return make_plan(model, read_items(data), options, dtype=dtype, gpu_memory_gib=gpu_memory_gib,
                     tokenizer=tokenizer).lines()
