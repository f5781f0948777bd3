"""``culnig activations``: how often each MLP neuron fires (LAPE's activation statistics).

For every layer the forward hook sits on the MLP's activation module (``mlp.act_fn``; Phi-3:
``mlp.activation_fn``), whose output is ``act_fn(gate(x))``: the value that multiplies
``up(x)``, after the non-linearity, not the MLP output. Per corpus the engine counts, for each
neuron, the tokens at which that value is > 0, and the tokens counted.

Corpora (:mod:`culnig.corpora`) are streamed, tokenised without special tokens and cut into
fixed-length chunks: each chunk is ``<bos>`` (when the tokenizer has one) followed by up to
``chunk_tokens - 1`` corpus tokens, so every chunk is ``chunk_tokens`` long except a corpus's
last one. The ``<bos>`` position and padding are not counted. ``--max-tokens`` caps the counted
tokens per corpus.

Statistics file (safetensors): ``over_zero.<name>`` int64 ``[n_layers, intermediate_size]`` and
``tokens`` int64 ``[n_corpora]`` (in the order of ``metadata.corpora``); the JSON metadata under
``culnig_activations`` holds the format tag, corpus names and sources, the model block of the
neuron set files (fingerprint, sizes), the activation function and the chunking settings.

Resumable like ``culnig attribute``: every ``checkpoint_every`` batches and after each corpus
the counts and the number of chunks done are written to ``<out>.partial``; ``--resume``
continues from it (the chunks are formed deterministically, so the result equals an
uninterrupted run). The model's weights stamp is part of the run and of the file's model block.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch

from culnig_tasks.corpora import Corpus
from culnig.atomic import atomic_file, check_new_output, clean_leftovers
from culnig.errors import CulnigError, UnsupportedArchitecture
from culnig.neuron_sets import ModelShape, model_block
from culnig.registry import ModelLayout

FORMAT = "culnig-activation-stats/1"
META_KEY = "culnig_activations"
ACT_ATTRS = ("act_fn", "activation_fn")


# --- activation functions ----------------------------------------------------------------------

def activation_at_zero(hidden_act: str) -> float:
    """``act(0)`` for a transformers activation name (``ACT2FN``)."""
    from transformers.activations import ACT2FN

    try:
        fn = ACT2FN[hidden_act]
    except KeyError:
        raise CulnigError(f"unknown MLP activation {hidden_act!r}; LAPE needs an activation that "
                          "is 0 at 0 (silu, gelu, gelu_pytorch_tanh, relu, ...)") from None
    with torch.no_grad():
        return float(fn(torch.zeros(1, dtype=torch.float64)).item())


def check_zero_at_zero(hidden_act: str, what: str = "this model") -> None:
    """Refuse an MLP activation that is not 0 at 0: then zeroing a gate row does not zero the
    neuron's activation, and "> 0" does not mean "active"."""
    value = activation_at_zero(hidden_act)
    if abs(value) > 1e-12:
        raise CulnigError(f"{what}: its MLP activation {hidden_act!r} is {value:g} at 0, not 0; "
                          "LAPE/CAPE neurons are defined by act(gate(x)) > 0 and masked by zeroing "
                          "the gate row, which needs act(0) = 0 (SiLU, GELU, ReLU families)")


def activation_modules(model: Any, layout: ModelLayout) -> list[torch.nn.Module]:
    """Each layer's MLP activation module (one distinct module per layer)."""
    gate_path = layout.site("gate").path
    mlp_path = gate_path.rsplit(".", 1)[0]
    mods = []
    for i, layer in enumerate(layout.layers(model)):
        mlp = layer.get_submodule(mlp_path)
        act = next((getattr(mlp, a) for a in ACT_ATTRS
                    if isinstance(getattr(mlp, a, None), torch.nn.Module)), None)
        if act is None:
            raise UnsupportedArchitecture(
                f"layer {i}: {type(mlp).__name__} has no activation module ({' or '.join(ACT_ATTRS)}); "
                "activation statistics need the MLP's act_fn as a module")
        mods.append(act)
    if len({id(m) for m in mods}) != len(mods):
        raise UnsupportedArchitecture("the layers share one activation module; per-layer hooks "
                                      "cannot tell the layers apart")
    return mods


