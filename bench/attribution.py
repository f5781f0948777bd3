"""Attribution speed and memory, measured side by side in one run on the same batches.

    python bench/attribution.py [--model demo|smollm2|PATH] [--items 32] [--batch-size 16]

Modes, on identical batches of real CommonsenseQA prompts (paper Table 9, variant 1):

* plain:     forward + backward of P(y|x) with the same graph and no attribution work;
* engine:    culnig's Attributor (hooks, on-device reduction, index_add accumulation);
* reference: the published code's style: retain every projection output's gradient, then per
             item, layer and module move the per-neuron scores to Python and accumulate them in
             dictionaries keyed by neuron.

Each mode runs --repeats times in rotating order; ratios use the best run of each mode (other
processes only ever add time), medians are printed beside them. Prints the per-item cost split and a projection to a paper-scale run, then the three ratios on
the last lines, in this order: (a) engine ÷ plain throughput (target >= 0.75), (b) engine ÷
reference throughput (target >= 1.5), (c) engine ÷ plain peak RSS (target <= 1.5; each measured
in a fresh process).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from attribution.engine import AttributionOptions, Attributor  # noqa: E402
from attribution.items import Item  # noqa: E402
from culnig.registry import MODULES  # noqa: E402

PAPER = {"model": "gemma-3-12b", "layers": 48, "gate": 15360, "up": 15360, "q": 4096, "k": 2048,
         "v": 2048, "items": 25_000, "tokens": 100}


def load(ref: str):
    from culnig.models import resolve_model_ref
    from culnig.loading import load_model

    return load_model(resolve_model_ref(ref), dtype="fp32")


def make_items(n: int) -> list[Item]:
    from culnig_tasks.data import load_split
    from culnig_tasks.prompts import variants

    ds = load_split("tau/commonsense_qa", None, "validation", "commonsense_qa/validation.jsonl")["validation"]
    template = variants("commonsenseqa")[0]
    items = []
    for k, doc in enumerate(ds.select(range(n))):
        opts = {f"option_{c}": t for c, t in zip("abcde", doc["choices"]["text"])}
        items.append(Item(id=doc["id"], dataset="csqa", country=["US", "UK", "Japan"][k % 3],
                          answer=doc["answerKey"], prompt=template.format(question=doc["question"], **opts)))
    return items


class Runner:
    def __init__(self, model, tok, layout, items, batch_size):
        self.model, self.layout = model, layout
        self.att = Attributor(model, tok, layout, AttributionOptions(batch_size=batch_size))
        countries = sorted({it.country for it in items})
        index = {c: i for i, c in enumerate(countries)}
        encs = self.att.encode(items)
        order = sorted(range(len(items)), key=lambda i: (len(encs[i].input_ids), i))
        self.batches = [self.att._collate([encs[i] for i in order[s:s + batch_size]],
                                          [items[i] for i in order[s:s + batch_size]], index)
                        for s in range(0, len(order), batch_size)]
        from attribution.engine import Accumulators

        self.att._acc = Accumulators(layout, self.att.options, len(countries), self.att.device)
        for p in model.parameters():
            p.requires_grad_(False)
        self.emb_hook = model.get_input_embeddings().register_forward_hook(
            lambda m, i, o: o.requires_grad_(True))
        self.tokens = sum(b.n_tokens for b in self.batches)
        self.items = sum(len(b.country) for b in self.batches)

    def forward_only(self):
        with torch.no_grad():
            for b in self.batches:
                self.att._answer_probability(b)

    def plain(self):
        for b in self.batches:
            with torch.enable_grad():
                self.att._answer_probability(b).sum().backward()

    def engine(self):
        self.emb_hook.remove()
        self.att._install()
        try:
            for b in self.batches:
                self.att.process_batch(b)
        finally:
            self.att._remove()
            self.emb_hook = self.model.get_input_embeddings().register_forward_hook(
                lambda m, i, o: o.requires_grad_(True))

    def reference(self):
        """Published-code style: retain_grad on outputs, then Python-dict accumulation per neuron."""
        scores: dict = defaultdict(float)
        saved, handles = {}, []
        layers = self.layout.layers(self.model)
        for layer in range(self.layout.n_layers):
            for m in MODULES:
                site = self.layout.site(m)

                def hook(mod, inp, out, key=(layer, m), rows=site.rows):
                    out.retain_grad()
                    saved[key] = (out, rows)
                handles.append(layers[layer].get_submodule(site.path).register_forward_hook(hook))
        try:
            for b in self.batches:
                with torch.enable_grad():
                    p = self.att._answer_probability(b)
                    p.sum().backward()
                probs = p.detach().tolist()
                mask = b.attention_mask.bool()
                for (layer, m), (out, rows) in saved.items():
                    s = (out.detach()[..., rows] * out.grad[..., rows])
                    for i in range(s.shape[0]):
                        per_neuron = s[i][mask[i]].max(dim=0).values.tolist()
                        for idx, v in enumerate(per_neuron):
                            scores[(b.country[i].item(), layer, m, idx)] += v * probs[i]
                saved.clear()
        finally:
            for h in handles:
                h.remove()
        return scores


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def rss_probe(mode: str, args) -> None:
    model, tok, layout = load(args.model)
    r = Runner(model, tok, layout, make_items(args.items), args.batch_size)
    getattr(r, mode)()
    print(json.dumps({"maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="demo")
    ap.add_argument("--items", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--rss-probe", choices=("plain", "engine"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.rss_probe:
        return rss_probe(args.rss_probe, args)

    model, tok, layout = load(args.model)
    r = Runner(model, tok, layout, make_items(args.items), args.batch_size)
    print(f"model {args.model}: {layout.name}, {layout.n_layers} layers, neurons per layer "
          f"{ {m: layout.n_neurons(m) for m in MODULES} }; {r.items} items, {r.tokens} tokens, "
          f"batch {args.batch_size}, torch threads {torch.get_num_threads()}")
    r.plain()  # warm-up
    times = defaultdict(list)
    for rep in range(args.repeats):
        modes = ["forward_only", "plain", "engine", "reference"]
        for mode in modes[rep % 4:] + modes[:rep % 4]:  # rotate the order between repeats
            times[mode].append(timed(getattr(r, mode)))
    # Best of N: contention from other processes on a shared machine only ever adds time, so the
    # minimum is the least noisy estimate of each mode's own cost (medians are printed too).
    med = {m: min(v) for m, v in times.items()}
    medians = {m: statistics.median(v) for m, v in times.items()}
    per_item = {m: 1000 * t / r.items for m, t in med.items()}
    for m in ("forward_only", "plain", "engine", "reference"):
        print(f"{m:13s} {per_item[m]:8.1f} ms/item  {r.items / med[m]:6.2f} items/s  "
              f"{r.tokens / med[m]:8.0f} tokens/s  (best of {len(times[m])}; median "
              f"{medians[m]:.2f}s; runs: {', '.join(f'{t:.2f}s' for t in times[m])})")
    fwd = per_item["forward_only"]
    bwd = per_item["plain"] - fwd
    red = per_item["engine"] - per_item["plain"]
    ref_red = per_item["reference"] - per_item["plain"]
    print(f"cost split per item: forward {fwd:.1f} ms, backward {bwd:.1f} ms, "
          f"reduction {red:.1f} ms (engine) vs {ref_red:.1f} ms (reference-style)")

    n_model = sum(layout.n_neurons(m) for m in MODULES) * layout.n_layers
    n_paper = sum(PAPER[m] for m in MODULES) * PAPER["layers"]
    tok_per_item = r.tokens / r.items
    eng_ns = max(red, 0.0) * 1e6 / (n_model * tok_per_item)  # per neuron-position
    ref_ns = max(ref_red, 0.0) * 1e6 / n_model  # per neuron (the Python loop is per neuron)
    eng_h = eng_ns * n_paper * PAPER["tokens"] * PAPER["items"] / 1e9 / 3600
    ref_h = ref_ns * n_paper * PAPER["items"] / 1e9 / 3600
    print(f"projection, {PAPER['model']} ({PAPER['layers']} layers, {n_paper:,} gate/up/q/k/v "
          f"neurons), {PAPER['items']:,} items x {PAPER['tokens']} tokens, reduction only, at this "
          f"machine's measured per-neuron cost: engine {eng_ns:.3f} ns/neuron-token -> {eng_h:.2f} h; "
          f"reference-style {ref_ns:.1f} ns/neuron -> {ref_h:.1f} h (Python-bound, does not shrink "
          "on a GPU)")

    rss = {}
    for mode in ("plain", "engine"):
        out = subprocess.run([sys.executable, __file__, "--rss-probe", mode, "--model", args.model,
                              "--items", str(args.items), "--batch-size", str(args.batch_size)],
                             capture_output=True, text=True, check=True)
        rss[mode] = json.loads(out.stdout.strip().splitlines()[-1])["maxrss_kb"]
    print(f"peak RSS: plain {rss['plain'] / 1024:.0f} MiB, engine {rss['engine'] / 1024:.0f} MiB")
    print(f"(a) attribution / plain fwd+bwd throughput: {med['plain'] / med['engine']:.2f}")
    print(f"(b) attribution / reference-style throughput: {med['reference'] / med['engine']:.2f}")
    print(f"(c) attribution / plain fwd+bwd peak RSS: {rss['engine'] / rss['plain']:.2f}")


if __name__ == "__main__":
    main()
