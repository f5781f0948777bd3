"""Attribution engine against an independent float64 per-item autograd reference, invariances,
first-order faithfulness, fused layouts, and bad input."""

from __future__ import annotations

import json
import random
from functools import lru_cache

import pytest
import torch

from attribution.engine import AttributionOptions, Attributor, attribute
from attribution.items import Item
from culnig.registry import MODULES, layout_for
from culnig.testing import ARCH_NAMES, tiny_model
from tests.conftest import run_culnig, single_error

AGGS = ("max", "mean", "norm")


def make_items() -> list[Item]:
    """Mixed items: 3 countries, chat messages, answer prefix, a multi-token answer, control rows."""
    rows = [
        ("US", "A", "Which one is right? A. tea B. coffee", "", False),
        ("UK", "B", "Pick one of A, B, C for the question about food and sport.", '{"answer_choice":"', False),
        ("US", "1", "Answer with 0 or 1 only: is the sky blue?", "", False),
        ("Japan", "C", "Options A B C D. Choose.", '{"answer_choice":"', True),
        ("UK", "D", "A short one", "", True),
        ("Japan", "yes", "Is this a question with a longer answer? Say yes or no.", "", False),
        ("US", "E", "Choose among A, B, C, D, E please, the answer is", "", False),
    ]
    items = [Item(id=f"i{k}", dataset="t", country=c, answer=a, prompt=p, answer_prefix=pre, control=ctl)
             for k, (c, a, p, pre, ctl) in enumerate(rows)]
    items.append(Item(id="chat", dataset="t", country="UK", answer="A",
                      messages=({"role": "system", "content": "Be brief."},
                                {"role": "user", "content": "A or B?"})))
    return items


@lru_cache(maxsize=None)
def model64(arch: str):
    model, tok = tiny_model(arch, seed=1)
    return model.double(), tok


def reference_scores(model, tok, items, layout, *, clamp_control=True):
    """Plain autograd, one item at a time, retain_grad on every projection output, float64."""
    countries = sorted({it.country for it in items})
    out = {(a, m): torch.zeros(len(countries) + 1, layout.n_layers, layout.n_neurons(m),
                               dtype=torch.float64) for a in AGGS for m in MODULES}
    for it in items:
        msgs = list(it.messages) if it.messages else [{"role": "user", "content": it.prompt}]
        text = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True) + it.answer_prefix
        prompt = tok(text, add_special_tokens=False)["input_ids"]
        answer = tok(it.answer, add_special_tokens=False)["input_ids"]
        ids = torch.tensor([prompt + answer[:-1]])
        saved = {}
        handles = []
        for layer in range(layout.n_layers):
            for m in MODULES:
                lin = layout.linear(model, layer, m)
                key = (layer, layout.site(m).path)
                if key in saved or any(h[0] == key for h in handles):
                    continue

                def hook(mod, inp, output, key=key):
                    output.retain_grad()
                    saved[key] = output
                handles.append((key, lin.register_forward_hook(hook)))
        logits = model(input_ids=ids).logits[0].double()
        for _, h in handles:
            h.remove()
        logp = torch.log_softmax(logits, -1)
        n, k = ids.shape[1], len(answer)
        p = sum(logp[n - k + j, answer[j]] for j in range(k)).exp()
        p.backward()
        row = countries.index(it.country)
        for layer in range(layout.n_layers):
            for m in MODULES:
                site = layout.site(m)
                o = saved[(layer, site.path)]
                a, g = o.detach()[0, :, site.rows], o.grad[0, :, site.rows]
                s = a * g
                bias = layout.linear(model, layer, m).bias
                a0 = a - bias.detach()[site.rows] if bias is not None else a
                vals = {"max": s.max(0).values, "mean": s.mean(0), "norm": (a0 * g).sum(0)}
                for agg, v in vals.items():
                    v = v * p.detach()
                    if it.control and clamp_control:
                        v = v.clamp(min=0)
                    out[(agg, m)][row, layer] += v
                    out[(agg, m)][-1, layer] += v
        model.zero_grad(set_to_none=True)
    return countries, out


def engine_scores(arch, items, **opts):
    model, tok = model64(arch)
    layout = layout_for(model.config)
    options = AttributionOptions(aggregations=AGGS, **opts)
    return attribute(model, tok, items, layout, options)