def check_model_activation(model: Any, layout: ModelLayout, what: str) -> None:
    """Check the loaded modules themselves (not only the config's name) are 0 at 0."""
    check_zero_at_zero(layout.hidden_act, what)
    for i, act in enumerate(activation_modules(model, layout)):
        p = next(model.parameters())
        with torch.no_grad():
            value = act(torch.zeros(1, 4, dtype=p.dtype, device=p.device)).abs().max().item()
        if value > 1e-6:
            raise CulnigError(f"{what}: the layer-{i} MLP activation ({type(act).__name__}) is "
                              f"{value:g} at 0, not 0; LAPE/CAPE need act(0) = 0")


class ActivationCounter:
    """Forward hooks that add ``(act > 0)`` per neuron over the counted positions."""

    def __init__(self, model: Any, layout: ModelLayout):
        self.layout = layout
        self.modules = activation_modules(model, layout)
        p = next(model.parameters())
        self.counts = torch.zeros(layout.n_layers, layout.intermediate_size, dtype=torch.int64,
                                  device=p.device)
        self._mask: torch.Tensor | None = None
        self._handles = []
        self._seen: list[int] = []

    def _hook(self, layer: int):
        n = self.layout.intermediate_size

        def hook(_module, _inputs, output):
            if self._mask is None:
                return
            if output.shape[-1] != n or output.shape[:2] != self._mask.shape:
                raise UnsupportedArchitecture(
                    f"layer {layer}: the activation module returned shape {tuple(output.shape)}, "
                    f"expected [batch, tokens, {n}]")
            active = output[self._mask] > 0          # [counted tokens, N]
            self.counts[layer] += active.sum(dim=0)
            self._seen.append(layer)
        return hook

    def __enter__(self) -> "ActivationCounter":
        self._handles = [m.register_forward_hook(self._hook(i)) for i, m in enumerate(self.modules)]
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def add(self, model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor,
            count_mask: torch.Tensor) -> None:
        """One forward pass; ``count_mask`` [B, T] marks the positions to count."""
        self._mask = count_mask.bool()
        self._seen = []
        try:
            with torch.no_grad():
                model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False,
                      logits_to_keep=1)
        finally:
            self._mask = None
        if sorted(self._seen) != list(range(self.layout.n_layers)):
            raise UnsupportedArchitecture(
                f"the activation hooks fired for layers {sorted(self._seen)}, expected each of the "
                f"{self.layout.n_layers} layers once per forward pass")


# --- chunking ---------------------------------------------------------------------------------

def iter_chunks(corpus: Corpus, tokenizer: Any, content_len: int,
                max_tokens: int | None = None, docs_per_call: int = 256) -> Iterator[list[int]]:
    """Token-id lists of ``content_len`` corpus tokens (the last may be shorter), at most
    ``max_tokens`` tokens in all."""
    buf: list[int] = []
    total = 0

    def emit(ids: list[int]) -> list[int] | None:
        nonlocal total
        if max_tokens is not None:
            ids = ids[:max_tokens - total]
        total += len(ids)
        return ids or None

    def batches() -> Iterator[list[str]]:
        docs: list[str] = []
        for d in corpus.documents():
            docs.append(d)
            if len(docs) == docs_per_call:
                yield docs
                docs = []
        if docs:
            yield docs

    for docs in batches():
        for ids in tokenizer(docs, add_special_tokens=False)["input_ids"]:
            buf.extend(ids)
        while len(buf) >= content_len:
            chunk, buf = buf[:content_len], buf[content_len:]
            chunk = emit(chunk)
            if chunk:
                yield chunk
            if max_tokens is not None and total >= max_tokens:
                return
    if buf:
        chunk = emit(buf)
        if chunk:
            yield chunk


def first_token(corpus: Corpus, tokenizer: Any) -> bool:
    """Whether the corpus has at least one token (reads only up to the first non-empty document)."""
    for doc in corpus.documents():
        if doc.strip() and tokenizer(doc, add_special_tokens=False)["input_ids"]:
            return True
    return False


