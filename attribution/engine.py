"""The CULNIG attribution engine (paper Sec. 3.1-3.2).

For an item (x, y) and every neuron n of the chosen modules at token position i, the score is
``s_i = n_i * dP(y|x)/dn_i``: the projection output times the gradient of the answer's
probability (not its log) with respect to it. Per item the positions are reduced with

* ``max`` over positions (the paper's method),
* ``mean`` over positions (App. I),
* ``norm``: ``w . dP/dw`` for each neuron's weight row (App. I). Because ``n_i = w . x_i (+ b)``,
  ``w . dP/dw = sum_i (n_i - b) * dP/dn_i``: it comes from the same activation/gradient pair
  without weight gradients;

then summed over the dataset as ``sum_q P(y_q|x_q) * s(x_q, y_q)`` per country and in total.

How it runs:

* parameters are frozen and only activations carry gradients (a hook on the input embeddings
  turns ``requires_grad`` on), so the backward pass computes no weight gradients;
* the LM head is applied only at the positions where y is scored (``logits_to_keep``);
* a forward hook on each hooked projection registers a gradient hook on its output; when the
  gradient arrives, the per-position product is reduced over positions on the device right away
  and ``index_add``-ed into ``[layers, countries + 1, neurons]`` float64 accumulators, so no
  activation x gradient tensor outlives its module's backward step;
* padding positions never enter the reduction (-inf for ``max``, excluded from ``mean``). The
  reference implementation filled pads with 0 before its max, which differs when every real
  position of a neuron scores below 0;
* position ids are passed explicitly, so left-padded rows start at position 0 (the reference
  passed none, so its left-padded rows started later);
* control items (``control: true``) have their per-item scores clamped at >= 0 before summing,
  as the reference does (``clamp_control=False`` turns it off);
* an item longer than the model's context (``max_position_embeddings``) or ``max_length`` is an
  error naming its file and line, unless ``truncate`` (``left``/``right``, :func:`encode.fit`)
  says how to shorten it; the limit, side and number of items shortened go into the scores.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterable, Sequence

import torch

from attribution.encode import TRUNCATE_SIDES, Encoded, encode_item, fit
from attribution.items import Item
from attribution.scores import Scores
from culnig import __version__
from culnig.errors import CulnigError
from culnig.registry import MODULES, ModelLayout

AGGREGATIONS = ("max", "mean", "norm")


@dataclass(frozen=True)
class AttributionOptions:
    modules: tuple[str, ...] = MODULES
    aggregations: tuple[str, ...] = ("max",)
    batch_size: int = 8
    padding_side: str = "left"
    clamp_control: bool = True
    use_chat_template: bool = True
    max_length: int | None = None
    truncate: str | None = None  # None: an over-long item is an error; "left" / "right"

    def __post_init__(self):
        bad = [m for m in self.modules if m not in MODULES]
        if bad or not self.modules:
            raise CulnigError(f"unknown module {bad[0] if bad else '(none)'!r}; choose from "
                              f"{', '.join(MODULES)}")
        bad = [a for a in self.aggregations if a not in AGGREGATIONS]
        if bad or not self.aggregations:
            raise CulnigError(f"unknown aggregation {bad[0] if bad else '(none)'!r}; choose from "
                              f"{', '.join(AGGREGATIONS)}")
        if self.batch_size < 1:
            raise CulnigError("batch size must be >= 1")
        if self.padding_side not in ("left", "right"):
            raise CulnigError("padding side must be left or right")
        if self.max_length is not None and (isinstance(self.max_length, bool)
                                            or not isinstance(self.max_length, int)
                                            or self.max_length < 2):
            raise CulnigError(f"--max-length must be an integer >= 2 (a prompt token and an answer "
                              f"token), got {self.max_length}")
        if self.truncate is not None and self.truncate not in TRUNCATE_SIDES:
            raise CulnigError(f"--truncate must be one of {', '.join(TRUNCATE_SIDES)}, got "
                              f"{self.truncate!r}")

    def key(self) -> dict:
        """What must match for a resumed run to continue an interrupted one."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