@pytest.mark.parametrize("arch", ARCH_NAMES)
def test_engine_equals_float64_reference(arch):
    items = make_items()
    model, tok = model64(arch)
    layout = layout_for(model.config)
    countries, ref = reference_scores(model, tok, items, layout)
    scores = engine_scores(arch, items, batch_size=3)
    assert scores.countries == countries
    assert scores.count[-1] == len(items)
    for (agg, m), want in ref.items():
        got = scores.tensors[f"{agg}.{m}"].double()
        assert got.shape == want.shape
        scale = want.abs().max()
        assert scale > 0, (agg, m)
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6 * float(scale), msg=f"{arch} {agg}.{m}")


def test_counts_and_probabilities_per_country():
    items = make_items()
    scores = engine_scores("llama", items, batch_size=4)
    assert scores.countries == ["Japan", "UK", "US"]
    assert scores.count.tolist() == [2, 3, 3, 8]
    assert torch.isclose(scores.sum_p[:-1].sum(), scores.sum_p[-1])
    assert (scores.sum_p > 0).all()


def test_control_clamp_is_an_option():
    items = make_items()
    on = engine_scores("llama", items, batch_size=4)
    off = engine_scores("llama", items, batch_size=4, clamp_control=False)
    japan = on.countries.index("Japan")  # holds one control item
    diff = on.tensors["mean.gate"][japan] - off.tensors["mean.gate"][japan]
    assert (diff >= -1e-18).all() and diff.abs().max() > 0


@pytest.mark.parametrize("change", ["batch1", "batch8", "right_pad", "shuffled"])
def test_invariances(change):
    items = make_items()
    base = engine_scores("qwen2", items, batch_size=3)
    if change == "batch1":
        other = engine_scores("qwen2", items, batch_size=1)
    elif change == "batch8":
        other = engine_scores("qwen2", items, batch_size=8)
    elif change == "right_pad":
        other = engine_scores("qwen2", items, batch_size=3, padding_side="right")
    else:
        shuffled = items[:]
        random.Random(3).shuffle(shuffled)
        other = engine_scores("qwen2", shuffled, batch_size=3)
    for key, t in base.tensors.items():
        torch.testing.assert_close(other.tensors[key], t, rtol=1e-6, atol=1e-12 + 1e-6 * float(t.abs().max()))