# --- statistics file ---------------------------------------------------------------------------

@dataclass
class ActivationStats:
    names: list[str]
    over_zero: dict[str, torch.Tensor]  # name -> [L, N] int64
    tokens: dict[str, int]
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def shape(self) -> ModelShape:
        return ModelShape.from_meta(self.meta.get("model") or {}, "activation statistics")

    def select(self, names: list[str] | None, source: str = "statistics") -> list[str]:
        """Check ``names`` against the file's corpora; ``None`` means all of them."""
        if names is None:
            return list(self.names)
        unknown = [n for n in names if n not in self.over_zero]
        if unknown:
            raise CulnigError(f"{source}: unknown corpus {unknown[0]!r}; the file has: "
                              f"{', '.join(self.names)}")
        if len(set(names)) != len(names):
            raise CulnigError(f"{source}: a corpus is named twice in {','.join(names)}")
        return list(names)

    def probabilities(self, names: list[str], source: str = "statistics") -> torch.Tensor:
        """``[C, L, N]`` float64: fraction of each corpus's tokens at which a neuron is > 0."""
        for n in names:
            if self.tokens.get(n, 0) <= 0:
                raise CulnigError(f"{source}: corpus {n!r} has zero tokens; its activation "
                                  "probabilities are undefined (recount it with text in it)")
        return torch.stack([self.over_zero[n].double() / self.tokens[n] for n in names])

    def save(self, path: str | Path) -> None:
        from safetensors.torch import save_file

        path = Path(path)
        tensors = {f"over_zero.{n}": self.over_zero[n].to(torch.int64).contiguous() for n in self.names}
        tensors["tokens"] = torch.tensor([self.tokens[n] for n in self.names], dtype=torch.int64)
        meta = dict(self.meta, format=FORMAT, corpora=list(self.names))
        with atomic_file(path) as tmp:
            save_file(tensors, str(tmp), metadata={META_KEY: json.dumps(meta)})

    @classmethod
    def load(cls, path: str | Path) -> "ActivationStats":
        from safetensors import SafetensorError, safe_open

        path = Path(path)
        if not path.is_file():
            raise CulnigError(f"{path}: no such activation statistics file (write one with "
                              "`culnig activations`)")
        try:
            with safe_open(str(path), framework="pt") as fh:
                raw = (fh.metadata() or {}).get(META_KEY)
                if raw is None:
                    raise CulnigError(f"{path}: not a culnig activation statistics file")
                meta = json.loads(raw)
                if meta.get("format") != FORMAT:
                    raise CulnigError(f"{path}: format {meta.get('format')!r} is not {FORMAT!r}")
                names = list(meta["corpora"])
                over = {n: fh.get_tensor(f"over_zero.{n}") for n in names}
                tokens = fh.get_tensor("tokens").tolist()
        except SafetensorError as exc:
            raise CulnigError(f"{path}: not a safetensors file ({exc})") from None
        return cls(names=names, over_zero=over, tokens=dict(zip(names, map(int, tokens))), meta=meta)


# --- the run -----------------------------------------------------------------------------------

def _partial_path(out: Path) -> Path:
    return out.with_name(out.name + ".partial")


def _save_partial(path: Path, counts: dict[str, torch.Tensor], progress: dict, run_key: dict) -> None:
    from safetensors.torch import save_file

    with atomic_file(path) as tmp:
        save_file({f"over_zero.{n}": c.detach().cpu().contiguous() for n, c in counts.items()},
                  str(tmp), metadata={"culnig_partial": json.dumps({"run": run_key,
                                                                     "progress": progress})})


def _load_partial(path: Path) -> tuple[dict[str, torch.Tensor], dict, dict]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = json.loads((fh.metadata() or {})["culnig_partial"])
            counts = {k.removeprefix("over_zero."): fh.get_tensor(k) for k in fh.keys()}
        return counts, meta["progress"], meta["run"]
    except Exception as exc:  # safetensors' own errors, KeyError, JSON
        raise CulnigError(f"{path}: not a readable activations checkpoint ({type(exc).__name__}); "
                          "pass --force to start over") from None


