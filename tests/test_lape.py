"""LAPE/CAPE baseline: activation counting, entropy selection, set algebra, perplexity tasks,
the perplexity sweep and its report. Tiny models only (the demo-model check is opt-in, slow)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from attribution.activations import ActivationStats, count_activations, iter_chunks
from attribution.lape import (complement, evaluate_expression, intersect, lape_select, minus,
                              same_neurons, union)
from culnig_tasks.corpora import Corpus, blend_local_corpora
from culnig.errors import CulnigError
from culnig.neuron_sets import ModelShape, NeuronSet, model_block
from culnig.registry import layout_for
from culnig.testing import save_tiny_checkpoint, tiny_model

TEXT = ("The family eats together on Sunday; the grandmother cooks and the children set the table.\n"
        "Question: Which dish is traditionally eaten at the new year festival? Answer: rice cakes.\n"
        "\n"
        "Every country has its own customs: in one a guest removes their shoes at the door.\n")


def culnig_main(*argv: str) -> int:
    from culnig.cli import main

    return main(list(argv))


def error_of(capsys, *argv: str) -> str:
    """Run the command line in this process; return its single `culnig: error:` line."""
    capsys.readouterr()
    assert culnig_main(*argv) == 2
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("culnig: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.fixture(scope="module")
def corpus_files(tmp_path_factory) -> dict[str, Path]:
    """Real multilingual text: local-language BLEnD questions and answers (synthetic English
    text when the shared data is absent)."""
    from culnig.paths import shared_data_dir

    root = tmp_path_factory.mktemp("corpora")
    base = shared_data_dir()
    if base is not None and (base / "blend").is_dir():
        made = blend_local_corpora(base / "blend", root, ["South Korea", "Greece", "China"],
                                   eval_fraction=0.5)
        return {slug: parts["train"] for slug, parts in made.items()} | {
            f"{slug}_eval": parts["eval"] for slug, parts in made.items()}
    files = {}
    for name, text in (("south_korea", TEXT), ("greece", TEXT.upper()), ("china", TEXT[::-1])):
        for part in ("", "_eval"):
            p = root / f"{name}{part}.txt"
            p.write_text(text * 3)
            files[name + part] = p
    return files


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory) -> Path:
    return save_tiny_checkpoint("llama", tmp_path_factory.mktemp("ckpt") / "llama")


# --- counting ---------------------------------------------------------------------------------

def reference_counts(model, tok, layout, corpus: Corpus, chunk_tokens: int):
    """Independent count: each chunk alone (no padding), the MLP input captured by a pre-hook,
    act(gate(x)) recomputed from the weights with a fresh activation function, token by token."""
    from transformers.activations import ACT2FN

    act = ACT2FN[layout.hidden_act]
    ids = []
    for doc in corpus.documents():
        ids += tok(doc, add_special_tokens=False)["input_ids"]
    step = chunk_tokens - 1
    chunks = [ids[i:i + step] for i in range(0, len(ids), step)]
    counts = torch.zeros(layout.n_layers, layout.intermediate_size, dtype=torch.int64)
    near_zero = torch.zeros_like(counts)
    inputs = {}
    layers = layout.layers(model)
    mlp_path = layout.site("gate").path.rsplit(".", 1)[0]
    hooks = [layers[i].get_submodule(mlp_path).register_forward_pre_hook(
        lambda _m, args, i=i: inputs.__setitem__(i, args[0].detach())) for i in range(layout.n_layers)]
    try:
        for chunk in chunks:
            with torch.no_grad():
                model(input_ids=torch.tensor([[tok.bos_token_id] + chunk]))
            for layer in range(layout.n_layers):
                w = layout.linear(model, layer, "gate").weight[layout.site("gate").rows]
                x = inputs[layer][0]
                for t in range(1, x.shape[0]):  # position 0 is <bos>: not counted
                    a = act(x[t].double() @ w.double().T)
                    counts[layer] += (a > 0).long()
                    near_zero[layer] += (a.abs() < 1e-4).long()
    finally:
        for h in hooks:
            h.remove()
    return counts, near_zero, len(ids)


@pytest.mark.parametrize("arch", ["llama", "gemma3_text"])
def test_counting_equals_per_token_reference(arch, tmp_path):
    model, tok = tiny_model(arch, seed=3)
    layout = layout_for(model.config)
    path = tmp_path / "c.txt"
    path.write_text(TEXT * 4)
    corpus = Corpus("en", [str(path)])
    # batch of 3 with a short last chunk: padding must not be counted
    counts, tokens = count_activations(model, tok, layout, [corpus], chunk_tokens=40, batch_size=3,
                                       progress=False)
    ref, near_zero, n_tokens = reference_counts(model, tok, layout, corpus, 40)
    assert tokens == {"en": n_tokens} and n_tokens > 3 * 39
    diff = (counts["en"] - ref).abs()
    assert (diff <= near_zero).all(), "counts differ beyond values within 1e-4 of 0"
    assert (counts["en"] > 0).any() and (counts["en"] < n_tokens).any()


def test_chunking_and_max_tokens(tmp_path):
    _, tok = tiny_model("llama")
    path = tmp_path / "c.txt"
    path.write_text(TEXT * 2)
    corpus = Corpus("en", [str(path)])
    all_ids = [i for doc in corpus.documents() for i in tok(doc, add_special_tokens=False)["input_ids"]]
    chunks = list(iter_chunks(corpus, tok, 31))
    assert [i for c in chunks for i in c] == all_ids
    assert all(len(c) == 31 for c in chunks[:-1]) and 0 < len(chunks[-1]) <= 31
    capped = list(iter_chunks(corpus, tok, 31, max_tokens=40))
    assert [len(c) for c in capped] == [31, 9]
    # a datasets source (a local dataset folder; hub ids stream the same way) and a .jsonl file
    from culnig_tasks.corpora import parse_corpora

    (tmp_path / "ds").mkdir()
    rows = [json.dumps({"text": line}) for line in corpus.documents()]
    (tmp_path / "ds" / "train.jsonl").write_text("\n".join(rows) + "\n")
    for spec in (f"en=hf:{tmp_path / 'ds'}", f"en={tmp_path / 'ds' / 'train.jsonl'}"):
        (c,) = parse_corpora([spec])
        assert list(c.documents()) == list(corpus.documents())
    with pytest.raises(CulnigError, match="cannot stream"):
        list(parse_corpora([f"en=hf:{tmp_path / 'missing'}"])[0].documents())


def test_activations_cli_resume_and_file(tiny_llama, corpus_files, tmp_path, monkeypatch, capsys):
    import attribution.activations as act_mod

    args = ["activations", "--model", str(tiny_llama), "--chunk-tokens", "33", "--batch-size", "2",
            "--max-tokens", "400", "--checkpoint-every", "1"]
    for name in ("south_korea", "greece"):
        args += ["--corpus", f"{name}={corpus_files[name]}"]
    full = tmp_path / "full.safetensors"
    assert culnig_main(*args, "--out", str(full)) == 0
    stats = ActivationStats.load(full)
    assert stats.names == ["south_korea", "greece"]
    assert stats.tokens == {"south_korea": 400, "greece": 400}
    assert stats.meta["hidden_act"] == "silu" and stats.meta["model"]["arch"] == "llama"

    # interrupted after the third checkpoint (inside the first corpus), then resumed
    real_save, calls = act_mod._save_partial, []

    def flaky_save(*a, **kw):
        real_save(*a, **kw)
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt

    out = tmp_path / "resumed.safetensors"
    monkeypatch.setattr(act_mod, "_save_partial", flaky_save)
    assert culnig_main(*args, "--out", str(out)) == 130  # Ctrl-C: one line, exit 130
    monkeypatch.setattr(act_mod, "_save_partial", real_save)
    assert (tmp_path / "resumed.safetensors.partial").is_file() and not out.exists()
    assert "--resume" in error_of(capsys, *args, "--out", str(out))
    assert culnig_main(*args, "--out", str(out), "--resume") == 0
    again = ActivationStats.load(out)
    assert again.tokens == stats.tokens
    for n in stats.names:
        assert torch.equal(again.over_zero[n], stats.over_zero[n])
    assert not (tmp_path / "resumed.safetensors.partial").exists()


def test_activation_errors(tiny_llama, corpus_files, tmp_path, capsys):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n \n")
    err = error_of(capsys, "activations", "--model", str(tiny_llama), "--corpus",
                   f"en={corpus_files['greece']}", "--corpus", f"xx={empty}",
                   "--out", str(tmp_path / "s.safetensors"))
    assert "'xx'" in err and "zero tokens" in err
    err = error_of(capsys, "activations", "--model", str(tiny_llama), "--corpus",
                   f"en={tmp_path / 'missing.txt'}", "--out", str(tmp_path / "s.safetensors"))
    assert "no such file" in err
    assert "NAME=PATH" in error_of(capsys, "activations", "--model", str(tiny_llama), "--corpus",
                                   "just-a-path", "--out", str(tmp_path / "s.safetensors"))
    sig = save_tiny_checkpoint("llama", tmp_path / "sigmoid", hidden_act="sigmoid")
    err = error_of(capsys, "activations", "--model", str(sig), "--corpus",
                   f"en={corpus_files['greece']}", "--out", str(tmp_path / "s.safetensors"))
    assert "'sigmoid'" in err and "0.5 at 0" in err


# --- selection ------------------------------------------------------------------------------------

def test_lape_selection_known_answer():
    # 2 corpora, 2 layers x 5 neurons = 20 probabilities.
    p = torch.zeros(2, 2, 5, dtype=torch.float64)
    t = lambda a, b: torch.tensor([a, b], dtype=torch.float64)  # noqa: E731
    p[:, 0, 0] = t(0.90, 0.00)   # only corpus 0: entropy 0
    p[:, 0, 1] = t(0.00, 0.80)   # only corpus 1: entropy 0
    p[:, 0, 2] = t(0.85, 0.85)   # both, high: entropy log 2
    p[:, 0, 3] = t(0.02, 0.01)   # low everywhere: filtered out despite its low entropy
    p[:, 1, 0] = t(0.70, 0.05)   # mostly corpus 0: small entropy
    p[:, 1, 1] = t(0.10, 0.10)   # highest probability equals the filter value: excluded
    p[:, 1, 2] = t(0.60, 0.00)   # only corpus 0: entropy 0
    # sorted: 9 zeros, 0.01, 0.02, 0.05, 0.1, 0.1, 0.6, 0.7, 0.8, 0.85, 0.85, 0.9
    # 65th percentile: k = 13 -> 0.1; 85th: k = 17 -> 0.8
    res = lape_select(p, top=20.0, filter_percentile=65.0, bar_percentile=85.0)
    assert res.filter_value == 0.1 and res.bar_value == 0.8
    # eligible (max > 0.1): (0,0) (0,1) (0,2) (1,0) (1,2); 20% of 10 neurons = 2 kept: of the three
    # with entropy 0, the first two in (layer, index) order
    assert res.n_eligible == 5 and res.n_target == 2
    assert torch.nonzero(res.selected).tolist() == [[0, 0], [0, 1]]
    # bar 0.8: (0,0) belongs to corpus 0 (0.9 > 0.8); (0,1) has 0.8, not above the bar: dropped
    assert torch.nonzero(res.member).tolist() == [[0, 0, 0]]

    res = lape_select(p, top=40.0, filter_percentile=65.0, bar_percentile=85.0)
    assert torch.nonzero(res.selected).tolist() == [[0, 0], [0, 1], [1, 0], [1, 2]]  # not (0,2)

    res = lape_select(p, top=50.0, filter_percentile=65.0, bar_percentile=65.0)
    # 5 of 10 wanted, 5 eligible: all of them; bar 0.1 -> members by corpus
    assert res.selected.sum() == 5
    assert torch.nonzero(res.member[0]).tolist() == [[0, 0], [0, 2], [1, 0], [1, 2]]
    assert torch.nonzero(res.member[1]).tolist() == [[0, 1], [0, 2]]  # (0,2) belongs to both

    with pytest.raises(CulnigError, match="at least two"):
        lape_select(p[:1])
    with pytest.raises(CulnigError, match="--top"):
        lape_select(p, top=0)


def test_entropy_orders_as_expected():
    from attribution.lape import entropy_of

    p = torch.tensor([[0.5, 0.3, 0.0], [0.5, 0.1, 0.0]], dtype=torch.float64).unsqueeze(1)
    ent = entropy_of(p)[0]
    assert ent[0] == pytest.approx(math.log(2))
    assert ent[1] == pytest.approx(-(0.75 * math.log(0.75) + 0.25 * math.log(0.25)))
    assert math.isinf(ent[2])


# --- set algebra ----------------------------------------------------------------------------------

SIZES = {"gate": 12, "up": 12, "q": 6, "k": 3, "v": 3}
META = {"arch": "llama", "fingerprint": "a" * 16, "n_layers": 3, "n_neurons": SIZES}
SHAPE = ModelShape.from_meta(META, "test")


def random_set(seed: int, density: float = 0.3) -> NeuronSet:
    rng = np.random.default_rng(seed)
    neurons = {m: {l: np.nonzero(rng.random(n) < density)[0] for l in range(3)}
               for m, n in SIZES.items()}
    neurons = {m: {l: v for l, v in d.items() if v.size} for m, d in neurons.items()}
    return NeuronSet(model=model_block(SHAPE), method="hand", neurons={m: d for m, d in neurons.items() if d})


def test_set_algebra_laws():
    empty = NeuronSet(model=model_block(SHAPE), method="hand", neurons={})
    universe = complement(empty)
    assert universe.counts()["total"] == 3 * sum(SIZES.values())
    for seed in range(5):
        a, b, c = random_set(seed), random_set(seed + 10), random_set(seed + 20, 0.6)
        na = complement(a)
        assert same_neurons(intersect(a, na), empty)                     # A ∧ ¬A = ∅
        assert same_neurons(union(a, na), universe)                      # A ∨ ¬A = U
        assert same_neurons(complement(na), a)                           # ¬¬A = A
        assert same_neurons(minus(a, b), intersect(a, complement(b)))    # A \ B = A ∧ ¬B
        assert same_neurons(complement(union(a, b)), intersect(na, complement(b)))  # De Morgan
        assert same_neurons(complement(intersect(a, b)), union(na, complement(b)))
        assert same_neurons(intersect(a, b), intersect(b, a))
        assert same_neurons(union(a, union(b, c)), union(union(a, b), c))
        assert same_neurons(intersect(a, union(b, c)), union(intersect(a, b), intersect(a, c)))
        assert same_neurons(union(a, intersect(a, b)), a)                # absorption
        assert same_neurons(intersect(a, a), a) and same_neurons(minus(a, a), empty)
        assert same_neurons(intersect(a, empty), empty) and same_neurons(union(a, empty), a)
        inter = intersect(a, b).counts()["total"]
        assert union(a, b).counts()["total"] == a.counts()["total"] + b.counts()["total"] - inter
    other = NeuronSet(model={**model_block(SHAPE), "fingerprint": "b" * 16}, method="hand", neurons={})
    with pytest.raises(CulnigError, match="another model"):
        union(random_set(0), other)


def test_expression_parser():
    sets = {f"s{i}": random_set(i) for i in range(3)}
    got, ops = evaluate_expression(["s0", "and", "not", "s1", "or", "s2"], sets.__getitem__)
    assert ops == ["s0", "s1", "s2"]
    assert same_neurons(got, union(minus(sets["s0"], sets["s1"]), sets["s2"]))
    got, _ = evaluate_expression(["intersect", "s0", "s1", "s2"], sets.__getitem__)
    assert same_neurons(got, intersect(intersect(sets["s0"], sets["s1"]), sets["s2"]))
    for bad, msg in ((["s0", "and"], "ends after"), (["s0", "s1"], "expected an operator"),
                     (["intersect", "s0"], "at least two"), (["and", "s0"], "operator")):
        with pytest.raises(CulnigError, match=msg):
            evaluate_expression(bad, sets.__getitem__)


# --- select lape + sets combine + bake on a tiny model ---------------------------------------

@pytest.fixture(scope="module")
def lape_sets(tiny_llama, corpus_files, tmp_path_factory):
    root = tmp_path_factory.mktemp("lape")
    stats = root / "stats.safetensors"
    args = ["activations", "--model", str(tiny_llama), "--chunk-tokens", "64", "--batch-size", "4",
            "--max-tokens", "3000", "--out", str(stats)]
    for name in ("south_korea", "greece", "china"):
        args += ["--corpus", f"{name}={corpus_files[name]}"]
    assert culnig_main(*args) == 0
    assert culnig_main("select", "lape", "--stats", str(stats), "--out", str(root / "sets"),
                       "--top", "10") == 0
    return root, stats


def test_select_lape_and_cape_sets(lape_sets, tiny_llama, tmp_path, capsys):
    root, stats = lape_sets
    sets = {n: NeuronSet.load(root / "sets" / f"{n}.json") for n in ("south_korea", "greece", "china")}
    layout = layout_for(json.loads((tiny_llama / "config.json").read_text()))
    selected = 0
    for name, ns in sets.items():
        ns.validate(layout)
        assert ns.method == "lape" and ns.params["corpus"] == name
        assert set(ns.neurons) <= {"gate"}
        assert ns.params["activation_defined"] is True
        selected = ns.params["selected"]
    assert 0 < selected <= round(layout.n_layers * layout.intermediate_size * 0.10)
    # the files equal lape_select on the file's probabilities
    st = ActivationStats.load(stats)
    res = lape_select(st.probabilities(st.names), top=10.0)
    for c, name in enumerate(st.names):
        got = torch.zeros_like(res.member[c])
        for layer, idx in sets[name].neurons.get("gate", {}).items():
            got[layer, torch.as_tensor(idx)] = True
        assert torch.equal(got, res.member[c])
    # a subset of corpora, and unknown / zero-token corpora
    assert culnig_main("select", "lape", "--stats", str(stats), "--corpora", "greece,china",
                       "--out", str(tmp_path / "two")) == 0
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == ["china.json", "greece.json"]
    err = error_of(capsys, "select", "lape", "--stats", str(stats), "--corpora", "greece,klingon",
                   "--out", str(tmp_path / "x"))
    assert "'klingon'" in err and "south_korea" in err
    zero = ActivationStats(names=st.names, over_zero=st.over_zero, tokens={**st.tokens, "china": 0},
                           meta=st.meta)
    zero.save(tmp_path / "zero.safetensors")
    assert "zero tokens" in error_of(capsys, "select", "lape", "--stats", str(tmp_path / "zero.safetensors"),
                                     "--out", str(tmp_path / "y"))
    sig = ActivationStats(names=st.names, over_zero=st.over_zero, tokens=st.tokens,
                          meta={**st.meta, "hidden_act": "sigmoid"})
    sig.save(tmp_path / "sig.safetensors")
    assert "not 0" in error_of(capsys, "select", "lape", "--stats", str(tmp_path / "sig.safetensors"),
                               "--out", str(tmp_path / "z"))

    # CAPE: compound, pure, generic through `culnig sets combine`
    a, b, c = (str(root / "sets" / f"{n}.json") for n in ("south_korea", "greece", "china"))
    assert culnig_main("sets", "combine", a, "and", b, "--out", str(tmp_path / "compound.json")) == 0
    assert culnig_main("sets", "combine", a, "minus", b, "--out", str(tmp_path / "pure_a.json")) == 0
    assert culnig_main("sets", "combine", c, "and", "not", b, "--out", str(tmp_path / "pure_c.json")) == 0
    assert culnig_main("sets", "combine", "intersect", str(tmp_path / "pure_a.json"),
                       str(tmp_path / "pure_c.json"), "--out", str(tmp_path / "generic.json")) == 0
    compound = NeuronSet.load(tmp_path / "compound.json")
    assert same_neurons(compound, intersect(sets["south_korea"], sets["greece"]))
    assert same_neurons(NeuronSet.load(tmp_path / "pure_a.json"), minus(sets["south_korea"], sets["greece"]))
    generic = NeuronSet.load(tmp_path / "generic.json")
    assert same_neurons(generic, minus(intersect(sets["south_korea"], sets["china"]), sets["greece"]))
    assert compound.method == "cape" and compound.params["activation_defined"] is True
    assert compound.params["expression"].endswith("greece.json")
    assert "already exists" in error_of(capsys, "sets", "combine", a, "and", b, "--out",
                                        str(tmp_path / "compound.json"))
    other = random_set(0)
    other.save(tmp_path / "other.json")
    assert "another model" in error_of(capsys, "sets", "combine", a, "or", str(tmp_path / "other.json"),
                                       "--out", str(tmp_path / "bad.json"))

    # bake masks a LAPE set like any set; a model whose activation is not 0 at 0 is refused
    assert culnig_main("bake", "--model", str(tiny_llama), "--set", a, "--out", str(tmp_path / "masked")) == 0
    sig_model = save_tiny_checkpoint("llama", tmp_path / "sig_model", hidden_act="sigmoid")
    err = error_of(capsys, "bake", "--model", str(sig_model), "--set", a, "--out", str(tmp_path / "m2"))
    assert "'sigmoid'" in err and "not 0" in err
    from transformers import AutoModelForCausalLM

    m = AutoModelForCausalLM.from_pretrained(tmp_path / "masked")
    for layer, idx in sets["south_korea"].neurons.get("gate", {}).items():
        assert m.model.layers[layer].mlp.gate_proj.weight[idx].abs().sum() == 0


# --- perplexity tasks, the sweep and the report ----------------------------------------------

def transformers_ppl(ckpt: Path, docs: list[str], doc_bos: bool) -> tuple[float, float]:
    """(byte perplexity, bits per byte) by hand: each document after the prefix <bos>; with
    ``doc_bos`` the document's own <bos> (what lm-eval's HF backend scores by default) too."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(ckpt, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(ckpt)
    ll, n_bytes = 0.0, 0
    for doc in docs:
        ids = tok(doc, add_special_tokens=doc_bos)["input_ids"]
        with torch.no_grad():
            logp = torch.log_softmax(model(torch.tensor([[tok.bos_token_id] + ids])).logits[0].double(), -1)
        ll += sum(float(logp[i, t]) for i, t in enumerate(ids))
        n_bytes += len(doc.encode("utf-8"))
    return math.exp(-ll / n_bytes), -ll / n_bytes / math.log(2)