class Accumulators:
    """float64 sums ``[n_layers, n_countries + 1, n_neurons]`` per (aggregation, module)."""

    def __init__(self, layout: ModelLayout, options: AttributionOptions, n_countries: int,
                 device: torch.device):
        self.n_rows = n_countries + 1
        self.sums = {
            (a, m): torch.zeros(layout.n_layers, self.n_rows, layout.n_neurons(m),
                                dtype=torch.float64, device=device)
            for a in options.aggregations for m in options.modules
        }
        self.count = torch.zeros(self.n_rows, dtype=torch.float64, device=device)
        self.sum_p = torch.zeros(self.n_rows, dtype=torch.float64, device=device)

    def state(self) -> dict[str, torch.Tensor]:
        out = {f"{a}.{m}": t for (a, m), t in self.sums.items()}
        out["count"], out["sum_p"] = self.count, self.sum_p
        return out

    def load(self, state: dict[str, torch.Tensor]) -> None:
        for (a, m), t in self.sums.items():
            t.copy_(state[f"{a}.{m}"])
        self.count.copy_(state["count"])
        self.sum_p.copy_(state["sum_p"])


@dataclass
class _Batch:
    input_ids: torch.Tensor  # [B, T]
    attention_mask: torch.Tensor  # [B, T]
    position_ids: torch.Tensor  # [B, T]
    keep: torch.Tensor  # [K] sequence positions whose logits are needed
    gather_pos: torch.Tensor  # [B, A] index into keep for each answer token (padded)
    answer_ids: torch.Tensor  # [B, A]
    answer_mask: torch.Tensor  # [B, A]
    country: torch.Tensor  # [B]
    control: torch.Tensor  # [B] bool
    n_tokens: int


@dataclass
class _Probe:
    """State shared by the hooks during one batch."""

    valid: torch.Tensor | None = None  # [B, T] float, 1 on real tokens
    pad_bias: torch.Tensor | None = None  # [B, T, 1] float, 0 on real tokens, -inf on padding
    n_valid: torch.Tensor | None = None  # [B, 1]
    any_control: bool = False
    weights: torch.Tensor | None = None  # [B] float64: P(y|x), set before backward
    country: torch.Tensor | None = None
    control: torch.Tensor | None = None
    handles: list = field(default_factory=list)