def _batches(chunks: Iterator[list[int]], size: int) -> Iterator[list[list[int]]]:
    batch: list[list[int]] = []
    for c in chunks:
        batch.append(c)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def encode_batch(batch: list[list[int]], bos: int | None, pad: int,
                 device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded ``(input_ids, attention_mask, count_mask)``; ``<bos>`` is attended, not counted."""
    lead = [bos] if bos is not None else []
    width = max(len(c) for c in batch) + len(lead)
    ids = torch.full((len(batch), width), pad, dtype=torch.long)
    attn = torch.zeros((len(batch), width), dtype=torch.long)
    count = torch.zeros((len(batch), width), dtype=torch.bool)
    for i, c in enumerate(batch):
        row = lead + c
        ids[i, :len(row)] = torch.tensor(row, dtype=torch.long)
        attn[i, :len(row)] = 1
        count[i, len(lead):len(row)] = True
    return ids.to(device), attn.to(device), count.to(device)


def count_activations(model: Any, tokenizer: Any, layout: ModelLayout, corpora: list[Corpus], *,
                      chunk_tokens: int = 4096, max_tokens: int | None = None, batch_size: int = 2,
                      state: dict[str, torch.Tensor] | None = None, progress_state: dict | None = None,
                      on_checkpoint=None, checkpoint_every: int = 50,
                      progress: bool = True) -> tuple[dict[str, torch.Tensor], dict[str, int]]:
    """Counts per corpus (``[L, N]`` int64) and counted tokens per corpus."""
    from tqdm import tqdm

    bos = tokenizer.bos_token_id
    content = chunk_tokens - (1 if bos is not None else 0)
    if content < 1:
        raise CulnigError(f"--chunk-tokens {chunk_tokens} leaves no room for text after <bos>")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (
        tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0)
    device = next(model.parameters()).device
    counts = {c.name: torch.zeros(layout.n_layers, layout.intermediate_size, dtype=torch.int64)
              for c in corpora}
    prog = {c.name: {"chunks": 0, "tokens": 0, "done": False} for c in corpora}
    if state is not None:
        for n, t in state.items():
            if n in counts:
                counts[n] = t.to(torch.int64).clone()
        for n, p in (progress_state or {}).items():
            if n in prog:
                prog[n] = dict(p)

    counter = ActivationCounter(model, layout)
    with counter:
        for corpus in corpora:
            p = prog[corpus.name]
            if p["done"]:
                continue
            counter.counts.zero_()
            counter.counts += counts[corpus.name].to(counter.counts.device)
            skip = p["chunks"]
            bar = tqdm(desc=f"activations {corpus.name}", unit="tok", total=max_tokens,
                       initial=p["tokens"], disable=not progress, dynamic_ncols=True)
            since = 0
            chunks = iter_chunks(corpus, tokenizer, content, max_tokens)
            for i, batch in enumerate(_batches(chunks, batch_size)):
                if (i + 1) * batch_size <= skip:
                    continue  # done before the interruption (whole batches only)
                ids, attn, cnt = encode_batch(batch, bos, pad, device)
                counter.add(model, ids, attn, cnt)
                n_tok = sum(len(c) for c in batch)
                p["chunks"] += len(batch)
                p["tokens"] += n_tok
                bar.update(n_tok)
                since += 1
                if on_checkpoint is not None and since >= checkpoint_every:
                    counts[corpus.name] = counter.counts.cpu().clone()
                    on_checkpoint(counts, prog)
                    since = 0
            bar.close()
            counts[corpus.name] = counter.counts.cpu().clone()
            p["done"] = True
            if p["tokens"] == 0:
                raise CulnigError(f"corpus {corpus.name!r} has zero tokens ({', '.join(corpus.sources)})")
            if on_checkpoint is not None:
                on_checkpoint(counts, prog)
    return counts, {n: int(prog[n]["tokens"]) for n in counts}


def run_activations(model_ref: str, corpora: list[Corpus], out: str | Path, *,
                    chunk_tokens: int = 4096, max_tokens: int | None = None, batch_size: int = 2,
                    dtype: str = "fp32", resume: bool = False, force: bool = False,
                    checkpoint_every: int = 50, progress: bool = True, device: str | None = None,
                    model=None, tokenizer=None) -> Path:
    """Count and write the statistics file; returns its path. Bad input fails before the model
    is loaded (except an activation that is not 0 at 0, which needs the config)."""
    out = Path(out)
    if out.is_dir():
        raise CulnigError(f"{out} is a folder; --out names the statistics file to write")
    out = check_new_output(out, force=force)
    clean_leftovers(out.parent)
    if chunk_tokens < 2:
        raise CulnigError(f"--chunk-tokens must be at least 2, got {chunk_tokens}")
    if max_tokens is not None and max_tokens < 1:
        raise CulnigError(f"--max-tokens must be positive, got {max_tokens}")
    if batch_size < 1:
        raise CulnigError(f"--batch-size must be positive, got {batch_size}")
    if not corpora:
        raise CulnigError("no corpus given; pass --corpus NAME=PATH")
    partial = _partial_path(out)
    if partial.exists() and not resume and not force:
        raise CulnigError(f"{partial}: an interrupted run left a checkpoint; pass --resume to "
                          "continue it or --force to start over")

    if model is None:
        from culnig.loading import read_config
        from culnig.registry import layout_for

        layout = layout_for(read_config(model_ref))
        check_zero_at_zero(layout.hidden_act, str(model_ref))
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(model_ref)
    else:
        from culnig.registry import layout_for

        layout = layout_for(model.config)
    for c in corpora:  # a corpus without a single token: before the model is loaded
        if not first_token(c, tokenizer):
            raise CulnigError(f"corpus {c.name!r} has zero tokens ({', '.join(c.sources)}); give it "
                              "some text")
    if model is None:
        from culnig.loading import load_model

        model, tokenizer, layout = load_model(model_ref, dtype=dtype)
        dev = device or ("cuda" if torch.cuda.is_available() else "cpu")
        model.to(dev)
    check_model_activation(model, layout, str(model_ref))

    from culnig.loading import weights_stamp_of

    stamp = weights_stamp_of(str(model_ref))
    run_key = {"fingerprint": layout.fingerprint, "weights_stamp": stamp,
               "corpora": {c.name: c.identity() for c in corpora},
               "chunk_tokens": chunk_tokens, "max_tokens": max_tokens, "batch_size": batch_size,
               "dtype": dtype}
    state = prog = None
    if resume and partial.exists():
        state, prog, key = _load_partial(partial)
        if key != json.loads(json.dumps(run_key)):
            diff = sorted(k for k in run_key if key.get(k) != json.loads(json.dumps(run_key[k])))
            raise CulnigError(f"{partial}: checkpoint is from a different run ({', '.join(diff)} "
                              "changed); pass --force to start over")

    def checkpoint(counts, progress_state):
        _save_partial(partial, counts, progress_state, run_key)

    counts, tokens = count_activations(model, tokenizer, layout, corpora, chunk_tokens=chunk_tokens,
                                       max_tokens=max_tokens, batch_size=batch_size, state=state,
                                       progress_state=prog, on_checkpoint=checkpoint,
                                       checkpoint_every=checkpoint_every, progress=progress)
    meta = {"model": model_block(layout, str(model_ref), stamp), "hidden_act": layout.hidden_act,
            "chunk_tokens": chunk_tokens, "max_tokens": max_tokens, "dtype": dtype,
            "bos": tokenizer.bos_token_id is not None,
            "sources": {c.name: {"sources": c.sources, "files": c.identity()} for c in corpora},
            "definition": "act_fn(gate(x)) > 0 per token; <bos> and padding not counted"}
    ActivationStats(names=[c.name for c in corpora], over_zero=counts, tokens=tokens,
                    meta=meta).save(out)
    partial.unlink(missing_ok=True)
    return out