def test_ppl_task_equals_transformers(tiny_llama, corpus_files, tmp_path, capsys):
    from lm_eval.evaluator import simple_evaluate
    from lm_eval.tasks import TaskManager

    from culnig_tasks.ppl import corpus_documents

    text = tmp_path / "el.txt"
    lines = [ln for ln in corpus_files["greece_eval"].read_text().splitlines() if ln.strip()][:6]
    text.write_text("\n\n".join("\n".join(lines[i:i + 2]) for i in (0, 2, 4)) + "\n")  # < 2048 tokens
    tasks = tmp_path / "tasks"
    assert culnig_main("tasks", "ppl", "--corpus", f"el={text}", "--out", str(tasks)) == 0
    docs = corpus_documents([str(text)], "paragraph")
    assert len(docs) == 3
    tm = TaskManager(include_path=str(tasks), include_defaults=False)
    for extra, doc_bos in (("add_bos_token=False", False), ("", True)):
        res = simple_evaluate(model="hf", model_args=f"pretrained={tiny_llama},dtype=float32"
                              + (f",{extra}" if extra else ""), tasks=["culnig_ppl_el"],
                              task_manager=tm, device="cpu", batch_size=4)
        got = res["results"]["culnig_ppl_el"]
        byte_ppl, bpb = transformers_ppl(tiny_llama, docs, doc_bos)
        assert got["byte_perplexity,none"] == pytest.approx(byte_ppl, rel=1e-5)
        assert got["bits_per_byte,none"] == pytest.approx(bpb, rel=1e-5)
    assert res["versions"]["culnig_ppl_el"].startswith("1.0+")
    # a changed corpus is noticed; bad names and the culnig task folder are refused
    text.write_text("something else\n")
    with pytest.raises(CulnigError, match="changed"):
        from culnig_tasks.ppl import load

        load(**tm.task_index["culnig_ppl_el"].cfg["metadata"])
    assert "name" in error_of(capsys, "tasks", "ppl", "--corpus", f"bad name={text}", "--out", str(tasks))
    from culnig.paths import tasks_dir

    assert "task folder" in error_of(capsys, "tasks", "ppl", "--corpus", f"el={text}", "--out",
                                     str(tasks_dir() / "ppl_x"))