def test_first_order_tracks_true_effect():
    """Zeroing a neuron at every position changes P by about -sum_i s_i (= mean score x T)."""
    model, tok = model64("llama")
    layout = layout_for(model.config)
    item = Item(id="x", dataset="t", country="US", answer="A", prompt="Which one? A or B")
    scores = attribute(model, tok, [item], layout, AttributionOptions(aggregations=("mean",), modules=("gate",)))
    from attribution.encode import encode_item

    enc = encode_item(item, tok)
    ids = torch.tensor([enc.input_ids])

    def prob(zero=None):
        handle = None
        if zero is not None:
            layer, idx = zero
            lin = layout.linear(model, layer, "gate")
            handle = lin.register_forward_hook(lambda m, i, o: o.index_fill(-1, torch.tensor([idx]), 0.0))
        with torch.no_grad():
            p = torch.softmax(model(input_ids=ids).logits[0, -1].double(), -1)[enc.answer_ids[0]]
        if handle:
            handle.remove()
        return float(p)

    p0 = prob()
    s = scores.get("mean", "gate") * ids.shape[1] / p0  # undo the P weighting, mean -> sum
    flat = s.flatten()
    top = flat.abs().topk(50).indices
    n = layout.n_neurons("gate")
    est = [float(flat[i]) for i in top]
    true = [p0 - prob((int(i) // n, int(i) % n)) for i in top]
    from scipy.stats import spearmanr

    rho = spearmanr(est, true).statistic
    assert rho > 0.8, rho


def test_phi3_fused_equals_unfused_llama():
    """A Llama model with Phi-3's weights split into q/k/v and gate/up gives the same scores."""
    from transformers import LlamaConfig, LlamaForCausalLM

    phi, tok = model64("phi3")
    pc = phi.config
    lc = LlamaConfig(vocab_size=pc.vocab_size, hidden_size=pc.hidden_size,
                     intermediate_size=pc.intermediate_size, num_hidden_layers=pc.num_hidden_layers,
                     num_attention_heads=pc.num_attention_heads, num_key_value_heads=pc.num_key_value_heads,
                     hidden_act=pc.hidden_act, rms_norm_eps=pc.rms_norm_eps,
                     rope_parameters=dict(pc.rope_parameters), max_position_embeddings=pc.max_position_embeddings,
                     tie_word_embeddings=pc.tie_word_embeddings, attention_bias=False, mlp_bias=False,
                     pad_token_id=pc.pad_token_id, bos_token_id=pc.bos_token_id, eos_token_id=pc.eos_token_id)
    llama = LlamaForCausalLM(lc).double().eval()
    pl, ll = layout_for(pc), layout_for(lc)
    sd = {}
    for k, v in phi.state_dict().items():
        if "qkv_proj" in k:
            for m in ("q", "k", "v"):
                sd[k.replace("qkv_proj", f"{m}_proj")] = v[pl.site(m).rows]
        elif "gate_up_proj" in k:
            for m in ("gate", "up"):
                sd[k.replace("gate_up_proj", f"{m}_proj")] = v[pl.site(m).rows]
        else:
            sd[k] = v
    llama.load_state_dict(sd, strict=True)
    items = make_items()
    with torch.no_grad():
        ids = torch.tensor([[2, 10, 11, 12, 13]])
        torch.testing.assert_close(llama(input_ids=ids).logits, phi(input_ids=ids).logits)
    a = attribute(phi, tok, items, pl, AttributionOptions(aggregations=AGGS, batch_size=4))
    b = attribute(llama, tok, items, ll, AttributionOptions(aggregations=AGGS, batch_size=4))
    for key, t in a.tensors.items():
        torch.testing.assert_close(b.tensors[key], t, rtol=1e-6, atol=1e-6 * float(t.abs().max()))


# --- files, resume, CLI --------------------------------------------------------------------------
def write_items(path, items):
    rows = []
    for it in items:
        row = {"id": it.id, "dataset": it.dataset, "country": it.country, "answer": it.answer,
               "answer_prefix": it.answer_prefix, "control": it.control}
        if it.messages:
            row["messages"] = list(it.messages)
        else:
            row["prompt"] = it.prompt
        rows.append(json.dumps(row))
    path.write_text("\n".join(rows) + "\n")
    return path


def test_resume_after_interrupt_gives_identical_scores(tmp_path, monkeypatch):
    from attribution.run import run_attribution
    from attribution.scores import Scores

    model, tok = model64("gemma3_text")
    data = write_items(tmp_path / "items.jsonl", make_items())
    opts = AttributionOptions(aggregations=AGGS, batch_size=2)
    run_attribution("tiny", data, tmp_path / "full.safetensors", opts, model=model,
                           tokenizer=tok, checkpoint_every=2, progress=False)

    calls = {"n": 0}
    original = Attributor.process_batch

    def crash_on_third(self, batch):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return original(self, batch)

    out = tmp_path / "resumed.safetensors"
    monkeypatch.setattr(Attributor, "process_batch", crash_on_third)
    with pytest.raises(KeyboardInterrupt):
        run_attribution("tiny", data, out, opts, model=model, tokenizer=tok, checkpoint_every=2,
                        progress=False)
    monkeypatch.setattr(Attributor, "process_batch", original)
    assert not out.exists()
    partial = tmp_path / "resumed.safetensors.partial"
    assert partial.exists()
    with pytest.raises(Exception, match="--resume"):
        run_attribution("tiny", data, out, opts, model=model, tokenizer=tok, progress=False)
    run_attribution("tiny", data, out, opts, model=model, tokenizer=tok, checkpoint_every=2,
                    resume=True, progress=False)
    assert not partial.exists()
    a, b = Scores.load(tmp_path / "full.safetensors"), Scores.load(out)
    assert a.countries == b.countries
    for key in a.tensors:
        assert torch.equal(a.tensors[key], b.tensors[key]), key
    assert torch.equal(a.count, b.count) and torch.equal(a.sum_p, b.sum_p)


def test_resume_refuses_a_changed_run(tmp_path, monkeypatch):
    from attribution.run import run_attribution

    model, tok = model64("llama")
    data = write_items(tmp_path / "items.jsonl", make_items())
    out = tmp_path / "s.safetensors"
    opts = AttributionOptions(batch_size=2)
    original = Attributor.process_batch
    monkeypatch.setattr(Attributor, "process_batch",
                        lambda self, batch: (_ for _ in ()).throw(KeyboardInterrupt) if self._acc.count[-1] >= 2
                        else original(self, batch))
    with pytest.raises(KeyboardInterrupt):
        run_attribution("tiny", data, out, opts, model=model, tokenizer=tok, checkpoint_every=1, progress=False)
    monkeypatch.setattr(Attributor, "process_batch", original)
    with pytest.raises(Exception, match="different run.*options"):
        run_attribution("tiny", data, out, AttributionOptions(batch_size=3), model=model, tokenizer=tok,
                        resume=True, progress=False)


@pytest.fixture(scope="module")
def tiny_llama_dir(tmp_path_factory):
    from culnig.testing import save_tiny_checkpoint

    return save_tiny_checkpoint("llama", tmp_path_factory.mktemp("ckpt") / "llama", seed=1)


def test_cli_writes_scores_with_metadata(tiny_llama_dir, tmp_path):
    from attribution.scores import Scores
    from culnig.loading import load_model

    items = make_items()
    data = write_items(tmp_path / "items.jsonl", items)
    out = tmp_path / "scores.safetensors"
    proc = run_culnig("attribute", "--model", str(tiny_llama_dir), "--data", str(data), "--out", str(out),
                      "--agg", "max,mean", "--batch-size", "3")
    assert proc.returncode == 0, proc.stderr[-2000:]
    s = Scores.load(out)
    assert sorted(s.tensors) == sorted(f"{a}.{m}" for a in ("max", "mean") for m in MODULES)
    model, tok, layout = load_model(str(tiny_llama_dir))
    assert s.tensors["max.gate"].shape == (len(s.countries) + 1, layout.n_layers, layout.n_neurons("gate"))
    assert s.tensors["max.gate"].dtype == torch.float32
    assert s.meta["fingerprint"] == layout.fingerprint
    from attribution.items import file_sha256

    assert s.meta["data_sha256"] == file_sha256(data)
    assert s.meta["modules"] == list(MODULES) and s.meta["aggregations"] == ["max", "mean"]
    assert "culnig_version" in s.meta and s.meta["dtype"] == "fp32"
    ref = attribute(model, tok, items, layout, AttributionOptions(aggregations=("max", "mean")))
    for key, t in ref.tensors.items():
        torch.testing.assert_close(s.tensors[key], t, rtol=1e-4, atol=1e-4 * float(t.abs().max()))
    again = run_culnig("attribute", "--model", str(tiny_llama_dir), "--data", str(data), "--out", str(out))
    assert "already exists" in single_error(again)


@pytest.mark.parametrize("case", ["module", "empty", "field", "arch", "json"])
def test_cli_bad_input(case, tiny_llama_dir, tmp_path):
    data = write_items(tmp_path / "items.jsonl", make_items())
    model = str(tiny_llama_dir)
    extra = []
    if case == "module":
        extra, want = ["--modules", "gate,down"], "unknown module 'down'"
    elif case == "empty":
        data.write_text("\n")
        want = "empty"
    elif case == "field":
        lines = data.read_text().splitlines()
        row = json.loads(lines[2])
        del row["answer"]
        lines[2] = json.dumps(row)
        data.write_text("\n".join(lines) + "\n")
        want = f"{data}:3: missing field 'answer'"
    elif case == "json":
        data.write_text(data.read_text() + "{not json\n")
        want = f"{data}:9: not valid JSON"
    else:
        (tmp_path / "gpt2").mkdir()
        (tmp_path / "gpt2" / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
        model, want = str(tmp_path / "gpt2"), "'gpt2'"
    out = tmp_path / "s.safetensors"
    proc = run_culnig("attribute", "--model", model, "--data", str(data), "--out", str(out), *extra)
    assert want in single_error(proc)
    assert not out.exists() and not list(tmp_path.glob("s.safetensors*"))


def test_answer_that_tokenises_to_nothing():
    from attribution.encode import encode_item
    from culnig.errors import CulnigError

    class Stub:
        chat_template = None

        def __call__(self, text, add_special_tokens=True):
            return {"input_ids": [] if text == "\u200b" else [5, 6]}

    with pytest.raises(CulnigError, match="tokenises to nothing"):
        encode_item(Item(id="z", dataset="t", country="US", answer="\u200b", prompt="Q"), Stub())


def test_data_parallel_two_processes_equal_one(tiny_llama_dir, tmp_path):
    """torchrun with 2 CPU processes (gloo): each takes every 2nd batch; the sums are reduced."""
    import os
    import subprocess
    import sys

    from attribution.scores import Scores

    data = write_items(tmp_path / "items.jsonl", make_items())
    one, two = tmp_path / "one.safetensors", tmp_path / "two.safetensors"
    assert run_culnig("attribute", "--model", str(tiny_llama_dir), "--data", str(data), "--out", str(one),
                      "--batch-size", "2").returncode == 0
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                           "--master_port", "29517", "-m", "culnig.cli", "attribute", "--model",
                           str(tiny_llama_dir), "--data", str(data), "--out", str(two), "--batch-size", "2"],
                          capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = Scores.load(one), Scores.load(two)
    assert b.meta["world_size"] == 2
    assert torch.equal(a.count, b.count)
    for key in a.tensors:
        torch.testing.assert_close(b.tensors[key], a.tensors[key], rtol=1e-5, atol=1e-6 * float(a.tensors[key].abs().max()))
    assert not list(tmp_path.glob("*.partial*"))