class Attributor:
    """Computes CULNIG scores for a transformers model with the registry's layout."""

    def __init__(self, model, tokenizer, layout: ModelLayout, options: AttributionOptions):
        self.model = model
        self.tokenizer = tokenizer
        self.layout = layout
        self.options = options
        self.device = next(model.parameters()).device
        pad = tokenizer.pad_token_id
        if pad is None:
            pad = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
        self.pad_id = int(pad)
        self._probe = _Probe()
        self._acc: Accumulators | None = None
        self.truncation: dict | None = None  # set by encode()
        # linear path -> [(layer, module, rows slice, bias slice or None)]
        self._targets = self._hook_targets()

    # --- encoding ------------------------------------------------------------------------------
    def context_limit(self) -> tuple[int | None, str]:
        """The most tokens an input may have, and where that limit comes from."""
        cfg = self.model.config
        text = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
        ctx = getattr(text, "max_position_embeddings", None)
        ctx = int(ctx) if isinstance(ctx, int) and ctx > 0 else None
        own = self.options.max_length
        if own is not None and (ctx is None or own <= ctx):
            return own, f"--max-length {own}"
        if ctx is None:
            return None, "no limit"
        return ctx, f"the model's context of {ctx} tokens (max_position_embeddings)"

    def encode(self, items: Sequence[Item]) -> list[Encoded]:
        """Token ids of every item; over-long items are an error unless ``truncate`` is set."""
        opts = self.options
        limit, why = self.context_limit()
        bos = getattr(self.tokenizer, "bos_token_id", None)
        out = []
        for it in items:
            enc = encode_item(it, self.tokenizer, use_chat_template=opts.use_chat_template)
            if limit is not None and len(enc.input_ids) > limit:
                what = f"{it.source or 'items'}: item {it.id!r}"
                if opts.truncate is None:
                    raise CulnigError(f"{what} is {len(enc.input_ids)} tokens long, more than {why}; "
                                      "shorten it, or pass --truncate left|right to cut it")
                enc = fit(enc, limit, opts.truncate, bos, what)
            out.append(enc)
        self.truncation = {"side": opts.truncate, "limit": limit,
                           "items": sum(1 for e in out if e.truncated)}
        return out

    def _collate(self, encs: Sequence[Encoded], items: Sequence[Item],
                 country_index: dict[str, int]) -> _Batch:
        B = len(encs)
        T = max(len(e.input_ids) for e in encs)
        A = max(e.n_answer for e in encs)
        ids = torch.full((B, T), self.pad_id, dtype=torch.long)
        mask = torch.zeros((B, T), dtype=torch.long)
        ans = torch.zeros((B, A), dtype=torch.long)
        ans_mask = torch.zeros((B, A), dtype=torch.bool)
        ans_pos = torch.zeros((B, A), dtype=torch.long)
        for b, e in enumerate(encs):
            n = len(e.input_ids)
            start = T - n if self.options.padding_side == "left" else 0
            ids[b, start:start + n] = torch.tensor(e.input_ids)
            mask[b, start:start + n] = 1
            k = e.n_answer
            ans[b, :k] = torch.tensor(e.answer_ids)
            ans_mask[b, :k] = True
            # answer token j is predicted at the position of the token before it
            ans_pos[b, :k] = torch.arange(start + n - k, start + n)
        keep, inverse = torch.unique(ans_pos[ans_mask], return_inverse=True)
        gather = torch.zeros((B, A), dtype=torch.long)
        gather[ans_mask] = inverse
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        return _Batch(
            input_ids=ids, attention_mask=mask, position_ids=pos, keep=keep, gather_pos=gather,
            answer_ids=ans, answer_mask=ans_mask,
            country=torch.tensor([country_index[it.country] for it in items], dtype=torch.long),
            control=torch.tensor([it.control for it in items], dtype=torch.bool),
            n_tokens=int(mask.sum()),
        )

    # --- hooks -----------------------------------------------------------------------------------
    def _hook_targets(self) -> dict[tuple[int, str], list[tuple[str, slice]]]:
        targets: dict[tuple[int, str], list[tuple[str, slice]]] = {}
        for layer in range(self.layout.n_layers):
            for m in self.options.modules:
                site = self.layout.site(m)
                targets.setdefault((layer, site.path), []).append((m, site.rows))
        return targets

    def _install(self) -> None:
        probe = self._probe
        emb = self.model.get_input_embeddings()
        probe.handles.append(emb.register_forward_hook(lambda mod, inp, out: out.requires_grad_(True)))
        layers = self.layout.layers(self.model)
        for (layer, path), sites in self._targets.items():
            linear = layers[layer].get_submodule(path)
            probe.handles.append(linear.register_forward_hook(self._make_forward_hook(layer, linear, sites)))

    def _remove(self) -> None:
        for h in self._probe.handles:
            h.remove()
        self._probe.handles.clear()

    def _make_forward_hook(self, layer: int, linear, sites):
        def forward_hook(module, inputs, output):
            if not output.requires_grad:
                return
            act = output.detach()
            output.register_hook(lambda grad: self._reduce(layer, linear, sites, act, grad))
        return forward_hook

    @torch.no_grad()
    def _reduce(self, layer: int, linear, sites, act: torch.Tensor, grad: torch.Tensor) -> None:
        probe, acc, opts = self._probe, self._acc, self.options
        cdt = torch.float64 if act.dtype == torch.float64 else torch.float32
        aggs = opts.aggregations
        for module, rows in sites:
            a = act[..., rows].to(cdt)
            g = grad[..., rows].to(cdt)
            results = {}
            if "max" in aggs:
                # pad_bias is 0 on real tokens and -inf on padding: one fused multiply-add, then max
                results["max"] = torch.addcmul(probe.pad_bias.to(cdt), a, g).amax(dim=1)
            if "mean" in aggs or "norm" in aggs:
                summed = (a * g).mul_(probe.valid[..., None].to(cdt)).sum(dim=1)  # sum_i n_i g_i
                if "mean" in aggs:
                    results["mean"] = summed / probe.n_valid
                if "norm" in aggs:  # w . dP/dw = sum_i (n_i - b) g_i
                    if linear.bias is not None:
                        g_sum = (g * probe.valid[..., None].to(cdt)).sum(dim=1)
                        summed = summed - linear.bias[rows].to(cdt) * g_sum
                    results["norm"] = summed
            for agg in aggs:
                per_item = results[agg].double() * probe.weights[:, None]
                if opts.clamp_control and probe.any_control:
                    per_item[probe.control] = per_item[probe.control].clamp(min=0)
                target = acc.sums[(agg, module)][layer]  # [C + 1, N]
                target.index_add_(0, probe.country, per_item)
                target[-1] += per_item.sum(dim=0)

    # --- one batch ------------------------------------------------------------------------------
    def _answer_probability(self, batch: _Batch) -> torch.Tensor:
        dev = self.device
        out = self.model(
            input_ids=batch.input_ids.to(dev), attention_mask=batch.attention_mask.to(dev),
            position_ids=batch.position_ids.to(dev), logits_to_keep=batch.keep.to(dev),
            use_cache=False,
        )
        logits = out.logits
        logp = torch.log_softmax(logits.double() if logits.dtype == torch.float64 else logits.float(),
                                 dim=-1)  # [B, K, V]
        gather = batch.gather_pos.to(dev)
        rows = torch.arange(logp.shape[0], device=dev)[:, None]
        tok_logp = logp[rows, gather, batch.answer_ids.to(dev)]  # [B, A]
        tok_logp = tok_logp * batch.answer_mask.to(dev)
        return tok_logp.sum(dim=-1).exp()  # P(y|x) = product of the answer tokens' probabilities

    def process_batch(self, batch: _Batch) -> torch.Tensor:
        """Forward, backward and accumulation for one batch; returns P(y|x) per item."""
        probe, dev = self._probe, self.device
        probe.valid = batch.attention_mask.to(dev, torch.float32)
        probe.pad_bias = torch.zeros_like(probe.valid)[..., None].masked_fill_(
            probe.valid[..., None] == 0, float("-inf"))
        probe.n_valid = probe.valid.sum(dim=1, keepdim=True)
        probe.country = batch.country.to(dev)
        probe.control = batch.control.to(dev)
        probe.any_control = bool(batch.control.any())
        with torch.enable_grad():
            p = self._answer_probability(batch)
            probe.weights = p.detach().double()
            p.sum().backward()
        acc = self._acc
        acc.count.index_add_(0, probe.country, torch.ones_like(probe.weights))
        acc.sum_p.index_add_(0, probe.country, probe.weights)
        acc.count[-1] += len(p)
        acc.sum_p[-1] += probe.weights.sum()
        return probe.weights

    # --- a dataset ------------------------------------------------------------------------------
    def run(self, items: Sequence[Item], *, countries: Sequence[str] | None = None,
            state: dict | None = None, done_ids: Iterable[str] = (),
            on_checkpoint: Callable[[Accumulators, list[str]], None] | None = None,
            checkpoint_every: int = 0, progress: bool = True, rank: int = 0,
            world_size: int = 1) -> tuple[Accumulators, list[str]]:
        """Accumulate scores over ``items``; returns the accumulators and the processed ids.

        Items are sorted by token length (ties by file order) so batches pad little; the order
        is deterministic, so a resumed run forms the same batches as an uninterrupted one. With
        ``world_size > 1`` this rank takes every ``world_size``-th batch.
        """
        countries = list(countries) if countries is not None else sorted({it.country for it in items})
        index = {c: i for i, c in enumerate(countries)}
        encs = self.encode(items)
        order = sorted(range(len(items)), key=lambda i: (len(encs[i].input_ids), i))
        bs = self.options.batch_size
        batches = [order[i:i + bs] for i in range(0, len(order), bs)][rank::world_size]
        self._acc = Accumulators(self.layout, self.options, len(countries), self.device)
        if state is not None:
            self._acc.load(state)
        done = set(done_ids)
        processed = [items[i].id for b in batches for i in b if items[i].id in done]
        todo = [b for b in batches if not all(items[i].id in done for i in b)]
        if any(items[i].id in done for b in todo for i in b):
            raise CulnigError("the checkpoint does not match this run's batches (items, batch size "
                              "or options changed); start again without --resume")
        from tqdm.auto import tqdm

        bar = tqdm(total=sum(len(b) for b in batches), initial=len(processed), unit="item",
                   disable=not progress, desc="attribution", dynamic_ncols=True)
        was_training = self.model.training
        self.model.eval()
        requires = [p.requires_grad for p in self.model.parameters()]
        for p in self.model.parameters():
            p.requires_grad_(False)
        self._install()
        tokens, t0, since_ckpt = 0, time.perf_counter(), 0
        try:
            for b in todo:
                batch = self._collate([encs[i] for i in b], [items[i] for i in b], index)
                self.process_batch(batch)
                processed.extend(items[i].id for i in b)
                tokens += batch.n_tokens
                since_ckpt += len(b)
                bar.update(len(b))
                dt = max(time.perf_counter() - t0, 1e-9)
                bar.set_postfix(tok_s=f"{tokens / dt:.0f}", refresh=False)
                if on_checkpoint and checkpoint_every and since_ckpt >= checkpoint_every:
                    on_checkpoint(self._acc, processed)
                    since_ckpt = 0
        finally:
            self._remove()
            for p, r in zip(self.model.parameters(), requires):
                p.requires_grad_(r)
            self.model.train(was_training)
            bar.close()
        return self._acc, processed

    def to_scores(self, acc: Accumulators, countries: Sequence[str], meta: dict) -> Scores:
        tensors = {f"{a}.{m}": t.permute(1, 0, 2).to(torch.float32).cpu()
                   for (a, m), t in acc.sums.items()}
        full = {
            "modules": list(self.options.modules),
            "aggregations": list(self.options.aggregations),
            "fingerprint": self.layout.fingerprint,
            "arch": self.layout.name,
            "n_layers": self.layout.n_layers,
            "n_neurons": {m: self.layout.n_neurons(m) for m in MODULES},
            "options": self.options.key(),
            "truncation": self.truncation,
            "culnig_version": __version__,
            **meta,
        }
        return Scores(tensors=tensors, countries=list(countries), count=acc.count.cpu(),
                      sum_p=acc.sum_p.cpu(), meta=full)


def attribute(model, tokenizer, items: Sequence[Item], layout: ModelLayout,
              options: AttributionOptions | None = None, *, meta: dict | None = None,
              progress: bool = False) -> Scores:
    """Scores for ``items`` in memory (no checkpointing): the Python entry point."""
    options = options or AttributionOptions()
    att = Attributor(model, tokenizer, layout, options)
    countries = sorted({it.country for it in items})
    acc, _ = att.run(items, countries=countries, progress=progress)
    return att.to_scores(acc, countries, meta or {})