def test_ppl_sweep_and_lape_report(lape_sets, tiny_llama, corpus_files, tmp_path, capsys):
    """The normal sweep (hf backend, in process) evaluates perplexity tasks of an include path
    on the original and two LAPE masks; report-lape makes the Δ matrix, counts, layers, overlap."""
    import yaml

    root, _ = lape_sets
    tasks = tmp_path / "tasks"
    corpus_args = []
    for name in ("south_korea", "greece"):
        short = tmp_path / f"{name}.txt"
        short.write_text("\n\n".join(corpus_files[f"{name}_eval"].read_text().split("\n\n")[:2]) + "\n")
        corpus_args += ["--corpus", f"{name}={short}"]
    assert culnig_main("tasks", "ppl", *corpus_args, "--out", str(tasks)) == 0
    cfg = {"run_dir": str(tmp_path / "run"), "tasks": ["culnig_ppl_*"], "backend": "hf",
           "dtype": "float32", "chat_template": "off", "isolation": "inprocess", "batch_size": 4,
           "model_args": "add_bos_token=False", "lm_eval_args": ["--include_path", str(tasks)],
           "models": [{"name": "tiny", "model": str(tiny_llama),
                       "specific": {"path": str(root / "sets" / "{slug}.json"),
                                    "countries": ["South Korea", "Greece"]}}]}
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump(cfg))
    assert culnig_main("sweep", str(tmp_path / "sweep.yaml")) == 0
    results = sorted(p.name for p in (tmp_path / "run" / "results" / "tiny").iterdir())
    assert results == ["orig", "specific_greece", "specific_south_korea"]
    from culnig_tasks.lmeval import resolve_tasks

    assert sorted(resolve_tasks(("culnig_ppl_*",), ("--include_path", str(tasks)))[0]) == [
        "culnig_ppl_greece", "culnig_ppl_south_korea"]

    layout = layout_for(json.loads((tiny_llama / "config.json").read_text()))
    culnig_set = NeuronSet(model=model_block(layout), method="culnig-general",  # a stand-in
                           neurons={"gate": {0: np.arange(0, 40, 2)}, "q": {1: np.arange(5)}})
    culnig_set.save(tmp_path / "general.json")
    out = tmp_path / "report"
    assert culnig_main("report-lape", str(tmp_path / "run"), "--out", str(out), "--lape",
                       str(root / "sets"), "--culnig", f"general={tmp_path / 'general.json'}") == 0
    for f in ("report.md", "report.html", "delta_ppl.csv", "delta_ppl_tiny.png", "delta_ppl_own.csv",
              "counts.csv", "layers.png", "layers.csv", "overlap.csv"):
        assert (out / f).is_file(), f
    import pandas as pd

    long = pd.read_csv(out / "delta_ppl.csv")
    assert sorted(set(long["mask"])) == ["greece", "south_korea"]
    assert sorted(set(long["eval"])) == ["greece", "south_korea"]
    assert np.allclose(long["delta"], long["masked"] - long["orig"])
    counts = pd.read_csv(out / "counts.csv").set_index("set")
    assert counts.loc["general", "total"] == 25 and counts.loc["greece", "method"] == "lape"
    ov = pd.read_csv(out / "overlap.csv")
    assert len(ov) == 3 and ((ov["jaccard"] >= 0) & (ov["jaccard"] <= 1)).all()
    # the main report skips the perplexity tasks instead of failing on their metrics
    from culnig.reports.runs import load_run

    assert load_run(tmp_path / "run").benches == []
    assert "nothing to report" in error_of(capsys, "report-lape", "--out", str(tmp_path / "r2"))


def test_example_sweep_config_parses(tmp_path, monkeypatch):
    from culnig import sweep
    from culnig.sweep import config as sweep_config
    from culnig_tasks.lmeval import include_path_of

    monkeypatch.setattr(sweep_config, "_resolve_model", lambda ref: tmp_path / Path(ref).name)
    cfg = sweep.load_config(Path(__file__).parent.parent / "harness_configs" / "sweep-lape-cpu.yaml")
    (m,) = cfg.models
    assert [c.name for c in m.checkpoints][:2] == ["orig", "specific_usa"] and len(m.checkpoints) == 7
    assert str(m.checkpoints[1].set_path) == "runs/lape/sets/usa.json"
    assert include_path_of(cfg.settings.lm_eval_args) == "runs/lape/tasks"
    assert cfg.settings.chat_template == "off" and "add_bos_token=False" in cfg.settings.model_args


# --- demo model (opt in) --------------------------------------------------------------------------

@pytest.mark.slow
def test_demo_lape_masks_raise_own_language_most(demo_model, shared_data, tmp_path):
    """Gemma-3 270M, BLEnD local-language corpora (5 languages, 6,000 tokens each for the
    statistics, 3 held-out paragraphs each for perplexity): on every language's held-out text, the
    language's own LAPE mask raises byte perplexity more than the other masks do on average
    (docs/lape-cape.md has the measured matrices; on that text the own mask is not
    always the single most damaging one, so that is not asserted), and masking the English set
    changes no language by 2 % or more."""
    from lm_eval.evaluator import simple_evaluate
    from lm_eval.tasks import TaskManager

    from attribution.activations import run_activations
    from culnig.cli import main
    from culnig_tasks.corpora import parse_corpora
    from masking.bake import bake

    made = blend_local_corpora(shared_data / "blend", tmp_path / "corpora",
                               ["USA", "South Korea", "China", "Greece", "Ethiopia"])
    names = list(made)
    stats = run_activations(str(demo_model), parse_corpora(
        [f"{s}={p['train']}" for s, p in made.items()]), tmp_path / "stats.safetensors",
        chunk_tokens=512, batch_size=4, max_tokens=6000, progress=False)
    assert main(["select", "lape", "--stats", str(stats), "--out", str(tmp_path / "sets")]) == 0
    assert main(["tasks", "ppl", *[a for s, p in made.items() for a in ("--corpus", f"{s}={p['eval']}")],
                 "--out", str(tmp_path / "tasks")]) == 0
    tm = TaskManager(include_path=str(tmp_path / "tasks"), include_defaults=False)

    def ppl(path) -> dict[str, float]:
        res = simple_evaluate(model="hf", model_args=f"pretrained={path},dtype=float32,add_bos_token=False",
                              tasks=[f"culnig_ppl_{n}" for n in names], task_manager=tm, device="cpu",
                              batch_size=4, limit=3)
        return {n: res["results"][f"culnig_ppl_{n}"]["byte_perplexity,none"] for n in names}

    orig = ppl(demo_model)
    rel = {}
    for n in names:
        masked = bake(str(demo_model), tmp_path / "sets" / f"{n}.json", tmp_path / f"m_{n}").out
        got = ppl(masked)
        rel[n] = {e: got[e] / orig[e] - 1 for e in names}
        import shutil

        shutil.rmtree(masked)
    print(json.dumps(rel, indent=1))
    for e in names:
        others = [rel[m][e] for m in names if m != e]
        assert rel[e][e] > sum(others) / len(others), (e, rel)
    assert max(abs(v) for v in rel["usa"].values()) < 0.02, rel["usa"]
